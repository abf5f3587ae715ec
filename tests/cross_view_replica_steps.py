"""One training step of each cross-view loss on one device and under MirroredStrategy on two logical CPUs.

Run by tests/test_cross_view.py in a fresh interpreter (logical devices must be configured before TensorFlow
starts). Prints one JSON object: for each loss, the step (new weights − initial weights, flattened; SGD) on one
device and on two replicas with `cross_replica` True and False, and the logged loss of each.

    python tests/cross_view_replica_steps.py
"""

from __future__ import annotations

import json
import sys

import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import reprlearn  # noqa: E402,F401
from reprlearn.losses import (  # noqa: E402
    CrossViewSoftMarginTripletLoss,
    SymmetricInfoNCELoss,
    TripletLoss,
    TwoViewLoss,
)
from reprlearn.models.two_tower import two_tower_model  # noqa: E402
from reprlearn.training.strategies import make_strategy  # noqa: E402

LOSSES = {
    "soft_margin_triplet": (lambda cross: CrossViewSoftMarginTripletLoss(alpha=10.0, cross_replica=cross), None),
    "info_nce": (lambda cross: SymmetricInfoNCELoss(temperature=0.1, cross_replica=cross), None),
    "info_nce_learnt": (lambda cross: SymmetricInfoNCELoss(temperature=1.0, cross_replica=cross), 0.1),
    "two_view_triplet": (lambda cross: TwoViewLoss(TripletLoss("batch-all", margin=0.3, cross_replica=cross)), None),
}
rng = np.random.default_rng(0)
LABELS = np.arange(16).astype(np.int32)
LABELS[1] = 0  # two pairs of one place: never each other's negatives
QUERIES = rng.normal(size=(16, 6)).astype(np.float32)
REFERENCES = (QUERIES[:, :4] * 0.5 + rng.normal(size=(16, 4))).astype(np.float32)


def towers():
    keras.utils.set_random_seed(1)
    def tower(width, name):
        inputs = keras.Input((width,))
        return keras.Model(inputs, keras.layers.UnitNormalization()(keras.layers.Dense(8)(inputs)), name=name)

    return tower(6, "query_tower"), tower(4, "reference_tower")


def one_step(make_loss, temperature, strategy=None):
    scope = strategy.scope() if strategy else keras.utils.custom_object_scope({})
    with scope:
        model = two_tower_model(*towers(), learn_temperature=temperature)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=make_loss())
    history = model.fit([QUERIES, REFERENCES], LABELS, batch_size=16, epochs=1, shuffle=False, verbose=0)
    return model.get_weights(), float(history.history["loss"][-1])


def main() -> None:
    mirrored = make_strategy("mirrored")
    initial = two_tower_model(*towers(), learn_temperature=0.1).get_weights()

    def flat(weights):
        return np.concatenate([(w - w0).ravel() for w, w0 in zip(weights, initial)]).tolist()

    results = {"replicas": mirrored.num_replicas_in_sync}
    for name, (make, temperature) in LOSSES.items():
        initial = two_tower_model(*towers(), learn_temperature=temperature).get_weights()
        single, single_loss = one_step(lambda: make(True), temperature)
        gathered, gathered_loss = one_step(lambda: make(True), temperature, mirrored)
        local, local_loss = one_step(lambda: make(False), temperature, mirrored)
        results[name] = {"single": flat(single), "cross_replica": flat(gathered), "local": flat(local),
                         "loss": {"single": single_loss, "cross_replica": gathered_loss, "local": local_loss}}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
