"""ArcFace (Deng et al., CVPR 2019): softmax cross-entropy with an additive angular margin on the true class.

Logits `s · cos(θ_y + m)` for the true class and `s · cos θ_j` for the others, with `cos θ` from a
`CosineClassifier` (L2-normalised embeddings against L2-normalised class weights; with `sub_centers` k the
largest of each class's k cosines, sub-centre ArcFace). Where θ_y + m would pass π the logit is
`s · (cos θ_y − m sin m)` instead, so the loss keeps falling as θ_y shrinks (as pytorch-metric-learning
2.9 and InsightFace do). `cos(θ + m)` is computed as `cos θ cos m − sin θ sin m`, without `acos`, so the
gradient stays finite at θ = 0.

Example:
    cosines = CosineClassifier(num_classes, sub_centers=3)(tower.output)
    model = keras.Model(tower.input, cosines)
    model.compile(optimizer="adam", loss=ArcFaceLoss(scale=64.0, margin=0.5))
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from reprlearn.losses.labelled import LabelledLoss
from reprlearn.ops.checks import check_number_in, check_positive_number
from reprlearn.ops.distances import safe_sqrt
from reprlearn.ops.labels import check_batch, check_class_ids


def _check_angle(margin) -> float:
    return check_number_in("margin", margin, 0.0, math.pi / 2, "[0, π/2) radians (28.6° is 0.499)")


def _arcface(labels, cosines, scale: float, margin: float, caller: str) -> tf.Tensor:
    cosines = tf.cast(cosines, tf.float32)
    classes = tf.shape(cosines)[1]
    labels = check_class_ids(labels, classes, caller)
    target = tf.clip_by_value(tf.gather(cosines, labels[:, None], batch_dims=1)[:, 0], -1.0, 1.0)
    sine = safe_sqrt(1.0 - tf.square(target))
    with_margin = tf.where(target >= -math.cos(margin),                       # θ <= π − m
                           target * math.cos(margin) - sine * math.sin(margin),
                           target - margin * math.sin(margin))
    # The true class's logit replaced in place: cheaper than adding a one-hot [N, C] correction.
    rows = tf.stack([tf.range(tf.shape(labels)[0]), labels], axis=1)
    logits = tf.tensor_scatter_nd_update(scale * cosines, rows, scale * with_margin)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def arcface_loss(labels, cosines, scale: float = 64.0, margin: float = 0.5) -> tf.Tensor:
    """Mean ArcFace loss over a batch: PML's `ArcFaceLoss(margin=math.degrees(margin), scale=scale)`.

    Example:
        arcface_loss([0, 2], cosines=tf.constant([[0.9, 0.1, 0.0], [0.2, 0.1, 0.7]]))

    Args:
        labels: `[N]` or `[N, 1]` class ids in [0, C).
        cosines: `[N, C]` cosines to each class (the sub-centre maximum already taken); any float dtype, computed
            in float32.
        scale: s > 0 (ArcFace and PML: 64).
        margin: m in [0, π/2) radians (0.5; PML's default is 28.6° = 0.4992 rad).

    Returns:
        The scalar mean loss, float32.

    Raises:
        ValueError: a label outside [0, C), naming it and C.
    """
    labels, cosines = check_batch(labels, cosines, "labels", "cosines")
    return _arcface(labels, cosines, check_positive_number("scale", scale), _check_angle(margin), "arcface_loss")


@keras.saving.register_keras_serializable(package="reprlearn")
class ArcFaceLoss(LabelledLoss):
    """ArcFace for `compile(loss=...)`: `y_true` class ids, `y_pred` the cosines of a `CosineClassifier`.

    Example:
        model.compile(optimizer="adam", loss=ArcFaceLoss())

    Args:
        scale, margin: as in `arcface_loss`.
    """

    def __init__(self, scale: float = 64.0, margin: float = 0.5, name: str = "arcface_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale = check_positive_number("scale", scale)
        self.margin = _check_angle(margin)

    def call(self, y_true, y_pred):
        check_batch(y_true, y_pred, "y_true", "y_pred")
        return tf.cast(_arcface(y_true, y_pred, self.scale, self.margin, "ArcFaceLoss"), y_pred.dtype)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "margin": self.margin}
