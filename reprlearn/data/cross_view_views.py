"""Cross-view pairs made from an ordinary image set, for benchmarks and tests: no cross-view data set can be
downloaded here, so each image becomes a place seen two ways.

- The reference view is overhead-like: the image on a square canvas, cropped independently of the other view (a
  centred window `zoom` smaller at most, resized back, then moved `jitter` pixels off centre at most) and seen
  by one sensor (gamma, contrast, brightness, sometimes a blur, noise).
- The query view is a ground-level panorama-like strip: the polar transform of another crop of the same image
  (the inverse of the relation `reprlearn.layers.PolarTransform` undoes), turned to an unknown heading (a circular
  shift of the strip by any number of columns), seen by another sensor (lower contrast, brighter, more noise).

Raw pixels cannot match the two: the geometry differs, the heading is unknown and the sensors disagree.

Example:
    queries, references = cross_view_views(images, seed=0)   # [N, 16, 64, C] and [N, 32, 32, C], float32 0-255
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reprlearn.errors import DataError
from reprlearn.ops.polar import polar_transform


@dataclass(frozen=True)
class ViewRecipe:
    """How two views are made from an image: sizes, the window jitter, and each sensor's noise."""
    overhead: int = 32              # the reference view's side
    strip: tuple[int, int] = (16, 64)  # the query view's (height, width)
    zoom: float = 0.1               # each view's crop is a centred window up to this share smaller, resized back
    jitter: int = 0                 # and at most this many pixels off the canvas centre
    reference_noise: float = 6.0    # Gaussian noise (σ, grey levels) of the overhead sensor
    query_noise: float = 10.0       # and of the ground sensor
    blur_probability: float = 0.5   # each view of each place is blurred (3×3 box) with this probability


def _box_blur(images: np.ndarray) -> np.ndarray:
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = images.shape[1:3]
    return sum(padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9.0


def _windows(images: np.ndarray, recipe: ViewRecipe, rng: np.random.Generator) -> np.ndarray:
    """Each image on a canvas of `overhead + 2·jitter` pixels, cropped to a centred window of a random side in
    [(1 − zoom)·overhead, overhead] resized back to `overhead`, at a random offset of at most `jitter`."""
    import tensorflow as tf

    n, h, w, c = images.shape
    canvas = recipe.overhead + 2 * recipe.jitter
    if max(h, w) > canvas:  # a larger image is shrunk to the canvas first (nearest pixels: it keeps the sensor's
        step = max(h, w) / canvas  # noise for the sensor)
        rows, cols = (np.arange(int(h / step)) * step).astype(int), (np.arange(int(w / step)) * step).astype(int)
        images, h, w = images[:, rows][:, :, cols], len(rows), len(cols)
    top, left = (canvas - h) // 2, (canvas - w) // 2
    padded = np.zeros((n, canvas, canvas, c), np.float32)
    padded[:, top:top + h, left:left + w] = images
    offsets = rng.integers(0, 2 * recipe.jitter + 1, (n, 2))
    windows = np.stack([p[a:a + recipe.overhead, b:b + recipe.overhead] for p, (a, b) in zip(padded, offsets)])
    margin = rng.uniform(0, recipe.zoom / 2, (n, 1))  # per side, as a share of the window
    boxes = np.concatenate([margin, margin, 1 - margin, 1 - margin], axis=1).astype(np.float32)
    return tf.image.crop_and_resize(windows, boxes, np.arange(n, dtype=np.int32),
                                    [recipe.overhead, recipe.overhead]).numpy()


def _sensor(images: np.ndarray, rng: np.random.Generator, contrast, brightness, noise: float,
            blur_probability: float) -> np.ndarray:
    n = len(images)
    gamma = rng.uniform(0.7, 1.4, (n, 1, 1, 1))
    images = 255.0 * (images / 255.0) ** gamma
    blurred = rng.random(n) < blur_probability
    images[blurred] = _box_blur(images[blurred])
    images = images * rng.uniform(*contrast, (n, 1, 1, 1)) + rng.uniform(*brightness, (n, 1, 1, 1))
    return np.clip(images + rng.normal(0, noise, images.shape), 0, 255).astype(np.float32)


def cross_view_views(images, seed: int, recipe: ViewRecipe = ViewRecipe()) -> tuple[np.ndarray, np.ndarray]:
    """`(queries [N, *strip, C], references [N, overhead, overhead, C])` float32 in [0, 255] from `images`
    `[N, H, W, C]` (0-255): pair i is image i seen from the ground and from above (see the module docstring).

    Deterministic for a seed."""
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or len(images) == 0:
        raise DataError(f"images must be [N, H, W, C] with N >= 1. Received: images.shape={images.shape}")
    rng = np.random.default_rng(seed)
    references = _sensor(_windows(images, recipe, rng), rng, (0.8, 1.2), (0, 20), recipe.reference_noise,
                         recipe.blur_probability)
    strips = polar_transform(_windows(images, recipe, rng), *recipe.strip)
    headings = rng.integers(0, recipe.strip[1], len(images))
    strips = np.stack([np.roll(strip, heading, axis=1) for strip, heading in zip(strips, headings)])
    queries = _sensor(strips, rng, (0.5, 0.9), (20, 60), recipe.query_noise, recipe.blur_probability)
    return queries, references


def write_pair_csv(root, parts: dict) -> str:
    """Writes each split's views as PNG files under `root/<split>/{query,reference}/` and a `pairs.csv` (columns
    query,reference,label,split) beside them; `parts` maps a split name to `(queries, references, labels)`.
    Returns the CSV's path."""
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    rows = ["query,reference,label,split"]
    for split, (queries, references, labels) in parts.items():
        for view, images in (("query", queries), ("reference", references)):
            (root / split / view).mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):
                pixels = np.clip(np.round(image), 0, 255).astype(np.uint8)
                Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(
                    root / split / view / f"{i:06d}.png")
        rows += [f"{split}/query/{i:06d}.png,{split}/reference/{i:06d}.png,{label},{split}"
                 for i, label in enumerate(labels)]
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return str(root / "pairs.csv")
