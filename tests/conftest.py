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


@pytest.fixture
def digits_config(tmp_path):
    """A seconds-long digits config file for CLI tests."""
    config = tmp_path / "digits.yaml"
    config.write_text("data: {name: digits}\nmodel: {tower: mlp, hidden: [16], embedding_dim: 8}\n"
                      "train: {epochs: 1, steps_per_epoch: 2, classes_per_batch: 4, examples_per_class: 4}\n"
                      "eval: {verification_pairs: 200, projection: pca, projection_points: 50, projector_points: 20}\n")
    return config
