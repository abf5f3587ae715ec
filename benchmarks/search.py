"""Gallery search and retrieval metrics at scale: reprlearn's exact kernel against faiss, in one process.

Run: .venv/bin/python benchmarks/search.py [--gallery 100000] [--queries 10000] [--dim 128] [--k 10]
     [--metrics-items 100000] [--classes 1000]

1. Search: `queries` random queries against a `gallery` × `dim` gallery (float32, Gaussian
   clusters), top-k, timed once after a warm-up on 1% of the queries:
     reprlearn exact          Gallery(backend="exact"), the kernel retrieval_metrics uses
     faiss IndexFlatL2        Gallery(backend="faiss-flat"), faiss' exact search
     faiss HNSW (M = 32)      Gallery(backend="faiss-hnsw"): build and search time, recall@k vs exact
   Target (issue 11): exact within 3× of faiss flat.
2. `retrieval_metrics` on `metrics-items` × `dim` embeddings in `classes` classes (R ≈ items / classes),
   ranking and NMI (k-means) timed apart. Target (issue 11): under 60 s in all.
3. A 1,000,000 × `dim` exact gallery answering 1,000 queries, with the process's peak resident
   memory (the gallery is 0.5 GB of float32; the kernel holds one chunk of scores at a time).
   Target (issue 11): no N × N anything, far under 24 GB.
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
from reprlearn.metrics.retrieval import normalized_mutual_information, retrieval_metrics  # noqa: E402


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


def search_rows(args) -> list[tuple[str, float, float | None, float | None]]:
    items, labels = clustered(args.gallery, args.dim, args.classes, 0)
    queries, _ = clustered(args.queries, args.dim, args.classes, 1)
    rows, exact_indices = [], None
    for name, backend in (("reprlearn exact", "exact"), ("faiss IndexFlatL2", "faiss-flat"),
                          ("faiss HNSW (M = 32)", "faiss-hnsw")):
        gallery = Gallery("L2", backend)
        gallery.add(items, labels)
        (_, _), build = timed(lambda: gallery.search(queries[:max(1, len(queries) // 100)], args.k))  # warm-up
        (_, indices), seconds = timed(lambda: gallery.search(queries, args.k))
        if exact_indices is None:
            exact_indices = indices
        recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(indices, exact_indices)]))
        rows.append((name, seconds, build if backend == "faiss-hnsw" else None, recall))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--metrics-items", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1000)
    args = parser.parse_args()

    print(f"Search: {args.queries:,} queries, gallery {args.gallery:,} × {args.dim}, top-{args.k}, L2\n")
    rows = search_rows(args)
    flat = rows[1][1]
    print(f"{'search':<22}{'seconds':>9}{'vs faiss flat':>15}{'build+warm-up s':>17}{'recall@k':>10}")
    for name, seconds, build, recall in rows:
        print(f"{name:<22}{seconds:>9.2f}{seconds / flat:>14.2f}×{'' if build is None else f'{build:.2f}':>17}"
              f"{recall:>10.3f}")

    embeddings, labels = clustered(args.metrics_items, args.dim, args.classes, 2)
    print(f"\nretrieval_metrics: {args.metrics_items:,} × {args.dim}, {args.classes} classes "
          f"(R ≈ {args.metrics_items // args.classes})")
    _, ranking = timed(lambda: retrieval_metrics(embeddings, labels, compute_nmi=False))
    _, nmi = timed(lambda: normalized_mutual_information(embeddings, labels))
    print(f"ranking (P@1, R-precision, MAP@R, recall@k) {ranking:.1f} s; NMI (k-means) {nmi:.1f} s; "
          f"total {ranking + nmi:.1f} s")

    embeddings = None  # free the 100k set before the 1M gallery
    items, labels = clustered(1_000_000, args.dim, args.classes, 3)
    gallery = Gallery("L2")
    gallery.add(items, labels)
    del items
    (_, _), seconds = timed(lambda: gallery.search(clustered(1000, args.dim, args.classes, 4)[0], args.k))
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\n1,000,000 × {args.dim} gallery, 1,000 queries, top-{args.k}: {seconds:.1f} s; "
          f"peak resident memory of the whole run {peak_gib:.1f} GiB")


if __name__ == "__main__":
    main()
