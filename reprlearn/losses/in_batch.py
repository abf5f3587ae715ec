"""The base of every in-batch loss: one distance matrix per batch, kept for the training metrics of the step."""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from reprlearn.losses.labelled import LabelledLoss
from reprlearn.losses.pair_miners import get_pair_miner
from reprlearn.ops.distances import pairwise_distance
from reprlearn.ops.labels import check_batch, nan_unless_finite, pair_masks
from reprlearn.ops.replicas import global_batch, per_replica_share

# Replicas of one step (tf.distribute traces one per device) each keep an entry; a few more are harmless.
_MEMO_ENTRIES = 16


def masked_logsumexp(logits: tf.Tensor, mask: tf.Tensor, empty: float) -> tf.Tensor:
    """Per row, `log Σ_{k: mask} exp(logits_k)`, stable; `empty` for a row where `mask` has no True."""
    has_any = tf.reduce_any(mask, axis=1)
    # Masked-out entries become -inf: exp gives 0 and so does its gradient (never inf·0).
    masked = tf.where(mask, logits, -np.inf)
    row_max = tf.stop_gradient(tf.where(has_any, tf.reduce_max(masked, axis=1), 0.0))
    total = tf.reduce_sum(tf.exp(masked - row_max[:, None]), axis=1)
    return tf.where(has_any, row_max + tf.math.log(tf.where(has_any, total, 1.0)), empty)


class BatchMemo:
    """What a loss computed for the batch `y_pred` (distances, pair masks, its active fraction), until the next batch.

    Keras calls a compiled model's loss and then its metrics on the same `y_pred` tensor within one
    train step. A metric that finds its `y_pred` here reads the loss's numbers instead of computing the
    distance matrix (and, for triplets, the mining) again. Any other tensor is a miss, and the metric
    computes for itself, so the metrics stay correct on their own or with a loss they were not given.

    Example:
        loss = TripletSemiHardLoss()
        loss(labels, embeddings)
        loss.memo.get(embeddings)["distances"]   # the [N, N] matrix the loss used
    """

    def __init__(self):
        self._entries: list[tuple[object, dict]] = []

    def keep(self, y_pred, **values) -> None:
        """Remembers `values` (tensors, or zero-argument functions computing them) for the batch `y_pred`."""
        self._entries = [*self._entries[1 - _MEMO_ENTRIES:], (y_pred, values)]

    def get(self, y_pred) -> dict | None:
        """The values kept for exactly this `y_pred` tensor, or None."""
        return next((values for kept, values in reversed(self._entries) if kept is y_pred), None)


class InBatchLoss(LabelledLoss):
    """A loss over the pairs of a batch: `y_true` labels `[N]` or `[N, 1]`, `y_pred` embeddings `[N, d]`.

    `call` computes the distance matrix and pair masks once, hands them to `batch_loss`, and keeps
    them with the batch's active fraction in `memo` for `ActiveFraction` and the mean-distance
    metrics. Subclasses set `self.distance` and implement `batch_loss`.

    Under a `tf.distribute` strategy with `cross_replica=True` (the default) the loss is that of
    the global batch: embeddings and labels are all-gathered across replicas and each replica's
    gradient flows into its own slice only, so one step equals the single-device step on the same
    global batch (see `reprlearn.ops.replicas`). With `cross_replica=False` each replica mines only its
    own slice. Either way each replica returns its share (value / replicas), as Keras expects.
    """

    distance = "L2"
    # Pair losses score the positive and negative pairs they are given, so a pair miner can choose them.
    takes_pair_miner = False

    def __init__(self, name: str, cross_replica: bool = True, pair_miner=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(cross_replica, bool):
            raise ValueError(f"cross_replica must be True or False. Received: cross_replica={cross_replica!r}")
        if pair_miner is not None and not self.takes_pair_miner:
            raise ValueError(f"{type(self).__name__} scores triplets or classes, not the pairs a pair miner keeps. "
                             f"Received: pair_miner={pair_miner!r}")
        self.cross_replica = cross_replica
        self.pair_miner = None if pair_miner is None else get_pair_miner(pair_miner)
        self.memo = BatchMemo()

    def _scored_pairs(self, distances, positive, negative):
        """The pairs the loss scores: every pair of the batch, or those the pair miner keeps."""
        if self.pair_miner is None:
            return positive, negative
        return self.pair_miner.mine(distances, positive, negative)

    def batch_loss(self, distances, positive, negative) -> tuple[tf.Tensor, Callable[[], tf.Tensor]]:
        """`(loss, active_fraction)`: the scalar loss and a function computing the batch's active fraction."""
        raise NotImplementedError

    def _batch(self, y_true, y_pred):
        """The labels and embeddings the loss sees: the global batch under a strategy when `cross_replica`."""
        return global_batch(y_true, y_pred) if self.cross_replica else (y_true, y_pred)

    def call(self, y_true, y_pred):
        check_batch(y_true, y_pred, "y_true", "y_pred")
        labels, embeddings = self._batch(y_true, y_pred)
        distances = pairwise_distance(embeddings, self.distance)
        positive, negative = pair_masks(labels)
        value, active_fraction = self.batch_loss(distances, *self._scored_pairs(distances, positive, negative))
        # The distance metrics report every pair of the batch, mined or not.
        self.memo.keep(y_pred, distances=distances, positive=positive, negative=negative,
                       active_fraction=active_fraction)
        return per_replica_share(tf.cast(nan_unless_finite(value, embeddings), y_pred.dtype))

    def active_fraction(self, y_true, y_pred) -> tf.Tensor:
        """The fraction of mined triplets (or pairs) with a non-zero loss in this batch (the global batch
        under a strategy when `cross_replica`)."""
        labels, embeddings = self._batch(y_true, y_pred)
        distances = pairwise_distance(tf.cast(embeddings, tf.float32), self.distance)
        return self.batch_loss(distances, *self._scored_pairs(distances, *pair_masks(labels)))[1]()

    def get_config(self):
        config = {**super().get_config(), "cross_replica": self.cross_replica}
        if self.pair_miner is not None:
            config["pair_miner"] = keras.saving.serialize_keras_object(self.pair_miner)
        return config
