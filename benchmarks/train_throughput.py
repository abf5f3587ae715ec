"""Training throughput of the P×K tf.data pipeline against a Python-generator pipeline.

Run: .venv/bin/python benchmarks/train_throughput.py [--steps 200]

Model: conv32-pool-conv64-pool-fc128-emb64 (reprlearn.models.conv_tower defaults), batch
128 = 8 classes × 16 examples, in-batch contrastive loss, Fashion-MNIST train images.
Target (issue 2): >= 1,600 images/s on the 2-core CPU machine.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from reprlearn.data import load_dataset  # noqa: E402
from reprlearn.data.pipelines import pk_batches  # noqa: E402
from reprlearn.losses import InBatchContrastiveLoss  # noqa: E402
from reprlearn.models import conv_tower  # noqa: E402

P, K = 8, 16


def generator_batches(images, labels, seed=0):
    """The naive baseline: P×K batches drawn in Python, fed through from_generator."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]

    def draw():
        while True:
            classes = rng.choice(len(by_class), P, replace=False)
            index = np.concatenate([rng.choice(by_class[c], K, replace=False) for c in classes])
            yield images[index].astype(np.float32), labels[index].astype(np.int32)

    spec = (tf.TensorSpec((P * K, *images.shape[1:]), tf.float32), tf.TensorSpec((P * K,), tf.int32))
    return tf.data.Dataset.from_generator(draw, output_signature=spec)


def images_per_second(dataset, steps: int) -> float:
    keras.utils.set_random_seed(0)
    tower = conv_tower((28, 28, 1))
    tower.compile(keras.optimizers.Adam(1e-3), InBatchContrastiveLoss(margin=0.5), jit_compile=False)
    tower.fit(dataset, steps_per_epoch=20, epochs=1, verbose=0)  # trace and warm up
    started = time.perf_counter()
    tower.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * P * K / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    train = load_dataset("fashion_mnist")["train"]
    rows = [("reprlearn pk_batches (tf.data)", images_per_second(
                pk_batches(train.images, train.labels, P, K, seed=0), args.steps)),
            ("Python generator + from_generator", images_per_second(
                generator_batches(train.images, train.labels).prefetch(2), args.steps))]
    print(f"\nconv32-pool-conv64-pool-fc128-emb64, batch {P * K} = {P}x{K}, {args.steps} steps, "
          f"{os.cpu_count()} CPU cores, TF {tf.__version__}")
    print(f"{'pipeline':<36} {'images/s':>10} {'vs generator':>13}")
    for name, rate in rows:
        print(f"{name:<36} {rate:>10.0f} {rate / rows[1][1]:>12.2f}x")
    print(f"target >= 1600 images/s: {'met' if rows[0][1] >= 1600 else 'NOT met'}")


if __name__ == "__main__":
    main()
