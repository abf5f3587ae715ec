"""Gradient orientation histograms of an image (the descriptor of HOG and SIFT, without training).

Nothing in it is fit to any class, so it describes classes a tower never saw as well as the ones it did; on
Fashion-MNIST and digits it retrieves unseen classes better than raw pixels on every class split we measured
(docs/studies.md), where the layers a tower learns from five classes do not.
"""

from __future__ import annotations

import math
import numbers

import keras

from reprlearn.ops.checks import check_positive_integer


@keras.saving.register_keras_serializable(package="reprlearn")
class OrientationHistogram(keras.layers.Layer):
    """Per-cell histograms of gradient orientation, weighted by gradient magnitude, as one flat vector.

    The image is averaged over its channels; central differences give the gradient (0 on the border rows and
    columns); each pixel's orientation in [0, 2π) is shared linearly between its two nearest of `bins` equal
    sectors (bin k is centred on 2πk/bins), weighted by the gradient's length. The per-pixel histograms are
    averaged over a `cells × cells` grid (adaptive cells when the size does not divide) and raised to `power`:
    0.5 compares histograms under the Hellinger kernel, as RootSIFT does. The output is not normalised.

    Example:
        features = OrientationHistogram(bins=12, cells=4)(images)   # (batch, 4 * 4 * 12)

    Args:
        bins: orientation sectors over the full circle (signed gradients: dark-to-light differs from light-to-dark).
        cells: cells per side of the pooling grid.
        power: exponent in (0, 1] applied to the pooled histograms; 1 leaves them.

    Returns:
        A float32 tensor `(batch, cells * cells * bins)`, cell-major (row, column, bin).
    """

    def __init__(self, bins: int = 12, cells: int = 4, power: float = 0.5, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.bins = check_positive_integer("bins", bins)
        self.cells = check_positive_integer("cells", cells)
        if isinstance(power, bool) or not isinstance(power, numbers.Real) or not math.isfinite(power) \
                or not 0 < power <= 1:
            raise ValueError(f"power must be in (0, 1]. Received: power={power!r}")
        self.power = float(power)
        self.pool = keras.layers.AdaptiveAveragePooling2D(self.cells, dtype="float32")

    def build(self, input_shape):
        self.pool.build((input_shape[0], input_shape[1], input_shape[2], self.bins))

    def call(self, images):
        ops = keras.ops
        gray = ops.mean(ops.cast(images, "float32"), axis=-1, keepdims=True)
        gx = ops.pad(gray[:, :, 2:, :] - gray[:, :, :-2, :], [[0, 0], [0, 0], [1, 1], [0, 0]])
        gy = ops.pad(gray[:, 2:, :, :] - gray[:, :-2, :, :], [[0, 0], [1, 1], [0, 0], [0, 0]])
        magnitude = ops.sqrt(gx * gx + gy * gy)
        angle = ops.arctan2(gy, gx)
        angle = ops.where(angle < 0.0, angle + 2.0 * math.pi, angle)
        position = angle * (self.bins / (2.0 * math.pi))          # in [0, bins]
        centres = ops.arange(self.bins, dtype="float32")
        distance = ops.abs(position - centres)                      # (batch, h, w, bins) by broadcasting
        distance = ops.minimum(distance, self.bins - distance)      # around the circle
        share = ops.maximum(1.0 - distance, 0.0)                    # linear between the two nearest bins
        histogram = self.pool(share * magnitude)
        if self.power != 1.0:
            histogram = ops.power(histogram, self.power)
        return ops.reshape(histogram, (-1, self.cells * self.cells * self.bins))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.cells * self.cells * self.bins)

    def get_config(self):
        return {**super().get_config(), "bins": self.bins, "cells": self.cells, "power": self.power}
