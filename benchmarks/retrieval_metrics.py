"""Retrieval metrics against pytorch-metric-learning's AccuracyCalculator on the same embeddings, in one run.

Run: .venv/bin/python benchmarks/retrieval_metrics.py [--n 100000] [--dim 128] [--classes 1000 100]
     [--repeats 3] [--pml-python .venv-pml/bin/python] [--large]

Data: `n` × `dim` Gaussian class clusters (as benchmarks/search.py). Each repeat times, alternately,
`reprlearn.metrics.retrieval_metrics` (P@1, R-precision, MAP@R, NMI) in this process and PML 2.9's
`AccuracyCalculator(k="max_bin_count")` (faiss k-NN and faiss k-means, the same four metrics) in a
child process of its own environment (`make .venv-pml`; pytorch-metric-learning is no dependency of
reprlearn, and the column is left out when it is missing); each side times its call only, not its
imports. The table prints medians of the repeats and their ratio (this machine's speed is bimodal,
hence alternation), and both sides' values: the ranking metrics agree to float32 ties, NMI within
k-means' local optima (both seed k-means differently).
`--large` adds N = 200,000 in 10 classes (R ≈ 20,000) with every item a query, once.
`--floor` adds, in the same alternation, the least that any exact evaluation of these metrics costs here: every
pairwise score computed once (the upper triangle of the score matrix, block by block, by one matrix product per
block: half of what a row-by-row search computes) plus PML's own k-means for NMI (faiss, 20 iterations, no
seeding), with nothing for ranking, selecting or summing; its ratio to PML's time bounds what a faster
implementation can reach on this machine.

Targets (issue 26): ≤ 0.5× PML's time at 100,000 × 128 with 100 and 1,000 classes; the large set ≤ 5 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from reprlearn.metrics import retrieval_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("precision_at_1", "r_precision", "map_at_r", "nmi")
# Run by PML's interpreter: times get_accuracy alone and prints the values as JSON.
PML_CHILD = """
import json, sys, time
import numpy as np, torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
x, y = torch.from_numpy(np.load(sys.argv[1])), torch.from_numpy(np.load(sys.argv[2]))
calculator = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r", "NMI"),
                                k="max_bin_count", device=torch.device("cpu"))
started = time.perf_counter()
values = calculator.get_accuracy(x, y)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "precision_at_1": values["precision_at_1"],
                  "r_precision": values["r_precision"], "map_at_r": values["mean_average_precision_at_r"],
                  "nmi": values["NMI"]}))
"""


def clustered(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around `classes` centres (the same centres for every seed), `seed` drawing the points."""
    centres = np.random.default_rng(0).normal(size=(classes, dim)).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    labels = rng.integers(0, classes, n)
    return (centres[labels] + rng.normal(scale=1.5, size=(n, dim))).astype(np.float32), labels


def ours(embeddings, labels) -> dict:
    started = time.perf_counter()
    values = retrieval_metrics(embeddings, labels, ks=(1,))
    return {"seconds": time.perf_counter() - started, **{name: values[name] for name in METRICS}}


def floor(embeddings: np.ndarray, num_classes: int, block: int = 4096) -> dict:
    """Seconds of the upper-triangle product (every pair scored once) and of PML's k-means on `embeddings`."""
    import faiss
    import tensorflow as tf

    x = tf.constant(embeddings)
    started = time.perf_counter()
    for start in range(0, len(embeddings), block):
        tf.matmul(x[start:start + block], x[start:], transpose_b=True).numpy()
    product = time.perf_counter() - started
    started = time.perf_counter()
    clustering = faiss.Clustering(embeddings.shape[1], num_classes)  # pytorch_metric_learning's run_kmeans
    clustering.niter, clustering.max_points_per_centroid = 20, 10_000_000
    index = faiss.IndexFlatL2(embeddings.shape[1])
    clustering.train(embeddings, index)
    index.search(embeddings, 1)
    return {"product": product, "kmeans": time.perf_counter() - started}


def values(run: dict) -> str:
    return " ".join(f"{run[name]:.4f}" for name in METRICS)


def pml(python: str, embeddings_file: str, labels_file: str) -> dict:
    done = subprocess.run([python, "-c", PML_CHILD, embeddings_file, labels_file], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def pml_python(requested: str | None) -> str | None:
    """The interpreter that has pytorch-metric-learning and faiss: the one asked for, .venv-pml's, or this one."""
    candidates = [requested] if requested else [str(ROOT / ".venv-pml" / "bin" / "python"), sys.executable]
    for python in candidates:
        if Path(python).exists() and subprocess.run(
                [python, "-c", "import faiss, pytorch_metric_learning"], capture_output=True).returncode == 0:
            return python
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, nargs="+", default=[1_000, 100])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pml-python", help="interpreter with torch, pytorch-metric-learning and faiss-cpu")
    parser.add_argument("--large", action="store_true", help="also N = 200,000 in 10 classes, every item a query")
    parser.add_argument("--floor", action="store_true",
                        help="also time the least any exact evaluation costs: each pair scored once, PML's k-means")
    args = parser.parse_args()
    python = pml_python(args.pml_python)
    print(f"N = {args.n:,}, d = {args.dim}, {os.cpu_count()} CPU cores; medians of {args.repeats} alternating "
          f"repeats; PML: {python or 'not found (make .venv-pml; pip install faiss-cpu there): column left out'}\n")
    print(f"{'classes':>8}{'mean R':>8}{'reprlearn s':>13}{'PML s':>8}{'ratio':>8}  values (P@1, R-prec, MAP@R, NMI)")
    with tempfile.TemporaryDirectory() as scratch:
        for num_classes in args.classes:
            embeddings, labels = clustered(args.n, args.dim, num_classes, 2)
            files = [os.path.join(scratch, "x.npy"), os.path.join(scratch, "y.npy")]
            np.save(files[0], embeddings)
            np.save(files[1], labels)
            runs = {"reprlearn": [], "PML": [], "floor": []}
            for _ in range(args.repeats):
                runs["reprlearn"].append(ours(embeddings, labels))
                if python:
                    runs["PML"].append(pml(python, *files))
                if args.floor:
                    runs["floor"].append(floor(embeddings, num_classes))
            seconds = {side: float(np.median([r["seconds"] for r in runs[side]])) if runs[side] else None
                       for side in ("reprlearn", "PML")}
            ratio = f"{seconds['reprlearn'] / seconds['PML']:.2f}×" if seconds["PML"] else "–"
            pml_seconds = f"{seconds['PML']:.1f}" if seconds["PML"] else "–"
            print(f"{num_classes:>8}{args.n / num_classes - 1:>8.0f}{seconds['reprlearn']:>13.1f}{pml_seconds:>8}"
                  f"{ratio:>8}  reprlearn {values(runs['reprlearn'][0])}")
            if python:
                print(f"{'':>45}PML       {values(runs['PML'][0])}")
            if runs["floor"]:
                product, clustering = (float(np.median([r[part] for r in runs["floor"]])) for part in ("product",
                                                                                                      "kmeans"))
                versus = f", {(product + clustering) / seconds['PML']:.2f}× PML" if seconds["PML"] else ""
                print(f"{'':>8}floor: each pair scored once {product:.1f} s + PML's k-means {clustering:.1f} s = "
                      f"{product + clustering:.1f} s{versus}")
    if args.large:
        embeddings, labels = clustered(200_000, args.dim, 10, 3)
        started = time.perf_counter()
        large = retrieval_metrics(embeddings, labels, ks=(1,), compute_nmi=False)
        minutes = (time.perf_counter() - started) / 60
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"\n200,000 × {args.dim} in 10 classes (R ≈ 20,000), every item a query: ranking {minutes:.1f} min "
              f"(target ≤ 5), MAP@R {large['map_at_r']:.4f}; peak resident memory of this process {peak:.1f} GiB")


if __name__ == "__main__":
    main()
