"""What a fit optimises and watches: the compiled training model, its optimizer, and retrieval validation.

Shared by the training drivers and the tuner (neither imports the other).

Example:
    model = compile_embedding_model(cfg, build_tower(cfg.model, (28, 28, 1), name="tower"))
"""

from __future__ import annotations

import keras
import numpy as np

from reprlearn.config import Config
from reprlearn.config.losses import LOSS_TRAITS, loss_option
from reprlearn.data import ImageSet
from reprlearn.data.augment import MIRROR_INVARIANT
from reprlearn.data.pipelines import pk_batches, view_batches, worker_rows
from reprlearn.errors import ConfigError
from reprlearn.layers import CosineClassifier
from reprlearn.losses import JointRepresentationSimilarity
from reprlearn.losses.memory import CrossBatchMemory
from reprlearn.losses.registry import config_loss
from reprlearn.metrics import ActiveFraction, MeanNegativeDistance, MeanPositiveDistance, retrieval_metrics
from reprlearn.models import dense_autoencoder, joint_embedding_model, siamese_pair_model
from reprlearn.models.joint import check_tower_layers
from reprlearn.models.optimizers import LayerRateAdam
from reprlearn.models.towers import HEAD_LAYER
from reprlearn.runs import embed

TOWER_NAME = "tower"
# When JRD reads inner tower layers, the tower runs as one nested model with those layers as extra outputs.
TOWER_PARTS_NAME = "tower_parts"
LOGITS = "logits"  # in loss.jrd_layers: the classifier's cosines
# Outputs of a P×K training model with more than one loss term, each trained against its target.
EMBEDDING_OUTPUT, CLASS_OUTPUT, JRD_OUTPUT, RECONSTRUCTION_OUTPUT = (
    "embedding", "class_cosines", "jrd_features", "reconstruction")


def is_pair_loss(cfg: Config) -> bool:
    """The loss trains a Siamese pair model on pairs rather than the tower on P×K batches."""
    return LOSS_TRAITS[cfg.loss.name].batch == "pairs"


def uses_jrd(cfg: Config) -> bool:
    return LOSS_TRAITS[cfg.loss.name].classifier and cfg.loss.jrd_weight > 0


def training_outputs(cfg: Config) -> list[str]:
    """The P×K training model's outputs, each with its own loss term (one output: the model has a single one)."""
    first = CLASS_OUTPUT if LOSS_TRAITS[cfg.loss.name].classifier else EMBEDDING_OUTPUT
    return ([first] + ([JRD_OUTPUT] if uses_jrd(cfg) else [])
            + ([RECONSTRUCTION_OUTPUT] if cfg.loss.reconstruction_weight > 0 else []))


def dense_class_ids(cfg: Config, labels: np.ndarray) -> np.ndarray:
    """Labels as the loss needs them: 0..C−1 in sorted order of the training classes for a classifier loss,
    unchanged otherwise."""
    return np.searchsorted(np.unique(labels), labels) if LOSS_TRAITS[cfg.loss.name].classifier else labels


def pk_training_batches(cfg: Config, train: ImageSet, start_step: int = 0, bad_image_log: str | None = None,
                        shard: tuple[int, int] | None = None):
    """The P×K batches a run or a tuning trial trains on, from batch `start_step`: classifier losses' dense ids,
    `data.augment` (flips where the dataset allows), and one target per output (`training_targets`).
    With `data.positives: views`, P images × K augmented views labelled by image instead of P classes × K.
    `shard`: `(worker, workers)`, that worker's rows of each global batch only."""
    flips = MIRROR_INVARIANT.get(cfg.data.name, False)
    p, k = cfg.train.classes_per_batch, cfg.train.examples_per_class
    if cfg.data.positives == "views":
        batches = view_batches(train, p, k, cfg.train.seed, start_step, cfg.data.augment, flips, bad_image_log)
        batches = batches if shard is None else worker_rows(batches, *shard)
    else:
        batches = pk_batches(train, dense_class_ids(cfg, train.labels), p, k, cfg.train.seed, start_step,
                             cfg.data.augment, flips, bad_image_log, shard)
    return training_targets(cfg, batches)


def training_targets(cfg: Config, dataset):
    """P×K batches as the compiled model takes them: with several outputs, the labels for each loss on labels
    and the pixels in [0, 1] for the reconstruction."""
    outputs = training_outputs(cfg)
    if len(outputs) == 1:
        return dataset
    return dataset.map(lambda images, labels: (images, {
        name: images / 255.0 if name == RECONSTRUCTION_OUTPUT else labels for name in outputs}))


def jrd_layer_names(cfg: Config, tower: keras.Model) -> list[str]:
    """`loss.jrd_layers`, or the default: the last pooled conv block (`features`; otherwise the layer under the
    embedding head), the embedding and the logits. Names the tower lacks are an error listing its layers."""
    names = [layer.name for layer in tower.layers]
    if cfg.loss.jrd_layers:
        chosen = list(cfg.loss.jrd_layers)
    else:
        under_head = "features" if "features" in names else names[names.index(HEAD_LAYER) - 1]
        chosen = [under_head, names[-1], LOGITS]
    check_tower_layers(tower, chosen, "loss.jrd_layers", also=[LOGITS])
    return chosen


def _in_batch_metrics(cfg: Config, loss) -> list[keras.metrics.Metric]:
    """Given the loss, the metrics reuse its distance matrix and mining for the same batch."""
    return [ActiveFraction(loss), MeanPositiveDistance(cfg.loss.distance, loss=loss),
            MeanNegativeDistance(cfg.loss.distance, loss=loss)]


def _pk_training_model(cfg: Config, tower: keras.Model, loss, num_classes: int | None):
    """The model P×K batches train, with its losses, loss weights and metrics (single values or per-output dicts)."""
    outputs = training_outputs(cfg)
    classifier = LOSS_TRAITS[cfg.loss.name].classifier
    if classifier and num_classes is None:
        raise ConfigError(f"{cfg.loss.name} needs the number of training classes. Received: num_classes=None")
    if outputs == [EMBEDDING_OUTPUT]:
        return tower, loss, None, _in_batch_metrics(cfg, loss)
    images = keras.Input(tower.input_shape[1:], name="images")
    jrd_names = jrd_layer_names(cfg, tower) if uses_jrd(cfg) else []
    inner = [name for name in jrd_names if name != LOGITS]
    if inner:
        parts_model = keras.Model(tower.input, [tower.get_layer(name).output for name in inner] + [tower.output],
                                  name=TOWER_PARTS_NAME)
        *parts, embeddings = parts_model(images)
    else:
        parts, embeddings = [], tower(images)
    heads, losses, metrics = {}, {}, {}
    if classifier:
        heads[CLASS_OUTPUT] = CosineClassifier(num_classes, sub_centers=loss_option(cfg.loss, "sub_centers") or 1,
                                               name=CLASS_OUTPUT)(embeddings)
        losses[CLASS_OUTPUT] = loss
        metrics[CLASS_OUTPUT] = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    else:
        heads[EMBEDDING_OUTPUT] = keras.layers.Identity(name=EMBEDDING_OUTPUT, dtype="float32")(embeddings)
        losses[EMBEDDING_OUTPUT] = loss
        metrics[EMBEDDING_OUTPUT] = _in_batch_metrics(cfg, loss)
    if jrd_names:
        by_name = {**dict(zip(inner, parts)), LOGITS: heads.get(CLASS_OUTPUT)}
        flat = [keras.layers.Flatten(name=f"jrd_flat_{name}")(by_name[name]) for name in jrd_names]
        heads[JRD_OUTPUT] = keras.layers.Concatenate(name=JRD_OUTPUT, dtype="float32")(flat)
        losses[JRD_OUTPUT] = JointRepresentationSimilarity([int(part.shape[-1]) for part in flat],
                                                           [name == LOGITS for name in jrd_names])
    if RECONSTRUCTION_OUTPUT in outputs:
        decoder = dense_autoencoder(tower.input_shape[1:], hidden=(256,), code_dim=int(embeddings.shape[-1]),
                                    name=RECONSTRUCTION_OUTPUT).decoder
        heads[RECONSTRUCTION_OUTPUT] = decoder(embeddings)
        losses[RECONSTRUCTION_OUTPUT] = "mse"
    if len(outputs) == 1:
        (name,) = outputs
        return keras.Model(images, heads[name], name="training_model"), losses[name], None, metrics[name]
    weights = {name: {JRD_OUTPUT: cfg.loss.jrd_weight, RECONSTRUCTION_OUTPUT: cfg.loss.reconstruction_weight}.get(
        name, 1.0) for name in outputs}
    return keras.Model(images, heads, name="training_model"), losses, weights, metrics


def tower_of(model: keras.Model) -> keras.Model:
    """The embedding tower inside a compiled training model (the model itself when it is the tower)."""
    names = {layer.name for layer in model.layers}
    if TOWER_PARTS_NAME in names:
        parts_model = model.get_layer(TOWER_PARTS_NAME)
        return keras.Model(parts_model.input, parts_model.outputs[-1], name=TOWER_NAME)
    return model.get_layer(TOWER_NAME) if TOWER_NAME in names else model


def embedding_model(cfg: Config, tower: keras.Model) -> keras.Model:
    """What a run exports and validates: the tower, or its joint embedding (`model.joint_layers`; shares its
    weights)."""
    if not cfg.model.joint_layers:
        return tower
    return joint_embedding_model(tower, cfg.model.joint_layers, cfg.model.joint_grid, cfg.model.joint_power,
                                 cfg.model.joint_weights or None, name=TOWER_NAME,
                                 orientation_bins=cfg.model.orientation_bins,
                                 orientation_cells=cfg.model.orientation_cells)


def make_optimizer(cfg: Config, copied_layers: list[str] | tuple = ()) -> keras.optimizers.Optimizer:
    """Adam at `train.learning_rate`, constant or cosine-decayed over the whole run; the `copied_layers` (from
    `model.init_from`) at `model.init_learning_rate_factor` of that rate, Proxy-Anchor's proxies (the class weights)
    at `loss.proxy_learning_rate_factor` of it."""
    rate = cfg.train.learning_rate
    if cfg.train.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, cfg.train.epochs * cfg.train.steps_per_epoch)
    factors = {name: cfg.model.init_learning_rate_factor for name in copied_layers}
    proxy_factor = loss_option(cfg.loss, "proxy_learning_rate_factor")  # None for a loss without proxies
    if proxy_factor is not None:
        factors[CLASS_OUTPUT] = proxy_factor
    factors = {name: factor for name, factor in factors.items() if factor != 1.0}
    return LayerRateAdam(rate, layer_factors=factors) if factors else keras.optimizers.Adam(rate)


def compile_embedding_model(cfg: Config, tower: keras.Model, num_classes: int | None = None,
                            copied_layers: list[str] | tuple = ()) -> keras.Model:
    """The compiled training model: a Siamese pair model for pair losses; for P×K losses the tower itself, or,
    with more than one loss term, a model with one output per term (`training_outputs`): the embedding (in-batch
    loss) or a `CosineClassifier` over `num_classes` training classes (classifier loss), JRD's packed layers
    (`loss.jrd_weight`), a reconstruction from the embedding (`loss.reconstruction_weight`).

    With `train.memory_size` a pair loss scores the batch against a cross-batch memory (`CrossBatchMemory`).
    In-batch losses also log the active fraction and the mean positive and negative distances (of the batch);
    classifier losses log their training accuracy. `copied_layers` (from `model.init_from`) train at
    `model.init_learning_rate_factor` of the learning rate.
    """
    loss = config_loss(cfg.loss)
    if is_pair_loss(cfg):
        model, losses, weights, metrics = siamese_pair_model(tower, distance=cfg.loss.distance), loss, None, [
            ActiveFraction(loss)]
    else:
        model, losses, weights, metrics = _pk_training_model(cfg, tower, loss, num_classes)
        if cfg.train.memory_size:  # XBM: the batch against the last memory_size embeddings (the metrics: in-batch)
            losses = CrossBatchMemory(losses, int(tower.output_shape[-1]), cfg.train.memory_size,
                                      cfg.train.memory_warmup)
    model.compile(optimizer=make_optimizer(cfg, copied_layers), loss=losses, loss_weights=weights, metrics=metrics,
                  jit_compile=cfg.train.jit_compile)
    return model


class RetrievalValidation(keras.callbacks.Callback):
    """Adds `val_map_at_r` and `val_precision_at_1` to each epoch's logs (before TensorBoard sees them).

    A loss cannot compare runs with different margins; a retrieval metric on held-out data can.
    """

    def __init__(self, tower: keras.Model, images, labels: np.ndarray, metric: str):
        super().__init__()
        self.tower, self.images, self.labels, self.metric = tower, images, labels, metric

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or len(self.labels) < 2 or np.bincount(self.labels).max() < 2:
            return
        scores = retrieval_metrics(embed(self.tower, self.images), self.labels, self.metric, compute_nmi=False)
        logs["val_map_at_r"] = scores["map_at_r"]
        logs["val_precision_at_1"] = scores["precision_at_1"]
