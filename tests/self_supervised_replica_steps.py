"""Two steps of each self-supervised method on one device and under MirroredStrategy on two logical CPUs.

Run by tests/test_self_supervised.py in a fresh interpreter (logical devices must be configured before
TensorFlow starts). Prints one JSON object: for each method, the largest difference between the two set-ups'
weights after the steps (online tower and heads, the momentum copies, the memory), and both logged losses.

    python tests/self_supervised_replica_steps.py
"""

from __future__ import annotations

import json

import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from reprlearn.models import mlp_tower  # noqa: E402
from reprlearn.models.self_supervised import SelfSupervisedModel  # noqa: E402

SETTINGS = {"simclr": {"memory_size": 16}, "moco": {"memory_size": 16}, "moco_v3": {"predictor": (8, 8)},
            "byol": {"predictor": (8, 8)},
            "simsiam": {"predictor": (8, 8)}, "barlow_twins": {}, "vicreg": {}}


def steps(method: str, strategy) -> tuple[list[np.ndarray], float]:
    rng = np.random.default_rng(0)
    views = [rng.normal(size=(2, 8, 6, 6, 1)).astype(np.float32) * 50 + 100 for _ in range(2)]
    with strategy.scope():
        keras.utils.set_random_seed(1)
        tower = mlp_tower((6, 6, 1), hidden=(16,), embedding_dim=8, name="tower")
        model = SelfSupervisedModel(tower, method, projector=(12, 8), total_steps=10, **SETTINGS[method])
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    dataset = tf.data.Dataset.from_tensor_slices((views[0], views[1]))
    history = model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    return [np.asarray(w) for w in model.weights], float(history.history["loss"][-1])


def main() -> None:
    out = {}
    # One strategy for every method: a second MirroredStrategy in one process reuses collective instance keys.
    one_device, mirrored = tf.distribute.OneDeviceStrategy("/cpu:0"), tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"])
    for method in SETTINGS:
        one, one_loss = steps(method, one_device)
        two, two_loss = steps(method, mirrored)
        out[method] = {"max_weight_difference": max(float(np.abs(a - b).max()) for a, b in zip(one, two)),
                       "largest_weight": max(float(np.abs(a).max()) for a in one),
                       "loss_one_device": one_loss, "loss_two_replicas": two_loss, "weights": len(one)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
