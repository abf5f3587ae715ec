"""Augmentation recipes for label-free learning: SimCLR's and BYOL's, built from ops set one by one.

A recipe is a pair of `ViewRecipe`s, one per view (SimCLR's views share one; BYOL's differ in blur and
solarize). Each op draws its parameters per image from one stateless seed per batch, so batch `s` of a resumed
run is augmented exactly as before, and everything is a batched `tf` op inside the `tf.data` graph (no Python
per image). Pixels are 0–255 float32 in and out.

Which ops are whose: random resized crop and flip are one `tf.image.crop_and_resize` with a box per image (a
mirrored box flips). Written here, for speed: colour jitter and grey compose into one 3 × 3 matrix per image
(brightness, contrast and saturation are the blends `tf.image.adjust_*` compute, one factor per image; hue turns
the YIQ chroma plane rather than the HSV hue, a linear stand-in that keeps luminance; one clip at the end), measured
4× faster than the op-by-op `tf.image` chain with HSV; the Gaussian blur (a depthwise convolution with a kernel per
image) and solarize (`x ≥ 128 → 255 − x`), which neither Keras 3 nor `tf.image` has. Keras 3's preprocessing
layers keep their random state in a `SeedGenerator`, which a resumed run cannot replay batch for batch.

Example:
    view_1 = augment_view(images, tf.constant([0, 7], tf.int64), recipe_views("simclr", (32, 32, 3))[0], True)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import tensorflow as tf

from reprlearn.errors import ConfigError


@dataclass(frozen=True)
class ViewRecipe:
    """The ops one view goes through, in this order (each with its own probability per image).

    Args:
        crop_scale: the random resized crop's area range, as a share of the image ((1, 1): no crop).
        crop_ratio: its aspect-ratio range (width / height), drawn log-uniformly.
        flip_probability: left-right mirror (applied only where the data set's classes allow it).
        jitter_probability: colour jitter, all four of its ops together.
        brightness, contrast, saturation: factors drawn from [1 − v, 1 + v].
        hue: a hue shift drawn from [−v, v] (turns of the colour wheel, at most 0.5).
        grey_probability: replace the image by its luminance.
        blur_probability: a Gaussian blur, σ drawn from `blur_sigma` in pixels, its kernel 10 % of the image's
            side (SimCLR's).
        solarize_probability: pixels at or above 128 become 255 − x.
    """
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5
    jitter_probability: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grey_probability: float = 0.2
    blur_probability: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_probability: float = 0.0


# SimCLR (Chen et al. 2020, appendix A) at colour strength s = 0.5 (the paper's CIFAR setting: brightness,
# contrast and saturation 0.8·s, hue 0.2·s); BYOL (Grill et al. 2020, table 6): blur 1.0 / 0.1, solarize 0 / 0.2.
_SIMCLR = ViewRecipe()
RECIPES = {
    "simclr": (_SIMCLR, _SIMCLR),
    "byol": (dataclasses.replace(_SIMCLR, blur_probability=1.0),
             dataclasses.replace(_SIMCLR, blur_probability=0.1, solarize_probability=0.2)),
}
# Images this small are not blurred (SimCLR drops the blur for CIFAR's 32 × 32).
NO_BLUR_SIDE = 32
# The ops a user may set one by one (`data.augment_options`), with the recipe's value as default.
OPTION_NAMES = tuple(field.name for field in dataclasses.fields(ViewRecipe))


def _check_range(name: str, value, low: float, high: float) -> None:
    if not (low <= value[0] <= value[1] <= high):
        raise ConfigError(f"data.augment_options.{name} must be [low, high] with {low} <= low <= high <= {high}. "
                          f"Received: {name}={list(value)}")


def recipe_views(name: str, image_shape, options: dict | None = None) -> tuple[ViewRecipe, ViewRecipe]:
    """The two views' recipes for `name` on images of `image_shape`, with `options` (op → value, or
    op → [view 1 value, view 2 value]) set over the recipe's own values.

    Grey images (1 channel) get no saturation, hue or grey op and a crop of at least 20 % of the area (as
    ALGORITHMS' small grey images do); images of 32 pixels a side or fewer get no blur. An option the user sets
    is kept as set.

    Raises:
        ConfigError: an unknown recipe, an unknown option, or a value out of its range.
    """
    if name not in RECIPES:
        raise ConfigError(f"a two-view recipe must be one of {list(RECIPES)}. Received: data.augment={name!r}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ConfigError(f"data.augment_options takes {list(OPTION_NAMES)}. Received: {unknown}")
    height, width, channels = (int(v) for v in image_shape[-3:])
    views = []
    for view, recipe in enumerate(RECIPES[name]):
        if channels == 1:
            recipe = dataclasses.replace(recipe, saturation=0.0, hue=0.0, grey_probability=0.0,
                                         crop_scale=(max(recipe.crop_scale[0], 0.2), recipe.crop_scale[1]))
        if min(height, width) <= NO_BLUR_SIDE:
            recipe = dataclasses.replace(recipe, blur_probability=0.0)
        chosen = {}
        for key, value in options.items():
            pair = key in ("crop_scale", "crop_ratio", "blur_sigma")
            per_view = isinstance(value, (list, tuple)) and (len(value) == 2 and isinstance(value[0], (list, tuple))
                                                             if pair else len(value) == 2)
            chosen[key] = tuple(value[view]) if per_view and pair else (
                value[view] if per_view else (tuple(value) if pair else value))
        recipe = dataclasses.replace(recipe, **chosen)
        _check_recipe(recipe)
        views.append(recipe)
    return views[0], views[1]


def _check_recipe(recipe: ViewRecipe) -> None:
    for key in ("flip_probability", "jitter_probability", "grey_probability", "blur_probability",
                "solarize_probability", "brightness", "contrast", "saturation"):
        value = getattr(recipe, key)
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"data.augment_options.{key} must be a number in [0, 1]. Received: {key}={value!r}")
    if not isinstance(recipe.hue, (int, float)) or not 0.0 <= recipe.hue <= 0.5:
        raise ConfigError(f"data.augment_options.hue must be a number in [0, 0.5]. Received: hue={recipe.hue!r}")
    _check_range("crop_scale", recipe.crop_scale, 1e-3, 1.0)
    _check_range("crop_ratio", recipe.crop_ratio, 0.1, 10.0)
    _check_range("blur_sigma", recipe.blur_sigma, 1e-3, 50.0)


def _uniform(shape, seed, low, high):
    return tf.random.stateless_uniform(shape, seed, float(low), float(high))


def random_resized_crop(images, seed, scale, ratio, mirror=None):
    """Per image, a window of `scale` × the area and `ratio` aspect (log-uniform) at a uniform place, resized back to
    the image's size (bilinear). A window wider or taller than the image is clipped to it (torchvision redraws
    instead; the clipped window keeps the drawn aspect's side and the image's other side). `mirror` `[B]` bool: read
    those windows right to left (a left-right flip at no cost: `crop_and_resize` flips a box given x2 < x1)."""
    batch = tf.shape(images)[0]
    area_seed, ratio_seed, place_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    area = _uniform([batch], area_seed, *scale)
    aspect = tf.exp(_uniform([batch], ratio_seed, math.log(ratio[0]), math.log(ratio[1])))
    # Sides as shares of the image's sides (the crop's aspect is taken relative to the image's own).
    box_width = tf.minimum(tf.sqrt(area * aspect), 1.0)
    box_height = tf.minimum(tf.sqrt(area / aspect), 1.0)
    place = tf.random.stateless_uniform([batch, 2], place_seed)
    top = place[:, 0] * (1.0 - box_height)
    left = place[:, 1] * (1.0 - box_width)
    return _crop(images, top, left, top + box_height, left + box_width, mirror)


def _crop(images, top, left, bottom, right, mirror=None):
    if mirror is not None:
        left, right = tf.where(mirror, right, left), tf.where(mirror, left, right)
    boxes = tf.stack([top, left, bottom, right], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(tf.shape(images)[0]), tf.shape(images)[1:3],
                                    method="bilinear")


# ITU-R 601 luma, `tf.image.rgb_to_grayscale`'s weights; and RGB ↔ YIQ, whose (I, Q) plane a hue shift turns.
LUMA = (0.2989, 0.5870, 0.1140)
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def _colour_matrices(mean_colour, seed, recipe: ViewRecipe, channels: int):
    """Per image, the `[B, C, C]` matrix M and `[B, C]` offset b of colour jitter then grey: `x ↦ M x + b` (pixels in
    [0, 1]). Every op of the jitter is linear per image once its factor is drawn, so they compose into one matrix:
    brightness scales, contrast blends with the image's mean luminance, saturation with each pixel's luminance,
    hue turns the chroma plane of YIQ, grey replaces a pixel by its luminance. Images the jitter or grey skip get
    the identity for that part."""
    batch = tf.shape(mean_colour)[0]
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 6))
    eye = tf.eye(channels, batch_shape=[batch])
    luma = tf.constant([LUMA] if channels == 3 else [[1.0]], tf.float32)[0] if channels == 3 else tf.ones([1])
    towards_luma = tf.ones([channels, 1]) * luma[None, :]            # [C, C]: every channel ← luminance

    def factor(value, draw_seed):
        return _uniform([batch, 1, 1], draw_seed, 1.0 - value, 1.0 + value)

    matrix, offset = eye, tf.zeros([batch, channels])
    if recipe.brightness:
        matrix = factor(recipe.brightness, seeds[0]) * matrix
    if recipe.contrast:
        contrast = factor(recipe.contrast, seeds[1])
        mean_luma = tf.reduce_sum((tf.linalg.matvec(matrix, mean_colour) + offset) * luma, axis=1)  # [B]
        matrix = contrast * matrix
        offset = contrast[:, :, 0] * offset + (1.0 - contrast[:, :, 0]) * mean_luma[:, None]
    if channels == 3 and recipe.saturation:
        saturation = factor(recipe.saturation, seeds[2])
        blend = saturation * eye + (1.0 - saturation) * towards_luma
        matrix, offset = tf.matmul(blend, matrix), tf.linalg.matvec(blend, offset)
    if channels == 3 and recipe.hue:
        angle = _uniform([batch], seeds[3], -recipe.hue, recipe.hue) * 2.0 * math.pi
        to_yiq = tf.constant(_RGB_TO_YIQ, tf.float32)
        cos, sin, zero, one = tf.cos(angle), tf.sin(angle), tf.zeros_like(angle), tf.ones_like(angle)
        turn = tf.reshape(tf.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], axis=1), [batch, 3, 3])
        hue = tf.matmul(tf.linalg.inv(to_yiq)[None], tf.matmul(turn, to_yiq[None]))
        matrix, offset = tf.matmul(hue, matrix), tf.linalg.matvec(hue, offset)
    jittered = tf.random.stateless_uniform([batch], seeds[4]) < recipe.jitter_probability
    matrix = tf.where(jittered[:, None, None], matrix, eye)
    offset = tf.where(jittered[:, None], offset, 0.0)
    if channels == 3 and recipe.grey_probability:
        grey = tf.random.stateless_uniform([batch], seeds[5]) < recipe.grey_probability
        to_grey = tf.where(grey[:, None, None], towards_luma[None], eye)
        matrix, offset = tf.matmul(to_grey, matrix), tf.linalg.matvec(to_grey, offset)
    return matrix, offset


def colour_jitter(images, seed, recipe: ViewRecipe):
    """Colour jitter and grey of a batch of 0–255 pixels, with one clip to [0, 255] at the end (torchvision clips
    after each op; here the ops compose into one matrix per image, see `_colour_matrices`)."""
    shape, channels = tf.shape(images), int(images.shape[-1])
    matrix, offset = _colour_matrices(tf.reduce_mean(images, axis=[1, 2]) / 255.0, seed, recipe, channels)
    # A batched matmul over the pixel rows: twice as fast here as the einsum it spells.
    mixed = tf.matmul(tf.reshape(images, [shape[0], -1, channels]), matrix, transpose_b=True)
    return tf.clip_by_value(tf.reshape(mixed, shape) + 255.0 * offset[:, None, None, :], 0.0, 255.0)


def gaussian_blur(images, sigma):
    """A separable Gaussian blur with one σ per image (`sigma [B]`, pixels; 0 leaves the image as it is), its kernel
    about 10 % of the image's side (SimCLR's `kernel_size = side // 10`, at least 3 taps), borders reflected: one
    depthwise convolution a direction, the batch's images side by side as channels."""
    batch, height, width, channels = tf.shape(images)[0], images.shape[1], images.shape[2], images.shape[3]
    side = min(int(height), int(width))
    radius = max(1, side // 20)
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    sigma = tf.maximum(tf.cast(sigma, tf.float32), 1e-6)
    kernel = tf.exp(-0.5 * tf.square(taps[None] / sigma[:, None]))
    kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)       # [B, 2r + 1]
    kernel = tf.reshape(tf.repeat(tf.transpose(kernel), channels, axis=1), [2 * radius + 1, -1])  # [2r + 1, B·C]
    padded = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    stacked = tf.reshape(tf.transpose(padded, [1, 2, 0, 3]), [1, height + 2 * radius, width + 2 * radius, -1])
    stacked = tf.nn.depthwise_conv2d(stacked, kernel[:, None, :, None], [1, 1, 1, 1], "VALID")
    stacked = tf.nn.depthwise_conv2d(stacked, kernel[None, :, :, None], [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(stacked, [height, width, batch, channels]), [2, 0, 1, 3])


def augment_view(images, seed, recipe: ViewRecipe, flips: bool):
    """One view of a batch `[B, H, W, C]` of 0–255 float32 pixels under `recipe`: crop and flip (one resampling;
    the flip only with `flips`), colour jitter and grey (one matrix per image), blur, solarize, each drawn per image
    from `seed` (a `[2]` int64 stateless seed).

    Returns:
        A batch of the same shape, float32 in [0, 255].
    """
    images = tf.convert_to_tensor(images, tf.float32)
    batch = tf.shape(images)[0]
    crop_seed, flip_seed, jitter_seed, blur_seed, sigma_seed, solarize_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 6))

    def chosen(probability, draw_seed):
        return tf.random.stateless_uniform([batch], draw_seed) < probability

    mirror = chosen(recipe.flip_probability, flip_seed) if flips and recipe.flip_probability else None
    if tuple(recipe.crop_scale) != (1.0, 1.0):
        images = random_resized_crop(images, crop_seed, recipe.crop_scale, recipe.crop_ratio, mirror)
    elif mirror is not None:  # a gather of mirrored column indices: one pass, where a reverse and a select take two
        width = tf.shape(images)[2]
        columns = tf.where(mirror[:, None], tf.range(width - 1, -1, -1)[None], tf.range(width)[None])
        images = tf.gather(images, columns, axis=2, batch_dims=1)
    if recipe.jitter_probability or (images.shape[-1] == 3 and recipe.grey_probability):
        images = colour_jitter(images, jitter_seed, recipe)
    if recipe.blur_probability:
        sigma = _uniform([batch], sigma_seed, *recipe.blur_sigma)
        images = gaussian_blur(images, tf.where(chosen(recipe.blur_probability, blur_seed), sigma, 0.0))
    if recipe.solarize_probability:
        images = tf.where(chosen(recipe.solarize_probability, solarize_seed)[:, None, None, None]
                          & (images >= 128.0), 255.0 - images, images)
    return images
