"""Small cross-view pairs for tests: digits (scikit-learn, offline) seen from above and from the ground.

Example:
    train, test = digit_pairs()        # PairSets: places from digits 0-4 for training, 5-9 for testing
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from reprlearn.data.cross_view_views import ViewRecipe, cross_view_views
from reprlearn.data.pairs import make_pairset

# 16×16 overhead images (digits doubled), 8×32 strips, windows centred (no jitter: small images).
RECIPE = ViewRecipe(overhead=16, strip=(8, 32), jitter=0, reference_noise=4.0, query_noise=6.0, blur_probability=0.3)


def digit_views(seed: int = 0):
    """`(queries, references, classes)` of every digit image (each its own place)."""
    digits = load_digits()
    images = np.kron(digits.images * 16.0, np.ones((2, 2)))[..., None]
    queries, references = cross_view_views(images, seed, RECIPE)
    return queries, references, digits.target


def digit_pairs(seed: int = 0):
    """`(train, test)` PairSets: the places of digits 0-4 train, those of 5-9 (classes never trained on) test."""
    queries, references, classes = digit_views(seed)
    train, test = classes < 5, classes >= 5
    return (make_pairset(queries[train], references[train]), make_pairset(queries[test], references[test]))
