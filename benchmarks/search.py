"""Gallery search: reprlearn's exact kernel against faiss, in one process, over sizes.

Run: .venv/bin/python benchmarks/search.py [--repeats 3] [--quick]

1. Exact search, a sweep of (gallery items, dim, k): `Gallery(backend="exact")` (the kernel retrieval
   metrics and SavedModels use) against `Gallery(backend="faiss-flat")` (faiss `IndexFlatL2`) on the
   same float32 Gaussian clusters, 10,000 queries (1,000 at 10^6 items), each timed after a warm-up;
   the two alternate for `repeats` rounds and the table prints medians and their ratio (this machine's
   speed is bimodal). Every row checks that both return the same neighbours.
   Target (issue 26): ≤ 1.0× faiss flat at 10^4 queries × 10^5 items × 128, top-10.
2. faiss HNSW (M = 32) at 10^5 × 128, top-10: build and search time, recall@10 against exact.
3. A 1,000,000 × 128 exact gallery answering 1,000 queries, with the process's peak resident
   memory (the gallery is 0.5 GB of float32; the kernel holds one chunk of scores at a time).
Retrieval metrics (P@1, MAP@R, NMI) against pytorch-metric-learning: benchmarks/retrieval_metrics.py.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import reprlearn  # noqa: E402, F401  (quiet TensorFlow start)
from reprlearn.index import Gallery  # noqa: E402


def clustered(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around `classes` centres (the same centres for every seed), `seed` drawing the points."""
    centres = np.random.default_rng(0).normal(size=(classes, dim)).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    labels = rng.integers(0, classes, n)
    return (centres[labels] + rng.normal(scale=1.5, size=(n, dim))).astype(np.float32), labels


def timed(call):
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


# (gallery items, dim, k, queries)
SWEEP = [(10_000, 128, 10, 10_000), (100_000, 64, 10, 10_000), (100_000, 128, 1, 10_000),
         (100_000, 128, 10, 10_000), (100_000, 128, 100, 10_000), (100_000, 512, 10, 10_000),
         (1_000_000, 128, 10, 1_000)]
QUICK = [(100_000, 128, 10, 10_000)]


def sweep_row(items_n: int, dim: int, k: int, queries_n: int, repeats: int) -> tuple[float, float, float]:
    """Median seconds of the exact kernel and of faiss flat, alternating, and the share of equal neighbours."""
    items, labels = clustered(items_n, dim, 1000, 0)
    queries, _ = clustered(queries_n, dim, 1000, 1)
    galleries = {}
    for backend in ("exact", "faiss-flat"):
        galleries[backend] = Gallery("L2", backend)
        galleries[backend].add(items, labels)
        galleries[backend].search(queries[:100], k)   # warm-up (graph tracing, faiss threads)
    times, found = {"exact": [], "faiss-flat": []}, {}
    for _ in range(repeats):
        for backend, gallery in galleries.items():
            (_, found[backend]), seconds = timed(lambda: gallery.search(queries, k))
            times[backend].append(seconds)
    same = float(np.mean(found["exact"] == found["faiss-flat"]))
    return float(np.median(times["exact"])), float(np.median(times["faiss-flat"])), same


def hnsw_row(k: int) -> tuple[float, float, float]:
    items, labels = clustered(100_000, 128, 1000, 0)
    queries, _ = clustered(10_000, 128, 1000, 1)
    exact = Gallery("L2")
    exact.add(items, labels)
    _, want = exact.search(queries, k)
    gallery = Gallery("L2", "faiss-hnsw")
    gallery.add(items, labels)
    _, build = timed(lambda: gallery.search(queries[:100], k))
    (_, got), seconds = timed(lambda: gallery.search(queries, k))
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, want)]))
    return build, seconds, recall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="only the target row (10^5 × 128, top-10)")
    args = parser.parse_args()

    print(f"Exact search, L2, float32: medians of {args.repeats} alternating repeats, {os.cpu_count()} CPU cores\n")
    print(f"{'items':>10}{'dim':>5}{'k':>5}{'queries':>9}{'reprlearn s':>13}{'faiss flat s':>14}{'ratio':>8}"
          f"{'same ids':>10}")
    for items_n, dim, k, queries_n in QUICK if args.quick else SWEEP:
        ours, faiss_flat, same = sweep_row(items_n, dim, k, queries_n, args.repeats)
        print(f"{items_n:>10,}{dim:>5}{k:>5}{queries_n:>9,}{ours:>13.2f}{faiss_flat:>14.2f}{ours / faiss_flat:>7.2f}×"
              f"{same:>10.4f}", flush=True)

    build, seconds, recall = hnsw_row(10)
    print(f"\nfaiss HNSW (M = 32), 10^5 × 128, 10,000 queries, top-10: build + warm-up {build:.1f} s, "
          f"search {seconds:.2f} s, recall@10 vs exact {recall:.3f}")

    items, labels = clustered(1_000_000, 128, 1000, 3)
    gallery = Gallery("L2")
    gallery.add(items, labels)
    del items
    (_, _), seconds = timed(lambda: gallery.search(clustered(1000, 128, 1000, 4)[0], 10))
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\n1,000,000 × 128 exact gallery, 1,000 queries, top-10: {seconds:.1f} s; "
          f"peak resident memory of the whole run {peak_gib:.1f} GiB")


if __name__ == "__main__":
    main()
