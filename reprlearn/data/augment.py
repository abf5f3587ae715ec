"""Data augmentation for training batches, keyed by (seed, step): shifts, rotations, flips and contrast
(`light`, `strong`), or a two-view recipe's first view (`simclr`, `byol`: `reprlearn.data.recipes`).

Every draw is stateless, so batch `s` of a resumed run is augmented exactly as it would have been,
and every transform keeps the image size (shifted-in borders are filled with 0).

Example:
    images = augment_batch(images, seed=tf.constant([0, 7], tf.int64), level="light", flips=True)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

from reprlearn.data.recipes import RECIPES, augment_view, recipe_views
from reprlearn.errors import DataError

AUGMENTATIONS = ("none", "light", "strong", *RECIPES)
# Datasets whose classes survive a left-right mirror (clothes do; digits do not).
MIRROR_INVARIANT = {"fashion_mnist": True, "digits": False, "mnist": False}


class Augmentation(NamedTuple):
    shift: float          # largest shift, as a fraction of the image side
    rotation_degrees: float
    contrast: float       # the contrast factor is drawn from [1 − c, 1 + c]


LEVELS = {"light": Augmentation(0.07, 0.0, 0.1), "strong": Augmentation(0.11, 10.0, 0.3)}


def check_augment(level: str) -> str:
    if level not in AUGMENTATIONS:
        raise DataError(f"augment must be one of {list(AUGMENTATIONS)}. Received: augment={level!r}")
    return level


def _affine(images, seed, augmentation: Augmentation):
    """A random shift and rotation per image about its centre (bilinear, zeros outside), same size out."""
    shape = tf.shape(images)
    batch, height, width = shape[0], tf.cast(shape[1], tf.float32), shape[2]
    width = tf.cast(width, tf.float32)
    shift_seed, angle_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shift = tf.random.stateless_uniform([batch, 2], shift_seed, -1.0, 1.0) * augmentation.shift
    dx, dy = tf.round(shift[:, 0] * width), tf.round(shift[:, 1] * height)
    largest_angle = augmentation.rotation_degrees * math.pi / 180
    angle = tf.random.stateless_uniform([batch], angle_seed, -1.0, 1.0) * largest_angle
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    # Output pixel (x, y) reads input pixel R⁻¹·((x, y) − centre − shift) + centre.
    transforms = tf.stack([cos, sin, cx - cos * (cx + dx) - sin * (cy + dy),
                           -sin, cos, cy + sin * (cx + dx) - cos * (cy + dy),
                           tf.zeros_like(cos), tf.zeros_like(cos)], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(images=images, transforms=transforms, output_shape=shape[1:3],
                                                 fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")


def augment_batch(images, seed, level: str, flips: bool):
    """Augments a batch `[B, H, W, C]` of 0–255 pixels (float32); `level` "none" returns it unchanged.

    Args:
        images: the batch.
        seed: a `[2]` int64 stateless seed (one per batch, e.g. `(run seed, step)`).
        level: `"none"`, `"light"` (±7 % shifts, contrast ±10 %), `"strong"` (±11 % shifts, ±10° rotations,
            contrast ±30 %), or a recipe of `reprlearn.data.recipes` (`"simclr"`, `"byol"`: its first view).
        flips: also mirror half the images left-right (only where the classes allow it).

    Returns:
        A batch of the same shape and dtype, in [0, 255].
    """
    if check_augment(level) == "none":
        return images
    if level in RECIPES:
        return augment_view(images, seed, recipe_views(level, images.shape)[0], flips)
    augmentation = LEVELS[level]
    affine_seed, flip_seed, contrast_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    images = _affine(images, affine_seed, augmentation)
    batch = tf.shape(images)[0]
    if flips:
        mirror = tf.random.stateless_uniform([batch, 1, 1, 1], flip_seed) < 0.5
        images = tf.where(mirror, tf.reverse(images, axis=[2]), images)
    factor = tf.random.stateless_uniform([batch, 1, 1, 1], contrast_seed, 1.0 - augmentation.contrast,
                                         1.0 + augmentation.contrast)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    return tf.clip_by_value((images - mean) * factor + mean, 0.0, 255.0)


def augment_image(image, seed, level: str, flips: bool):
    """One image `[H, W, C]` augmented as `augment_batch` augments each image of a batch (the same transforms and
    ranges, its own draws): what streamed files get as they are decoded, in parallel. Without rotation ("light")
    the whole-pixel shift is a pad and a slice, and every draw comes from one call: a few small ops per image."""
    if check_augment(level) == "none":
        return image
    if level in RECIPES:
        return augment_batch(image[None], seed, level, flips)[0]
    augmentation = LEVELS[level]
    if augmentation.rotation_degrees:
        return augment_batch(image[None], seed, level, flips)[0]
    draws = tf.random.stateless_uniform([4], seed)
    shape = tf.shape(image)
    shift = (draws[:2] * 2.0 - 1.0) * augmentation.shift * tf.cast(shape[1::-1][:2], tf.float32)
    dx, dy = tf.unstack(tf.cast(tf.round(shift), tf.int32))
    # Output pixel (x, y) reads input (x − dx, y − dy); outside the image it is 0.
    padded = tf.pad(image, [[tf.abs(dy), tf.abs(dy)], [tf.abs(dx), tf.abs(dx)], [0, 0]])
    image = tf.slice(padded, [tf.abs(dy) - dy, tf.abs(dx) - dx, 0], shape)
    if flips:
        image = tf.cond(draws[2] < 0.5, lambda: tf.reverse(image, axis=[1]), lambda: image)
    factor = 1.0 - augmentation.contrast + 2.0 * augmentation.contrast * draws[3]
    return tf.clip_by_value(image * factor + tf.reduce_mean(image) * (1.0 - factor), 0.0, 255.0)
