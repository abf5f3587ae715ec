"""One training step of each in-batch loss on one device and under MirroredStrategy on two logical CPUs.

Run by tests/test_distributed.py in a fresh interpreter (logical devices must be configured before
TensorFlow starts). Prints one JSON object: for each loss, the step (new weights − initial weights,
flattened; SGD, so −learning rate × gradient) on one device and on two replicas with
`cross_replica` True and False, and the logged loss and training metrics of each.

    python tests/replica_steps.py RUNS_DIR

It also trains one small run with `reprlearn.training.run_training` under `train.strategy`
one_device and mirrored into RUNS_DIR, and reports how far their final weights differ.
"""

from __future__ import annotations

import json
import os
import sys

import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import reprlearn  # noqa: E402
from reprlearn.layers import CosineClassifier  # noqa: E402
from reprlearn.losses import (  # noqa: E402
    CircleLoss,
    InBatchContrastiveLoss,
    LiftedStructLoss,
    MultiSimilarityLoss,
    NTXentLoss,
    ProxyAnchorLoss,
    TripletLoss,
)
from reprlearn.metrics import ActiveFraction, MeanNegativeDistance, MeanPositiveDistance  # noqa: E402
from reprlearn.training.strategies import make_strategy  # noqa: E402

LOSSES = {
    "contrastive": lambda cross: InBatchContrastiveLoss(margin=0.5, cross_replica=cross),
    "triplet_semihard": lambda cross: TripletLoss("semi-hard", margin=0.5, cross_replica=cross),
    "triplet_hard": lambda cross: TripletLoss("batch-hard", margin=0.5, cross_replica=cross),
    "triplet_batch_all": lambda cross: TripletLoss("batch-all", margin=0.5, active_only=True, cross_replica=cross),
    "lifted_struct": lambda cross: LiftedStructLoss(margin=1.0, cross_replica=cross),
    "addons_semihard": lambda cross: reprlearn.losses.TripletSemiHardLoss(margin=0.5, cross_replica=cross),
    "multi_similarity": lambda cross: MultiSimilarityLoss(pair_miner="multi_similarity", cross_replica=cross),
    "circle": lambda cross: CircleLoss(gamma=16.0, cross_replica=cross),  # γ 80 turns summation order into 1e-6
    "ntxent": lambda cross: NTXentLoss(temperature=0.5, cross_replica=cross),
    # Trained through 8 class weights (the proxies): its loss is over the batch's classes, not its items.
    "proxy_anchor": lambda cross: ProxyAnchorLoss(cross_replica=cross),
}

# A P×K batch: 8 classes × 4 examples, classes contiguous, so each replica holds 4 whole classes.
rng = np.random.default_rng(0)
LABELS = np.repeat(np.arange(8), 4).astype(np.int32)
INPUTS = (rng.normal(size=(32, 12)) + LABELS[:, None] * 0.15).astype(np.float32)


def tower() -> keras.Model:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(16, activation="tanh")(inputs)
    outputs = keras.layers.UnitNormalization()(keras.layers.Dense(8)(hidden))
    return keras.Model(inputs, outputs)


def one_step(make_loss, strategy=None) -> tuple[list[np.ndarray], dict]:
    scope = strategy.scope() if strategy else keras.utils.custom_object_scope({})
    with scope:
        model = tower()
        loss = make_loss()
        if isinstance(loss, ProxyAnchorLoss):
            model = keras.Sequential([model, CosineClassifier(8)])
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
        else:
            # The metrics at the loss's distance read its memo (the global batch or the replica's slice, as it
            # mined); at another distance they would compute for themselves on the global batch.
            model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss, metrics=[
                ActiveFraction(loss), MeanPositiveDistance(loss.distance, loss=loss),
                MeanNegativeDistance(loss.distance, loss=loss)])
    history = model.fit(INPUTS, LABELS, batch_size=32, epochs=1, shuffle=False, verbose=0)
    return model.get_weights(), {name: float(values[-1]) for name, values in history.history.items()}


def flat_step(weights, initial) -> list[float]:
    return np.concatenate([(w - w0).ravel() for w, w0 in zip(weights, initial)]).tolist()


def whole_runs(root: str) -> dict:
    """`run_training` with `train.strategy` one_device and mirrored (two logical CPUs) on the same config."""
    from reprlearn.config import config_from_dict
    from reprlearn.training import run_training

    reports, weights = {}, {}
    for strategy in ("one_device", "mirrored"):
        cfg = config_from_dict({
            "data": {"name": "digits"}, "model": {"tower": "mlp", "hidden": [32], "embedding_dim": 16},
            "loss": {"name": "triplet_semihard", "margin": 0.2},
            "train": {"epochs": 2, "steps_per_epoch": 5, "classes_per_batch": 4, "examples_per_class": 8,
                      "strategy": strategy},
            "eval": {"verification_pairs": 300, "projection": "pca", "projection_points": 100,
                     "projector_points": 50}})
        reports[strategy] = run_training(cfg, f"{root}/{strategy}", verbose=0)
        weights[strategy] = keras.saving.load_model(f"{root}/{strategy}/model.keras").get_weights()
    cfg.train.jit_compile = True  # XLA cannot compile a step over two logical CPU devices: refused up front
    try:
        run_training(cfg, f"{root}/jit", verbose=0)
        jit_refusal = None
    except ValueError as err:
        jit_refusal = str(err)
    return {"jit_refusal": jit_refusal, "jit_left_a_folder": os.path.exists(f"{root}/jit"),
            "max_weight_difference": max(float(np.max(np.abs(a - b)))
                                         for a, b in zip(weights["one_device"], weights["mirrored"])),
            "map_at_r": {name: report["metrics"]["test"]["map_at_r"] for name, report in reports.items()},
            "loss": {name: report["train"]["history"][-1]["loss"] for name, report in reports.items()}}


def custom_loop_steps() -> dict:
    """Three steps of the multi-worker custom loop on two local replicas against `fit` on one device."""
    from reprlearn.data.pipelines import pk_batches
    from reprlearn.training.loop import fit_custom_loop

    dataset = pk_batches(INPUTS[..., None, None], LABELS, classes_per_batch=4, examples_per_class=4, seed=3)
    weights = {}
    for name, strategy in (("one_device", None), ("custom_loop", make_strategy("mirrored"))):
        scope = strategy.scope() if strategy else keras.utils.custom_object_scope({})
        with scope:
            inputs = keras.Input((12, 1, 1))
            model = keras.Model(inputs, tower()(keras.layers.Reshape((12,))(inputs)))
            loss = TripletLoss("semi-hard", margin=0.5)
            model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss, metrics=[ActiveFraction(loss)])
        if strategy is None:
            model.fit(dataset, epochs=1, steps_per_epoch=3, verbose=0, shuffle=False)
        else:
            fit_custom_loop(model, dataset, strategy, 1, 0, 3, [])
        weights[name] = model.get_weights()
    return {"max_weight_difference": max(float(np.max(np.abs(a - b)))
                                         for a, b in zip(weights["one_device"], weights["custom_loop"]))}


def main() -> None:
    # The strategy `train.strategy: mirrored` uses (one per process: see make_strategy).
    mirrored = make_strategy("mirrored")
    initial = tower().get_weights()
    results = {"replicas": mirrored.num_replicas_in_sync}
    for name, make in LOSSES.items():
        single, single_logs = one_step(lambda: make(True))
        gathered, gathered_logs = one_step(lambda: make(True), mirrored)
        local, local_logs = one_step(lambda: make(False), mirrored)
        results[name] = {
            "steps": {"single": flat_step(single, initial), "cross_replica": flat_step(gathered, initial),
                      "local": flat_step(local, initial)},
            "logs": {"single": single_logs, "cross_replica": gathered_logs, "local": local_logs},
        }
    results["whole_runs"] = whole_runs(sys.argv[1])
    results["custom_loop"] = custom_loop_steps()
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
