"""Shapes at random places: a small image set where the class is a shape's form, not where it sits, so raw pixels
score far below 1 and an embedding must learn invariance to place and brightness to score well.

Four classes (filled square, plus, ring, X) of 7 × 7 pixels at a uniform place on 16 × 16 noise, each at its own
brightness. Any seed gives another draw of the same family.
"""

import numpy as np

from reprlearn.data import make_imageset

SIZE, SHAPE = 16, 7


def _masks() -> list[np.ndarray]:
    square = np.zeros((SHAPE, SHAPE))
    square[1:6, 1:6] = 1
    plus = np.zeros((SHAPE, SHAPE))
    plus[3, :] = plus[:, 3] = 1
    ring = np.ones((SHAPE, SHAPE))
    ring[1:-1, 1:-1] = 0
    cross = np.minimum(np.eye(SHAPE) + np.eye(SHAPE)[::-1], 1)
    return [square, plus, ring, cross]


def shapes(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`(images uint8 [4·per_class, 16, 16, 1], labels [4·per_class])`."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, mask in enumerate(_masks()):
        for _ in range(per_class):
            image = rng.uniform(0, 60, (SIZE, SIZE))
            row, column = rng.integers(0, SIZE - SHAPE, 2)
            window = image[row:row + SHAPE, column:column + SHAPE]
            image[row:row + SHAPE, column:column + SHAPE] = np.where(mask > 0, rng.uniform(120, 255), window)
            images.append(image[..., None])
            labels.append(label)
    return np.clip(np.asarray(images), 0, 255).astype(np.uint8), np.asarray(labels)


def shape_sets(seed: int = 0, per_class: int = 150) -> dict:
    """Training and test sets (the test set another draw) as `run_training(sets=...)` takes them."""
    train, test = shapes(per_class, seed), shapes(per_class * 2 // 5, seed + 1000)
    return {"train": make_imageset(*train), "test": make_imageset(*test)}
