"""Two towers for two views: a query tower and a reference tower, with their own weights or sharing some.

- `share: none`: each tower its own weights (CVM-Net, SAFA): a 32×128 panorama and a 64×64 overhead image can meet.
- `share: head`: own trunks, one embedding head (`embedding_dense`) over both: the views' features must have one
  size (e.g. conv towers with `dense` units each).
- `share: all`: one tower for both views (today's Siamese tower), the baseline that shows what a second tower buys.
With `polar_size` the reference tower starts with the polar transform of the overhead image
(`reprlearn.layers.PolarTransform`), so it sees a strip laid out like the query panorama.

The training model takes `[query images, reference images]` and outputs each pair's embeddings stacked,
`[B, 2, d]` (query first), which the cross-view losses (`reprlearn.losses.cross_view`) read. The towers are
ordinary single-input models: `towers_of(model)` returns them for embedding, saving and export.

Example:
    query, reference = build_two_towers(cfg.model, (32, 128, 3), (64, 64, 3))
    model = two_tower_model(query, reference)
    model.compile("adam", loss=CrossViewSoftMarginTripletLoss())
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from reprlearn.errors import ConfigError, DataError
from reprlearn.layers.polar import PolarTransform
from reprlearn.models.towers import HEAD_LAYER, build_tower

QUERY_TOWER, REFERENCE_TOWER = "query_tower", "reference_tower"
SHARES = ("none", "head", "all")
MAX_LOGIT_SCALE = 100.0  # CLIP clips 1/τ at 100


@keras.saving.register_keras_serializable(package="reprlearn")
class StackViews(keras.layers.Layer):
    """`[query [B, d], reference [B, d]]` → `[B, 2, d]` float32: each pair's embeddings side by side."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        query, reference = inputs
        return tf.stack([tf.cast(query, tf.float32), tf.cast(reference, tf.float32)], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 2, input_shape[0][1])


@keras.saving.register_keras_serializable(package="reprlearn")
class LogitScale(keras.layers.Layer):
    """Multiplies both views' embeddings by √s with s = 1/τ learnt through log s (clipped at 100), so an InfoNCE at
    τ = 1 over the scaled pairs computes `s · q·rᵀ`: CLIP's learnt temperature, living in the training model only
    (the towers export unscaled, unit-length embeddings).

    Example:
        scaled = LogitScale(initial_temperature=0.07)(pairs)   # [B, 2, d]

    Args:
        initial_temperature: τ at the start, in (1/100, ∞).
    """

    def __init__(self, initial_temperature: float = 0.07, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not (isinstance(initial_temperature, (int, float)) and 1.0 / MAX_LOGIT_SCALE <= initial_temperature):
            raise ValueError(f"initial_temperature must be >= {1 / MAX_LOGIT_SCALE}. "
                             f"Received: initial_temperature={initial_temperature!r}")
        self.initial_temperature = float(initial_temperature)

    def build(self, input_shape):
        self.log_scale = self.add_weight(shape=(), name="log_scale", initializer=keras.initializers.Constant(
            math.log(1.0 / self.initial_temperature)))
        super().build(input_shape)

    @property
    def temperature(self) -> float:
        return float(1.0 / min(math.exp(float(self.log_scale.numpy())), MAX_LOGIT_SCALE))

    def call(self, pairs):
        scale = tf.minimum(tf.exp(self.log_scale), MAX_LOGIT_SCALE)
        return pairs * tf.sqrt(scale)

    def get_config(self):
        return {**super().get_config(), "initial_temperature": self.initial_temperature}


def _shape(shape) -> tuple[int, int, int]:
    return tuple(int(v) for v in shape)


def _with_polar(body: keras.Model, reference_shape, polar_size, name: str) -> keras.Model:
    """`body` preceded by the polar transform of `reference_shape` overhead images to `polar_size` strips."""
    inputs = keras.Input(reference_shape, name="images")
    strip = PolarTransform(*polar_size, name="polar")(inputs)
    return keras.Model(inputs, body(strip), name=name)


def build_two_towers(model_cfg, query_shape, reference_shape, streamed: bool = False
                     ) -> tuple[keras.Model, keras.Model]:
    """The query and reference towers a two-tower `ModelConfig` describes (`model.share`, `model.reference_tower`,
    `model.polar_size`, `model.circular`) for views of `query_shape` and `reference_shape` `(H, W, C)`.

    Raises:
        ConfigError: `share: all` with views of different sizes or channels (after the polar transform), `share:
            head` with towers whose features differ in size, or an unknown `share`.
    """
    query_shape, reference_shape = _shape(query_shape), _shape(reference_shape)
    share, polar = model_cfg.share, model_cfg.polar_size
    if share not in SHARES:
        raise ConfigError(f"model.share must be one of {list(SHARES)}. Received: model.share={share!r}")
    body_shape = (*[int(v) for v in polar], reference_shape[2]) if polar else reference_shape
    circular = model_cfg.circular_pooling if model_cfg.circular else None
    query = build_tower(model_cfg, query_shape, name=QUERY_TOWER, streamed=streamed, circular=circular)
    if share == "all":
        if body_shape != query_shape:
            seen = f"{list(body_shape)} after the polar transform" if polar else f"{list(reference_shape)}"
            raise ConfigError(f"model.share: all runs both views through one tower, so they need one size and channel "
                              f"count: the query view is {list(query_shape)} and the reference view {seen}. Use "
                              "model.share: none or head, or make the views alike. Received: model.share='all'")
        return query, (_with_polar(query, reference_shape, polar, REFERENCE_TOWER) if polar else query)
    body = build_tower(model_cfg, body_shape, name=REFERENCE_TOWER if not polar else "reference_body",
                       streamed=streamed, kind=model_cfg.reference_tower, circular=circular if polar else None)
    if share == "head":
        features = body.get_layer(HEAD_LAYER).input
        shared = query.get_layer(HEAD_LAYER)
        if int(features.shape[-1]) != int(shared.input.shape[-1]):
            raise ConfigError(f"model.share: head puts one embedding head over both towers, so their features need "
                              f"one size: the query tower's are {int(shared.input.shape[-1])} and the reference "
                              f"tower's {int(features.shape[-1])}. Set model.dense (conv towers) or use model.share: "
                              "none. Received: model.share='head'")
        x = shared(features)
        after = query.layers[[layer.name for layer in query.layers].index(HEAD_LAYER) + 1:]
        for layer in after:  # the head's own normalisation, shared too (weightless)
            x = layer(x)
        body = keras.Model(body.input, x, name=REFERENCE_TOWER if not polar else "reference_body")
    return query, (_with_polar(body, reference_shape, polar, REFERENCE_TOWER) if polar else body)


def two_tower_model(query_tower: keras.Model, reference_tower: keras.Model, learn_temperature: float | None = None,
                    name: str = "two_towers") -> keras.Model:
    """The training model: `[query images, reference images]` → `[B, 2, d]` (query first).

    Example:
        model = two_tower_model(*build_two_towers(cfg.model, (32, 128, 1), (64, 64, 1)))

    Args:
        query_tower, reference_tower: single-input embedding models with one embedding size (may be one object).
        learn_temperature: None, or the initial τ of a learnt InfoNCE temperature (`LogitScale`).

    Returns:
        A Functional `keras.Model` with inputs `query`, `reference` and output `pairs`.
    """
    for tower, role in ((query_tower, "query_tower"), (reference_tower, "reference_tower")):
        if not isinstance(tower, keras.Model) or len(tower.inputs) != 1:
            raise ValueError(f"{role} must be a single-input keras.Model. Received: {role}={tower!r}")
    dims = int(query_tower.outputs[0].shape[-1]), int(reference_tower.outputs[0].shape[-1])
    if dims[0] != dims[1]:
        raise ValueError(f"the towers must embed into one space. Received: query embedding {dims[0]}, reference "
                         f"embedding {dims[1]}")
    query = keras.Input(tuple(query_tower.inputs[0].shape[1:]), name="query")
    reference = keras.Input(tuple(reference_tower.inputs[0].shape[1:]), name="reference")
    pairs = StackViews(name="pairs" if learn_temperature is None else "stacked")(
        [query_tower(query), reference_tower(reference)])
    if learn_temperature is not None:
        pairs = LogitScale(learn_temperature, name="pairs")(pairs)
    return keras.Model([query, reference], pairs, name=name)


def towers_of(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """`(query tower, reference tower)` of a two-tower training model (one object twice for `share: all` without a
    polar transform)."""
    names = {layer.name: layer for layer in model.layers}
    query = names[QUERY_TOWER]
    return query, names.get(REFERENCE_TOWER, query)


def check_view_images(tower: keras.Model, images, view: str) -> np.ndarray:
    """`images` as float32 `[N, H, W, C]` when they fit the tower of `view`; DataError naming both sizes otherwise
    (a panorama handed to the reference tower, or the other way round)."""
    images = np.asarray(images, np.float32)
    expected = tuple(int(v) for v in tower.inputs[0].shape[1:])
    if images.ndim == 3 and len(expected) == 3 and expected[2] == 1:
        images = images[..., None]
    if images.shape[1:] != expected:
        raise DataError(f"the {view} tower was built for {expected[0]}x{expected[1]}x{expected[2]} images and "
                        f"received {'x'.join(str(v) for v in images.shape[1:])}; resize them (or embed them with "
                        f"the other tower if they are the other view). Received: images.shape={images.shape}")
    return images
