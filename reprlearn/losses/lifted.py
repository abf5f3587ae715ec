"""Lifted structured loss (Song, Xiang, Jegelka, Savarese, CVPR 2016), in O(N²) memory.

For every positive pair (i, j), with non-squared L2 distances D and margin α:
`J_ij = log(Σ_{k∈Neg(i)} exp(α − D_ik) + Σ_{l∈Neg(j)} exp(α − D_jl)) + D_ij` and the loss is
`Σ_{unordered (i,j)} max(J_ij, 0)² / (2·|P_u|)`. Each row's log-sum-exp over its negatives is
computed once, so `J` is `logaddexp(L_i, L_j) + D_ij`: no N²×N tile as in tensorflow-addons.
`J` is needed on positive pairs only: when no item has more than 32 positives (P×K batches),
it is computed on `[N, 16 or 32]` positive slots instead of all N² pairs (chosen in the graph).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from reprlearn.losses.in_batch import InBatchLoss, masked_logsumexp
from reprlearn.ops.distances import check_margin, pairwise_distance
from reprlearn.ops.labels import by_positive_count, check_batch, nan_unless_finite, pair_masks, positive_slots

# A row without negatives has log-sum-exp −inf. A large finite stand-in keeps every
# value and gradient finite (−inf − (−inf) would be NaN) and still zeroes its hinge.
_NO_NEGATIVE = -1e30


def _pair_logaddexp(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """`log(exp(a) + exp(b))` for the rows of a positive pair, broadcast, as `a + softplus(b − a)` (one fused pass).

    Exact whenever a and b are both finite log-sum-exps or both `_NO_NEGATIVE`, which holds for every positive
    pair: two items of one class have the same negatives. Other pairs are masked out by the caller; for them the
    value stays finite (at worst `_NO_NEGATIVE + softplus(1e30)`), so the masked gradient is 0, never NaN.
    """
    return a + tf.nn.softplus(b - a)


def _mean_and_active_share(distances, positive, negative, margin: float) -> tuple[tf.Tensor, tf.Tensor]:
    """The loss and the share of positive pairs with `J > 0`, from positive slots where they fit, else all pairs."""
    row = margin + masked_logsumexp(-distances, negative, _NO_NEGATIVE)

    def on_slots(width):
        def compute():
            columns, filled = positive_slots(positive, width)                   # [N, W]
            objective = (_pair_logaddexp(row[:, None], tf.gather(row, columns))
                         + tf.gather(distances, columns, batch_dims=1))
            return _mean(objective, filled), _active_share(objective, filled)
        return compute

    def on_all_pairs():
        objective = _pair_logaddexp(row[:, None], row[None, :]) + distances
        return _mean(objective, positive), _active_share(objective, positive)

    return by_positive_count(positive, on_slots, on_all_pairs)


def _mean(objective: tf.Tensor, positive: tf.Tensor) -> tf.Tensor:
    # Σ over ordered pairs counts each unordered pair twice: Σ_u / (2|P_u|) = Σ_ordered / (2|P_ordered|).
    total = tf.reduce_sum(tf.where(positive, tf.square(tf.maximum(objective, 0.0)), 0.0))
    return tf.math.divide_no_nan(total, 2.0 * tf.reduce_sum(tf.cast(positive, tf.float32)))


def lifted_struct_loss(labels, embeddings, margin: float = 1.0) -> tf.Tensor:
    """tensorflow-addons' `lifted_struct_loss(labels, embeddings, margin)`, in O(N²) memory.

    Example:
        lifted_struct_loss(labels=[0, 0, 1, 1], embeddings=tf.random.normal([4, 8]), margin=1.0)

    Args:
        labels: `[N]` or `[N, 1]` class ids, int or float.
        embeddings: `[N, d]`; float16/bfloat16 are computed in float32.
        margin: α, the margin on negative distances.

    Returns:
        A scalar in the embeddings' dtype; 0 with a zero gradient for a batch without a positive pair.
    """
    labels, embeddings = check_batch(labels, embeddings)
    mean, _ = _mean_and_active_share(pairwise_distance(embeddings, "L2"), *pair_masks(labels), margin)
    return tf.cast(nan_unless_finite(mean, embeddings), embeddings.dtype)


def _active_share(objective: tf.Tensor, positive: tf.Tensor) -> tf.Tensor:
    active = tf.cast(tf.logical_and(positive, objective > 0.0), tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(active), tf.reduce_sum(tf.cast(positive, tf.float32)))


@keras.saving.register_keras_serializable(package="reprlearn")
class LiftedStructLoss(InBatchLoss):
    """The lifted structured loss for `compile(loss=...)`: `y_true` labels, `y_pred` embeddings.

    Example:
        model.compile(optimizer="adam", loss=LiftedStructLoss(margin=1.0))

    Args:
        margin: α, the margin on negative distances (non-squared L2).
    """

    distance = "L2"  # the distance it is defined on

    def __init__(self, margin: float = 1.0, name: str = "lifted_struct_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = check_margin(margin)

    def batch_loss(self, distances, positive, negative):
        mean, active_fraction = _mean_and_active_share(distances, positive, negative, self.margin)
        return mean, lambda: active_fraction

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}
