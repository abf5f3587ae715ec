"""The pair features a learned verification head reads: |a − b| and a ⊙ b, side by side."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="reprlearn")
class PairFeatures(keras.layers.Layer):
    """`[|a − b|, a ⊙ b]` of two embedding batches, row by row; symmetric in a and b.

    Example:
        features = PairFeatures()([embedding_a, embedding_b])   # [B, 2d]

    Returns:
        `[B, 2d]` features: the absolute difference, then the elementwise product.
    """

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"PairFeatures takes a list of two tensors. Received: {type(inputs).__name__}")
        first, second = inputs
        return ops.concatenate([ops.abs(first - second), first * second], axis=-1)

    def compute_output_shape(self, input_shape):
        first = tuple(input_shape[0])
        return first[:-1] + (None if first[-1] is None else 2 * first[-1],)
