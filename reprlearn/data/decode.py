"""Decoding image files inside tf.data: JPEG, PNG, GIF and BMP bytes → float32 pixels of one size and channel count.

Resize modes for a target H × W (shrinking averages the pixels each output pixel covers, TensorFlow's `area`,
a box filter that antialiases; enlarging is bilinear):
- `stretch` resizes to H × W;
- `pad` scales by min(H/h, W/w) and centres the result on a black canvas (the aspect ratio is kept);
- `crop` scales by max(H/h, W/w) and takes the centre H × W (training with `data.augment` takes a random window).

Channels: grayscale is repeated to three; RGBA and grayscale+alpha are composited on black; palette images
become RGB (libpng and the GIF decoder expand them); 16-bit PNGs keep their brightness in 8 bits; three
channels become one by ITU-R 601 luma when `channels` is 1.

Example:
    spec = DecodeSpec((96, 96), 3, "pad")
    image = decode_contents(tf.io.read_file("cat.jpg"), spec)     # float32 [96, 96, 3] in [0, 255]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from reprlearn.errors import DataError

RESIZE_MODES = ("pad", "crop", "stretch")


@dataclass(frozen=True)
class DecodeSpec:
    """How every file of a streamed set becomes pixels: `image_size` (H, W), `channels` (1 or 3), `resize`."""

    image_size: tuple[int, int]
    channels: int
    resize: str

    def __post_init__(self):
        size = tuple(int(v) for v in self.image_size)
        if len(size) != 2 or min(size) < 1:
            raise DataError(f"data.image_size must be [height, width], both >= 1. Received: image_size="
                            f"{list(self.image_size)}")
        if self.channels not in (1, 3):
            raise DataError(f"data.channels must be 1 or 3. Received: channels={self.channels!r}")
        if self.resize not in RESIZE_MODES:
            raise DataError(f"data.resize must be one of {list(RESIZE_MODES)}. Received: resize={self.resize!r}")
        object.__setattr__(self, "image_size", size)


def _to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """float32 `[h, w, c]` with c of 1-4 → `[h, w, channels]`: alpha composited on black, then gray repeated to
    three channels or colour reduced to luma."""
    count = tf.shape(image)[-1]

    def composite():  # colour (or gray) times alpha: the image over a black background
        return image[..., :-1] * (image[..., -1:] / 255.0)

    opaque = tf.cond(tf.logical_or(tf.equal(count, 2), tf.equal(count, 4)), composite, lambda: image)
    colour = tf.equal(tf.shape(opaque)[-1], 3)
    if channels == 3:
        return tf.ensure_shape(tf.cond(colour, lambda: opaque, lambda: tf.repeat(opaque, 3, axis=-1)), [None, None, 3])
    luma = tf.constant([0.2989, 0.5870, 0.1140])  # ITU-R 601, as tf.image.rgb_to_grayscale
    return tf.ensure_shape(tf.cond(colour, lambda: tf.reduce_sum(opaque * luma, -1, keepdims=True), lambda: opaque),
                           [None, None, 1])


def _resize(image: tf.Tensor, size) -> tf.Tensor:
    """Area-averaged when shrinking (antialiased, and as fast as plain bilinear, where antialiased bilinear
    halves the pipeline's speed), bilinear when enlarging."""
    size = tf.convert_to_tensor(size, tf.int32)
    shrinking = tf.reduce_any(size < tf.shape(image)[:2])
    return tf.cond(shrinking, lambda: tf.image.resize(image, size, method="area"),
                   lambda: tf.image.resize(image, size, method="bilinear"))


def resize_image(image: tf.Tensor, spec: DecodeSpec, crop_seed: tf.Tensor | None = None) -> tf.Tensor:
    """Resizes float32 `[h, w, c]` to `spec.image_size` by `spec.resize`; `crop_seed` (a `[2]` stateless seed)
    makes `crop` take a random window instead of the centre."""
    target_h, target_w = spec.image_size
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    if spec.resize == "stretch":
        return _resize(image, [target_h, target_w])
    ratios = tf.constant([target_h, target_w], tf.float32) / shape
    scale = tf.reduce_min(ratios) if spec.resize == "pad" else tf.reduce_max(ratios)
    scaled = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
    if spec.resize == "pad":
        scaled = tf.minimum(scaled, [target_h, target_w])
        resized = _resize(image, scaled)
        top, left = (target_h - scaled[0]) // 2, (target_w - scaled[1]) // 2
        return tf.pad(resized, [[top, target_h - scaled[0] - top], [left, target_w - scaled[1] - left], [0, 0]])
    scaled = tf.maximum(scaled, [target_h, target_w])
    resized = _resize(image, scaled)
    spare = scaled - [target_h, target_w]
    if crop_seed is None:
        offset = spare // 2
    else:
        offset = tf.cast(tf.random.stateless_uniform([2], crop_seed) * tf.cast(spare + 1, tf.float32), tf.int32)
        offset = tf.minimum(offset, spare)
    return resized[offset[0]:offset[0] + target_h, offset[1]:offset[1] + target_w]


def decode_contents(contents: tf.Tensor, spec: DecodeSpec, crop_seed: tf.Tensor | None = None) -> tf.Tensor:
    """One file's bytes → float32 `[H, W, channels]` in [0, 255]; raises InvalidArgumentError for a bad file
    (the pipelines catch it and skip the file)."""
    image = tf.io.decode_image(contents, channels=0, expand_animations=False, dtype=tf.uint8)
    image = _to_channels(tf.cast(image, tf.float32), spec.channels)
    image = resize_image(image, spec, crop_seed)  # area averages and bilinear blends stay within [0, 255]
    target_h, target_w = spec.image_size
    return tf.ensure_shape(image, [target_h, target_w, spec.channels])


def decode_files(paths: list[str], spec: DecodeSpec) -> np.ndarray:
    """A few files decoded now as float32 `[n, H, W, C]` (figures, reload probes, calibration samples).

    Raises:
        DataError: a file cannot be read or decoded (naming it).
    """
    out = np.zeros((len(paths), *spec.image_size, spec.channels), np.float32)
    for i, path in enumerate(paths):
        try:
            out[i] = decode_contents(tf.io.read_file(path), spec).numpy()
        except (tf.errors.OpError, ValueError) as error:
            raise DataError(f"cannot decode image {path!r}: {getattr(error, 'message', error)}") from None
    return out
