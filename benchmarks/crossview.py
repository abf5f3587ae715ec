"""Cross-view retrieval benchmark: what each design choice of two towers buys, on places never trained on.

Run:  .venv/bin/python benchmarks/crossview.py [--rows ...] [--out runs/crossview_bench] [--data runs/crossview_data]
      .venv/bin/python benchmarks/crossview.py --write-only     # the pair CSVs alone (for configs/crossview.yaml)

No cross-view data set can be downloaded here, so this one is made from Fashion-MNIST (Debian's
dataset-fashion-mnist, offline) by `reprlearn.data.cross_view_views`: every image is a place, its query a
panorama-like strip (the polar transform of a crop of it, turned to an unknown heading, another sensor) and its
reference an overhead-like image (another crop, another sensor). Nothing about the recipe was fitted to a trained
model: its noise and crops were set so that a hand-made matcher that knows the geometry (the polar transform and
the best circular shift of the pixels, `--oracle`) reaches a Recall@1 of about 0.9, while raw pixels fail.

- Training places: every training image of classes 0-3 (24,000); validation places: VALIDATION_PLACES training
  images of class 4, a class held out of training, so the kept epoch is chosen on classes the towers never saw
  (as the test classes are), never on a test place.
- Test places: TEST_PLACES test images of classes 5-9 (never trained on: `pairs.csv`'s test split) and as many of
  classes 0-3 (seen classes: `pairs_seen.csv`, the same training and validation rows).

Every row trains `configs/crossview.yaml` with its overrides (the same steps, batch and schedule for every row)
through `reprlearn train`'s library call, into OUT/<row>; a finished row is read back, not retrained. Raw pixels
and the shared tower come from the recommended row's report (eval.shared_baseline: the same loss and budget).
Prints the table (Recall@1/5/10/1% queries → references on unseen places, Recall@1 on seen places and in the
other direction, training seconds) and writes it to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import keras
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CLASSES, VALIDATION_CLASS = (0, 1, 2, 3), 4   # validation places come from a class held out of training
VALIDATION_PLACES, TEST_PLACES = 1000, 1000
# Each row: its name and its overrides of configs/crossview.yaml.
ROWS = {
    "two_towers": {"model.polar_size": None},                   # the query tower still circular: one change a row
    "two_towers_polar": {},                                     # the recommended design (and the shared tower)
    "two_towers_polar_soft_margin": {"loss.name": "soft_margin_triplet", "loss.temperature": None,
                                     "loss.learn_temperature": False},
}


def write_pairs(data: Path) -> tuple[Path, Path]:
    """The views of every place as PNG files and the two pair CSVs (unseen and seen test places)."""
    from reprlearn.data.cross_view_views import cross_view_views, write_pair_csv
    from reprlearn.data.loaders import load_fashion_mnist

    unseen, seen = data / "pairs.csv", data / "pairs_seen.csv"
    if unseen.is_file() and seen.is_file():
        return unseen, seen
    sets = load_fashion_mnist()
    train, test = sets["train"], sets["test"]
    rng = np.random.default_rng(0)
    index = {"train": rng.permutation(np.flatnonzero(np.isin(train.labels, TRAIN_CLASSES))),
             "validation": rng.permutation(np.flatnonzero(train.labels == VALIDATION_CLASS))[:VALIDATION_PLACES]}
    test_index = {"unseen": rng.permutation(np.flatnonzero(test.labels >= 5))[:TEST_PLACES],
                  "seen": rng.permutation(np.flatnonzero(np.isin(test.labels, TRAIN_CLASSES)))[:TEST_PLACES]}
    parts = {name: (*cross_view_views(train.images[rows], seed), rows)
             for seed, (name, rows) in enumerate(index.items(), start=1)}
    tests = {name: (*cross_view_views(test.images[rows], seed), rows + 100000)
             for seed, (name, rows) in enumerate(test_index.items(), start=10)}
    write_pair_csv(data / "unseen", {**parts, "test": tests["unseen"]})
    # The seen-class CSV reuses the training files: only its test rows differ.
    write_pair_csv(data / "seen_test", {"test": tests["seen"]})
    lines = (data / "unseen" / "pairs.csv").read_text().splitlines()
    header, rows = lines[0], [line for line in lines[1:] if not line.endswith(",test")]
    unseen.write_text("\n".join([header] + [_under("unseen", line) for line in lines[1:]]) + "\n")
    seen_rows = (data / "seen_test" / "pairs.csv").read_text().splitlines()[1:]
    seen.write_text("\n".join([header] + [_under("unseen", line) for line in rows]
                              + [_under("seen_test", line) for line in seen_rows]) + "\n")
    return unseen, seen


def _under(folder: str, line: str) -> str:
    query, reference, label, split = line.split(",")
    return ",".join([f"{folder}/{query}", f"{folder}/{reference}", label, split])


def oracle(csv: Path) -> dict:
    """The hand-made matcher that knows the geometry: each test reference polar-transformed, each query matched to
    the reference whose pixels (standardised) correlate best at the best circular shift."""
    from reprlearn.config import config_from_dict
    from reprlearn.data.pairs import pair_splits_for
    from reprlearn.ops.polar import polar_transform

    cfg = config_from_dict({"data": {"name": f"csv:{csv}", "image_size": [16, 64], "reference_size": [32, 32],
                                     "channels": 1, "reference_channels": 1},
                            "model": {"kind": "two_tower"}, "loss": {"name": "info_nce"}})
    test = pair_splits_for(cfg.data).test
    queries, references = test.query.pixels(np.arange(len(test))), test.reference.pixels(np.arange(len(test)))
    strips = polar_transform(references, 16, 64)

    def standard(x):
        x = x[..., 0] - x.mean(axis=(1, 2, 3))[:, None, None]
        return x / (x.std(axis=(1, 2))[:, None, None] + 1e-6)

    q, r = np.fft.fft(standard(queries), axis=2), np.fft.fft(standard(strips), axis=2)
    best = np.zeros((len(q), len(r)))
    for start in range(0, len(q), 50):
        products = (q[start:start + 50, None] * np.conj(r[None])).sum(2)   # [50, N, W]: every circular shift
        best[start:start + 50] = np.fft.ifft(products, axis=-1).real.max(-1)
    rank = (best > np.diag(best)[:, None]).sum(axis=1)
    k = int(np.ceil(len(r) / 100))
    return {"recall_at_1": float((rank < 1).mean()), "recall_at_5": float((rank < 5).mean()),
            "recall_at_10": float((rank < 10).mean()), "recall_at_1pct": float((rank < k).mean())}


def train_row(name: str, overrides: dict, unseen: Path, seen: Path, out: Path) -> dict:
    """One row trained (or read back) and scored on unseen and seen test places."""
    from reprlearn.config import load_config
    from reprlearn.data.pairs import pair_splits_for
    from reprlearn.evaluation.cross_view import score_towers
    from reprlearn.runs.record import read_json
    from reprlearn.training import run_training

    cfg = load_config(ROOT / "configs" / "crossview.yaml",
                      [f"{key}={json.dumps(value)}" for key, value in {"data.name": f"csv:{unseen}",
                                                                       **({"eval.shared_baseline": False}
                                                                          if overrides else {}),
                                                                       **overrides}.items()])
    folder = out / name
    started = time.perf_counter()
    report = read_json(folder / "report.json") if (folder / "report.json").is_file() else run_training(
        cfg, folder, verbose=1)
    seen_test = pair_splits_for(load_config(ROOT / "configs" / "crossview.yaml",
                                            [f"data.name=csv:{seen}"]).data).test
    towers = [keras.saving.load_model(folder / f"{view}.keras") for view in ("query", "reference")]
    seen_scores = score_towers(*towers, seen_test, cfg.loss.distance)
    return {"report": report, "seen": seen_scores, "wall_seconds": round(time.perf_counter() - started, 1)}


def _cells(scores: dict, seen: dict | None, seconds) -> str:
    q, r = scores["query_to_reference"], scores["reference_to_query"]
    seen_cell = f"{seen['query_to_reference']['recall_at_1']:.3f}" if seen else "–"
    return (f"{q['recall_at_1']:.3f} | {q['recall_at_5']:.3f} | {q['recall_at_10']:.3f} | {q['recall_at_1pct']:.3f} | "
            f"{r['recall_at_1']:.3f} | {seen_cell} | {seconds if seconds is not None else '–'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "crossview_bench")
    parser.add_argument("--data", type=Path, default=ROOT / "runs" / "crossview_data")
    parser.add_argument("--write-only", action="store_true", help="write the pair CSVs and stop")
    parser.add_argument("--oracle", action="store_true", help="also score the hand-made geometric matcher")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    unseen, seen = write_pairs(args.data)
    print(f"pairs: {unseen} (test: unseen classes), {seen} (test: seen classes)", flush=True)
    if args.write_only:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results = {name: train_row(name, ROWS[name], unseen, seen, args.out) for name in args.rows}
    header = ("| row | R@1 | R@5 | R@10 | R@1% | R@1 reference → query | R@1 seen classes | training s |\n"
              "|---|---|---|---|---|---|---|---|")
    lines = [header]
    main_row = results.get("two_towers_polar")
    if main_row:
        m = main_row["report"]["metrics"]
        for label, key in (("raw pixels, L2", "baseline_raw"), ("raw pixels, cosine", "baseline_raw_cosine")):
            lines.append(f"| {label} | {_cells(m[key], None, None)} |")
        if "shared_tower" in m:
            lines.append(f"| one shared tower (same loss and budget) | "
                         f"{_cells(m['shared_tower'], None, m['shared_tower'].get('seconds'))} |")
    for name, result in results.items():
        report = result["report"]
        lines.append(f"| {name} | {_cells(report['metrics']['test'], result['seen'], report['train']['seconds'])} |")
    if args.oracle:
        scores = oracle(unseen)
        lines.append(f"| hand-made matcher (polar + best circular shift of the pixels) | {scores['recall_at_1']:.3f} | "
                     f"{scores['recall_at_5']:.3f} | {scores['recall_at_10']:.3f} | {scores['recall_at_1pct']:.3f} "
                     "| – | – | – |")
    table = "\n".join(lines)
    print(table)
    (args.out / "results.json").write_text(json.dumps({"table": table, "rows": {
        name: {"test": r["report"]["metrics"]["test"], "seen": r["seen"], "seconds": r["report"]["train"]["seconds"]}
        for name, r in results.items()}}, indent=2, default=float))


if __name__ == "__main__":
    main()
