"""The verifier driver: config → pairs → pair model → binary cross-entropy fit → verification → report.

`reprlearn train` calls it for `model.kind: verifier`. The model outputs the probability p that two
images show the same class; the run scores pairs by the distance 1 − p, so the verification metrics,
the threshold and `reprlearn verify` read exactly as for an embedding run. The test pairs are drawn
as an embedding run draws them (`sample_pairs` with `data.seed` on the test split), so every design
of a comparison is scored on the same pairs.

Example:
    report = run_training(load_config("configs/verification_1b.yaml"), "runs/verification_1b")
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from reprlearn.config import Config
from reprlearn.data import ImageSet, Splits
from reprlearn.data.pipelines import pair_batches
from reprlearn.evaluation.scoring import can_pair, validation_threshold
from reprlearn.metrics import sample_pairs, verification_metrics
from reprlearn.models import build_verifier, initialise_from
from reprlearn.runs import load_run, match_probabilities, run_summary, save_and_check_reload
from reprlearn.runs.inference import pair_probabilities
from reprlearn.runs.record import BAD_IMAGE_LOG, files_report
from reprlearn.training.loop import VERIFIER_SELECTION_METRIC, train_run
from reprlearn.training.objectives import TOWER_NAME, make_optimizer


def verifier_loss() -> keras.losses.Loss:
    """Binary cross-entropy on the match probability, target 1 for a same-class pair."""
    return keras.losses.BinaryCrossentropy()


def build_compiled_verifier(cfg: Config, image_shape, initialised: dict) -> keras.Model:
    """The verifier, its tower copied from `model.init_from` (all of it fixed with `model.freeze`), compiled with
    binary cross-entropy; `initialised` receives what was copied."""
    verifier, network = build_verifier(cfg.model, image_shape, tower_name=TOWER_NAME)
    if cfg.model.init_from:
        initialised.update(run=cfg.model.init_from, frozen=cfg.model.freeze,
                           learning_rate_factor=cfg.model.init_learning_rate_factor,
                           layers=initialise_from(network, load_run(cfg.model.init_from).model))
        network.trainable = not cfg.model.freeze  # design 1a: the embedding head too; only the verifier head trains
    verifier.compile(optimizer=make_optimizer(cfg, initialised.get("layers", ())), loss=verifier_loss(),
                     metrics=[keras.metrics.BinaryAccuracy(name="pair_accuracy")],
                     jit_compile=cfg.train.jit_compile)
    return verifier


def _pair_probabilities(model: keras.Model, part: ImageSet, n_pairs: int, seed: int, both_orders: bool):
    """`(p(a, b), p(b, a) or None, match, failed files)` of the pairs `sample_pairs` draws with `seed` (as an
    embedding run draws them), each order scored once; a pair with a file that fails to decode is left out and
    its files named."""
    first, second, match = sample_pairs(part.labels, n_pairs, seed=seed)
    forward, backward, failed = pair_probabilities(model, part, first, second, both_orders)
    if not failed:
        return forward, backward, match, []
    keep = np.setdiff1d(np.arange(len(match)), failed)
    names = sorted({part.names[i] for pair in failed for i in (first[pair], second[pair])})
    return forward[keep], None if backward is None else backward[keep], match[keep], names


def evaluate_verifier(cfg: Config, model: keras.Model, splits: Splits) -> dict:
    """Verification of the pairs in the order drawn and, for the two-channel design (not symmetric by
    construction), of p averaged over (a, b) and (b, a), each at a threshold fit on validation pairs; how far
    p(a, b) and p(b, a) differ on the test pairs."""
    n_pairs, seed, test, val = cfg.eval.verification_pairs, cfg.data.seed, splits.test, splits.val
    swapped = cfg.model.verifier == "two_channel"
    scorings = {"verification": lambda forward, backward: 1.0 - forward}
    if swapped:
        scorings["verification_swapped_average"] = lambda forward, backward: 1.0 - (forward + backward) / 2
    # Both orders of the test pairs (the order gap reads them); of the validation pairs only when a score does.
    test_forward, test_backward, test_match, failed = _pair_probabilities(model, test, n_pairs, seed,
                                                                          both_orders=True)
    val_scored = (_pair_probabilities(model, val, n_pairs, seed, both_orders=swapped)
                  if can_pair(val.labels) else None)
    metrics, pairs = {}, {}
    for name, distance in scorings.items():
        threshold, calibration = (validation_threshold(distance(*val_scored[:2]), val_scored[2]) if val_scored
                                  else validation_threshold(None, None))
        distances = distance(test_forward, test_backward)
        metrics[name] = {**verification_metrics(distances, test_match, threshold), "calibration": calibration}
        pairs[name] = {"distances": distances, "match": test_match}
    order_gap = np.abs(test_forward - test_backward)
    metrics["pair_order"] = {"mean_abs_difference": float(order_gap.mean()),
                             "max_abs_difference": float(order_gap.max()),
                             "note": "|p(a, b) − p(b, a)| on the test pairs"}
    skipped = failed + (val_scored[3] if val_scored else [])
    if skipped:
        metrics["skipped_files"] = skipped
    return {"metrics": metrics, "pairs": pairs}


# Validation pairs scored after every epoch (a fixed draw): enough for a stable ROC AUC, cheap next to an epoch.
VALIDATION_PAIRS = 4000


class PairValidation(keras.callbacks.Callback):
    """Adds `val_roc_auc`, the ROC AUC of 1 − p on a fixed draw of validation pairs, to each epoch's logs (what
    `train.keep: best` selects a verifier's epoch by, and what the progress line shows)."""

    def __init__(self, val: ImageSet, n_pairs: int, seed: int):
        super().__init__()
        self.val, self.n_pairs, self.seed = val, n_pairs, seed

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            probability, _, match, _ = _pair_probabilities(self.model, self.val, self.n_pairs, self.seed, False)
            logs[VERIFIER_SELECTION_METRIC] = verification_metrics(1.0 - probability, match)["roc_auc"]


def _probe_outputs(model: keras.Model, probe: np.ndarray) -> np.ndarray:
    return match_probabilities(model, probe, probe[::-1])


def run_verifier(cfg: Config, out: Path, splits: Splits, verbose: int = 1,
                 callbacks: list[keras.callbacks.Callback] | None = None,
                 strategy: tf.distribute.Strategy | None = None) -> dict:
    """Trains, evaluates and reports a verifier run in an opened run folder (see `reprlearn.training`)."""
    from reprlearn.evaluation.report import write_verifier_report

    strategy = strategy or tf.distribute.get_strategy()
    initialised = {}

    bad_image_log = str(out / BAD_IMAGE_LOG) if splits.train.streamed else None

    def batches(model, start_step, shard=None):
        return pair_batches(splits.train, splits.train.labels, cfg.train.pair_batch_size, cfg.train.seed,
                            start_step=start_step, bad_image_log=bad_image_log, shard=shard)

    def validation(model):
        return PairValidation(splits.val, min(VALIDATION_PAIRS, cfg.eval.verification_pairs), cfg.data.seed)

    trained = train_run(out, cfg, strategy, lambda: build_compiled_verifier(cfg, splits.train.image_shape, initialised),
                        batches, validation if can_pair(splits.val.labels) else None, callbacks, verbose,
                        worker_batches=lambda model, start, worker, workers: batches(model, start, (worker, workers)))
    if trained is None:  # a worker other than the chief: the chief writes the run
        return {}
    model, kept = trained.model, trained.kept
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    model.trainable = True  # the saved verifier is an ordinary, trainable model

    verifier = save_and_check_reload(model, out / "model.keras", splits.test, _probe_outputs)
    evaluation = evaluate_verifier(cfg, verifier, splits)
    summary = run_summary(cfg, out, trained.epochs_done, trained.seconds, trained.history, cfg.train.pair_batch_size)
    report = {**summary, "kept": kept,
              "model": {"kind": "verifier", "verifier": cfg.model.verifier, "tower": cfg.model.tower,
                        "parameters": int(verifier.count_params()), "trained_parameters": trainable,
                        "reload_max_abs_diff": 0.0, **({"initialised_from": initialised} if initialised else {})},
              "metrics": evaluation["metrics"],
              **files_report(splits, out)}
    write_verifier_report(report, out, evaluation)
    return report
