"""Forward+backward time and peak memory of each in-batch loss against the distance matrix alone,
for each label layout, and the cost of the training metrics in a training step.

Run:  .venv/bin/python benchmarks/losses.py [--sizes 256 1024 4096 8192] [--dim 128]
          [--layouts pk random 4-classes] [--losses ...] [--no-train-step]

Label layouts: `pk` P×K batches of 16 per class (64 × 16 at N = 1,024), `random` uniform labels
over N/8 classes (about 8 per class), `4-classes` uniform labels over 4 classes.
Times: for each N and layout, every loss's `tf.function` is warmed up, then all are called
round-robin in one process until each has run ≥ 5 times and ≥ 2 s; the median is reported, so
machine load falls on all of them alike. Memory: each (loss, N, layout) runs once in a fresh
process, and its peak is VmHWM minus the resident size after tracing, just before the call.
The training step: a conv tower on N = 1,024 28×28 images (P×K 64 × 16), `train_on_batch`
with and without the three training metrics, round-robin.
The "distance + input checks" row is the distance matrix with what every loss now does at its
door (shape checks, free when traced, and the NaN guard on the value): its ratio is their cost.
The pair losses of pytorch-metric-learning (Multi-Similarity with its miner, Circle, NT-Xent; cosine
similarity) are timed against the same L2 distance matrix ("distance only"; "angular distance only" is
the cosine matrix they start from). Proxy-Anchor and ArcFace are timed, with the gradient to the
embeddings and to the C = 1,000 class weights, against that `[N, d] × [d, C]` matmul alone
("class matmul").
Targets (2-core CPU, N = 1,024): semi-hard ≤ 3× for pk and random, ≤ 6× for any layout;
batch-hard and lifted ≤ 1.8×; contrastive ≤ 1.5×; Multi-Similarity + miner, Circle, NT-Xent ≤ 2×;
Proxy-Anchor and ArcFace ≤ 2× the class matmul; every loss under 4 GB at N = 8,192; a training step
with the metrics ≤ 1.1× the step without.
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

LOSSES = ["distance only", "distance + input checks", "contrastive", "semi-hard", "batch-hard", "batch-all",
          "lifted", "angular distance only", "multi-similarity+miner", "circle", "ntxent", "class matmul",
          "proxy-anchor", "arcface"]
# Losses on [N, C] class cosines: timed with the gradient to the class weights too, against the matmul alone.
CLASS_LOSSES = ("class matmul", "proxy-anchor", "arcface")
CLASSES = 1000


def _loss_fn(name: str):
    import tensorflow as tf

    from reprlearn.ops.distances import pairwise_distance
    from reprlearn.ops.labels import check_batch, nan_unless_finite
    from reprlearn.losses import (arcface_loss, circle_loss, in_batch_contrastive_loss, lifted_struct_loss,
                                  multi_similarity_loss, ntxent_loss, proxy_anchor_loss, triplet_hard_loss,
                                  triplet_loss, triplet_semihard_loss)

    def cosines(e, w):
        return tf.matmul(tf.math.l2_normalize(e, axis=1), tf.math.l2_normalize(w, axis=0))

    return {
        "distance only": lambda y, e: tf.reduce_sum(pairwise_distance(e, "L2")),
        # What every loss adds at its door: the static shape checks and the non-finite guard on its value.
        "distance + input checks": lambda y, e: nan_unless_finite(
            tf.reduce_sum(pairwise_distance(check_batch(y, e)[1], "L2")), e),
        "contrastive": lambda y, e: in_batch_contrastive_loss(y, e, 0.5),
        "semi-hard": lambda y, e: triplet_semihard_loss(y, e, 0.2),
        "batch-hard": lambda y, e: triplet_hard_loss(y, e, 0.2),
        "batch-all": lambda y, e: triplet_loss(y, e, "batch-all", 0.2),
        "lifted": lambda y, e: lifted_struct_loss(y, e, 1.0),
        "angular distance only": lambda y, e: tf.reduce_sum(pairwise_distance(e, "angular")),
        "multi-similarity+miner": lambda y, e: multi_similarity_loss(y, e, pair_miner="multi_similarity"),
        "circle": lambda y, e: circle_loss(y, e),
        "ntxent": lambda y, e: ntxent_loss(y, e),
        "class matmul": lambda y, e, w: tf.reduce_sum(tf.matmul(e, w)),
        "proxy-anchor": lambda y, e, w: proxy_anchor_loss(y, e, tf.transpose(w)),
        "arcface": lambda y, e, w: arcface_loss(y, cosines(e, w)),
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
    if name in CLASS_LOSSES:
        weights = tf.random.stateless_normal([128 if _DIM is None else _DIM, CLASSES], seed=[0, 1])

        @tf.function
        def class_step(y, e):
            with tf.GradientTape() as tape:
                tape.watch([e, weights])
                value = fn(y % CLASSES, e, weights)
            gradients = tape.gradient(value, [e, weights])
            return value, gradients[0] + tf.reduce_sum(gradients[1])

        return class_step

    @tf.function
    def step(y, e):
        with tf.GradientTape() as tape:
            tape.watch(e)
            value = fn(y, e)
        return value, tape.gradient(value, e)

    return step


_DIM = None  # the embedding size of the class weights (set from --dim)


LAYOUTS = ("pk", "random", "4-classes")


def _batch(n: int, dim: int, layout: str):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    embeddings = tf.constant(rng.normal(size=(n, dim)).astype(np.float32))
    if layout == "pk":
        labels = np.repeat(np.arange(max(n // 16, 1)), 16)[:n]
    elif layout == "random":
        labels = rng.integers(0, max(n // 8, 2), n)
    else:
        labels = rng.integers(0, 4, n)
    return tf.constant(labels), embeddings


def peak_memory(name: str, n: int, dim: int, layout: str) -> int:
    """Peak resident bytes one forward+backward call adds, in this (fresh) process."""
    labels, embeddings = _batch(n, dim, layout)
    step = _step(name)
    step.get_concrete_function(labels, embeddings)  # trace first: graph building is not the loss's memory
    baseline = _resident_bytes()
    step(labels, embeddings)[1].numpy()
    return max(_peak_resident_bytes() - baseline, 0)


def _round_robin(calls: dict, min_seconds: float = 2.0) -> dict[str, float]:
    """Median seconds per call of each zero-argument function, called round-robin so load hits all alike."""
    for call in calls.values():
        call()  # trace and warm up
    samples = {name: [] for name in calls}
    while min(sum(v) for v in samples.values()) < min_seconds or min(len(v) for v in samples.values()) < 5:
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(v) for name, v in samples.items()}


def times(names: list[str], n: int, dim: int, layout: str) -> dict[str, float]:
    """Median seconds per forward+backward call of each loss."""
    labels, embeddings = _batch(n, dim, layout)
    steps = {name: _step(name) for name in names}
    return _round_robin({name: (lambda step=step: step(labels, embeddings)[1].numpy()) for name, step in steps.items()})


def training_step_times() -> dict[str, float]:
    """Seconds per `train_on_batch` of a conv tower on a 64 × 16 batch, per loss, without and with the metrics."""
    import keras
    import numpy as np

    from reprlearn.config import config_from_dict
    from reprlearn.models import build_tower
    from reprlearn.training.objectives import compile_embedding_model

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1024, 28, 28, 1)).astype(np.float32)
    labels = np.repeat(np.arange(64), 16)
    calls = {}
    for loss in ("triplet_semihard", "contrastive", "lifted_struct"):
        for with_metrics in (False, True):
            cfg = config_from_dict({"loss": {"name": loss, "margin": 0.2}})
            keras.utils.set_random_seed(0)
            model = compile_embedding_model(cfg, build_tower(cfg.model, (28, 28, 1)))
            if not with_metrics:
                model.compile(optimizer=model.optimizer, loss=model.loss)
            calls[f"{loss} {'with' if with_metrics else 'without'} metrics"] = (
                lambda model=model: model.train_on_batch(images, labels))
    return _round_robin(calls, min_seconds=3.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096, 8192])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument("--losses", nargs="+", default=LOSSES, choices=LOSSES, metavar="LOSS",
                        help="losses to measure (the first row of each N is the ratio's base; class matmul that of "
                             "the class losses)")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process peak-memory runs")
    parser.add_argument("--no-train-step", action="store_true", help="skip the training-step benchmark")
    parser.add_argument("--child", nargs=3, metavar=("LOSS", "N", "LAYOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    global _DIM
    _DIM = args.dim
    if args.child:
        print(json.dumps({"peak_bytes": peak_memory(args.child[0], int(args.child[1]), args.dim, args.child[2])}))
        return

    import tensorflow as tf
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, d = {args.dim}, float32, forward+backward")
    header = f"{'N':>6} {'layout':<10} {'loss':<24} {'ms/call':>10} {'× distance':>11} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        for layout in args.layouts:
            seconds = times(args.losses, n, args.dim, layout)
            for name in args.losses:
                base = seconds["class matmul" if name in CLASS_LOSSES and "class matmul" in seconds
                               else args.losses[0]]
                peak = "-"
                if not args.no_memory:
                    out = subprocess.run([sys.executable, __file__, "--child", name, str(n), layout, "--dim",
                                          str(args.dim)], capture_output=True, text=True, check=True)
                    peak = f"{json.loads(out.stdout.strip().splitlines()[-1])['peak_bytes'] / 2**20:.0f}"
                print(f"{n:>6} {layout:<10} {name:<24} {seconds[name] * 1e3:>10.2f} {seconds[name] / base:>10.2f}× "
                      f"{peak:>9}", flush=True)
    if not args.no_train_step:
        print("\nTraining step, conv tower, N = 1,024 (64 × 16), train_on_batch")
        step_seconds = training_step_times()
        for name, value in step_seconds.items():
            without = step_seconds[name.replace("with metrics", "without metrics")]
            print(f"  {name:<40} {value * 1e3:>8.1f} ms  {value / without:.3f}×", flush=True)


if __name__ == "__main__":
    main()
