"""Decoding image files inside tf.data: any image Pillow reads → float32 pixels of one size and channel count.

TensorFlow's own decoders are the fast path (JPEG, PNG, GIF, BMP, WebP); TIFF is decoded by Pillow inside the
same `tf.data` map (`tf.numpy_function`, run by the map's parallel calls).
JPEGs decode with the accurate integer DCT (`INTEGER_ACCURATE`, libjpeg's islow, as Pillow): the pixels equal
Pillow's, where TensorFlow's default fast DCT differs by up to 3 levels. EXIF orientation is applied as a viewer
shows the photo: a JPEG whose first segment is an EXIF block (or second, after JFIF's standard APP0), as cameras
and editors write it, has its orientation tag read (Pillow, header only) and the decoded pixels turned and flipped
to match; Pillow-read files are turned by Pillow. A SavedModel's
`embed_encoded` has no Python to call (`pillow=False`): it reads JPEG, PNG, GIF, BMP and WebP, the same pixels,
but does not apply EXIF orientation.

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

import io
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


def pillow_pixels(image) -> np.ndarray:
    """A Pillow image (EXIF orientation applied) as uint8 `[h, w, c]`: c = 1 (gray), 2 (gray + alpha), 3 (RGB) or
    4 (RGBA); 16- and 32-bit gray keep the top 8 bits of the range they use; palette images become RGB(A), CMYK and
    YCbCr RGB."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(image, dtype=np.int64)
        bits = 16 if mode.startswith("I;16") or array.max(initial=0) < 65536 else 32
        return (np.clip(array, 0, 2 ** bits - 1) >> (bits - 8)).astype(np.uint8)[..., None]
    if mode == "F":
        return np.clip(np.round(np.asarray(image, np.float32)), 0, 255).astype(np.uint8)[..., None]
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"), np.uint8)[..., None]
    if mode in ("LA", "La"):
        return np.asarray(image.convert("LA"), np.uint8)
    alpha = mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info)
    return np.asarray(image.convert("RGBA" if alpha else "RGB"), np.uint8)


def _file_bytes(contents) -> io.BytesIO:
    """`tf.numpy_function` hands a scalar string over as a 0-d object array."""
    return io.BytesIO(contents.item() if isinstance(contents, np.ndarray) else contents)


def _pillow_decode(contents) -> np.ndarray:
    from PIL import Image

    with Image.open(_file_bytes(contents)) as image:
        image.load()
        return pillow_pixels(image)


def _exif_orientation(contents) -> np.int32:
    """The EXIF orientation tag (1-8) of an image file's bytes; 1 when it has none or it cannot be read."""
    from PIL import Image

    try:
        with Image.open(_file_bytes(contents)) as image:
            value = int(image.getexif().get(0x0112, 1))
    except Exception:  # an unreadable header: TensorFlow's decoder says what is wrong with the file
        value = 1
    return np.int32(value if 1 <= value <= 8 else 1)


def _oriented(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """`[h, w, c]` turned and flipped as EXIF orientation 1-8 says (as PIL.ImageOps.exif_transpose does)."""
    def transpose():
        return tf.transpose(image, [1, 0, 2])

    return tf.switch_case(orientation - 1, [
        lambda: image,                                            # 1: as stored
        lambda: tf.reverse(image, [1]),                           # 2: mirrored
        lambda: tf.reverse(image, [0, 1]),                        # 3: turned 180°
        lambda: tf.reverse(image, [0]),                           # 4: flipped top to bottom
        transpose,                                                # 5: transposed
        lambda: tf.reverse(transpose(), [1]),                     # 6: turned 90° clockwise
        lambda: tf.reverse(transpose(), [0, 1]),                  # 7: transversed
        lambda: tf.reverse(transpose(), [0]),                     # 8: turned 90° counter-clockwise
    ])


def _decoded(contents: tf.Tensor, pillow: bool) -> tf.Tensor:
    """One file's bytes → float32 `[h, w, c]` in [0, 255] as a viewer shows it (see the module doc); float before it
    is turned, as oneDNN has no uint8 transpose on most CPUs (and says so in a log line).

    A handful of byte comparisons choose the decoder: each op costs every image a few microseconds, and searching
    the header for "Exif" cost a fifth of the pipeline's speed.
    """
    head = tf.strings.substr(contents, 0, 4)
    is_jpeg = tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff")

    def jpeg():
        image = tf.cast(tf.io.decode_jpeg(contents, dct_method="INTEGER_ACCURATE"), tf.float32)
        if not pillow:
            return image
        # An EXIF APP1 block first (offset 6), or after JFIF's standard 16-byte APP0 (offset 24).
        has_exif = tf.reduce_any(tf.equal(tf.strings.substr(contents, [6, 24], [6, 6]), b"Exif\x00\x00"))
        return tf.cond(has_exif, lambda: _oriented(image, tf.reshape(tf.numpy_function(
            _exif_orientation, [contents], tf.int32, stateful=False), [])), lambda: image)

    def other():
        def with_tensorflow():   # PNG, GIF, BMP, WebP
            return tf.cast(tf.io.decode_image(contents, channels=0, expand_animations=False, dtype=tf.uint8),
                           tf.float32)

        if not pillow:
            return with_tensorflow()
        is_tiff = tf.logical_or(tf.equal(head, b"II*\x00"), tf.equal(head, b"MM\x00*"))
        return tf.cond(is_tiff, lambda: tf.cast(tf.numpy_function(_pillow_decode, [contents], tf.uint8,
                                                                    stateful=False), tf.float32), with_tensorflow)

    return tf.ensure_shape(tf.cond(is_jpeg, jpeg, other), [None, None, None])


def decode_contents(contents: tf.Tensor, spec: DecodeSpec, crop_seed: tf.Tensor | None = None,
                    pillow: bool = True) -> tf.Tensor:
    """One file's bytes → float32 `[H, W, channels]` in [0, 255]; raises an error for a bad file (the pipelines
    skip it). `pillow=False` (a SavedModel's graph): TensorFlow's decoders only, no EXIF orientation."""
    image = _to_channels(_decoded(contents, pillow), spec.channels)
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
