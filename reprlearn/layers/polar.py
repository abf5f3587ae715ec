"""Cross-view geometry: the polar transform of an overhead image, and the circular padding and pooling that make a
panorama tower indifferent to where the heading starts.

The polar transform (SAFA, Shi et al. NeurIPS 2019; the sampling formula lives in `reprlearn.ops.polar`) turns an
overhead image of `A_h × A_w` pixels into a `height × width` strip that lines up with a ground-level panorama: the
strip's top row is the overhead image's outer circle, its bottom row the centre, and its width goes once
round the heading. A panorama taken facing another way is a circular shift of the strip along its width, which
`CircularPadding2D` (convolutions that wrap round the width) and `WidthPooling` (a pooling over the whole width)
make no difference to.

Example:
    strip = PolarTransform(32, 128)(overhead)        # [B, 64, 64, C] → [B, 32, 128, C]
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from reprlearn.ops.checks import check_positive_integer
from reprlearn.ops.polar import polar_sampling


@keras.saving.register_keras_serializable(package="reprlearn")
class PolarTransform(keras.layers.Layer):
    """An overhead image `[B, A_h, A_w, C]` → a panorama-like strip `[B, height, width, C]` (SAFA's polar transform).

    Samples bilinearly; a coordinate outside the image is clamped to its border. The sampling grid depends on the
    sizes only, so it is computed once when the layer is built.

    Example:
        strip = PolarTransform(32, 128)(keras.Input((64, 64, 3)))

    Args:
        height: rows of the strip (the radius, outer circle at the top).
        width: columns of the strip (the heading, once round).

    Returns:
        The strip, in the input's dtype.
    """

    def __init__(self, height: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.height = check_positive_integer("height", height)
        self.width = check_positive_integer("width", width)

    def build(self, input_shape):
        source_height, source_width = input_shape[1], input_shape[2]
        if source_height is None or source_width is None:
            raise ValueError(f"PolarTransform needs a known overhead image size. Received: input_shape={input_shape}")
        # Flat pixel indices of the four neighbours and their bilinear weights, [4, height·width].
        self._indices, self._weights = polar_sampling(source_height, source_width, self.height, self.width)
        super().build(input_shape)

    def call(self, inputs):
        batch, channels = tf.shape(inputs)[0], tf.shape(inputs)[3]
        flat = tf.reshape(inputs, [batch, -1, channels])
        weights = tf.cast(self._weights, inputs.dtype)
        strip = tf.add_n([tf.gather(flat, self._indices[k], axis=1) * weights[k][None, :, None] for k in range(4)])
        return tf.reshape(strip, [batch, self.height, self.width, channels])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


@keras.saving.register_keras_serializable(package="reprlearn")
class CircularPadding2D(keras.layers.Layer):
    """Pads a feature map `[B, H, W, C]` by `padding` rows of zeros above and below and `padding` columns taken from
    the other side (the width wraps round, as a panorama's heading does).

    A `padding="valid"` convolution after it is the "same" convolution of a strip whose ends meet: a circular
    shift of the input shifts its output by the same columns.

    Example:
        x = CircularPadding2D(1)(x); x = keras.layers.Conv2D(32, 3)(x)

    Args:
        padding: rows and columns added on each side (a k×k convolution needs k // 2).
    """

    def __init__(self, padding: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.padding = check_positive_integer("padding", padding)

    def call(self, inputs):
        p = self.padding
        wrapped = tf.concat([inputs[:, :, -p:], inputs, inputs[:, :, :p]], axis=2)
        return tf.pad(wrapped, [[0, 0], [p, p], [0, 0], [0, 0]])

    def compute_output_shape(self, input_shape):
        grow = lambda size: None if size is None else size + 2 * self.padding  # noqa: E731
        return (input_shape[0], grow(input_shape[1]), grow(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}


@keras.saving.register_keras_serializable(package="reprlearn")
class WidthPooling(keras.layers.Layer):
    """Pools a feature map `[B, H, W, C]` over its whole width: unchanged by any circular shift of the columns, so a
    panorama tower built of `CircularPadding2D` convolutions gives one embedding whatever its heading (exactly for
    shifts by a multiple of the tower's total stride).

    `avg` and `max` give `[B, H, C]`. `fourier` gives the magnitudes of the discrete Fourier transform along the
    width, `[B, H, W // 2 + 1, C]`: a shift changes only the phases, so the magnitudes keep how the features are
    laid out round the panorama (their spacing), which a mean or a max forgets. Its first entry is W × the mean.

    Example:
        rows = WidthPooling("fourier")(feature_map)

    Args:
        mode: `avg`, `max` or `fourier`.
    """

    MODES = ("avg", "max", "fourier")

    def __init__(self, mode: str = "avg", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {list(self.MODES)}. Received: mode={mode!r}")
        self.mode = mode

    def call(self, inputs):
        if self.mode == "avg":
            return tf.reduce_mean(inputs, axis=2)
        if self.mode == "max":
            return tf.reduce_max(inputs, axis=2)
        # The DFT as two matrix products with its cosine and sine bases, not tf.signal.rfft: TFLite, ONNX (tf2onnx
        # has no Real/Imag of an FFT) and XLA all take a matmul.
        width = inputs.shape[2]
        if width is None:
            raise ValueError(f"WidthPooling('fourier') needs a known width. Received: input shape {inputs.shape}")
        angles = 2.0 * np.pi * np.outer(np.arange(width), np.arange(width // 2 + 1)) / width
        rows = tf.reshape(tf.transpose(tf.cast(inputs, tf.float32), [0, 1, 3, 2]), [-1, width])  # [B·H·C, W]
        real = tf.matmul(rows, tf.constant(np.cos(angles), tf.float32))
        imaginary = tf.matmul(rows, tf.constant(-np.sin(angles), tf.float32))
        # |z| with a floor inside the root: the gradient of |z| at z = 0 is undefined.
        magnitude = tf.sqrt(tf.square(real) + tf.square(imaginary) + 1e-12)
        shape = tf.shape(inputs)
        magnitude = tf.reshape(magnitude, [shape[0], shape[1], shape[3], width // 2 + 1])
        return tf.cast(tf.transpose(magnitude, [0, 1, 3, 2]), inputs.dtype)

    def compute_output_shape(self, input_shape):
        if self.mode == "fourier":
            width = None if input_shape[2] is None else input_shape[2] // 2 + 1
            return (input_shape[0], input_shape[1], width, input_shape[3])
        return (input_shape[0], input_shape[1], input_shape[3])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
