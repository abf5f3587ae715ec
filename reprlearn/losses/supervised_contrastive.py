"""The supervised contrastive loss (SupCon, Khosla et al. 2020); with two augmented views per image as the
only positives it is SimCLR's NT-Xent (Chen et al. 2020), the self-supervised instance-discrimination loss.

Each item is an anchor; its logits against every other item of the batch are `−scale · D` (with the
angular distance D = 1 − cos this is `scale · cos` up to a constant, the usual `cos / τ` with τ =
1 / scale). The anchor's loss is the mean over its positives p of `−log softmax(logits)_p`, the
softmax taken over all other items, positives included; the batch's loss is the mean over anchors
with at least one positive.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from reprlearn.losses.in_batch import InBatchLoss, masked_logsumexp
from reprlearn.losses.pairs import misranked_share
from reprlearn.ops.distances import Distance, check_metric, pairwise_distance
from reprlearn.ops.labels import check_batch, nan_unless_finite, pair_masks


def _check_scale(scale: float) -> float:
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
        raise ValueError(f"scale must be a number > 0 (the inverse temperature). Received: scale={scale!r}")
    return float(scale)


def _anchor_terms(distances, positive, negative, scale: float) -> tuple[tf.Tensor, tf.Tensor]:
    """`[N]` each anchor's loss (0 without positives) and `[N]` float, 1 for anchors with a positive."""
    logits = -scale * distances
    # A row without others (a batch of one) has no positive either: its normaliser is never used.
    log_normaliser = masked_logsumexp(logits, tf.logical_or(positive, negative), 0.0)
    positive_f = tf.cast(positive, tf.float32)
    count = tf.reduce_sum(positive_f, axis=1)
    positive_logits = tf.reduce_sum(tf.where(positive, logits, 0.0), axis=1)
    loss = tf.math.divide_no_nan(count * log_normaliser - positive_logits, count)
    return loss, tf.cast(count > 0, tf.float32)


def _mean_over_anchors(loss, anchors) -> tf.Tensor:
    return tf.math.divide_no_nan(tf.reduce_sum(loss * anchors), tf.reduce_sum(anchors))


def supervised_contrastive_loss(labels, embeddings, scale: float = 10.0, distance: Distance = "angular") -> tf.Tensor:
    """The supervised contrastive loss (SupCon) over a batch; NT-Xent when each label marks two views of one image.

    Example:
        supervised_contrastive_loss(labels=[0, 0, 1, 1], embeddings=tf.random.normal([4, 8]), scale=10.0)

    Args:
        labels: `[N]` or `[N, 1]` ids: class ids, or image ids whose items are augmented views of that image.
        embeddings: `[N, d]`; float16/bfloat16 are computed in float32.
        scale: the inverse temperature 1 / τ multiplying the negated distances (10 = τ 0.1).
        distance: a metric name or callable (see `reprlearn.ops.distances`); `"angular"` gives SupCon's cosines.

    Returns:
        A scalar in the embeddings' dtype; 0 with a zero gradient for a batch without a positive pair.
    """
    labels, embeddings = check_batch(labels, embeddings)
    distances = pairwise_distance(embeddings, check_metric(distance))
    loss, anchors = _anchor_terms(distances, *pair_masks(labels), _check_scale(scale))
    return tf.cast(nan_unless_finite(_mean_over_anchors(loss, anchors), embeddings), embeddings.dtype)


@keras.saving.register_keras_serializable(package="reprlearn")
class SupervisedContrastiveLoss(InBatchLoss):
    """The supervised contrastive loss for `compile(loss=...)`: `y_true` ids, `y_pred` embeddings.

    Example:
        model.compile(optimizer="adam", loss=SupervisedContrastiveLoss(scale=5.0))

    Args:
        scale, distance: as in `supervised_contrastive_loss`.

    Its training metric `ActiveFraction` reports the share of positive pairs with a negative ranked closer.
    """

    takes_pair_miner = True

    def __init__(self, scale: float = 10.0, distance: Distance = "angular", name: str = "supervised_contrastive_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale = _check_scale(scale)
        self.distance = check_metric(distance)

    def batch_loss(self, distances, positive, negative):
        loss, anchors = _anchor_terms(distances, positive, negative, self.scale)
        return _mean_over_anchors(loss, anchors), lambda: misranked_share(distances, positive, negative)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "distance": self.distance}
