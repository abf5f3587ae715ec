"""Self-supervised methods side by side, with nothing learnt beside them: which method learns what, from no labels.

Run:  .venv/bin/python benchmarks/self_supervised.py [--datasets shapes fashion_mnist] [--methods simclr ...]
          [--seeds 0] [--out runs/ssl_study]

Every method trains the same tower with the same recipe (`simclr`; `byol` for BYOL, its own two views), the same
budget (epochs × steps × batch), the same learning rate and the same kept-epoch rule (the best validation kNN
accuracy; never a test image), each from a dataset's base config below. Rows beside them: raw pixels under L2 and
cosine, PCA of the pixels (fit on training images) at the embedding's size, and the untrained tower (what the
architecture gives before any training; a loss of zero would leave it). Columns: the weighted kNN accuracy on
validation images (k = 200, T = 0.1: the monitor), test MAP@R and P@1, the linear probe's test accuracy (fit on
training images), the output spread of the kept epoch and the training seconds.

Data: `shapes` are four shapes at random places and brightness on noise (tests/ssl_shapes.py: the class is a form,
not a place, so raw pixels score low); `fashion_mnist` is a 12,000-image training subset (Debian's package).
A finished run folder under --out is read back, not retrained, so an interrupted study resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reprlearn.config.self_supervised import METHODS, PREDICTOR_METHODS  # noqa: E402
TOWER = {"tower": "conv", "filters": [32, 64], "dense": 128, "embedding_dim": 64, "batch_norm": True}
EVAL = {"verification_pairs": 2000, "projection": "pca", "projection_points": 200, "projector_points": 50,
        "grid_queries": 2, "grid_neighbours": 3}
BASES = {
    "shapes": {"data": {"validation_fraction": 0.2},
               "train": {"epochs": 3, "steps_per_epoch": 200, "batch_size": 64, "learning_rate": 0.003}},
    "fashion_mnist": {"data": {"name": "fashion_mnist", "max_train": 12000, "max_test": 3000},
                      "train": {"epochs": 4, "steps_per_epoch": 150, "batch_size": 256, "learning_rate": 0.002,
                                "lr_schedule": "cosine"}},
}
# Heads scaled to the 64-wide tower (the defaults are the papers', for 2,048-wide ResNet features).
HEADS = {"projector": [256, 64], "predictor": [256, 64]}


def config_for(dataset: str, method: str, seed: int) -> dict:
    base = json.loads(json.dumps(BASES[dataset]))
    data = {**base["data"], "augment": "byol" if method == "byol" else "simclr", "seed": seed}
    model = {"kind": "self_supervised", "method": method, **TOWER, "projector": HEADS["projector"]}
    if method in PREDICTOR_METHODS:
        model["predictor"] = HEADS["predictor"]
    if method == "byol":
        model["momentum"] = 0.99  # the paper's 0.996 is for 1,000-epoch runs; lightly's short recipes use 0.99
    return {"data": data, "model": model, "train": {**base["train"], "seed": seed}, "eval": EVAL}


def sets_for(dataset: str, seed: int):
    if dataset == "shapes":
        from tests.ssl_shapes import shape_sets
        return shape_sets(seed=seed)
    return None


def baselines(cfg, sets) -> dict:
    """The untrained tower's test MAP@R and P@1 and kNN accuracy on validation images."""
    import keras

    from reprlearn.data import splits_for
    from reprlearn.metrics import retrieval_metrics, weighted_knn_accuracy
    from reprlearn.models import build_tower
    from reprlearn.runs import embed
    from reprlearn.training.self_supervised import knn_bank

    splits = splits_for(cfg.data, sets)
    keras.utils.set_random_seed(cfg.train.seed)
    tower = build_tower(cfg.model, splits.train.image_shape)
    test = retrieval_metrics(embed(tower, splits.test), splits.test.labels, "L2", compute_nmi=False)
    bank = knn_bank(splits.train, cfg.data.seed)
    knn = weighted_knn_accuracy(embed(tower, bank), bank.labels, embed(tower, splits.val), splits.val.labels)
    raw_knn = weighted_knn_accuracy(bank.images.reshape(len(bank), -1), bank.labels,
                                    splits.val.images.reshape(len(splits.val), -1), splits.val.labels)
    return {"untrained": {"val_knn_accuracy": knn, "map_at_r": test["map_at_r"],
                          "precision_at_1": test["precision_at_1"]}, "raw_knn": raw_knn}


def main() -> None:
    from reprlearn.config.io import config_from_dict
    from reprlearn.training import run_training

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(BASES), choices=list(BASES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", default="runs/ssl_study")
    args = parser.parse_args()
    out = Path(args.out)
    results = {}
    for dataset in args.datasets:
        for seed in args.seeds:
            sets = sets_for(dataset, seed)
            rows = {}
            for method in args.methods:
                cfg = config_from_dict(config_for(dataset, method, seed))
                folder = out / f"{dataset}_seed{seed}" / method
                report_file = folder / "report.json"
                report = (json.loads(report_file.read_text()) if report_file.is_file()
                          else run_training(cfg, folder, sets=sets, verbose=0))
                kept = report["train"]["history"][report["kept"]["epoch"] - 1]
                rows[method] = {"val_knn_accuracy": kept.get("val_knn_accuracy"),
                                "map_at_r": report["metrics"]["test"]["map_at_r"],
                                "precision_at_1": report["metrics"]["test"]["precision_at_1"],
                                "linear_probe": report["self_supervised"].get("linear_probe_accuracy"),
                                "output_spread": kept.get("val_output_spread"),
                                "seconds": report["train"]["seconds"]}
                metrics = report["metrics"]
            base = baselines(config_from_dict(config_for(dataset, args.methods[0], seed)), sets)
            rows["raw pixels L2"] = {"map_at_r": metrics["baseline_raw"]["map_at_r"],
                                     "precision_at_1": metrics["baseline_raw"]["precision_at_1"],
                                     "val_knn_accuracy": base["raw_knn"]}
            rows["raw pixels cosine"] = {"map_at_r": metrics["baseline_raw_cosine"]["map_at_r"],
                                         "precision_at_1": metrics["baseline_raw_cosine"]["precision_at_1"]}
            rows["PCA of pixels"] = {"map_at_r": metrics["baseline_pca"]["map_at_r"],
                                     "precision_at_1": metrics["baseline_pca"]["precision_at_1"]}
            rows["untrained tower"] = base["untrained"]
            results[f"{dataset} seed {seed}"] = rows
            print(f"\n{dataset}, seed {seed}: {BASES[dataset]['train']}")
            print("| row | val kNN acc | test MAP@R | test P@1 | linear probe | output spread | seconds |")
            print("|---|---|---|---|---|---|---|")
            for name, row in rows.items():
                cells = [row.get(key) for key in ("val_knn_accuracy", "map_at_r", "precision_at_1", "linear_probe",
                                                  "output_spread", "seconds")]
                print(f"| {name} | " + " | ".join("" if v is None else (f"{v:.0f}" if i == 5 else f"{v:.3f}")
                                                  for i, v in enumerate(cells)) + " |", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
