"""Forward+backward time and peak memory of each in-batch loss against the distance matrix alone.

Run:  .venv/bin/python benchmarks/losses.py [--sizes 64 256 1024 4096 8192] [--dim 128]

Times: for each N, every loss's `tf.function` is warmed up, then all are called round-robin
in one process until each has run ≥ 5 times and ≥ 2 s; the median is reported, so machine
load falls on all of them alike. Memory: each (loss, N) runs once in a fresh process, and
its peak is VmHWM minus the resident size after tracing, just before the call. Targets (issue 3, 2-core CPU,
N = 1024): semi-hard ≤ 5×, lifted ≤ 2×, batch-hard ≤ 2× the distance-only time; every
loss under 4 GB at N = 8192.
"""

from __future__ import annotations

import argparse
import json
import os
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


def _peak_resident_bytes() -> int:
    """This process's peak resident size (VmHWM: unlike ru_maxrss it does not inherit the parent's peak)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _step(name: str):
    import tensorflow as tf

    fn = _loss_fn(name)

    @tf.function
    def step(y, e):
        with tf.GradientTape() as tape:
            tape.watch(e)
            value = fn(y, e)
        return value, tape.gradient(value, e)

    return step


def _batch(n: int, dim: int):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    embeddings = tf.constant(rng.normal(size=(n, dim)).astype(np.float32))
    labels = tf.constant(rng.integers(0, max(n // 8, 2), n))  # P×K-like: about 8 per class
    return labels, embeddings


def peak_memory(name: str, n: int, dim: int) -> int:
    """Peak resident bytes one forward+backward call adds, in this (fresh) process."""
    labels, embeddings = _batch(n, dim)
    step = _step(name)
    step.get_concrete_function(labels, embeddings)  # trace first: graph building is not the loss's memory
    baseline = _resident_bytes()
    step(labels, embeddings)[1].numpy()
    return max(_peak_resident_bytes() - baseline, 0)


def times(names: list[str], n: int, dim: int, min_seconds: float = 2.0) -> dict[str, float]:
    """Median seconds per call of each loss, measured round-robin in one process so load hits all alike."""
    labels, embeddings = _batch(n, dim)
    steps = {name: _step(name) for name in names}
    for step in steps.values():
        step(labels, embeddings)[1].numpy()  # trace and warm up
    samples = {name: [] for name in names}
    while min(sum(v) for v in samples.values()) < min_seconds or min(len(v) for v in samples.values()) < 5:
        for name, step in steps.items():
            started = time.perf_counter()
            step(labels, embeddings)[1].numpy()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024, 4096, 8192])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--losses", nargs="+", default=LOSSES, choices=LOSSES, metavar="LOSS",
                        help="losses to measure (the first row of each N is the ratio's base)")
    parser.add_argument("--child", nargs=2, metavar=("LOSS", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"peak_bytes": peak_memory(args.child[0], int(args.child[1]), args.dim)}))
        return

    import tensorflow as tf
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, d = {args.dim}, float32, forward+backward")
    header = f"{'N':>6} {'loss':<14} {'ms/call':>10} {'× distance':>11} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        seconds = times(args.losses, n, args.dim)
        base = seconds[args.losses[0]]
        for name in args.losses:
            out = subprocess.run([sys.executable, __file__, "--child", name, str(n), "--dim", str(args.dim)],
                                 capture_output=True, text=True, check=True)
            peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
            print(f"{n:>6} {name:<14} {seconds[name] * 1e3:>10.2f} {seconds[name] / base:>10.2f}× "
                  f"{peak / 2**20:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
