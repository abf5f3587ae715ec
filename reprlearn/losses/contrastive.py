"""Contrastive loss (Hadsell, Chopra, LeCun 2006), pair and in-batch forms.

Convention: **y = 1 marks a matching pair** (tensorflow-addons' convention). keras.io's
Siamese example uses the opposite; flip its labels with `1 - y` when porting.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from reprlearn.losses.in_batch import InBatchLoss
from reprlearn.losses.labelled import LabelledLoss
from reprlearn.ops.distances import Distance, check_margin, check_metric, pairwise_distance
from reprlearn.ops.labels import check_batch, labels_vector, nan_unless_finite, pair_masks


def _pair_term(match: tf.Tensor, distance: tf.Tensor, margin: float) -> tf.Tensor:
    return match * tf.square(distance) + (1.0 - match) * tf.square(tf.maximum(margin - distance, 0.0))


def contrastive_loss(y_true, y_pred, margin: float = 1.0) -> tf.Tensor:
    """Per-pair contrastive loss `y·d² + (1 − y)·max(margin − d, 0)²` (tensorflow-addons numbers).

    Example:
        contrastive_loss([1, 0], [0.2, 0.3], margin=1.0)  # [0.04, 0.49]

    Args:
        y_true: `[B]` or `[B, 1]`, bool/int/float; 1 means the pair matches.
        y_pred: `[B]` or `[B, 1]` distances (e.g. a Siamese model's output).
        margin: distance beyond which a non-matching pair costs nothing.

    Returns:
        `[B]` per-pair losses in `y_pred`'s dtype.
    """
    y_pred = tf.convert_to_tensor(y_pred)
    distance = tf.cast(labels_vector(y_pred), tf.float32)
    match = tf.cast(labels_vector(y_true), tf.float32)
    if tf.executing_eagerly() and not bool(tf.reduce_all((match == 0.0) | (match == 1.0))):
        raise ValueError("y_true must mark each pair 1 (match) or 0 (no match), not class ids: compare the two "
                         f"items' classes. Received: y_true values {sorted(set(match.numpy().tolist()))[:6]}")
    return tf.cast(_pair_term(match, distance, margin), y_pred.dtype)


def in_batch_contrastive_loss(labels, embeddings, margin: float = 1.0, distance: Distance = "L2") -> tf.Tensor:
    """Contrastive loss over every pair of a batch, averaged.

    Example:
        in_batch_contrastive_loss(labels=[0, 0, 1], embeddings=tf.random.normal([3, 8]))

    Args:
        labels: `[N]` or `[N, 1]` class ids (int or float).
        embeddings: `[N, d]`.
        margin: as in `contrastive_loss`.
        distance: a metric name or callable (see `reprlearn.ops.distances`).

    Returns:
        A scalar in the embeddings' dtype; 0 for a batch of fewer than two items.
    """
    labels, embeddings = check_batch(labels, embeddings)
    terms, pairs = _in_batch_terms(labels, embeddings, margin, distance)
    return tf.cast(nan_unless_finite(tf.math.divide_no_nan(tf.reduce_sum(terms), pairs), embeddings), embeddings.dtype)


def _in_batch_terms(labels, embeddings, margin: float, distance: Distance) -> tuple[tf.Tensor, tf.Tensor]:
    """`[N, N]` per-pair terms on the ordered pairs i ≠ j (zero on the diagonal), and the number of those pairs.

    Every unordered pair appears twice, so the mean over ordered pairs is the mean over unordered ones.
    """
    return _pair_terms(pairwise_distance(embeddings, distance), *pair_masks(labels), margin)


def _pair_terms(d, positive, negative, margin: float) -> tuple[tf.Tensor, tf.Tensor]:
    # One square of the selected distance or hinge: a positive pair costs D², a negative max(margin − D, 0)².
    terms = tf.square(tf.where(positive, d, tf.where(negative, tf.maximum(margin - d, 0.0), 0.0)))
    # Every ordered pair i ≠ j is positive or negative: N(N − 1) of them, no mask to count.
    n = tf.cast(tf.shape(d)[0], tf.float32)
    return terms, n * (n - 1.0)


def _active_share(terms: tf.Tensor, pairs: tf.Tensor) -> tf.Tensor:
    return tf.math.divide_no_nan(tf.reduce_sum(tf.cast(terms > 0, tf.float32)), pairs)


@keras.saving.register_keras_serializable(package="reprlearn")
class ContrastiveLoss(LabelledLoss):
    """tensorflow-addons' `ContrastiveLoss`: the pair form, `y_true` marks matching pairs, `y_pred` holds distances.

    Example:
        siamese.compile(loss=ContrastiveLoss(margin=1.0))   # y_pred: a Siamese model's distances

    Args:
        margin: distance beyond which a non-matching pair costs nothing.
    """

    def __init__(self, margin: float = 1.0, name: str = "contrastive_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = check_margin(margin)

    def call(self, y_true, y_pred):
        return contrastive_loss(y_true, y_pred, self.margin)

    def active_fraction(self, y_true, y_pred) -> tf.Tensor:
        """The fraction of pairs with a non-zero loss term in this batch."""
        terms = contrastive_loss(y_true, tf.cast(y_pred, tf.float32), self.margin)
        return tf.reduce_mean(tf.cast(terms > 0, tf.float32))

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


@keras.saving.register_keras_serializable(package="reprlearn")
class InBatchContrastiveLoss(InBatchLoss):
    """Contrastive loss over every pair of a batch: `y_true` holds class labels, `y_pred` embeddings.

    Example:
        tower.compile(optimizer="adam", loss=InBatchContrastiveLoss(margin=0.5))

    Args:
        margin: distance beyond which a non-matching pair costs nothing.
        distance: a metric name or callable (see `reprlearn.ops.distances`).
    """

    takes_pair_miner = True

    def __init__(self, margin: float = 1.0, distance: Distance = "L2", name: str = "in_batch_contrastive_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = check_margin(margin)
        self.distance = check_metric(distance)

    def batch_loss(self, distances, positive, negative):
        terms, pairs = _pair_terms(distances, positive, negative, self.margin)
        return tf.math.divide_no_nan(tf.reduce_sum(terms), pairs), lambda: _active_share(terms, pairs)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "distance": self.distance}
