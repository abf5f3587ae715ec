"""The four verification designs on the same test pairs, seen and unseen classes, beside raw pixels.

Run:  .venv/bin/python benchmarks/verification.py [--protocols seen-classes unseen-classes] [--seeds 0]
          [--out runs/verification_study]

Designs (configs/verification_{1a,1b,1c,2}.yaml, all trained with the same budget: epochs × steps ×
pairs per batch):
    1c  metric embedding: pair contrastive loss, L2 distance ≤ threshold
    1a  the 1c tower frozen, an MLP head on [|a − b|, a ⊙ b] trained with binary cross-entropy
    1b  the same head and tower trained end to end from scratch (one set of tower variables)
    2   two-channel network: both images stacked on the channel axis, sigmoid (also scored with p averaged
        over both orders)
and, for reference with its own (smaller) budget, design 1c with the open-set recipe's embedding
(configs/openset.yaml, its exported open-set embedding, cosine distance).
Each (protocol, design, seed) is one run folder under --out, trained with `reprlearn train`; a finished one is
read back, not retrained. 1a starts from the 1c run of the same protocol and seed. Every design scores the
same test pairs (drawn with data.seed) at a threshold fit on validation pairs from the training side; raw
pixels (L2 and cosine distance) are scored on those pairs the same way.

Prints one table per protocol (mean ± std over seeds) and writes every number to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from openset import mean_std  # noqa: E402  (the sibling script's table cell)

DESIGNS = {"1c": "metric embedding (contrastive), distance threshold", "1a": "frozen 1c tower + MLP head",
           "1b": "siamese tower + MLP head, end to end", "2": "two-channel network",
           "1c-joint": "metric embedding: the open-set recipe's joint embedding, distance threshold"}
CONFIGS = {design: f"configs/verification_{design}.yaml" for design in ("1a", "1b", "1c", "2")}
CONFIGS["1c-joint"] = "configs/openset.yaml"  # its own budget: 5 × 200 steps of 120 images
COLUMNS = (("roc_auc", "ROC AUC"), ("eer", "EER"), ("tar_at_far_1e-3", "TAR@FAR 1e-3"),
           ("accuracy", "held-out accuracy"))


def train_design(design: str, protocol: str, seed: int, out: Path) -> dict:
    """The run's report.json, training it first unless a finished run is already there."""
    folder = out / protocol / design / f"seed{seed}"
    report = folder / "report.json"
    if not report.exists():
        settings = {"data.protocol": protocol, "data.seed": seed, "train.seed": seed}
        if design == "1a":
            settings["model.init_from"] = str(out / protocol / "1c" / f"seed{seed}")
        if design == "1c-joint" and protocol == "seen-classes":  # as benchmarks/openset.py: validate on every class
            settings["data.validation_classes"] = 0
        command = [sys.executable, "-c", "import sys; from reprlearn.cli import main; sys.exit(main())", "train",
                   CONFIGS[design], "--out", str(folder), "--quiet", "--force",
                   *[f"--set={key}={value}" for key, value in settings.items()]]
        print(f"  training design {design}, {protocol}, seed {seed}", flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())


def raw_pixels(protocol: str, seed: int) -> dict[str, dict]:
    """Raw pixels as a verifier: L2 and cosine distances of the same test pairs, thresholds fit on validation pairs."""
    from reprlearn.config import load_config
    from reprlearn.data import flat_pixels
    from reprlearn.data.protocols import splits_for
    from reprlearn.metrics import verification_metrics
    from reprlearn.metrics.verification import best_threshold
    from reprlearn.evaluation.scoring import pair_distances

    cfg = load_config("configs/verification_1c.yaml", overrides=[f"data.protocol={protocol}", f"data.seed={seed}"])
    splits = splits_for(cfg.data)
    rows = {}
    for name, metric in (("raw pixels, L2", "L2"), ("raw pixels, cosine", "angular")):
        val_distances, val_match = pair_distances(flat_pixels(splits.val.images), splits.val.labels,
                                                  cfg.eval.verification_pairs, metric, seed)
        threshold, _ = best_threshold(val_distances, val_match)
        distances, match = pair_distances(flat_pixels(splits.test.images), splits.test.labels,
                                          cfg.eval.verification_pairs, metric, seed)
        rows[name] = verification_metrics(distances, match, threshold)
    return rows


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| design | " + " | ".join(title for _, title in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    lines += [f"| {row} | " + " | ".join(mean_std([r[key] for r in runs]) for key, _ in COLUMNS) + " |"
              for row, runs in results.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocols", nargs="+", default=["seen-classes", "unseen-classes"],
                        choices=["seen-classes", "unseen-classes"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="runs/verification_study")
    args = parser.parse_args()
    out = Path(args.out)
    everything = {}
    for protocol in args.protocols:
        results: dict[str, list[dict]] = {}
        for seed in args.seeds:
            for design in DESIGNS:  # 1c before 1a, which starts from it
                metrics = train_design(design, protocol, seed, out)["metrics"]
                results.setdefault(f"{design}: {DESIGNS[design]}", []).append(metrics["verification"])
                if "verification_swapped_average" in metrics:
                    results.setdefault(f"{design}: {DESIGNS[design]}, p averaged over (a, b) and (b, a)",
                                       []).append(metrics["verification_swapped_average"])
            for name, metrics in raw_pixels(protocol, seed).items():
                results.setdefault(name, []).append(metrics)
        everything[protocol] = results
        print(f"\n## {protocol} (Fashion-MNIST test pairs, seeds {args.seeds})\n\n{table(results)}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(everything, indent=2, default=float))
    print(f"\nAll numbers: {out / 'results.json'}")


if __name__ == "__main__":
    main()
