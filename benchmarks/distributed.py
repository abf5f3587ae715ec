"""Training under tf.distribute on one machine: throughput of each strategy, and what global-batch mining buys.

Run: .venv/bin/python benchmarks/distributed.py [--steps 60] [--map-epochs 3] [--map-steps 200] [--seeds 0 1 2]
     (--skip-map for the throughput table only)

Without GPUs, the CPU is split into two logical devices, so "mirrored" runs two replicas that
share the same cores: the throughput ratio measures the overhead of the all-gather and the
replica machinery, not a speed-up. On a machine with GPUs, the script uses them instead.

1. Throughput (images/s, global batch 128 = 8 classes × 16, conv tower, triplet semi-hard on
   Fashion-MNIST), timed after a warm-up, all rows in this one process:
     one_device fit            the single-device baseline
     mirrored fit              2 replicas, global-batch mining (cross_replica)
     mirrored custom loop      the loop multi-worker runs use, on the same 2 replicas
   Target (issue 12): mirrored within 15% of one device.
2. MAP@R: Fashion-MNIST seen-classes, 2 replicas × 64 (8 classes × 16 globally, 4 whole classes
   per replica), semi-hard triplets, the same steps and seeds, with `loss.cross_replica` true
   (mine the global batch) and false (each replica mines its 64): test MAP@R per seed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

if len(tf.config.list_physical_devices("GPU")) < 2:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from reprlearn.config import config_from_dict  # noqa: E402
from reprlearn.data import splits_for  # noqa: E402
from reprlearn.models import build_tower  # noqa: E402
from reprlearn.training.objectives import TOWER_NAME, compile_embedding_model  # noqa: E402
from reprlearn.training import run_training  # noqa: E402
from reprlearn.training.embedding import training_batches  # noqa: E402
from reprlearn.training.loop import fit_custom_loop  # noqa: E402
from reprlearn.training.strategies import make_strategy  # noqa: E402

BASE = {
    "data": {"name": "fashion_mnist", "protocol": "seen-classes"},
    "model": {"tower": "conv", "filters": [32, 64], "dense": 128, "embedding_dim": 64},
    "loss": {"name": "triplet_semihard", "margin": 0.2},
    "train": {"classes_per_batch": 8, "examples_per_class": 16, "learning_rate": 1e-3},
    "eval": {"verification_pairs": 5000, "projection": "pca", "projection_points": 500, "projector_points": 200},
}


def _config(**train):
    return config_from_dict({**BASE, "train": {**BASE["train"], **train}})


class _StepTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.started


def throughput(splits, steps: int) -> list[tuple[str, int, float]]:
    rows = []
    batch = 8 * 16
    for name, strategy_name, custom in (("one_device fit", "one_device", False), ("mirrored fit", "mirrored", False),
                                        ("mirrored custom loop", "mirrored", True)):
        cfg = _config(strategy=strategy_name, steps_per_epoch=steps)
        strategy = make_strategy(strategy_name)
        with strategy.scope():
            model = compile_embedding_model(cfg, build_tower(cfg.model, splits.train.images.shape[1:],
                                                             name=TOWER_NAME))
        dataset = training_batches(cfg, splits.train, start_step=0)
        timer = _StepTimer()
        if custom:  # epoch 0 warms up (traces), epoch 1 is timed
            fit_custom_loop(model, dataset, strategy, 2, 0, steps, [timer])
        else:
            model.fit(dataset, epochs=2, steps_per_epoch=steps, callbacks=[timer], verbose=0, shuffle=False)
        rows.append((name, strategy.num_replicas_in_sync, steps * batch / timer.seconds))
    return rows


def map_at_r(epochs: int, steps: int, seeds: list[int]) -> list[tuple[int, float, float]]:
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for seed in seeds:
            scores = []
            for cross in (True, False):
                cfg = _config(strategy="mirrored", epochs=epochs, steps_per_epoch=steps, seed=seed)
                cfg.loss.cross_replica = cross
                report = run_training(cfg, f"{root}/seed{seed}_{cross}", verbose=0)
                scores.append(report["metrics"]["test"]["map_at_r"])
            rows.append((seed, *scores))
            print(f"  seed {seed}: cross_replica=true {scores[0]:.4f}  cross_replica=false {scores[1]:.4f}",
                  flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per throughput row")
    parser.add_argument("--map-epochs", type=int, default=3)
    parser.add_argument("--map-steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-map", action="store_true")
    args = parser.parse_args()

    splits = splits_for(_config().data)
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    print(f"devices: {', '.join(d.name for d in devices)}; global batch 128 (8 classes × 16)\n")
    rows = throughput(splits, args.steps)
    baseline = rows[0][2]
    print(f"{'strategy':<24}{'replicas':>9}{'images/s':>11}{'vs one device':>15}")
    for name, replicas, rate in rows:
        print(f"{name:<24}{replicas:>9}{rate:>11.0f}{rate / baseline:>14.2f}×")

    if args.skip_map:
        return
    print(f"\nTest MAP@R, Fashion-MNIST seen-classes, 2 replicas × 64, {args.map_epochs} epochs × "
          f"{args.map_steps} steps, semi-hard triplets:")
    scores = np.array([row[1:] for row in map_at_r(args.map_epochs, args.map_steps, args.seeds)])
    print(f"{'cross_replica':<16}{'mean':>8}{'std':>8}")
    for column, label in enumerate(("true", "false")):
        print(f"{label:<16}{scores[:, column].mean():>8.4f}{scores[:, column].std():>8.4f}")
    print(f"difference (true − false): {np.mean(scores[:, 0] - scores[:, 1]):+.4f} "
          f"(every seed higher: {bool(np.all(scores[:, 0] > scores[:, 1]))})")


if __name__ == "__main__":
    main()
