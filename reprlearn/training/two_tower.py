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
from reprlearn.config.losses import LOSS_TRAITS, loss_option
from reprlearn.data.pairs import PairSet, PairSplits
from reprlearn.data.pipelines import matched_pair_batches
from reprlearn.errors import ConfigError
from reprlearn.layers.channels import Luma, RepeatChannels
from reprlearn.losses.cross_view import SymmetricInfoNCELoss, TwoViewLoss
from reprlearn.losses.registry import config_loss
from reprlearn.metrics.cross_view import cross_view_metrics
from reprlearn.metrics.training import InBatchRecall
from reprlearn.models.two_tower import build_two_towers, towers_of, two_tower_model
from reprlearn.runs import embed, run_summary, save_and_check_reload
from reprlearn.runs.record import BAD_IMAGE_LOG
from reprlearn.training.loop import train_run
from reprlearn.training.objectives import make_optimizer

QUERY_FILE, REFERENCE_FILE = "query.keras", "reference.keras"
SHARED_BASELINE = "shared_tower"   # the sub-folder where the shared-tower baseline trains (its own checkpoints)


def check_two_tower_data(cfg: Config, splits: PairSplits) -> None:
    """What needs the data, before a run folder is made: enough places for a batch, views a shared tower can take."""
    places = len(np.unique(splits.train.labels))
    if cfg.train.pair_batch_size > places:
        raise ConfigError(f"train.pair_batch_size takes that many distinct places per batch and the training pairs "
                          f"hold {places}. Received: train.pair_batch_size={cfg.train.pair_batch_size}")
    query, reference = splits.train.query.image_shape, splits.train.reference.image_shape
    if cfg.model.share == "all" and not cfg.model.polar_size and tuple(query) != tuple(reference):
        raise ConfigError(f"model.share: all runs both views through one tower, so they need one size and channel "
                          f"count: the query images are {list(query)} and the reference images {list(reference)}. Use "
                          "model.share: none or head, or data.reference_size. Received: model.share='all'")


def pair_loss(cfg: Config) -> keras.losses.Loss:
    """The config's loss over matched pairs: a cross-view loss as it is, an in-batch loss over both views (pair ids
    as labels), InfoNCE at τ = 1 when the model learns its scale (`loss.learn_temperature`)."""
    if cfg.loss.learn_temperature:
        return SymmetricInfoNCELoss(temperature=1.0, cross_replica=cfg.loss.cross_replica)
    loss = config_loss(cfg.loss)
    return TwoViewLoss(loss) if LOSS_TRAITS[cfg.loss.name].batch == "pk" else loss


def _compiled(cfg: Config, query: keras.Model, reference: keras.Model) -> keras.Model:
    """The training model over two towers, compiled with the config's pair loss (and learnt τ, if asked)."""
    temperature = loss_option(cfg.loss, "temperature") if cfg.loss.learn_temperature else None
    model = two_tower_model(query, reference, learn_temperature=temperature)
    model.compile(optimizer=make_optimizer(cfg), loss=pair_loss(cfg), metrics=[InBatchRecall()],
                  jit_compile=cfg.train.jit_compile)
    return model


def compile_two_towers(cfg: Config, query_shape, reference_shape, streamed: bool) -> keras.Model:
    """The compiled training model of a two-tower config."""
    return _compiled(cfg, *build_two_towers(cfg.model, query_shape, reference_shape, streamed))


class CrossViewValidation(keras.callbacks.Callback):
    """Adds `val_recall_at_1` (queries → references) and `val_recall_at_1pct` on the validation pairs to each epoch's
    logs: what `train.keep: best` and a tuner compare (never the test pairs)."""

    def __init__(self, towers, pairs: PairSet, metric: str):
        super().__init__()
        self.towers, self.pairs, self.metric = towers, pairs, metric

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or len(np.unique(self.pairs.labels)) < 2:
            return
        query, reference = self.towers()
        references = self.pairs.references()
        scores = cross_view_metrics(embed(query, self.pairs.query), embed(reference, references), self.pairs.labels,
                                    references.labels, self.metric, map_at_r=False)["query_to_reference"]
        logs["val_recall_at_1"] = scores["recall_at_1"]
        logs["val_recall_at_1pct"] = scores["recall_at_1pct"]


def _shared_tower_model(cfg: Config, query_shape, reference_shape, streamed: bool) -> keras.Model:
    """One tower for both views: the reference images resized to the query's size and channels in front of it."""
    shared = copy.deepcopy(cfg.model)
    shared.share, shared.polar_size, shared.reference_tower = "all", None, None
    tower, _ = build_two_towers(shared, query_shape, query_shape, streamed)
    inputs = keras.Input(tuple(reference_shape), name="images")
    x = keras.layers.Resizing(*query_shape[:2], name="to_query_size")(inputs)
    if reference_shape[2] != query_shape[2]:
        x = Luma(name="luma")(x) if query_shape[2] == 1 else RepeatChannels(3, name="to_rgb")(x)
    return _compiled(cfg, tower, keras.Model(inputs, tower(x), name="reference_tower"))


def run_two_tower(cfg: Config, out: Path, splits: PairSplits, verbose: int = 1,
                  callbacks: list[keras.callbacks.Callback] | None = None,
                  strategy: tf.distribute.Strategy | None = None) -> dict:
    """Trains, evaluates and reports a two-tower run in an opened run folder (see `reprlearn.training`)."""
    from reprlearn.evaluation.cross_view import score_raw_pixels, score_towers, write_cross_view_report

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
    metrics = {"test": score_towers(query, reference, splits.test, cfg.loss.distance)}
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
