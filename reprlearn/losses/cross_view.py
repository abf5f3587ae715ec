"""Losses across two views: a batch of B matched pairs (query i ↔ reference i), every other reference a negative.

`y_true` holds one id per pair `[B]` (the place, or the class where pairs carry one): pairs of one id are never
each other's negatives. `y_pred` holds the two towers' embeddings stacked per pair, `[B, 2, d]` (query first);
`reprlearn.models.two_tower` builds the model that outputs them.

- `CrossViewSoftMarginTripletLoss` (CVM-Net, Hu et al. CVPR 2018; SAFA): for every pair i and every in-batch
  negative j, in both directions, `log(1 + exp(α(d(q_i, r_i) − d(q_i, r_j))))` and
  `log(1 + exp(α(d(r_i, q_i) − d(r_i, q_j))))`; the mean over those 2·B·(B − 1) triplets (fewer when pairs share
  an id); α = 10; d the distance of the embeddings (L2 of unit-length embeddings by default).
- `SymmetricInfoNCELoss` (CLIP-style): logits `S = q·rᵀ / τ`; `½(CE(S, diag) + CE(Sᵀ, diag))`, where a pair's
  own match is the target and the other pairs of its id are left out of the softmax. A learnt τ lives in the
  model (`reprlearn.models.two_tower.LogitScale`), which then hands the loss views already scaled (τ = 1 here).
- `TwoViewLoss`: any one-tower in-batch loss over the 2B embeddings of both views, labelled by pair id.

Under a `tf.distribute` strategy the losses see the global batch (`reprlearn.ops.replicas`), so a 2-replica
step equals the 1-device step. Float16 and bfloat16 embeddings are computed in float32.

Example:
    two_towers.compile(optimizer="adam", loss=CrossViewSoftMarginTripletLoss(alpha=10.0))
"""

from __future__ import annotations

import keras
import tensorflow as tf

from reprlearn.losses.in_batch import InBatchLoss, masked_logsumexp
from reprlearn.losses.labelled import LabelledLoss
from reprlearn.ops.checks import check_positive_number
from reprlearn.ops.distances import check_metric, cross_distance
from reprlearn.ops.labels import check_label_values, labels_vector, nan_unless_finite
from reprlearn.ops.replicas import global_batch, per_replica_share


def check_view_pairs(labels, pairs, labels_name: str = "labels", pairs_name: str = "pairs"):
    """`(labels [B], pairs [B, 2, d])` as tensors, checked by their static shapes; ValueError naming the argument.

    Example:
        labels, pairs = check_view_pairs([0, 1], tf.zeros([2, 2, 8]))
    """
    check_label_values(labels, labels_name)
    pairs, labels = tf.convert_to_tensor(pairs), tf.convert_to_tensor(labels)
    if pairs.shape.rank is not None and (pairs.shape.rank != 3 or pairs.shape[1] not in (None, 2)):
        raise ValueError(f"{pairs_name} must be [B, 2, d]: each pair's query and reference embeddings (a two-tower "
                         f"model's output). Received: {pairs_name}.shape={tuple(pairs.shape)}")
    labels = labels_vector(labels)
    if labels.shape[0] is not None and pairs.shape[0] is not None and labels.shape[0] != pairs.shape[0]:
        raise ValueError(f"{labels_name} and {pairs_name} must have one row per pair. Received: "
                         f"{labels_name}.shape={tuple(labels.shape)}, {pairs_name}.shape={tuple(pairs.shape)}")
    return labels, pairs


def cross_view_negatives(labels) -> tf.Tensor:
    """`[B, B]` bool: reference j is a negative of query i (and query j of reference i) when their ids differ."""
    labels = labels_vector(labels)
    return tf.not_equal(labels[:, None], labels[None, :])


def _views(pairs) -> tuple[tf.Tensor, tf.Tensor]:
    pairs = tf.cast(pairs, tf.float32)
    return pairs[:, 0], pairs[:, 1]


def _soft_margin_triplet(labels, pairs, alpha: float, distance: str) -> tf.Tensor:
    queries, references = _views(pairs)
    d = cross_distance(queries, references, distance)       # d[i, j] = d(q_i, r_j)
    matched = tf.linalg.diag_part(d)[:, None]               # d(q_i, r_i) = d(r_i, q_i)
    negative = cross_view_negatives(labels)
    query_terms = tf.nn.softplus(alpha * (matched - d))     # anchor q_i, negative r_j
    reference_terms = tf.nn.softplus(alpha * (matched - tf.transpose(d)))  # anchor r_i, negative q_j
    total = tf.reduce_sum(tf.where(negative, query_terms + reference_terms, 0.0))
    return tf.math.divide_no_nan(total, 2.0 * tf.reduce_sum(tf.cast(negative, tf.float32)))


def _info_nce(labels, pairs, temperature: float) -> tf.Tensor:
    queries, references = _views(pairs)
    logits = tf.matmul(queries, references, transpose_b=True) / temperature
    candidates = tf.logical_or(cross_view_negatives(labels), tf.cast(tf.eye(tf.shape(logits)[0]), tf.bool))
    matched = tf.linalg.diag_part(logits)
    query_terms = masked_logsumexp(logits, candidates, 0.0) - matched
    reference_terms = masked_logsumexp(tf.transpose(logits), tf.transpose(candidates), 0.0) - matched
    return 0.5 * (tf.reduce_mean(query_terms) + tf.reduce_mean(reference_terms))


def cross_view_soft_margin_triplet_loss(labels, pairs, alpha: float = 10.0, distance: str = "L2") -> tf.Tensor:
    """The weighted soft-margin triplet over every in-batch negative, both directions (CVM-Net, SAFA).

    Example:
        cross_view_soft_margin_triplet_loss([0, 1, 2], tf.random.normal([3, 2, 16]))

    Args:
        labels: `[B]` or `[B, 1]` pair or place ids; pairs of one id are never each other's negatives.
        pairs: `[B, 2, d]`, each pair's query and reference embeddings.
        alpha: the weight α inside `log(1 + exp(α·(d⁺ − d⁻)))`, > 0 (papers: 10).
        distance: `"L2"`, `"squared-L2"` or `"angular"` between the views' embeddings.

    Returns:
        A scalar in `pairs`' dtype: the mean over valid triplets; 0 where no pair has a negative; NaN for a
        non-finite input.
    """
    labels, pairs = check_view_pairs(labels, pairs)
    value = _soft_margin_triplet(labels, pairs, check_positive_number("alpha", alpha), check_metric(distance))
    return tf.cast(nan_unless_finite(value, pairs), pairs.dtype)


def symmetric_info_nce_loss(labels, pairs, temperature: float = 0.07) -> tf.Tensor:
    """CLIP's symmetric InfoNCE over a batch of matched pairs.

    Example:
        symmetric_info_nce_loss([0, 1, 2], tf.math.l2_normalize(tf.random.normal([3, 2, 16]), -1))

    Args:
        labels: `[B]` or `[B, 1]` pair or place ids; another pair of the same id is left out of the softmax.
        pairs: `[B, 2, d]`, each pair's query and reference embeddings (unit length, as the towers give them).
        temperature: τ > 0 in `S = q·rᵀ / τ`.

    Returns:
        A scalar in `pairs`' dtype; NaN for a non-finite input.
    """
    labels, pairs = check_view_pairs(labels, pairs)
    value = _info_nce(labels, pairs, check_positive_number("temperature", temperature))
    return tf.cast(nan_unless_finite(value, pairs), pairs.dtype)


class CrossViewLoss(LabelledLoss):
    """The base of the two-view losses: checks `(y_true [B], y_pred [B, 2, d])`, takes the global batch under a
    strategy (`cross_replica`), returns this replica's share. Subclasses implement `pairs_loss`."""

    def __init__(self, name: str, cross_replica: bool = True, **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(cross_replica, bool):
            raise ValueError(f"cross_replica must be True or False. Received: cross_replica={cross_replica!r}")
        self.cross_replica = cross_replica

    def pairs_loss(self, labels, pairs) -> tf.Tensor:
        raise NotImplementedError

    def call(self, y_true, y_pred):
        labels, pairs = check_view_pairs(y_true, y_pred, "y_true", "y_pred")
        if self.cross_replica:
            labels, pairs = global_batch(labels, pairs)
        value = nan_unless_finite(self.pairs_loss(labels, pairs), pairs)
        return per_replica_share(tf.cast(value, y_pred.dtype))

    def get_config(self):
        return {**super().get_config(), "cross_replica": self.cross_replica}


@keras.saving.register_keras_serializable(package="reprlearn")
class CrossViewSoftMarginTripletLoss(CrossViewLoss):
    """`cross_view_soft_margin_triplet_loss` as a Keras loss: `y_true` pair ids `[B]`, `y_pred` `[B, 2, d]`.

    Example:
        model.compile(optimizer="adam", loss=CrossViewSoftMarginTripletLoss(alpha=10.0))

    Args:
        alpha: α > 0.
        distance: between the views' embeddings.
        cross_replica: under a strategy, the loss of the global batch (every replica's pairs are negatives).
    """

    def __init__(self, alpha: float = 10.0, distance: str = "L2", cross_replica: bool = True,
                 name: str = "cross_view_soft_margin_triplet_loss", **kwargs):
        super().__init__(name=name, cross_replica=cross_replica, **kwargs)
        self.alpha = check_positive_number("alpha", alpha)
        self.distance = check_metric(distance)

    def pairs_loss(self, labels, pairs):
        return _soft_margin_triplet(labels, pairs, self.alpha, self.distance)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "distance": self.distance}


@keras.saving.register_keras_serializable(package="reprlearn")
class SymmetricInfoNCELoss(CrossViewLoss):
    """`symmetric_info_nce_loss` as a Keras loss: `y_true` pair ids `[B]`, `y_pred` `[B, 2, d]`.

    Example:
        model.compile(optimizer="adam", loss=SymmetricInfoNCELoss(temperature=0.07))

    Args:
        temperature: τ > 0; 1.0 when a learnt scale in the model has already multiplied the views.
        cross_replica: under a strategy, the loss of the global batch.
    """

    def __init__(self, temperature: float = 0.07, cross_replica: bool = True, name: str = "symmetric_info_nce_loss",
                 **kwargs):
        super().__init__(name=name, cross_replica=cross_replica, **kwargs)
        self.temperature = check_positive_number("temperature", temperature)

    def pairs_loss(self, labels, pairs):
        return _info_nce(labels, pairs, self.temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="reprlearn")
class TwoViewLoss(LabelledLoss):
    """A one-tower in-batch loss over both views: the B queries and B references as 2B embeddings labelled by pair
    id (query i and reference i are positives, as are all items of one id).

    Example:
        model.compile(optimizer="adam", loss=TwoViewLoss(TripletLoss("semi-hard", margin=0.2)))

    Args:
        loss: an `InBatchLoss` (contrastive, triplet, multi-similarity, ...); it gathers the global batch itself.
    """

    def __init__(self, loss, name: str | None = None, **kwargs):
        loss = keras.losses.deserialize(loss) if isinstance(loss, dict) else loss
        if not isinstance(loss, InBatchLoss):
            raise ValueError(f"TwoViewLoss takes a one-tower in-batch loss (an InBatchLoss). Received: loss={loss!r}")
        super().__init__(name=name or f"two_view_{loss.name}", **kwargs)
        self.loss = loss

    def call(self, y_true, y_pred):
        labels, pairs = check_view_pairs(y_true, y_pred, "y_true", "y_pred")
        embeddings = tf.concat([pairs[:, 0], pairs[:, 1]], axis=0)
        return self.loss.call(tf.concat([labels, labels], axis=0), embeddings)

    def get_config(self):
        return {**super().get_config(), "loss": keras.losses.serialize(self.loss)}
