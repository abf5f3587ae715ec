"""Dense and convolutional autoencoders: encoder, decoder and autoencoder models sharing one set of layers.

Models take raw 0-255 pixels (the encoder rescales to [0, 1]) and reconstruct in [0, 1].

Example:
    parts = conv_autoencoder((28, 28, 1), filters=[32, 64], code_dim=32)
    parts.autoencoder.compile("adam", loss="mse")
    parts.autoencoder.fit(images, images / 255.0)
    codes = parts.encoder.predict(images)
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import keras
import numpy as np

from reprlearn.errors import ConfigError
from reprlearn.layers.unpooling import MaxPoolingWithArgmax2D, MaxUnpooling2D

DECODERS = ("unpool", "transpose", "upsample")


class AutoencoderParts(NamedTuple):
    """`encoder`: images → code. `decoder`: code → images in [0, 1] (for `unpool`: `[code, *indices]`).
    `autoencoder`: images → reconstructions. `pooling_indices`: images → the argmax indices the `unpool`
    decoder needs (None for the other decoders)."""
    encoder: keras.Model
    decoder: keras.Model
    autoencoder: keras.Model
    pooling_indices: Optional[keras.Model] = None


def _check_code_dim(code_dim: int) -> int:
    if not isinstance(code_dim, (int, np.integer)) or code_dim < 1:
        raise ConfigError(f"code_dim must be a positive int. Received: code_dim={code_dim!r}")
    return int(code_dim)


def dense_autoencoder(input_shape: Sequence[int], hidden: Sequence[int] = (256,), code_dim: int = 32,
                      activation: Optional[str] = "relu", linear: bool = False,
                      name: str = "dense_autoencoder") -> AutoencoderParts:
    """A fully connected autoencoder, mirrored: hidden widths down to the code, then back up.

    Args:
        input_shape: `(H, W, C)` of the images.
        hidden: widths between the input and the code (mirrored in the decoder).
        code_dim: the code size.
        activation: hidden activation.
        linear: no hidden layers, no activations anywhere: the autoencoder that must match PCA.
    """
    code_dim = _check_code_dim(code_dim)
    input_shape = tuple(int(v) for v in input_shape)
    size = int(np.prod(input_shape))
    if linear:
        hidden, activation = (), None
    down = [keras.layers.Dense(width, activation=activation, name=f"enc_dense_{i}") for i, width in enumerate(hidden)]
    to_code = keras.layers.Dense(code_dim, name="code", dtype="float32")
    up = [keras.layers.Dense(width, activation=activation, name=f"dec_dense_{i}")
          for i, width in enumerate(reversed(hidden))]
    to_pixels = keras.layers.Dense(size, activation=None if linear else "sigmoid", name="pixels", dtype="float32")
    reshape = keras.layers.Reshape(input_shape, name="image", dtype="float32")

    images = keras.Input(input_shape, name="images")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1.0 / 255.0)(images))
    for layer in down:
        x = layer(x)
    code = to_code(x)

    def decode(z):
        for layer in up:
            z = layer(z)
        return reshape(to_pixels(z))

    code_input = keras.Input((code_dim,), name="code")
    encoder = keras.Model(images, code, name=f"{name}_encoder")
    decoder = keras.Model(code_input, decode(code_input), name=f"{name}_decoder")
    autoencoder = keras.Model(images, decode(code), name=name)
    return AutoencoderParts(encoder, decoder, autoencoder)


def check_poolable(input_shape: Sequence[int], poolings: int, decoder: str) -> None:
    """Raises if `poolings` 2×2 poolings of `input_shape` cannot be inverted by `decoder`."""
    height, width = input_shape[:2]
    if min(height, width) < 2 ** poolings:
        raise ConfigError(f"images of {height}x{width} are too small for {poolings} 2x2 poolings. "
                         f"Received: input_shape={tuple(input_shape)}")
    if decoder != "unpool" and (height % 2 ** poolings or width % 2 ** poolings):
        raise ConfigError(f"a '{decoder}' decoder doubles sizes, so it cannot invert {poolings} poolings of "
                         f"{height}x{width} (needs multiples of {2 ** poolings}; the 'unpool' decoder can). "
                         f"Received: input_shape={tuple(input_shape)}")


def conv_autoencoder(input_shape: Sequence[int], filters: Sequence[int] = (32, 64), code_dim: int = 32,
                     decoder: str = "unpool", name: str = "conv_autoencoder") -> AutoencoderParts:
    """A convolutional autoencoder: conv + 2×2 max-pool blocks, a dense code, and a mirrored decoder.

    Args:
        input_shape: `(H, W, C)`.
        filters: one conv + pool block per entry.
        code_dim: the code size.
        decoder: `"unpool"` (max-unpooling to the encoder's argmax positions; any image size),
            `"transpose"` (stride-2 transposed convolutions) or `"upsample"` (nearest upsampling + conv);
            the last two need sizes divisible by 2^len(filters).
    """
    code_dim = _check_code_dim(code_dim)
    if decoder not in DECODERS:
        raise ConfigError(f"decoder must be one of {list(DECODERS)}. Received: decoder={decoder!r}")
    if not filters:
        raise ConfigError(f"filters must name at least one conv block. Received: filters={filters!r}")
    input_shape = tuple(int(v) for v in input_shape)
    check_poolable(input_shape, len(filters), decoder)

    convs = [keras.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"enc_conv_{i}")
             for i, f in enumerate(filters)]
    pools = [MaxPoolingWithArgmax2D(2, name=f"enc_pool_{i}") for i in range(len(filters))]
    sizes = [input_shape[:2]]
    for _ in filters:
        sizes.append(tuple(-(-s // 2) for s in sizes[-1]))
    bottom = (*sizes[-1], filters[-1])
    to_code = keras.layers.Dense(code_dim, name="code", dtype="float32")
    from_code = keras.layers.Dense(int(np.prod(bottom)), activation="relu", name="dec_dense")
    unshape = keras.layers.Reshape(bottom, name="dec_reshape")
    widths = list(reversed(filters[:-1])) + [filters[0]]
    ups, dec_convs = [], []
    for i, (size, width) in enumerate(zip(reversed(sizes[:-1]), widths)):
        if decoder == "unpool":
            ups.append(MaxUnpooling2D(2, output_size=size, name=f"dec_unpool_{i}"))
            dec_convs.append(keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=f"dec_conv_{i}"))
        elif decoder == "transpose":
            ups.append(None)
            dec_convs.append(keras.layers.Conv2DTranspose(width, 3, strides=2, padding="same", activation="relu",
                                                          name=f"dec_convt_{i}"))
        else:
            ups.append(keras.layers.UpSampling2D(2, name=f"dec_up_{i}"))
            dec_convs.append(keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=f"dec_conv_{i}"))
    to_pixels = keras.layers.Conv2D(input_shape[2], 3, padding="same", activation="sigmoid", name="pixels",
                                  dtype="float32")

    images = keras.Input(input_shape, name="images")
    x = keras.layers.Rescaling(1.0 / 255.0)(images)
    indices = []
    for conv, pool in zip(convs, pools):
        x, index = pool(conv(x))
        indices.append(index)
    code = to_code(keras.layers.Flatten()(x))

    def decode(z, pool_indices):
        y = unshape(from_code(z))
        for up, conv, index in zip(ups, dec_convs, reversed(pool_indices)):
            if decoder == "unpool":
                y = up(y, index)
            elif up is not None:
                y = up(y)
            y = conv(y)
        return to_pixels(y)

    code_input = keras.Input((code_dim,), name="code")
    encoder = keras.Model(images, code, name=f"{name}_encoder")
    autoencoder = keras.Model(images, decode(code, indices), name=name)
    if decoder == "unpool":
        index_inputs = [keras.Input((*sizes[i + 1], filters[i]), dtype="int32", name=f"indices_{i}")
                        for i in range(len(filters))]
        decoder_model = keras.Model([code_input, *index_inputs], decode(code_input, index_inputs),
                                    name=f"{name}_decoder")
        return AutoencoderParts(encoder, decoder_model, autoencoder,
                                keras.Model(images, indices, name=f"{name}_pooling_indices"))
    decoder_model = keras.Model(code_input, decode(code_input, [None] * len(filters)), name=f"{name}_decoder")
    return AutoencoderParts(encoder, decoder_model, autoencoder)
