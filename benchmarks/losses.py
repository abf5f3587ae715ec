"""Forward+backward time and peak memory of each in-batch loss against the distance matrix alone.

Run:  .venv/bin/python benchmarks/losses.py [--sizes 64 256 1024 4096 8192] [--dim 128]

Each (loss, N) is measured in its own process, so its peak resident memory (ru_maxrss
minus the resident size just before the first call) is its own. Times are medians of
repeated calls to one `tf.function` after a warm-up call. Targets (issue 3, 2-core CPU,
N = 1024): semi-hard ≤ 5×, lifted ≤ 2×, batch-hard ≤ 2× the distance-only time; every
loss under 4 GB at N = 8192.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LOSSES = ["distance only", "contrastive", "semi-hard", "batch-hard", "batch-all", "lifted"]


def _loss_fn(name: str):
    import tensorflow as tf

    from reprlearn.distances import pairwise_distance
    from reprlearn.losses import (in_batch_contrastive_loss, lifted_struct_loss, triplet_hard_loss, triplet_loss,
                                  triplet_semihard_loss)
    return {
        "distance only": lambda y, e: tf.reduce_sum(pairwise_distance(e, "L2")),
        "contrastive": lambda y, e: in_batch_contrastive_loss(y, e, 0.5),
        "semi-hard": lambda y, e: triplet_semihard_loss(y, e, 0.2),
        "batch-hard": lambda y, e: triplet_hard_loss(y, e, 0.2),
        "batch-all": lambda y, e: triplet_loss(y, e, "batch-all", 0.2),
        "lifted": lambda y, e: lifted_struct_loss(y, e, 1.0),
    }[name]


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(name: str, n: int, dim: int, min_seconds: float = 2.0) -> dict:
    """Times one loss at batch size n in this process; returns seconds per call and peak extra memory."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    embeddings = tf.constant(rng.normal(size=(n, dim)).astype(np.float32))
    labels = tf.constant(rng.integers(0, max(n // 8, 2), n))  # P×K-like: about 8 per class
    fn = _loss_fn(name)

    @tf.function
    def step(y, e):
        with tf.GradientTape() as tape:
            tape.watch(e)
            value = fn(y, e)
        return value, tape.gradient(value, e)

    baseline = _resident_bytes()
    step(labels, embeddings)[1].numpy()  # trace and warm up
    times = []
    while sum(times) < min_seconds or len(times) < 3:
        started = time.perf_counter()
        step(labels, embeddings)[1].numpy()
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"loss": name, "n": n, "seconds": statistics.median(times), "peak_bytes": max(peak - baseline, 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024, 4096, 8192])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--losses", nargs="+", default=LOSSES, choices=LOSSES, metavar="LOSS",
                        help="losses to measure (the first row of each N is the ratio's base)")
    parser.add_argument("--child", nargs=2, metavar=("LOSS", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.dim)))
        return

    import tensorflow as tf
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, d = {args.dim}, float32, forward+backward")
    header = f"{'N':>6} {'loss':<14} {'ms/call':>10} {'× distance':>11} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        base = None
        for name in args.losses:
            out = subprocess.run([sys.executable, __file__, "--child", name, str(n), "--dim", str(args.dim)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            base = base or row["seconds"]
            print(f"{n:>6} {name:<14} {row['seconds'] * 1e3:>10.2f} {row['seconds'] / base:>10.2f}× "
                  f"{row['peak_bytes'] / 2**20:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
