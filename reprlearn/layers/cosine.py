"""The class-weight layer of AM-Softmax, ArcFace and Proxy-Anchor: cosines between L2-normalised embeddings and
class weights (Proxy-Anchor's proxies; sub-centre ArcFace's k weights per class)."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="reprlearn")
class CosineClassifier(keras.layers.Layer):
    """`cos_ij = ê_i · ŵ_j`: each embedding against each class's weight column, both L2-normalised.

    With `sub_centers` k > 1 each class has k weight columns (columns `c·k … c·k + k − 1`) and its cosine is
    the largest of the k (sub-centre ArcFace, Deng et al. 2020).

    Example:
        cosines = CosineClassifier(num_classes=5)(embeddings)   # [B, 5], in [-1, 1]

    Args:
        num_classes: C >= 2, the classes the weights are made for.
        sub_centers: k >= 1 weight columns per class.

    Returns:
        `[B, C]` float32 cosines.
    """

    def __init__(self, num_classes: int, sub_centers: int = 1, **kwargs):
        # float32 under any dtype policy: the cosines feed a softmax scaled by s (up to 30 and more).
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2. Received: num_classes={num_classes!r}")
        if isinstance(sub_centers, bool) or not isinstance(sub_centers, int) or sub_centers < 1:
            raise ValueError(f"sub_centers must be an int >= 1. Received: sub_centers={sub_centers!r}")
        self.num_classes, self.sub_centers = num_classes, sub_centers

    def build(self, input_shape):
        self.class_weights = self.add_weight(shape=(int(input_shape[-1]), self.num_classes * self.sub_centers),
                                             name="class_weights",
                                             initializer="glorot_uniform", dtype="float32")

    def call(self, embeddings):
        unit = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)
        cosines = tf.matmul(unit, tf.math.l2_normalize(self.class_weights, axis=0))
        if self.sub_centers == 1:
            return cosines
        return tf.reduce_max(tf.reshape(cosines, [-1, self.num_classes, self.sub_centers]), axis=2)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "sub_centers": self.sub_centers}
