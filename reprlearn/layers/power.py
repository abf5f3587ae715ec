"""Power normalisation: `sign(x)·|x|^p`, which evens out a few dominant activations before pooling."""

from __future__ import annotations

import math
import numbers

import keras


@keras.saving.register_keras_serializable(package="reprlearn")
class SignedPower(keras.layers.Layer):
    """Elementwise `sign(x)·|x|^exponent` (exponent 0.5: the signed square root of Perronnin et al. 2010).

    Example:
        x = SignedPower(0.5)(feature_map)

    Args:
        exponent: p in (0, 1]; 1 is the identity.
    """

    def __init__(self, exponent: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(exponent, numbers.Real) or not math.isfinite(exponent) or not 0 < exponent <= 1:
            raise ValueError(f"exponent must be in (0, 1]. Received: exponent={exponent!r}")
        self.exponent = float(exponent)

    def call(self, inputs):
        return keras.ops.sign(inputs) * keras.ops.power(keras.ops.abs(inputs), self.exponent)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "exponent": self.exponent}
