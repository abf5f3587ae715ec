"""The two-tower driver: config → matched pairs → query and reference towers → cross-view loss → fit → evaluate →
report. Read it top to bottom; `run_two_tower` is the whole job.

Example:
    from reprlearn.config import load_config
    from reprlearn.training import run_training
    report = run_training(load_config("configs/crossview.yaml"), "runs/crossview")
"""

from __future__ import annotations

import copy
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from reprlearn.config import Config
from reprlearn.data.pairs import PairSplits
from reprlearn.data.pipelines import matched_pair_batches
from reprlearn.layers.channels import Luma, RepeatChannels
from reprlearn.models.two_tower import build_two_towers, towers_of
from reprlearn.runs import run_summary, save_and_check_reload
from reprlearn.runs.record import BAD_IMAGE_LOG, QUERY_FILE, REFERENCE_FILE
from reprlearn.training.loop import train_run
from reprlearn.training.two_tower_objectives import CrossViewValidation, compile_towers, compile_two_towers

SHARED_BASELINE = "shared_tower"   # the sub-folder where the shared-tower baseline trains (its own checkpoints)


def _shared_tower_model(cfg: Config, query_shape, reference_shape, streamed: bool) -> keras.Model:
    """One tower for both views: the reference images resized to the query's size and channels in front of it."""
    shared = copy.deepcopy(cfg.model)
    shared.share, shared.polar_size, shared.reference_tower = "all", None, None
    tower, _ = build_two_towers(shared, query_shape, query_shape, streamed)
    inputs = keras.Input(tuple(reference_shape), name="images")
    x = keras.layers.Resizing(*query_shape[:2], name="to_query_size")(inputs)
    if reference_shape[2] != query_shape[2]:
        x = Luma(name="luma")(x) if query_shape[2] == 1 else RepeatChannels(3, name="to_rgb")(x)
    return compile_towers(cfg, tower, keras.Model(inputs, tower(x), name="reference_tower"))


def run_two_tower(cfg: Config, out: Path, splits: PairSplits, verbose: int = 1,
                  callbacks: list[keras.callbacks.Callback] | None = None,
                  strategy: tf.distribute.Strategy | None = None) -> dict:
    """Trains, evaluates and reports a two-tower run in an opened run folder (see `reprlearn.training`)."""
    from reprlearn.evaluation.cross_view import (
        score_raw_pixels,
        score_towers,
        verification_scores,
        write_cross_view_report,
    )

    strategy = strategy or tf.distribute.get_strategy()
    query_shape, reference_shape = splits.train.query.image_shape, splits.train.reference.image_shape
    streamed = splits.train.streamed
    bad_image_log = str(out / BAD_IMAGE_LOG) if streamed else None

    def batches(model, start, shard=None):
        # B distinct places a batch, one pair of each: every other reference of the batch is a true negative.
        return matched_pair_batches(splits.train.query, splits.train.reference, cfg.train.pair_batch_size,
                                    cfg.train.seed, start, bad_image_log, shard)

    def train(folder: Path, build):
        folder.mkdir(exist_ok=True)
        return train_run(folder, cfg, strategy, build, batches,
                         lambda model: CrossViewValidation(lambda: towers_of(model), splits.val, cfg.loss.distance),
                         callbacks, verbose, None, lambda model, start, worker, workers: batches(
                             model, start, (worker, workers)))

    # The two towers, then (eval.shared_baseline) one shared tower on the same batches, loss and budget.
    trained = train(out, lambda: compile_two_towers(cfg, query_shape, reference_shape, streamed))
    if trained is None:  # a worker other than the chief: the chief writes the run
        return {}
    query, reference = towers_of(trained.model)
    query = save_and_check_reload(query, out / QUERY_FILE, splits.test.query)
    reference = save_and_check_reload(reference, out / REFERENCE_FILE, splits.test.references())
    metrics = {"test": score_towers(query, reference, splits.test, cfg.loss.distance),
               "verification": verification_scores(query, reference, splits.val, splits.test, cfg.loss.distance,
                                                   cfg.data.seed)}
    raw = score_raw_pixels(splits.test)
    metrics["baseline_raw"], metrics["baseline_raw_cosine"] = raw["L2"], raw["angular"]
    if cfg.eval.shared_baseline:
        if verbose:
            print("Training the shared-tower baseline (eval.shared_baseline: one tower for both views, the same "
                  "loss and budget).", flush=True)
        baseline = train(out / SHARED_BASELINE, lambda: _shared_tower_model(cfg, query_shape, reference_shape,
                                                                             streamed))
        metrics["shared_tower"] = score_towers(*towers_of(baseline.model), splits.test, cfg.loss.distance)
        metrics["shared_tower"]["seconds"] = round(baseline.seconds, 2)
    if cfg.loss.learn_temperature:
        metrics["temperature"] = trained.model.get_layer("pairs").temperature

    summary = run_summary(cfg, out, trained.epochs_done, trained.seconds, trained.history, cfg.train.pair_batch_size)
    summary["data"]["reference_shape"] = list(reference_shape)
    report = {**summary, "kept": trained.kept,
              "model": {"kind": "two_tower", "share": cfg.model.share, "polar_size": cfg.model.polar_size,
                        "circular": cfg.model.circular, "embedding_dim": int(query.output_shape[-1]),
                        "query_parameters": int(query.count_params()),
                        "reference_parameters": int(reference.count_params()),
                        "trainable_parameters": int(sum(np.prod(w.shape) for w in trained.model.trainable_weights)),
                        "files": [QUERY_FILE, REFERENCE_FILE]},
              "metrics": metrics,
              "files": {"skipped_pairs": splits.skipped + _skipped_in_training(out)}}
    write_cross_view_report(report, out)
    return report


def _skipped_in_training(out: Path) -> list:
    log = out / BAD_IMAGE_LOG
    return [[line, "failed to decode in training"] for line in sorted(set(log.read_text().splitlines()))
            if line] if log.is_file() else []
