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


# A trained digits embedding run, shared by every test that only needs *a* run to read, enrol, export or
# transfer from (each pytest-xdist worker trains it once). Trained on classes 0-4 (the open-set protocol), so
# transfer has unseen test classes; trained enough that export's quantisation gate checks a real embedding.
DIGITS_RUN_CONFIG = """\
data: {name: digits, protocol: unseen-classes}
model: {tower: mlp, hidden: [64], embedding_dim: 16}
loss: {name: triplet_semihard, margin: 0.2}
train: {epochs: 2, steps_per_epoch: 20, classes_per_batch: 4, examples_per_class: 8}
eval: {verification_pairs: 500, projection: pca, projection_points: 100, projector_points: 50}
"""


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """The folder of a finished digits run (`DIGITS_RUN_CONFIG`), trained through the CLI in this process."""
    from reprlearn.cli import main

    root = tmp_path_factory.mktemp("shared")
    (root / "digits_run.yaml").write_text(DIGITS_RUN_CONFIG)
    assert main(["train", str(root / "digits_run.yaml"), "--out", str(root / "digits_run"), "--quiet"]) == 0
    return root / "digits_run"
