"""Open-set study: which losses and embeddings retrieve classes the tower never trained on, against raw pixels.

Run:  .venv/bin/python benchmarks/openset.py [--datasets fashion_mnist digits] [--seeds 0 1 2]
          [--protocols unseen-classes seen-classes] [--seen-seeds 0] [--rows ...] [--out runs/openset_study]
      .venv/bin/python benchmarks/openset.py --splits [0-4 5-9 even odd] [--rows ...]   # over class splits

Every row trains with `reprlearn train` from the dataset's base config (configs/openset.yaml for
Fashion-MNIST, configs/openset_digits.yaml for digits) with the row's overrides, so every row has the
same training budget (epochs × steps × batch) and the same data: two training classes held out for
validation, the epoch with the best validation MAP@R kept (never the test classes). Each (dataset,
protocol, row, seed) is one run folder under --out; a finished one is read back, not retrained, so an
interrupted study resumes. Baselines are computed here (once; OUT keeps them) on the same splits: raw pixels
under L2 and cosine, PCA of the pixels (fit on the training split only) at 64 and 256 components, and the joint
embedding of an *untrained* tower (the architecture's share of the result), and gradient orientation histograms
of the pixels (`model.joint_layers: [orientations]`: nothing learnt) at every setting of ORIENTATION_GRID. Each
trained joint row also gets companion "+ orientations" rows: the same trained tower with the histograms
(12 bins, 4 × 4 cells) joined to its joint embedding (no training of its own), whole and capped at 256
dimensions by a PCA fit on training images.

With --splits the unseen-classes protocol runs once per class split (CLASS_SPLITS: the training classes; the
test classes are the rest), and a last table gives each row's margin over the better raw baseline (the higher of
raw L2 and raw cosine, per split, means over seeds): the mean over splits and the worst split. Beside it is what a
rule that never sees a test class would pick: every row is also scored on the validation classes (training
classes the run held out; seeds redraw them), and `select_by_validation` picks, among the rows of at most
--max-dim dimensions, the row whose validation margin over raw pixels on those same classes is highest on its
worst split (ties: the higher mean over splits).

Prints one table per dataset and protocol (mean ± std over seeds of test MAP@R, P@1, NMI, and the
validation MAP@R each run kept) and writes them with every run's numbers to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BASE_CONFIGS = {"fashion_mnist": "configs/openset.yaml", "digits": "configs/openset_digits.yaml"}
# The joint embeddings per tower: all pooled blocks (conv) or the pixels with the first hidden layer (MLP), and a
# version of at most 256 dimensions; the head is left out (weight 0) in both.
JOINT = {"fashion_mnist": {"model.joint_layers": "[pool1, pool2]", "model.joint_weights": "[1.0, 1.0, 0.0]"},
         "digits": {"model.joint_layers": "[pixels, hidden1_relu]", "model.joint_weights": "[1.0, 1.0, 0.0]"}}
JOINT_SMALL = {"fashion_mnist": {"model.joint_layers": "[pool2]", "model.joint_weights": "[1.0, 0.0]"},
               "digits": {"model.joint_layers": "[hidden1_relu]", "model.joint_weights": "[1.0, 0.0]"}}
HEAD_ONLY = {"model.joint_layers": "[]", "model.joint_weights": "[]"}
SEMIHARD = {"loss.name": "triplet_semihard", "loss.margin": "0.2", "loss.jrd_weight": "0.0"}
CONTRASTIVE = {"loss.name": "contrastive", "loss.margin": "0.5", "loss.jrd_weight": "0.0"}
AM = {"loss.name": "am_softmax", "loss.scale": "20.0", "loss.margin": "0.1", "loss.jrd_weight": "0.0"}
AM_JRD = {**AM, "loss.jrd_weight": "1.0"}
# pytorch-metric-learning's losses at its defaults (cosine similarity), each setting the loss keys the base configs
# also set, so none is inherited from the base config's own loss.
PML_ROWS = {
    "Multi-Similarity + miner": {"loss.name": "multi_similarity", "loss.miner": "multi_similarity"},
    "Circle": {"loss.name": "circle", "loss.margin": "0.4"},
    "NT-Xent (labels)": {"loss.name": "ntxent"},
    "Proxy-Anchor": {"loss.name": "proxy_anchor", "loss.margin": "0.1"},
    "ArcFace": {"loss.name": "arcface", "loss.margin": "0.5", "loss.scale": "64.0"},
}


# Training classes of each class split (both datasets have ten classes); the test classes are the other five.
CLASS_SPLITS = {"0-4": [0, 1, 2, 3, 4], "5-9": [5, 6, 7, 8, 9], "even": [0, 2, 4, 6, 8], "odd": [1, 3, 5, 7, 9]}
RAW = ("raw pixels, L2", "raw pixels, cosine")
# Gradient orientation histogram settings scored as rows (bins, cells a side); the rule chooses among them too.
ORIENTATION_GRID = [(bins, cells) for bins in (8, 12, 16) for cells in (2, 3, 4)]
ORIENTATIONS_ADDED = (12, 4)  # the histograms joined to each trained joint row's tower
CAPPED_DIM = 256  # ... and that joint vector capped by a PCA fit on training images


def orientations_row(bins: int, cells: int) -> str:
    return f"orientations, {bins} bins × {cells}² cells (no training)"


# Each dataset's P×K batch of classes (P classes × K images); the self-supervised row draws as many images per step.
CLASS_BATCH = {"fashion_mnist": (3, 40), "digits": (3, 16)}


def views(dataset: str) -> dict[str, str]:
    """Self-supervised: SupCon on 2 strongly augmented views of each image (NT-Xent, τ = 0.2), no labels used; as
    many images per step as the P × K batch of classes, so the budget is the same."""
    p, k = CLASS_BATCH[dataset]
    return {"loss.name": "supervised_contrastive", "loss.scale": "5.0", "loss.distance": "cosine",
            "loss.jrd_weight": "0.0", "data.positives": "views", "data.augment": "strong",
            "train.classes_per_batch": str(p * k // 2), "train.examples_per_class": "2"}


def rows(dataset: str) -> dict[str, dict[str, str]]:
    """Each row's overrides of the base config; every key a row varies is set by every row."""
    joint, small = JOINT[dataset], JOINT_SMALL[dataset]
    rows = {
        "semi-hard": {**SEMIHARD, **HEAD_ONLY},
        "contrastive": {**CONTRASTIVE, **HEAD_ONLY},
        "AM-Softmax": {**AM, **HEAD_ONLY},
        "AM-Softmax + JRD": {**AM_JRD, **HEAD_ONLY},
        "semi-hard, joint": {**SEMIHARD, **joint},
        "semi-hard, joint <= 256": {**SEMIHARD, **small},
        "AM-Softmax + JRD, joint <= 256": {**AM_JRD, **small},
        "AM-Softmax + JRD, joint": {**AM_JRD, **joint},
        "AM-Softmax + JRD, joint, + reconstruction": {**AM_JRD, **joint, "loss.reconstruction_weight": "1.0"},
        "AM-Softmax + JRD, joint, + augmentation": {**AM_JRD, **joint, "data.augment": "light"},
        "AM-Softmax + JRD, joint <= 256, + augmentation": {**AM_JRD, **small, "data.augment": "light"},
        "semi-hard, joint, + augmentation": {**SEMIHARD, **joint, "data.augment": "light"},
        "semi-hard, joint <= 256, + augmentation": {**SEMIHARD, **small, "data.augment": "light"},
        "SupCon on augmented views (no labels), joint": {**views(dataset), **joint},
        **{name: {"loss.jrd_weight": "0.0", "loss.distance": "cosine", **loss, **HEAD_ONLY}
           for name, loss in PML_ROWS.items()},
    }
    p, k = CLASS_BATCH[dataset]
    return {name: {"data.augment": "none", "data.positives": "classes", "loss.reconstruction_weight": "0.0",
                   "loss.distance": "L2", "train.keep": "best", "model.joint_dim": "null",
                   "train.classes_per_batch": str(p),
                   "train.examples_per_class": str(k),
                   **overrides}
            for name, overrides in rows.items()}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def _split_overrides(split: str | None) -> dict[str, str]:
    if split is None:
        return {}
    return {"data.train_classes": "[" + ", ".join(map(str, CLASS_SPLITS[split])) + "]"}


def run_folder(dataset: str, protocol: str, row: str, seed: int, out: Path, split: str | None = None) -> Path:
    return out / dataset / protocol / (f"split_{_slug(split)}" if split else "") / _slug(row) / f"seed{seed}"


def train_row(dataset: str, protocol: str, row: str, overrides: dict, seed: int, out: Path,
              split: str | None = None) -> dict:
    """The run's report.json, training it first unless a finished run is already there."""
    folder = run_folder(dataset, protocol, row, seed, out, split)
    report = folder / "report.json"
    if not report.exists():
        settings = {**overrides, **_split_overrides(split), "data.protocol": protocol, "data.seed": str(seed),
                    "train.seed": str(seed)}
        if protocol == "seen-classes":  # validation held out from every class (all classes are test classes)
            settings["data.validation_classes"] = "0"
        command = [sys.executable, "-c", "import sys; from reprlearn.cli import main; sys.exit(main())", "train",
                   BASE_CONFIGS[dataset], "--out", str(folder), "--quiet", "--force",
                   *[f"--set={key}={value}" for key, value in settings.items()]]
        print(f"  training {dataset} {protocol} {row!r} seed {seed}", flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())


def study_splits_of(dataset: str, protocol: str, seed: int, split: str | None = None):
    """The (config, splits) every row of this dataset, protocol, seed and class split trains and is scored on."""
    from reprlearn.config import load_config
    from reprlearn.data.protocols import splits_for

    overrides = [f"data.protocol={protocol}", f"data.seed={seed}"] + (
        ["data.validation_classes=0"] if protocol == "seen-classes" else []) + [
        f"{key}={value}" for key, value in _split_overrides(split).items()]
    # The tower's own joint layers (JOINT), whatever the base config exports: the untrained-tower row uses them.
    cfg = load_config(BASE_CONFIGS[dataset], overrides=overrides + [f"{k}={v}" for k, v in JOINT[dataset].items()])
    return cfg, splits_for(cfg.data)


def scored(model, splits, seed: int) -> dict:
    """`model`'s test metrics (cosine ranking), its dimension and its validation MAP@R (when there are
    validation classes)."""
    from reprlearn.metrics import retrieval_metrics
    from reprlearn.runs import embed

    out = {**retrieval_metrics(embed(model, splits.test.images), splits.test.labels, "angular", seed=seed),
           "dim": int(model.output_shape[-1])}
    if splits.val is not None and len(splits.val.labels):
        out["val_map_at_r"] = retrieval_metrics(embed(model, splits.val.images), splits.val.labels, "angular",
                                                compute_nmi=False)["map_at_r"]
    return out


def baselines(dataset: str, protocol: str, seed: int, split: str | None = None) -> dict[str, dict]:
    """Raw pixels (L2, cosine), PCA-64 / PCA-256 fit on training images, an untrained tower's joint embedding,
    gradient orientation histograms at each ORIENTATION_GRID setting.

    The raw-pixel and orientation rows also carry `val_map_at_r`: the same ranking of the validation classes
    (training classes held out from training), which the selection rule compares rows against."""
    import keras

    from reprlearn.data import flat_pixels
    from reprlearn.metrics import retrieval_metrics
    from reprlearn.models import build_tower, joint_embedding_model
    from reprlearn.runs import embed
    from reprlearn.evaluation.scoring import pca_baseline

    cfg, splits = study_splits_of(dataset, protocol, seed, split)
    test = splits.test
    raw = flat_pixels(test.images)
    out = {"raw pixels, L2": retrieval_metrics(raw, test.labels, "L2", seed=seed)}
    # NMI clusters the pixels themselves, whatever the ranking metric: k-means runs once.
    out["raw pixels, cosine"] = {**retrieval_metrics(raw, test.labels, "angular", compute_nmi=False, seed=seed),
                                 "nmi": out["raw pixels, L2"]["nmi"]}
    val_raw = flat_pixels(splits.val.images)
    for name, metric in zip(RAW, ("L2", "angular")):
        out[name]["val_map_at_r"] = retrieval_metrics(val_raw, splits.val.labels, metric,
                                                      compute_nmi=False)["map_at_r"]
    for dim in (64, 256):
        out[f"PCA-{dim} of pixels"] = pca_baseline(splits.train.images, test.images, test.labels, dim, seed)
    keras.utils.set_random_seed(seed)
    tower = build_tower(cfg.model, test.images.shape[1:])
    joint = joint_embedding_model(tower, cfg.model.joint_layers, cfg.model.joint_grid, cfg.model.joint_power,
                                  cfg.model.joint_weights or None)
    out["untrained tower, joint"] = retrieval_metrics(embed(joint, test.images), test.labels, "angular", seed=seed)
    out["untrained tower, joint"]["dim"] = int(joint.output_shape[-1])
    for bins, cells in ORIENTATION_GRID:
        histograms = joint_embedding_model(tower, ["orientations"], power=cfg.model.joint_power, weights=[1.0, 0.0],
                                           orientation_bins=bins, orientation_cells=cells)
        out[orientations_row(bins, cells)] = scored(histograms, splits, seed)
    return out


def saved_baselines(dataset: str, protocol: str, seed: int, out: Path, split: str | None = None) -> dict[str, dict]:
    """`baselines(...)`, computed once and kept in OUT (beside the runs) so a resumed study does not redo them."""
    path = run_folder(dataset, protocol, "baselines", seed, out, split) / "baselines.json"
    if path.exists():
        return json.loads(path.read_text())
    scores = baselines(dataset, protocol, seed, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(scores, indent=2, default=float))
    return scores


def with_orientations(folder: Path, splits, seed: int) -> dict[str, dict]:
    """The trained run in `folder` with ORIENTATIONS_ADDED histograms joined to its joint embedding (its own
    joint parts and weights, the histograms as one more part of weight 1), scored whole (key "") and capped to
    CAPPED_DIM dimensions (key ", PCA 256")."""
    import keras

    from reprlearn.config.rules import check_joint_weights
    from reprlearn.evaluation.scoring import pca_fit_sample
    from reprlearn.models import joint_embedding_model, project_joint_embedding
    from reprlearn.runs import embed

    saved = folder / "with_orientations.json"  # computed once per run, like the baselines
    if saved.exists():
        return json.loads(saved.read_text())
    cfg = json.loads((folder / "report.json").read_text())["config"]["model"]
    model = keras.saving.load_model(folder / "model.keras", compile=False)
    bins, cells = ORIENTATIONS_ADDED
    weights = check_joint_weights(cfg["joint_layers"], cfg["joint_weights"] or None)
    if weights[-1] != 0:  # the saved model ends in the joint vector; the head itself is not in it
        raise ValueError(f"the study joins orientations to joint rows without the head. Received: joint_weights="
                         f"{weights} in {folder}")
    layers = [*cfg["joint_layers"], "orientations"]
    weights = [*weights[:-1], 1.0, 0.0]
    joined = joint_embedding_model(model, layers, cfg["joint_grid"], cfg["joint_power"], weights,
                                   orientation_bins=bins, orientation_cells=cells)
    # Capped like `model.joint_dim` caps a run's: a PCA fit on training images (the run's own sample of them).
    capped = project_joint_embedding(joined, embed(joined, pca_fit_sample(splits.train, seed)), CAPPED_DIM)
    scores = {"": scored(joined, splits, seed), f", PCA {CAPPED_DIM}": scored(capped, splits, seed)}
    saved.write_text(json.dumps(scores, indent=2, default=float))
    return scores


def mean_std(values: list[float]) -> str:
    """`mean ± std` over seeds to three decimals (the value alone for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def split_margins(per_split: dict[str, dict[str, list[dict]]], key: str = "map_at_r") -> dict[str, dict]:
    """Each row's margin over the better raw baseline, per split and across splits.

    Args:
        per_split: `{split: {row: [one dict per seed]}}`; every split holds both RAW rows.
        key: the score compared: `map_at_r` (test classes) or `val_map_at_r` (held-out training classes).

    Returns:
        `{row: {"margins": {split: margin}, "mean": mean margin, "worst": lowest margin, "worst_split": its
        split}}` for the rows scored on every split (with `key`), where a split's margin is the row's mean
        over seeds minus the higher of the raw baselines' means over seeds.
    """
    def mean(runs: list[dict]) -> float | None:
        values = [run[key] for run in runs if run.get(key) is not None]
        return statistics.mean(values) if len(values) == len(runs) and values else None

    rows = [row for row in next(iter(per_split.values())) if row not in RAW]
    out = {}
    for row in rows:
        margins = {}
        for split, results in per_split.items():
            score = mean(results.get(row, []))
            if score is None:
                break
            margins[split] = score - max(mean(results[name]) for name in RAW)
        else:
            worst = min(margins, key=margins.get)
            out[row] = {"margins": margins, "mean": statistics.mean(margins.values()),
                        "worst": margins[worst], "worst_split": worst}
    return out


def select_by_validation(per_split: dict[str, dict[str, list[dict]]], max_dim: int | None = None) -> str | None:
    """The row a rule blind to test classes picks, among rows of at most `max_dim` dimensions (None: any).

    Each row's margin over raw pixels on the validation classes (training classes held out from each run; mean
    over seeds per split) is taken on its **worst** split, as the target is a margin on every split; the highest
    worst-split margin wins, ties going to the higher mean over splits. None when no such row has validation
    scores."""
    def small(row: str) -> bool:
        return max_dim is None or all(isinstance(run.get("dim"), int) and run["dim"] <= max_dim
                                      for results in per_split.values() for run in results[row])

    margins = {row: m for row, m in split_margins(per_split, "val_map_at_r").items() if small(row)}
    return max(margins, key=lambda row: (margins[row]["worst"], margins[row]["mean"])) if margins else None


def margins_table(per_split: dict[str, dict[str, list[dict]]], max_dim: int | None = None) -> str:
    test, val = split_margins(per_split), split_margins(per_split, "val_map_at_r")
    chosen = select_by_validation(per_split, max_dim)
    splits = list(per_split)
    lines = ["| row | " + " | ".join(f"{split}" for split in splits)
             + " | mean margin | worst split | validation margin: worst split, mean |",
             "|---|" + "---|" * (len(splits) + 3)]
    for row, scores in test.items():
        name = f"**{row}** (picked on validation)" if row == chosen else row
        lines.append(f"| {name} | " + " | ".join(f"{scores['margins'][s]:+.3f}" for s in splits)
                     + f" | {scores['mean']:+.3f} | {scores['worst']:+.3f} ({scores['worst_split']}) | "
                     + (f"{val[row]['worst']:+.3f} ({val[row]['worst_split']}), {val[row]['mean']:+.3f}"
                        if row in val else "–") + " |")
    return "\n".join(lines)


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| row | dim | test MAP@R | P@1 | NMI | val MAP@R (kept epoch) |", "|---|---|---|---|---|---|"]
    for row, runs in results.items():
        val = [r["val_map_at_r"] for r in runs if r.get("val_map_at_r") is not None]
        lines.append(f"| {row} | {runs[0]['dim']} | {mean_std([r['map_at_r'] for r in runs])} | "
                     f"{mean_std([r['precision_at_1'] for r in runs])} | {mean_std([r['nmi'] for r in runs])} | "
                     + (mean_std(val) if val else "–") + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(BASE_CONFIGS), choices=list(BASE_CONFIGS))
    parser.add_argument("--protocols", nargs="+", default=["unseen-classes", "seen-classes"],
                        choices=["unseen-classes", "seen-classes"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seen-seeds", type=int, nargs="+", default=[0],
                        help="seeds for the seen-classes protocol (what each row costs on its training classes)")
    parser.add_argument("--rows", nargs="+", help="row names to run (default: all)")
    parser.add_argument("--splits", nargs="*", choices=list(CLASS_SPLITS),
                        help="unseen classes over these class splits (no value: all four)")
    parser.add_argument("--max-dim", type=int, default=256,
                        help="the rule picks among rows of at most this many dimensions (--splits)")
    parser.add_argument("--out", default="runs/openset_study")
    args = parser.parse_args()
    out = Path(args.out)
    summary = {}
    if args.splits is not None:
        study_splits(args, out, summary)
    else:
        for dataset in args.datasets:
            for protocol in args.protocols:
                seeds = args.seeds if protocol == "unseen-classes" else args.seen_seeds
                title = f"{dataset}, {protocol}, seeds {seeds}"
                summary[title] = study(dataset, protocol, seeds, args.rows, out)
                print(f"\n### {title}\n\n{table(summary[title])}\n", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float))


def study(dataset: str, protocol: str, seeds: list[int], only_rows: list[str] | None, out: Path,
          split: str | None = None) -> dict[str, list[dict]]:
    """`{row: [one result per seed]}`: the baselines, then every (chosen) row trained or read back."""
    results: dict[str, list[dict]] = {}
    for seed in seeds:
        for name, scores in saved_baselines(dataset, protocol, seed, out, split).items():
            results.setdefault(name, []).append(
                {**scores, "dim": scores.get("dim", "–" if name.startswith("raw") else scores.get("dim"))})
    for row, overrides in rows(dataset).items():
        if only_rows and row not in only_rows:
            continue
        for seed in seeds:
            report = train_row(dataset, protocol, row, overrides, seed, out, split)
            results.setdefault(row, []).append({
                **report["metrics"]["test"], "dim": report["model"]["embedding_dim"],
                "val_map_at_r": report["kept"].get("val_map_at_r"), "kept_epoch": report["kept"]["epoch"]})
            if report["config"]["model"]["joint_layers"]:
                _, splits = study_splits_of(dataset, protocol, seed, split)
                folder = run_folder(dataset, protocol, row, seed, out, split)
                for suffix, scores in with_orientations(folder, splits, seed).items():
                    results.setdefault(f"{row} + orientations{suffix}", []).append(scores)
    return results


def study_splits(args, out: Path, summary: dict) -> None:
    """Unseen classes over class splits: a table per split, then each row's margins over the raw baseline."""
    for dataset in args.datasets:
        per_split = {}
        for split in args.splits or list(CLASS_SPLITS):
            per_split[split] = study(dataset, "unseen-classes", args.seeds, args.rows, out, split)
            title = f"{dataset}, trained on {split}, seeds {args.seeds}"
            summary[title] = per_split[split]
            print(f"\n### {title}\n\n{table(per_split[split])}\n", flush=True)
        print(f"\n### {dataset}: margin over the better raw baseline (test MAP@R), seeds {args.seeds}\n\n"
              f"{margins_table(per_split, args.max_dim)}\n", flush=True)
        summary[f"{dataset}, margins"] = {"test": split_margins(per_split),
                                          "validation": split_margins(per_split, "val_map_at_r"),
                                          "picked_on_validation": select_by_validation(per_split, args.max_dim),
                                          "max_dim": args.max_dim}


if __name__ == "__main__":
    main()
