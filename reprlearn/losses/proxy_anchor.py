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

from reprlearn.losses.labelled import LabelledLoss
from reprlearn.ops.checks import check_non_negative_number, check_positive_number
from reprlearn.ops.labels import check_batch, check_class_ids, nan_unless_finite
from reprlearn.ops.replicas import global_batch, per_replica_share


def _log_one_plus(values, bound):
    """`log(1 + Σ exp(values))` given the sum's terms already shifted by `bound` (>= 0, no gradient): `bound +
    log(exp(−bound) + Σ exp(values − bound))`, so neither sum overflows whatever α is."""
    return bound + tf.math.log(tf.exp(-bound) + values)


def _proxy_anchor(labels, cosines, margin: float, alpha: float, caller: str) -> tf.Tensor:
    """The loss from `[N, C]` cosines between the batch and the proxies (float32).

    Each item has one positive proxy (its class's), so the positive terms are N values summed per class
    (segment sums), and the negative terms one masked column sum of the `[N, C]` matrix: no transposes, no
    masked `[C, N]` log-sum-exp (about 1.5× cheaper)."""
    cosines = tf.cast(cosines, tf.float32)
    classes = tf.shape(cosines)[1]
    labels = check_class_ids(labels, classes, caller)
    member = tf.one_hot(labels, classes, dtype=tf.float32)                            # [N, C]
    # Negative terms: every item against every proxy not its class's.
    pushed = alpha * (cosines + margin)
    push_bound = tf.stop_gradient(tf.maximum(tf.reduce_max(pushed, axis=0), 0.0))    # [C]
    negative_terms = _log_one_plus(tf.reduce_sum(tf.exp(pushed - push_bound) * (1.0 - member), axis=0), push_bound)
    # Positive terms: each item against its own class's proxy, summed per class present in the batch.
    pulled = -alpha * (tf.gather(cosines, labels[:, None], batch_dims=1)[:, 0] - margin)   # [N]
    pull_bound = tf.stop_gradient(tf.maximum(tf.math.unsorted_segment_max(pulled, labels, classes), 0.0))
    pulled_sums = tf.math.unsorted_segment_sum(tf.exp(pulled - tf.gather(pull_bound, labels)), labels, classes)
    present = tf.reduce_sum(member, axis=0) > 0.0
    positive_terms = tf.where(present, _log_one_plus(pulled_sums, pull_bound), 0.0)
    return (tf.math.divide_no_nan(tf.reduce_sum(positive_terms), tf.reduce_sum(tf.cast(present, tf.float32)))
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
    proxies = tf.convert_to_tensor(proxies)
    if proxies.shape.rank != 2 or (proxies.shape[1] is not None and embeddings.shape[1] is not None
                                   and proxies.shape[1] != embeddings.shape[1]):
        raise ValueError(f"proxies must be [C, d], one row per class with the embeddings' size d. Received: "
                         f"proxies.shape={tuple(proxies.shape)}, embeddings.shape={tuple(embeddings.shape)}")
    unit = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)
    cosines = tf.matmul(unit, tf.math.l2_normalize(tf.cast(proxies, tf.float32), axis=1), transpose_b=True)
    value = _proxy_anchor(labels, cosines, check_non_negative_number("margin", margin),
                          check_positive_number("alpha", alpha), "proxy_anchor_loss")
    return tf.cast(nan_unless_finite(value, embeddings), embeddings.dtype)


@keras.saving.register_keras_serializable(package="reprlearn")
class ProxyAnchorLoss(LabelledLoss):
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
