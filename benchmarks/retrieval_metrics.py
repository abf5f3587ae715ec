"""Time of exact, chunked retrieval metrics at N = 100,000, d = 128.

Run: .venv/bin/python benchmarks/retrieval_metrics.py [--n 100000] [--dim 128]

Target (issue 2): 100,000 × 128-d embeddings in under 60 s on the 2-core machine,
never one N×N matrix. The time depends on R (items per class): the top max(R) neighbours
of every query are ranked, so the table covers several class counts.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from reprlearn.metrics import retrieval_metrics  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, nargs="+", default=[1_000, 100, 10])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"N = {args.n}, d = {args.dim}, {os.cpu_count()} CPU cores")
    print(f"{'classes':>8} {'mean R':>8} {'ranking s':>10} {'NMI s':>8} {'total s':>8} {'MAP@R':>7}  under 60 s")
    for num_classes in args.classes:
        labels = rng.integers(0, num_classes, args.n)
        centres = rng.normal(size=(num_classes, args.dim)).astype(np.float32)
        embeddings = centres[labels] + rng.normal(scale=1.5, size=(args.n, args.dim)).astype(np.float32)
        started = time.perf_counter()
        ranking = retrieval_metrics(embeddings, labels, compute_nmi=False)
        ranked = time.perf_counter() - started
        from reprlearn.metrics.retrieval import normalized_mutual_information

        started = time.perf_counter()
        normalized_mutual_information(embeddings, labels)
        clustered = time.perf_counter() - started
        total = ranked + clustered
        print(f"{num_classes:>8} {args.n / num_classes - 1:>8.0f} {ranked:>10.1f} {clustered:>8.1f} {total:>8.1f} "
              f"{ranking['map_at_r']:>7.3f}  {'yes' if total < 60 else 'NO'}")


if __name__ == "__main__":
    main()
