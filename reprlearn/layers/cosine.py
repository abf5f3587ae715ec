"""The class-weight layer of AM-Softmax: cosines between L2-normalised embeddings and class weights."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="reprlearn")
class CosineClassifier(keras.layers.Layer):
    """`cos_ij = ê_i · ŵ_j`: each embedding against each class's weight column, both L2-normalised.

    Example:
        cosines = CosineClassifier(num_classes=5)(embeddings)   # [B, 5], in [-1, 1]

    Args:
        num_classes: C >= 2, the classes the weights are made for.

    Returns:
        `[B, C]` float32 cosines.
    """

    def __init__(self, num_classes: int, **kwargs):
        # float32 under any dtype policy: the cosines feed a softmax scaled by s (up to 30 and more).
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2. Received: num_classes={num_classes!r}")
        self.num_classes = num_classes

    def build(self, input_shape):
        self.class_weights = self.add_weight(shape=(int(input_shape[-1]), self.num_classes), name="class_weights",
                                             initializer="glorot_uniform", dtype="float32")

    def call(self, embeddings):
        unit = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)
        return tf.matmul(unit, tf.math.l2_normalize(self.class_weights, axis=0))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
