"""What a fit optimises and watches: the compiled training model, its optimizer, and retrieval validation.

Shared by the training drivers and the tuner (neither imports the other).

Example:
    model = compile_embedding_model(cfg, build_tower(cfg.model, (28, 28, 1), name="tower"))
"""

from __future__ import annotations

import keras
import numpy as np

from reprlearn.config import Config
from reprlearn.layers import CosineClassifier
from reprlearn.metrics import ActiveFraction, MeanNegativeDistance, MeanPositiveDistance, retrieval_metrics
from reprlearn.models import siamese_pair_model
from reprlearn.registry import LOSSES, make_loss
from reprlearn.runs import embed

TOWER_NAME = "tower"


def is_pair_loss(cfg: Config) -> bool:
    """The loss trains a Siamese pair model on pairs rather than the tower on P×K batches."""
    return LOSSES[cfg.loss.name].batch == "pairs"


def trains_through_head(cfg: Config) -> bool:
    """The compiled model wraps the tower (a Siamese pair model, or a cosine classifier) instead of being it."""
    spec = LOSSES[cfg.loss.name]
    return spec.batch == "pairs" or spec.classifier


def dense_class_ids(cfg: Config, labels: np.ndarray) -> np.ndarray:
    """Labels as the loss needs them: 0..C−1 in sorted order of the training classes for a classifier loss,
    unchanged otherwise."""
    return np.searchsorted(np.unique(labels), labels) if LOSSES[cfg.loss.name].classifier else labels


def make_optimizer(cfg: Config) -> keras.optimizers.Optimizer:
    """Adam at `train.learning_rate`, constant or cosine-decayed over the whole run."""
    rate = cfg.train.learning_rate
    if cfg.train.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, cfg.train.epochs * cfg.train.steps_per_epoch)
    return keras.optimizers.Adam(rate)


def compile_embedding_model(cfg: Config, tower: keras.Model, num_classes: int | None = None) -> keras.Model:
    """The compiled training model: the tower itself for in-batch losses, a Siamese pair model for pair losses,
    the tower with a `CosineClassifier` over `num_classes` training classes for a classifier loss.

    In-batch runs also log the active fraction of the loss and the mean positive and negative distances;
    classifier runs log their training accuracy.
    """
    loss = make_loss(cfg.loss.name, cfg.loss.margin, cfg.loss.distance, cfg.loss.soft, cfg.loss.cross_replica,
                     cfg.loss.scale)
    if is_pair_loss(cfg):
        model = siamese_pair_model(tower, distance=cfg.loss.distance)
        metrics = [ActiveFraction(loss)]
    elif LOSSES[cfg.loss.name].classifier:
        if num_classes is None:
            raise ValueError(f"{cfg.loss.name} needs the number of training classes. Received: num_classes=None")
        images = keras.Input(tower.input_shape[1:], name="images")
        model = keras.Model(images, CosineClassifier(num_classes, name="class_cosines")(tower(images)),
                            name="classifier")
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    else:
        model = tower
        # Given the loss, the metrics reuse its distance matrix and mining for the same batch.
        metrics = [ActiveFraction(loss), MeanPositiveDistance(cfg.loss.distance, loss=loss),
                   MeanNegativeDistance(cfg.loss.distance, loss=loss)]
    model.compile(optimizer=make_optimizer(cfg), loss=loss, metrics=metrics, jit_compile=cfg.train.jit_compile)
    return model


class RetrievalValidation(keras.callbacks.Callback):
    """Adds `val_map_at_r` and `val_precision_at_1` to each epoch's logs (before TensorBoard sees them).

    A loss cannot compare runs with different margins; a retrieval metric on held-out data can.
    """

    def __init__(self, tower: keras.Model, images: np.ndarray, labels: np.ndarray, metric: str):
        super().__init__()
        self.tower, self.images, self.labels, self.metric = tower, images, labels, metric

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or len(self.labels) < 2 or np.bincount(self.labels).max() < 2:
            return
        scores = retrieval_metrics(embed(self.tower, self.images), self.labels, self.metric, compute_nmi=False)
        logs["val_map_at_r"] = scores["map_at_r"]
        logs["val_precision_at_1"] = scores["precision_at_1"]
