"""Triplet losses with online mining: semi-hard (FaceNet), batch-hard and batch-all (Hermans et al. 2017).

All run in O(N²) memory: a miner picks one negative per anchor-positive pair as an index
into the distance matrix, and batch-all sums over every negative with sorted prefix sums
instead of an N×N×N tensor. The addons-named objects (`triplet_semihard_loss`, `TripletSemiHardLoss`,
`triplet_hard_loss`, `TripletHardLoss`) give tensorflow-addons' numbers everywhere addons is
finite, edge cases included (one-class batches, singleton classes: see the miners'
`addons_edge_cases`); where addons returns NaN (no positive pair) they return 0 with a zero
gradient. The general `TripletLoss(miner=...)` leaves anchors without a positive or a negative
out of the sum and of the count.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from reprlearn.losses.in_batch import InBatchLoss
from reprlearn.losses.miners import BatchHardMiner, Miner, SemiHardMiner, get_miner
from reprlearn.ops.distances import Distance, check_margin, check_metric, pairwise_distance
from reprlearn.ops.labels import check_batch, nan_unless_finite, pair_masks


class TripletTerms(NamedTuple):
    """Per anchor-positive pair (`[N, N]`, or their batch sums) float32: loss over its negatives, triplet count,
    active count."""
    loss: tf.Tensor
    triplets: tf.Tensor
    active: tf.Tensor


def _every_negative_terms(distances, negative, pair, margin) -> TripletTerms:
    """Batch-all: for each (a, p), `Σ_n max(margin + D_ap − D_an, 0)` over every negative n of a.

    The hinge is non-zero exactly for the `c` negatives with `D_an < margin + D_ap`, so with a's
    negative distances sorted ascending the sum is `c·(margin + D_ap) − (sum of the c smallest)`.
    """
    # top_k's values carry the gradient back to `distances`; entries past an anchor's negatives are +inf.
    negated_sorted, _ = tf.math.top_k(tf.where(negative, -distances, -np.inf), k=tf.shape(distances)[1])
    sorted_negatives = -negated_sorted
    finite = tf.math.is_finite(sorted_negatives)
    # count <= number of negatives <= N - 1 (the anchor is not its own negative): the exclusive cumsum suffices.
    prefix_sums = tf.cumsum(tf.where(finite, sorted_negatives, 0.0), axis=1, exclusive=True)
    threshold = distances + margin
    active = tf.searchsorted(sorted_negatives, threshold, side="left")
    loss = tf.cast(active, tf.float32) * threshold - tf.gather(prefix_sums, active, batch_dims=1)
    num_negatives = tf.reduce_sum(tf.cast(finite, tf.float32), axis=1, keepdims=True)
    return TripletTerms(tf.maximum(loss, 0.0) * pair, num_negatives * pair, tf.cast(active, tf.float32) * pair)


def triplet_terms(labels, embeddings, miner: Miner, margin: float, distance: Distance = "L2",
                  soft: bool = False) -> TripletTerms:
    """Mines the batch and returns each anchor-positive pair's loss, triplet and active-triplet counts."""
    distances = pairwise_distance(embeddings, distance)
    return _mined_terms(distances, *pair_masks(labels), miner, margin, soft)


def _mined_terms(distances, positive, negative, miner: Miner, margin: float, soft: bool) -> TripletTerms:
    """The batch's triplet terms; summed to scalars when the semi-hard miner works on positive slots."""
    if isinstance(miner, SemiHardMiner):
        return _semihard_terms(distances, positive, negative, miner, margin, soft)
    return _dense_terms(distances, positive, negative, miner, margin, soft)


def _hinge(gap, margin: float, soft: bool):
    return tf.nn.softplus(gap) if soft else tf.maximum(gap + margin, 0.0)


def _semihard_terms(distances, positive, negative, miner: SemiHardMiner, margin: float, soft: bool) -> TripletTerms:
    """Semi-hard terms on `[N, 16 or 32]` positive slots when every anchor has that few positives (no N²
    gather), on all N² pairs after sorting otherwise; summed over the batch so both branches agree in shape."""
    def on_slots(width):
        def terms():
            columns, pair, chosen = miner.mine_slots(distances, positive, negative, width)
            loss = _hinge(tf.gather(distances, columns, batch_dims=1) - tf.gather(distances, chosen, batch_dims=1),
                          margin, soft)
            pair = tf.cast(pair, tf.float32)
            return TripletTerms(tf.reduce_sum(loss * pair), tf.reduce_sum(pair),
                                tf.reduce_sum(tf.cast(loss > 0.0, tf.float32) * pair))
        return terms

    def on_all_pairs():
        return TripletTerms(*(tf.reduce_sum(t) for t in _dense_terms(distances, positive, negative, miner, margin,
                                                                      soft)))

    return TripletTerms(*miner.choose_path(positive, on_slots, on_all_pairs))


def _dense_terms(distances, positive, negative, miner: Miner, margin: float, soft: bool) -> TripletTerms:
    mined = miner.mine(distances, positive, negative)
    pair = tf.cast(mined.pair_mask, tf.float32)
    if mined.negative_index is None:
        return _every_negative_terms(distances, negative, pair, margin)
    loss = _hinge(distances - tf.gather(distances, mined.negative_index, batch_dims=1), margin, soft)
    return TripletTerms(loss * pair, pair, tf.cast(loss > 0.0, tf.float32) * pair)


def _mean(terms: TripletTerms, active_only: bool) -> tf.Tensor:
    count = terms.active if active_only else terms.triplets
    return tf.math.divide_no_nan(tf.reduce_sum(terms.loss), tf.reduce_sum(count))


def active_triplet_fraction(terms: TripletTerms) -> tf.Tensor:
    """The fraction of mined triplets with a non-zero loss (0 when nothing was mined)."""
    return tf.math.divide_no_nan(tf.reduce_sum(terms.active), tf.reduce_sum(terms.triplets))


def triplet_loss(labels, embeddings, miner="semi-hard", margin: float = 1.0, distance: Distance = "L2",
                 soft: bool = False, active_only: bool = False) -> tf.Tensor:
    """Triplet loss `max(margin + D_ap − D_an, 0)` over the triplets a miner selects, averaged.

    Example:
        triplet_loss(labels, embeddings, miner="batch-all", margin=0.2, active_only=True)

    Args:
        labels: `[N]` or `[N, 1]` class ids, int or float.
        embeddings: `[N, d]`; float16/bfloat16 are computed in float32.
        miner: `"semi-hard"`, `"batch-hard"`, `"batch-all"` or a `reprlearn.losses.miners.Miner`.
        margin: the hinge's margin.
        distance: a metric name or callable (see `reprlearn.ops.distances`).
        soft: use `softplus(D_ap − D_an)` instead of the hinge (no margin), as in addons' `soft=True`.
        active_only: average over the triplets with a non-zero loss only (Hermans' "batch-all ≠ 0").

    Returns:
        A scalar in the embeddings' dtype; 0 with a zero gradient when nothing was mined.
    """
    labels, embeddings = check_batch(labels, embeddings)
    terms = triplet_terms(labels, embeddings, _check_soft(get_miner(miner), soft), margin, distance, soft)
    return tf.cast(nan_unless_finite(_mean(terms, active_only), embeddings), embeddings.dtype)


def triplet_semihard_loss(y_true, y_pred, margin: float = 1.0, distance_metric: Distance = "L2") -> tf.Tensor:
    """tensorflow-addons' `triplet_semihard_loss`, in O(N²) memory: semi-hard mining, mean over positive pairs."""
    return triplet_loss(y_true, y_pred, SemiHardMiner(addons_edge_cases=True), margin, distance_metric)


def triplet_hard_loss(y_true, y_pred, margin: float = 1.0, soft: bool = False,
                      distance_metric: Distance = "L2") -> tf.Tensor:
    """tensorflow-addons' `triplet_hard_loss`: hardest positive and negative per anchor, mean over anchors."""
    return triplet_loss(y_true, y_pred, BatchHardMiner(addons_edge_cases=True), margin, distance_metric, soft)


def _check_soft(miner: Miner, soft: bool) -> Miner:
    if soft and not miner.picks_one_negative:
        raise ValueError(f"soft=True needs a miner that picks one negative per pair. Received: miner={miner!r}")
    return miner


@keras.saving.register_keras_serializable(package="reprlearn")
class TripletLoss(InBatchLoss):
    """Triplet loss with a pluggable miner, for `compile(loss=...)`: `y_true` labels, `y_pred` embeddings.

    Example:
        model.compile(optimizer="adam", loss=TripletLoss(miner="batch-hard", margin=0.3))

    Args:
        miner: `"semi-hard"`, `"batch-hard"`, `"batch-all"` or a `reprlearn.losses.miners.Miner`.
        margin, distance, soft, active_only: as in `triplet_loss`.
    """

    def __init__(self, miner="semi-hard", margin: float = 1.0, distance: Distance = "L2", soft: bool = False,
                 active_only: bool = False, name: str = "triplet_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.miner = _check_soft(get_miner(miner), soft)
        self.margin = check_margin(margin)
        self.distance = check_metric(distance)
        self.soft = bool(soft)
        self.active_only = bool(active_only)

    def batch_loss(self, distances, positive, negative):
        terms = _mined_terms(distances, positive, negative, self.miner, self.margin, self.soft)
        return _mean(terms, self.active_only), lambda: active_triplet_fraction(terms)

    def get_config(self):
        return {**super().get_config(), "miner": keras.saving.serialize_keras_object(self.miner),
                "margin": self.margin, "distance": self.distance, "soft": self.soft,
                "active_only": self.active_only}


@keras.saving.register_keras_serializable(package="reprlearn")
class TripletSemiHardLoss(TripletLoss):
    """tensorflow-addons' `TripletSemiHardLoss(margin, distance_metric)`, in O(N²) memory.

    Example:
        model.compile(optimizer="adam", loss=TripletSemiHardLoss(margin=0.2))
    """

    def __init__(self, margin: float = 1.0, distance_metric: Distance = "L2", name: str = "triplet_semihard_loss",
                 **kwargs):
        super().__init__(SemiHardMiner(addons_edge_cases=True), margin, distance_metric, name=name, **kwargs)

    def get_config(self):
        return {**InBatchLoss.get_config(self), "margin": self.margin, "distance_metric": self.distance}


@keras.saving.register_keras_serializable(package="reprlearn")
class TripletHardLoss(TripletLoss):
    """tensorflow-addons' `TripletHardLoss(margin, soft, distance_metric)`: batch-hard mining.

    Example:
        model.compile(optimizer="adam", loss=TripletHardLoss(margin=0.3, soft=False))
    """

    def __init__(self, margin: float = 1.0, soft: bool = False, distance_metric: Distance = "L2",
                 name: str = "triplet_hard_loss", **kwargs):
        super().__init__(BatchHardMiner(addons_edge_cases=True), margin, distance_metric, soft, name=name, **kwargs)

    def get_config(self):
        return {**InBatchLoss.get_config(self), "margin": self.margin, "soft": self.soft,
                "distance_metric": self.distance}
