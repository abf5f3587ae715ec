"""AM-Softmax (Wang et al. 2018): softmax cross-entropy on scaled cosines with an additive margin on the true class.

`L = CE(s · (cos − m · onehot(y)))`, with `cos` from `reprlearn.layers.CosineClassifier`
(L2-normalised embeddings against L2-normalised class weights). The margin makes the true class
win by at least m in cosine; the scale s sharpens the softmax of values in [-1, 1].

Example:
    cosines = CosineClassifier(num_classes)(tower.output)
    model = keras.Model(tower.input, cosines)
    model.compile(optimizer="adam", loss=AMSoftmaxLoss(scale=30.0, margin=0.35))
"""

from __future__ import annotations

import keras
import tensorflow as tf

from reprlearn.losses.labelled import LabelledLoss
from reprlearn.ops.checks import check_non_negative_number, check_positive_number
from reprlearn.ops.labels import check_batch, check_class_ids


def am_softmax_loss(labels, cosines, scale: float = 30.0, margin: float = 0.35) -> tf.Tensor:
    """Mean AM-Softmax loss over a batch.

    Args:
        labels: `[B]` or `[B, 1]` class ids in [0, C).
        cosines: `[B, C]` cosines to each class (any float dtype; computed in float32).
        scale: s > 0.
        margin: m >= 0, subtracted from the true class's cosine.

    Returns:
        The scalar mean loss, float32.

    Raises:
        ValueError: a label outside [0, C), naming it and C (InvalidArgumentError inside a traced step).
    """
    labels, cosines = check_batch(labels, cosines, "labels", "cosines")
    cosines = tf.cast(cosines, tf.float32)
    classes = tf.shape(cosines)[1]
    labels = check_class_ids(labels, classes, "am_softmax_loss")
    logits = scale * (cosines - margin * tf.one_hot(labels, classes, dtype=tf.float32))
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


@keras.saving.register_keras_serializable(package="reprlearn")
class AMSoftmaxLoss(LabelledLoss):
    """AM-Softmax for `compile(loss=...)`: `y_true` class ids, `y_pred` the cosines of a `CosineClassifier`.

    Example:
        model.compile(optimizer="adam", loss=AMSoftmaxLoss(scale=20.0, margin=0.1))

    Args:
        scale: s > 0 (Wang et al.: 30; JRD's code: 20; pytorch-metric-learning's `CosFaceLoss`: 64, so
            `AMSoftmaxLoss(scale=64.0, margin=0.35)` gives its numbers).
        margin: m >= 0 (Wang et al.: 0.35; JRD's code: 0.1).
    """

    def __init__(self, scale: float = 30.0, margin: float = 0.35, name: str = "am_softmax_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale = check_positive_number("scale", scale)
        self.margin = check_non_negative_number("margin", margin)

    def call(self, y_true, y_pred):
        return tf.cast(am_softmax_loss(y_true, y_pred, self.scale, self.margin), y_pred.dtype)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "margin": self.margin}
