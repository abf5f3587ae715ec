import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from reprlearn.data.imageset import ImageSet  # noqa: E402


@pytest.fixture
def tiny_sets():
    """A small learnable dataset: 4 classes of 12×12 one-channel blobs at class-specific places."""
    return make_tiny_sets()


@pytest.fixture(scope="module")
def tiny_sets_module():
    """`tiny_sets` shared by a module's tests."""
    return make_tiny_sets()


def make_tiny_sets():
    rng = np.random.default_rng(0)
    n_per_class, size = 40, 12
    images, labels = [], []
    for c in range(4):
        for _ in range(n_per_class):
            img = rng.integers(0, 40, (size, size, 1))
            r, col = divmod(c, 2)
            img[r * 6:r * 6 + 6, col * 6:col * 6 + 6] += 200
            images.append(np.clip(img, 0, 255))
            labels.append(c)
    images = np.asarray(images, np.uint8)
    labels = np.asarray(labels)
    return {"all": ImageSet(images, labels, ["a", "b", "c", "d"])}
