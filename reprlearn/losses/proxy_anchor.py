"""Proxy-Anchor loss (Kim et al., CVPR 2020), with pytorch-metric-learning 2.9's numbers.

One learnt proxy p_c per class; s(x, c) is the cosine between embedding x and proxy p_c. With C⁺ the
classes that have an item in the batch, X_c⁺ the batch's items of class c and X_c⁻ the others:
`L = (1/|C⁺|) Σ_{c∈C⁺} log(1 + Σ_{X_c⁺} exp(−α (s(x,c) − δ))) + (1/C) Σ_c log(1 + Σ_{X_c⁻} exp(α (s(x,c) + δ)))`.
Each proxy is an anchor that pulls its class and pushes every other item, so one batch informs all C
proxies at O(N·C) cost: no pair mining, fast convergence.

In a Keras model the proxies are the class weights of a `CosineClassifier` layer (its columns) and the
loss reads the layer's cosines; `reprlearn train` trains them at `loss.proxy_learning_rate_factor` (100,
the paper's) times the learning rate.

Example:
    cosines = CosineClassifier(num_classes)(tower.output)
    model = keras.Model(tower.input, cosines)
    model.compile(optimizer="adam", loss=ProxyAnchorLoss(margin=0.1, alpha=32.0))
"""

from __future__ import annotations

import keras
import tensorflow as tf

from reprlearn.losses.pairs import log_one_plus_sum_exp
from reprlearn.ops.checks import check_non_negative_number, check_positive_number
from reprlearn.ops.labels import check_batch, check_class_ids, nan_unless_finite
from reprlearn.ops.replicas import global_batch, per_replica_share


def _proxy_anchor(labels, cosines, margin: float, alpha: float, caller: str) -> tf.Tensor:
    """The loss from `[N, C]` cosines between the batch and the proxies (float32)."""
    cosines = tf.cast(cosines, tf.float32)
    classes = tf.shape(cosines)[1]
    member = tf.transpose(tf.one_hot(check_class_ids(labels, classes, caller), classes, on_value=True,
                                     off_value=False, dtype=tf.bool))          # [C, N]: x is of class c
    by_proxy = tf.transpose(cosines)                                           # [C, N]
    positive_terms = log_one_plus_sum_exp(-alpha * (by_proxy - margin), member)
    negative_terms = log_one_plus_sum_exp(alpha * (by_proxy + margin), tf.logical_not(member))
    present = tf.reduce_sum(tf.cast(tf.reduce_any(member, axis=1), tf.float32))
    return (tf.math.divide_no_nan(tf.reduce_sum(positive_terms), present)
            + tf.reduce_sum(negative_terms) / tf.cast(classes, tf.float32))


def proxy_anchor_loss(labels, embeddings, proxies, margin: float = 0.1, alpha: float = 32.0) -> tf.Tensor:
    """The Proxy-Anchor loss of a batch: PML's `ProxyAnchorLoss(num_classes, d, margin, alpha)` with its proxies.

    Example:
        proxy_anchor_loss([0, 2, 1], tf.random.normal([3, 8]), proxies=tf.random.normal([4, 8]))

    Args:
        labels: `[N]` or `[N, 1]` class ids in [0, C).
        embeddings: `[N, d]`; float16/bfloat16 are computed in float32.
        proxies: `[C, d]`, one per class (PML's `loss.proxies`; a `CosineClassifier`'s `class_weights` is `[d, C]`).
        margin: δ >= 0 (PML: 0.1).
        alpha: α > 0 (PML: 32).

    Returns:
        A scalar in the embeddings' dtype.

    Raises:
        ValueError: a label outside [0, C), naming it and C.
    """
    labels, embeddings = check_batch(labels, embeddings)
    unit = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)
    cosines = tf.matmul(unit, tf.math.l2_normalize(tf.cast(proxies, tf.float32), axis=1), transpose_b=True)
    value = _proxy_anchor(labels, cosines, check_non_negative_number("margin", margin),
                          check_positive_number("alpha", alpha), "proxy_anchor_loss")
    return tf.cast(nan_unless_finite(value, embeddings), embeddings.dtype)


@keras.saving.register_keras_serializable(package="reprlearn")
class ProxyAnchorLoss(keras.losses.Loss):
    """Proxy-Anchor for `compile(loss=...)`: `y_true` class ids, `y_pred` the `[N, C]` cosines of a
    `CosineClassifier` (whose weights are the proxies).

    Example:
        model.compile(optimizer="adam", loss=ProxyAnchorLoss())

    Args:
        margin, alpha: as in `proxy_anchor_loss`.
        cross_replica: under a strategy, the loss of the global batch (every replica's items against each proxy;
            the other replicas' cosines carry no gradient, so the summed gradients equal one device's).
    """

    def __init__(self, margin: float = 0.1, alpha: float = 32.0, cross_replica: bool = True,
                 name: str = "proxy_anchor_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = check_non_negative_number("margin", margin)
        self.alpha = check_positive_number("alpha", alpha)
        if not isinstance(cross_replica, bool):
            raise ValueError(f"cross_replica must be True or False. Received: cross_replica={cross_replica!r}")
        self.cross_replica = cross_replica

    def call(self, y_true, y_pred):
        check_batch(y_true, y_pred, "y_true", "y_pred")
        labels, cosines = global_batch(y_true, y_pred) if self.cross_replica else (y_true, y_pred)
        value = _proxy_anchor(labels, cosines, self.margin, self.alpha, "ProxyAnchorLoss")
        return per_replica_share(tf.cast(nan_unless_finite(value, cosines), y_pred.dtype))

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "alpha": self.alpha,
                "cross_replica": self.cross_replica}
