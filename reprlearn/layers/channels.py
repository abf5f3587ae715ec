"""Grayscale to the three channels a pretrained backbone expects."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="reprlearn")
class RepeatChannels(keras.layers.Layer):
    """Repeats a one-channel image `[B, H, W, 1]` to `channels` channels.

    Example:
        rgb = RepeatChannels(3)(gray)   # [B, H, W, 3]

    Args:
        channels: number of output channels, >= 1.
    """

    def __init__(self, channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        if int(channels) < 1:
            raise ValueError(f"channels must be >= 1. Received: channels={channels}")
        self.channels = int(channels)

    def call(self, inputs):
        return keras.ops.repeat(inputs, self.channels, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] * self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package="reprlearn")
class Luma(keras.layers.Layer):
    """An RGB image `[B, H, W, 3]` → its luma `[B, H, W, 1]` (ITU-R 601, as the decoders' `channels: 1`).

    Example:
        gray = Luma()(rgb)
    """

    WEIGHTS = (0.2989, 0.5870, 0.1140)

    def call(self, inputs):
        return keras.ops.sum(inputs * keras.ops.convert_to_tensor(self.WEIGHTS, inputs.dtype), axis=-1,
                             keepdims=True)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)
