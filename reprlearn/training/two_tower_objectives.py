"""What a two-tower fit optimises and watches: the pair loss, the compiled training model over two towers, and
validation Recall@1. Shared by the two-tower driver (`two_tower`) and the tuner (neither imports the other).

Example:
    model = compile_two_towers(cfg, (16, 64, 1), (32, 32, 1), streamed=False)
"""

from __future__ import annotations

import keras
import numpy as np

from reprlearn.config import Config
from reprlearn.config.losses import LOSS_TRAITS, loss_option
from reprlearn.data.pairs import PairSet, PairSplits
from reprlearn.errors import ConfigError
from reprlearn.losses.cross_view import SymmetricInfoNCELoss, TwoViewLoss
from reprlearn.losses.registry import config_loss
from reprlearn.metrics.cross_view import cross_view_metrics
from reprlearn.metrics.training import InBatchRecall
from reprlearn.models.two_tower import build_two_towers, two_tower_model
from reprlearn.runs import embed
from reprlearn.training.objectives import make_optimizer


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


def compile_towers(cfg: Config, query: keras.Model, reference: keras.Model) -> keras.Model:
    """The training model over two towers, compiled with the config's pair loss (and learnt τ, if asked)."""
    temperature = loss_option(cfg.loss, "temperature") if cfg.loss.learn_temperature else None
    model = two_tower_model(query, reference, learn_temperature=temperature)
    model.compile(optimizer=make_optimizer(cfg), loss=pair_loss(cfg), metrics=[InBatchRecall()],
                  jit_compile=cfg.train.jit_compile)
    return model


def compile_two_towers(cfg: Config, query_shape, reference_shape, streamed: bool) -> keras.Model:
    """The compiled training model of a two-tower config."""
    return compile_towers(cfg, *build_two_towers(cfg.model, query_shape, reference_shape, streamed))


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
