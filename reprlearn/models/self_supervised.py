"""Self-supervised training around any tower: SimCLR, MoCo v2 and v3, BYOL, SimSiam, Barlow Twins, VICReg.

The tower f is what a run keeps and exports; the projector g, the predictor q and the momentum (EMA) copies of f
and g live only in this training model and are dropped at save, so an SSL run's `model.keras` is an ordinary
tower. Each step takes two views of a batch `(views_1, views_2)`, computes the method's loss on the global batch
(all replicas, `reprlearn.ops.replicas.global_batch`), applies the gradient, then, inside the same step, moves
the momentum copies (BYOL, MoCo) and the memory queue (MoCo, SimCLR with `memory_size`). It logs the loss and
`output_spread` (TF Similarity's `proj_std`: near 1/√d when healthy, near 0 when every image maps to one point).

Defaults per method (`reprlearn.config.self_supervised.METHOD_DEFAULTS`) follow the papers and TF Similarity;
see docs/self-supervised.md.

Example:
    model = SelfSupervisedModel(build_tower(cfg.model, (28, 28, 1)), method="byol", total_steps=1000)
    model.compile(optimizer="adam")
    model.fit(two_view_batches(images, 256), steps_per_epoch=100, epochs=10)
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import tensorflow as tf

from reprlearn.config.self_supervised import (
    COSINE_MOMENTUM_METHODS,
    METHOD_DEFAULTS,
    MOMENTUM_METHODS,
    method_settings,
)
from reprlearn.losses.self_supervised import (
    barlow_twins_loss,
    byol_loss,
    info_nce_loss,
    nt_xent_views_loss,
    output_spread,
    simsiam_loss,
    vicreg_loss,
)
from reprlearn.ops.replicas import assign_on_every_replica, global_rows


def head(widths: Sequence[int], name: str, output_norm: bool = False) -> keras.Sequential:
    """An MLP head: Dense + BatchNorm + ReLU per hidden width, then a Dense to the last width (+ a BatchNorm)."""
    layers = []
    for width in widths[:-1]:
        layers += [keras.layers.Dense(int(width), use_bias=False), keras.layers.BatchNormalization(synchronized=True),
                   keras.layers.ReLU()]
    layers.append(keras.layers.Dense(int(widths[-1])))
    if output_norm:
        layers.append(keras.layers.BatchNormalization(synchronized=True))
    return keras.Sequential(layers, name=name)


def _copy_of(model: keras.Model, name: str) -> keras.Model:
    """A model of the same architecture under another name, with the same weights."""
    config = model.get_config()
    config["name"] = name
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


@keras.saving.register_keras_serializable(package="reprlearn")
class SelfSupervisedModel(keras.Model):
    """Trains `tower` without labels by `method` on batches of two views `(views_1, views_2)`.

    Args:
        tower: the network kept (any reprlearn tower; its output is the embedding f(x)).
        method: one of `reprlearn.config.self_supervised.METHODS`.
        projector, predictor: head widths (hidden..., output); None takes the method's default, `()` no predictor.
        temperature: NT-Xent / InfoNCE τ (None: the method's default).
        momentum: the EMA's m for the target (BYOL: its base) or key encoder (MoCo) (None: the default).
        memory_size: queued negatives for MoCo or SimCLR (None: the default; 0 none).
        total_steps: the run's steps, over which BYOL's m rises to 1 by a cosine.
    """

    def __init__(self, tower: keras.Model, method: str = "simclr", projector: Sequence[int] | None = None,
                 predictor: Sequence[int] | None = None, temperature: float | None = None,
                 momentum: float | None = None, memory_size: int | None = None, total_steps: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.projector_widths, self.predictor_widths, self.memory_size = method_settings(
            method, projector, predictor, memory_size, momentum)
        defaults = METHOD_DEFAULTS[method]
        self.tower, self.method = tower, method
        self.temperature = float(temperature if temperature is not None else (defaults.temperature or 0.1))
        self.momentum = float(momentum if momentum is not None else (defaults.momentum or 0.0))
        self.total_steps = max(int(total_steps), 1)
        self.projector = head(self.projector_widths, "projector", defaults.projector_output_norm)
        self.predictor = head(self.predictor_widths, "predictor") if self.predictor_widths else None
        features = int(tower.output_shape[-1])
        self.projector.build((None, features))
        if self.predictor is not None:
            self.predictor.build((None, self.projector_widths[-1]))
        self.target_tower = self.target_projector = None
        if method in MOMENTUM_METHODS:
            self.target_tower = _copy_of(tower, "target_tower")
            self.target_projector = head(self.projector_widths, "target_projector", defaults.projector_output_norm)
            self.target_projector.build((None, features))
            self.target_projector.set_weights(self.projector.get_weights())
            # BYOL's target and MoCo v3's key encoder normalise with their batch's statistics (a Keras BatchNorm
            # does so only while trainable: they are left trainable and kept out of the optimizer's variables,
            # and v3 scores keys within the batch, as its paper does). MoCo v2's key encoder
            # uses its moving statistics instead: batch statistics shared by a batch's keys would let queries find
            # their key through them (MoCo's reason for shuffling BN across GPUs).
            self.target_tower.trainable = self.target_projector.trainable = method in COSINE_MOMENTUM_METHODS
        self.memory = None
        if self.memory_size:
            # MoCo's own start: random unit vectors, replaced batch by batch (newest first).
            self.memory = self.add_weight(shape=(self.memory_size, self.projector_widths[-1]), name="memory",
                                          initializer=keras.initializers.RandomNormal(seed=0), trainable=False)
            self.memory.assign(tf.math.l2_normalize(self.memory, axis=1))
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.spread_tracker = keras.metrics.Mean(name="output_spread")
        self.built = True

    def call(self, images, training=False):
        return self.tower(images, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker, self.spread_tracker]

    def _online(self, images, training: bool):
        projections = self.projector(self.tower(images, training=training), training=training)
        predictions = self.predictor(projections, training=training) if self.predictor is not None else projections
        return projections, predictions

    def _target(self, images):
        return tf.stop_gradient(self.target_projector(self.target_tower(images, training=True), training=True))

    def _loss(self, views_1, views_2):
        """The method's loss on the global batch, and the values a step hands on: (loss, first view's projections
        for the spread, what enters the memory)."""
        z1, p1 = self._online(views_1, True)
        z2, p2 = self._online(views_2, True)
        if self.method in MOMENTUM_METHODS:
            k1, k2 = self._target(views_1), self._target(views_2)
        method = self.method
        local = [z1, z2, p1, p2] + ([k1, k2] if method in MOMENTUM_METHODS else [])
        widths = [int(t.shape[-1]) for t in local]
        every = tf.split(global_rows(tf.concat([tf.cast(t, tf.float32) for t in local], axis=1)), widths, axis=1)
        z1, z2, p1, p2 = every[:4]
        memory = None if self.memory is None else tf.convert_to_tensor(self.memory)
        if method == "simclr":
            return nt_xent_views_loss(z1, z2, self.temperature, memory), z1, tf.concat([z1, z2], axis=0)
        if method == "moco":
            k1, k2 = every[4:]
            loss = (info_nce_loss(p1, k2, memory, self.temperature) + info_nce_loss(p2, k1, memory,
                                                                                    self.temperature)) / 2
            return loss, z1, tf.concat([k1, k2], axis=0)
        if method == "moco_v3":  # the predictor's queries against the other view's keys, in the batch; × 2τ
            k1, k2 = every[4:]
            loss = info_nce_loss(p1, k2, None, self.temperature) + info_nce_loss(p2, k1, None, self.temperature)
            return 2.0 * self.temperature * loss, z1, None
        if method == "byol":
            k1, k2 = every[4:]
            return byol_loss(k2, p1) + byol_loss(k1, p2), z1, None
        if method == "simsiam":
            return simsiam_loss(z2, p1) / 2 + simsiam_loss(z1, p2) / 2, z1, None
        if method == "barlow_twins":
            return barlow_twins_loss(z1, z2), z1, None
        return vicreg_loss(z1, z2), z1, None

    def current_momentum(self) -> tf.Tensor:
        """MoCo v2: m. BYOL and MoCo v3: `1 − (1 − m_base)·(cos(π·k/K) + 1)/2` at step k of K (Grill et al.
        2020)."""
        if self.method not in COSINE_MOMENTUM_METHODS:
            return tf.constant(self.momentum, tf.float32)
        progress = tf.minimum(tf.cast(self.optimizer.iterations, tf.float32) / self.total_steps, 1.0)
        return 1.0 - (1.0 - self.momentum) * (tf.cos(math.pi * progress) + 1.0) / 2.0

    @property
    def trainable_weights(self) -> list:
        """What the optimizer trains: the tower's and the heads' weights, never the momentum copies (BYOL's target
        is left trainable for its batch statistics, not for the optimizer; `weights` still holds it, so it saves)."""
        heads = [self.projector] + ([self.predictor] if self.predictor is not None else [])
        return [v for part in [self.tower, *heads] for v in part.trainable_weights]

    @property
    def trainable_variables(self) -> list:
        return self.trainable_weights

    def train_step(self, data):
        views_1, views_2 = data[:2] if isinstance(data, (tuple, list)) else data
        trainable = self.trainable_variables
        momentum = self.current_momentum()  # at this step, before the optimizer counts it
        with tf.GradientTape() as tape:
            loss, projections, enqueued = self._loss(views_1, views_2)
            # Every replica computes the global batch's loss; only its own slice carries gradient, and the
            # optimizer sums the replicas' gradients: the single-device step.
            scaled = self.optimizer.scale_loss(loss) if hasattr(self.optimizer, "scale_loss") else loss
        gradients = tape.gradient(scaled, trainable)
        self.optimizer.apply(gradients, trainable)
        if self.target_tower is not None:
            online = self.tower.weights + self.projector.weights
            target = self.target_tower.weights + self.target_projector.weights
            assign_on_every_replica(target, [momentum * t + (1.0 - momentum) * tf.cast(o, t.dtype)
                                             for t, o in zip(target, online)])
        if self.memory is not None:
            newest = tf.stop_gradient(tf.math.l2_normalize(enqueued, axis=1))
            assign_on_every_replica([self.memory],
                                    [tf.concat([newest, self.memory], axis=0)[:self.memory_size]])
        self.loss_tracker.update_state(loss)
        self.spread_tracker.update_state(output_spread(projections))
        return {"loss": self.loss_tracker.result(), "output_spread": self.spread_tracker.result()}

    def get_config(self):
        return {**super().get_config(), "tower": keras.saving.serialize_keras_object(self.tower),
                "method": self.method, "projector": list(self.projector_widths),
                "predictor": list(self.predictor_widths), "temperature": self.temperature,
                "momentum": self.momentum, "memory_size": self.memory_size, "total_steps": self.total_steps}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["tower"] = keras.saving.deserialize_keras_object(config["tower"])
        return cls(**config)
