"""Keras metrics to watch during in-batch training: how much of the batch the loss still uses, how far apart pairs
are, and (two towers) how often a batch's queries find their own reference first.

Example:
    loss = TripletSemiHardLoss(margin=0.2)
    model.compile(optimizer="adam", loss=loss,
                  metrics=[ActiveFraction(loss), MeanPositiveDistance(), MeanNegativeDistance()])

Each is a batch mean of a per-batch value: `y_true` holds labels and `y_pred` embeddings. Given the
step's reprlearn loss (`ActiveFraction` always is; the distance metrics take `loss=`), they read the
distances, masks and mining the loss already computed for the same batch (its `memo`), so a step
computes the distance matrix once; alone, they compute it themselves. Under a `tf.distribute`
strategy they describe the global batch (all replicas), like the losses.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from reprlearn.losses.cross_view import check_view_pairs, cross_view_negatives
from reprlearn.ops.distances import Distance, check_metric, cross_distance, pairwise_distance
from reprlearn.ops.labels import pair_masks
from reprlearn.ops.replicas import global_batch


def mean_pair_distance(labels, embeddings, positive: bool, distance: Distance = "L2") -> tf.Tensor:
    """The mean distance over the ordered positive (or negative) pairs of a batch; 0 if there are none."""
    positives, negatives = pair_masks(labels)
    return _masked_mean(pairwise_distance(embeddings, distance), positives if positive else negatives)


def _masked_mean(distances: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    mask = tf.cast(mask, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(distances * mask), tf.reduce_sum(mask))


@keras.saving.register_keras_serializable(package="reprlearn")
class ActiveFraction(keras.metrics.Mean):
    """The fraction of mined triplets (or pairs) with a non-zero loss: near 0 means the loss has stopped learning.

    Args:
        loss: a reprlearn loss with an `active_fraction(y_true, y_pred)` method (every loss in `reprlearn.losses`).
    """

    def __init__(self, loss, name: str = "active_fraction", **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if not hasattr(loss, "active_fraction"):
            raise ValueError(f"loss must be a reprlearn loss with an active_fraction method. Received: loss={loss!r}")
        self.loss = loss

    def update_state(self, y_true, y_pred, sample_weight=None):
        kept = _kept(self.loss, y_pred)
        if kept is not None:
            return super().update_state(kept["active_fraction"]())
        return super().update_state(self.loss.active_fraction(y_true, tf.cast(y_pred, tf.float32)))

    def get_config(self):
        return {**super().get_config(), "loss": keras.saving.serialize_keras_object(self.loss)}


def _kept(loss, y_pred) -> dict | None:
    """What `loss` kept for this very `y_pred` tensor in its memo, or None."""
    memo = getattr(loss, "memo", None)
    return memo.get(y_pred) if memo is not None else None


class _MeanPairDistance(keras.metrics.Mean):
    positive: bool

    def __init__(self, distance: Distance = "L2", name: str | None = None, loss=None, **kwargs):
        default = "mean_positive_distance" if self.positive else "mean_negative_distance"
        super().__init__(name=name or default, **kwargs)
        self.distance = check_metric(distance)
        # The loss whose distance matrix to reuse: only one computed with this metric's distance will do.
        self.loss = loss if getattr(loss, "distance", None) == self.distance else None

    def update_state(self, y_true, y_pred, sample_weight=None):
        kept = _kept(self.loss, y_pred)
        if kept is not None:
            return super().update_state(_masked_mean(kept["distances"],
                                                     kept["positive"] if self.positive else kept["negative"]))
        return super().update_state(mean_pair_distance(*global_batch(y_true, y_pred), self.positive, self.distance))

    def get_config(self):
        return {**super().get_config(), "distance": self.distance}


@keras.saving.register_keras_serializable(package="reprlearn")
class MeanPositiveDistance(_MeanPairDistance):
    """The batch's mean distance between items of the same class."""
    positive = True


@keras.saving.register_keras_serializable(package="reprlearn")
class MeanNegativeDistance(_MeanPairDistance):
    """The batch's mean distance between items of different classes."""
    positive = False


def in_batch_recall_at_1(labels, pairs) -> tf.Tensor:
    """Two views `[B, 2, d]`: the share of queries whose nearest reference of the batch (L2) is one of their id, and
    of references whose nearest query is, averaged."""
    labels, pairs = check_view_pairs(labels, pairs)
    d = cross_distance(pairs[:, 0], pairs[:, 1])
    same = tf.logical_not(cross_view_negatives(labels))
    hits = [tf.gather(same, tf.argmin(m, axis=1, output_type=tf.int32), batch_dims=1) for m in (d, tf.transpose(d))]
    return tf.reduce_mean(tf.cast(tf.concat(hits, 0), tf.float32))


@keras.saving.register_keras_serializable(package="reprlearn")
class InBatchRecall(keras.metrics.Mean):
    """Two-tower training: `in_batch_recall_at_1` of each batch, averaged over the epoch (logged as `recall_at_1`).

    Example:
        model.compile(optimizer="adam", loss=SymmetricInfoNCELoss(), metrics=[InBatchRecall()])
    """

    def __init__(self, name: str = "recall_at_1", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(in_batch_recall_at_1(y_true, y_pred))
