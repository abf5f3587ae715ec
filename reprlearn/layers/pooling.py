"""Generalized-mean (GeM) pooling and a fixed per-pixel colour transform (a backbone's own preprocessing)."""

from __future__ import annotations

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="reprlearn")
class GeneralizedMeanPooling(keras.layers.Layer):
    """GeM pooling (Radenović, Tolias, Chum, TPAMI 2018): `f_c = (mean_hw max(x, ε)^p)^(1/p)`, p learnt.

    p = 1 is average pooling and p → ∞ max pooling; the exponent starts at `initial_p` and trains with
    the network.

    Example:
        vector = GeneralizedMeanPooling()(feature_map)      # [B, H, W, C] → [B, C]

    Args:
        initial_p: the exponent's starting value (> 0; 3 in the paper).
        epsilon: the floor activations are clamped to (the map is ReLU'd first).
    """

    def __init__(self, initial_p: float = 3.0, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        if not float(initial_p) > 0:
            raise ValueError(f"initial_p must be > 0. Received: initial_p={initial_p!r}")
        if not float(epsilon) > 0:
            raise ValueError(f"epsilon must be > 0. Received: epsilon={epsilon!r}")
        self.initial_p, self.epsilon = float(initial_p), float(epsilon)

    def build(self, input_shape):
        self.p = self.add_weight(name="p", shape=(), initializer=keras.initializers.Constant(self.initial_p),
                                 dtype="float32")

    def call(self, inputs):
        x = keras.ops.maximum(keras.ops.cast(inputs, "float32"), self.epsilon)
        p = keras.ops.maximum(self.p, self.epsilon)  # a step must not flip the exponent's sign
        return keras.ops.power(keras.ops.mean(keras.ops.power(x, p), axis=(1, 2)), 1.0 / p)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "initial_p": self.initial_p, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="reprlearn")
class PixelAffine(keras.layers.Layer):
    """A fixed affine map of each pixel's channels, `y = x · Mᵀ + b`: scaling, mean/std normalisation and RGB→BGR
    reordering are all of this form, so one layer carries any `keras.applications` preprocessing.

    Example:
        x = PixelAffine([[1 / 127.5, 0, 0], [0, 1 / 127.5, 0], [0, 0, 1 / 127.5]], [-1, -1, -1])(images)

    Args:
        matrix: `[C_out, C_in]`.
        offset: `[C_out]`.
    """

    def __init__(self, matrix, offset, **kwargs):
        super().__init__(**kwargs)
        self.matrix = np.asarray(matrix, np.float32)
        self.offset = np.asarray(offset, np.float32)
        if self.matrix.ndim != 2 or self.offset.shape != (self.matrix.shape[0],):
            raise ValueError(f"matrix must be [C_out, C_in] and offset [C_out]. Received: matrix.shape="
                             f"{self.matrix.shape}, offset.shape={self.offset.shape}")

    def call(self, inputs):
        return keras.ops.matmul(inputs, keras.ops.transpose(self.matrix)) + self.offset

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.matrix.shape[0])

    def get_config(self):
        return {**super().get_config(), "matrix": self.matrix.tolist(), "offset": self.offset.tolist()}
