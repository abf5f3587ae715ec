"""Max-pooling that remembers where each maximum was, and max-unpooling that puts values back there.

tensorflow-addons `MaxUnpooling2D` semantics: indices come from `tf.nn.max_pool_with_argmax`
(per image, `include_batch_in_index=False`: `(y·W + x)·C + c`), and unpooling scatters each
pooled value to its argmax position in a zero tensor, summing where windows overlap. Unlike
addons, an explicit `output_size` is accepted, which odd input sizes need: a 7×7 map pools
to 4×4 and must unpool to 7×7, not 8×8, for the indices to decode correctly.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them. Received: {name}={value!r}")
    return pair


def _padding(padding: str) -> str:
    if str(padding).upper() not in ("SAME", "VALID"):
        raise ValueError(f"padding must be 'SAME' or 'VALID'. Received: padding={padding!r}")
    return str(padding).upper()


@keras.saving.register_keras_serializable(package="reprlearn")
class MaxPoolingWithArgmax2D(keras.layers.Layer):
    """Max-pooling that also returns the flat argmax index of each pooled value.

    Example:
        pooled, indices = MaxPoolingWithArgmax2D(2)(features)   # indices: int32, same shape as pooled

    Args:
        pool_size, strides: an int or a pair; strides default to pool_size.
        padding: "SAME" or "VALID".

    Returns:
        `[pooled, indices]`.
    """

    def __init__(self, pool_size=2, strides=None, padding: str = "SAME", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _pair(pool_size, "pool_size")
        self.strides = _pair(strides if strides is not None else pool_size, "strides")
        self.padding = _padding(padding)

    def call(self, inputs):
        pooled, indices = tf.nn.max_pool_with_argmax(inputs, ksize=self.pool_size, strides=self.strides,
                                                     padding=self.padding, output_dtype=tf.int64,
                                                     include_batch_in_index=False)
        return [pooled, tf.cast(indices, tf.int32)]

    def compute_output_shape(self, input_shape):
        def size(n, k, s):
            if n is None:
                return None
            return -(-n // s) if self.padding == "SAME" else (n - k) // s + 1
        shape = (input_shape[0], size(input_shape[1], self.pool_size[0], self.strides[0]),
                 size(input_shape[2], self.pool_size[1], self.strides[1]), input_shape[3])
        return [shape, shape]

    def compute_output_spec(self, inputs):
        shape, _ = self.compute_output_shape(inputs.shape)
        return [keras.KerasTensor(shape, dtype=inputs.dtype), keras.KerasTensor(shape, dtype="int32")]

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding}


@keras.saving.register_keras_serializable(package="reprlearn")
class MaxUnpooling2D(keras.layers.Layer):
    """Scatters pooled values back to their argmax positions (tensorflow-addons semantics).

    Example:
        pooled, indices = MaxPoolingWithArgmax2D(2)(x)               # x: [B, 7, 7, C]
        restored = MaxUnpooling2D(2, output_size=(7, 7))(pooled, indices)   # or ([pooled, indices])

    Args:
        pool_size, strides, padding: those of the pooling being inverted. As in tensorflow-addons, strides
            default to `(2, 2)` whatever the pool size: pass the pooling's strides when they differ.
        output_size: `(height, width)` of the unpooled map; default: what the pooling would have come
            from without padding, `input · strides` for SAME (addons' rule), which is wrong for odd sizes.

    Returns:
        `[B, height, width, C]`, zero except at the argmax positions.
    """

    def __init__(self, pool_size=(2, 2), strides=(2, 2), padding: str = "SAME", output_size=None, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _pair(pool_size, "pool_size")
        self.strides = _pair(strides, "strides")
        self.padding = _padding(padding)
        self.output_size = None if output_size is None else _pair(output_size, "output_size")

    def _output_hw(self, height, width):
        if self.output_size is not None:
            return self.output_size
        if self.padding == "SAME":
            return height * self.strides[0], width * self.strides[1]
        return ((height - 1) * self.strides[0] + self.pool_size[0],
                (width - 1) * self.strides[1] + self.pool_size[1])

    def call(self, updates, indices=None):
        if indices is None:  # called as layer([updates, indices])
            if not isinstance(updates, (list, tuple)) or len(updates) != 2:
                raise ValueError(f"MaxUnpooling2D takes (updates, indices) or [updates, indices]. "
                                 f"Received: inputs={updates!r}")
            updates, indices = updates
        shape = tf.shape(updates)
        batch, channels = shape[0], shape[3]
        height, width = self._output_hw(shape[1], shape[2])
        indices = tf.cast(indices, tf.int32)
        # Each index is (y·W + x)·C + c within its image; offset it by its image's start in the flat output.
        image_size = height * width * channels
        flat = indices + tf.reshape(tf.range(batch) * image_size, [-1, 1, 1, 1])
        out = tf.scatter_nd(tf.reshape(flat, [-1, 1]), tf.reshape(updates, [-1]), [batch * image_size])
        return tf.reshape(out, tf.stack([batch, height, width, channels]))

    def compute_output_shape(self, updates_shape, indices_shape=None):
        updates = updates_shape[0] if indices_shape is None else updates_shape
        if updates[1] is None or updates[2] is None:
            height = width = None
            if self.output_size is not None:
                height, width = self.output_size
        else:
            height, width = self._output_hw(updates[1], updates[2])
        return (updates[0], height, width, updates[3])

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding, "output_size": self.output_size}
