"""The supervised contrastive loss (SupCon / NT-Xent) against a NumPy loop, its edges, its Keras form, and the
batches of augmented views it trains on without labels."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from reprlearn.config import ConfigError, config_from_dict
from reprlearn.data.pipelines import view_batches
from reprlearn.losses import SupervisedContrastiveLoss, supervised_contrastive_loss
from reprlearn.metrics import ActiveFraction
from reprlearn.losses.registry import make_loss
from tests import reference


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("metric,scale", [("angular", 5.0), ("L2", 2.0), ("squared-L2", 0.5)])
def test_supervised_contrastive_matches_loop(seed, metric, scale):
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(9, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 9)
    labels[-1] = 7  # an anchor without positives: left out of the mean
    want = reference.supervised_contrastive(labels, embeddings, scale, metric)
    assert float(supervised_contrastive_loss(labels, embeddings, scale, metric)) == pytest.approx(want, rel=1e-5)
    assert float(SupervisedContrastiveLoss(scale, metric)(labels, embeddings)) == pytest.approx(want, rel=1e-5)


def test_two_views_per_image_is_nt_xent():
    # SimCLR's NT-Xent with temperature τ on unit vectors: cross-entropy over the 2n − 1 others, the other view
    # the target; SupCon with one positive per anchor and scale 1/τ is the same number.
    rng = np.random.default_rng(0)
    z = rng.normal(size=(8, 5)).astype(np.float32)
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    tau, labels = 0.2, np.array([0, 1, 2, 3, 0, 1, 2, 3])
    logits = unit @ unit.T / tau - np.eye(8) * 1e9
    target = np.array([4, 5, 6, 7, 0, 1, 2, 3])
    log_softmax = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(
        1, keepdims=True)
    nt_xent = -log_softmax[np.arange(8), target].mean()
    assert float(supervised_contrastive_loss(labels, z, 1 / tau)) == pytest.approx(nt_xent, rel=1e-5)


def test_supervised_contrastive_edges():
    z = tf.Variable(np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32))
    # No positive pair (every label distinct) and one item: 0 with a zero gradient.
    with tf.GradientTape() as tape:
        value = supervised_contrastive_loss([0, 1, 2, 3], z)
    assert float(value) == 0.0
    assert np.all(tape.gradient(value, z).numpy() == 0.0)
    assert float(supervised_contrastive_loss([5], z[:1])) == 0.0
    # One class: every other item is a positive; the loss is the log of the count of others minus the mean logit.
    labels = [0, 0, 0, 0]
    assert float(supervised_contrastive_loss(labels, z, 3.0)) == pytest.approx(
        reference.supervised_contrastive(labels, z.numpy(), 3.0), rel=1e-5)
    # Identical embeddings: every distance 0, the loss log(N − 1), gradients finite.
    same = tf.Variable(np.ones((4, 3), np.float32))
    with tf.GradientTape() as tape:
        value = supervised_contrastive_loss([0, 0, 1, 1], same, 10.0)
    assert float(value) == pytest.approx(np.log(3.0), rel=1e-5)
    assert np.isfinite(tape.gradient(value, same).numpy()).all()
    # float16 embeddings are computed in float32 and returned in float16.
    half = np.random.default_rng(2).normal(size=(6, 3)).astype(np.float16)
    out = supervised_contrastive_loss([0, 0, 1, 1, 2, 2], half, 5.0)
    assert out.dtype == tf.float16
    assert float(out) == pytest.approx(reference.supervised_contrastive([0, 0, 1, 1, 2, 2], half, 5.0), rel=1e-3)


def test_a_gradient_step_pulls_positives_together():
    rng = np.random.default_rng(3)
    z = tf.Variable(rng.normal(size=(8, 4)).astype(np.float32))
    labels = [0, 0, 1, 1, 2, 2, 3, 3]
    loss = SupervisedContrastiveLoss(scale=5.0)
    with tf.GradientTape() as tape:
        before = loss(labels, z)
    z.assign_sub(0.5 * tape.gradient(before, z))
    assert float(loss(labels, z)) < float(before) - 1e-3


def test_supervised_contrastive_under_xla_equals_eager():
    rng = np.random.default_rng(4)
    z, labels = rng.normal(size=(12, 6)).astype(np.float32), rng.integers(0, 4, 12)
    compiled = tf.function(lambda y, e: supervised_contrastive_loss(y, e, 5.0), jit_compile=True)
    assert float(compiled(labels, z)) == pytest.approx(float(supervised_contrastive_loss(labels, z, 5.0)), rel=1e-5)


def test_active_fraction_is_the_share_of_positive_pairs_ranked_below_a_negative():
    # Anchor 0: positive 1 at distance 1, negative 2 at distance 0.5 (misranked); anchor 1: positive 0 at 1,
    # negative 2 at 1.5 (ranked right); anchor 2 has no positive.
    z = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.5]], np.float32)
    loss = SupervisedContrastiveLoss(distance="L2")
    assert float(ActiveFraction(loss)(np.array([0, 0, 1]), z)) == pytest.approx(0.5)
    np.testing.assert_allclose(float(loss.active_fraction(np.array([0, 0, 1]), z)), 0.5)


def test_supervised_contrastive_config_round_trip_and_bad_input():
    loss = make_loss("supervised_contrastive", margin=0.0, distance="angular", scale=5.0)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, SupervisedContrastiveLoss) and (again.scale, again.distance) == (5.0, "angular")
    with pytest.raises(ValueError, match="scale=0"):
        SupervisedContrastiveLoss(scale=0)
    with pytest.raises(ValueError, match="metric='manhattan'"):
        supervised_contrastive_loss([0, 0], np.ones((2, 2), np.float32), distance="manhattan")


# --- batches of augmented views ---

def test_view_batches_hold_k_differing_views_of_p_distinct_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(20, 12, 12, 1)).astype(np.uint8)
    batch, labels = next(iter(view_batches(images, 5, 3, seed=1, augment="strong")))
    # Labelled by the image's index: each label K times in a row, five distinct images.
    groups = labels.numpy().reshape(5, 3)
    assert (groups == groups[:, :1]).all() and len(set(groups[:, 0])) == 5 and groups.max() < 20
    assert batch.shape == (15, 12, 12, 1)
    views = batch.numpy().reshape(5, 3, -1)
    # The views of one image differ (independent augmentation); resuming at a step gives that step's batch again.
    assert all(not np.allclose(v[0], v[1]) for v in views)
    again = list(view_batches(images, 5, 3, seed=1, start_step=0, augment="strong").take(2))
    resumed = next(iter(view_batches(images, 5, 3, seed=1, start_step=1, augment="strong")))
    np.testing.assert_array_equal(again[0][0], batch)
    np.testing.assert_array_equal(again[1][0], resumed[0])


def test_view_batches_bad_input_is_named():
    images = np.zeros((4, 8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match="augment='none'"):
        view_batches(images, 2, 2, augment="none")
    with pytest.raises(ValueError, match="images_per_batch=5"):
        view_batches(images, 5, 2)
    with pytest.raises(ValueError, match="views_per_image=1"):
        view_batches(images, 2, 1)


def test_views_config_needs_augmentation_and_an_in_batch_loss():
    with pytest.raises(ConfigError, match="data.augment='none'"):
        config_from_dict({"data": {"positives": "views"}, "loss": {"name": "supervised_contrastive"}})
    with pytest.raises(ConfigError, match="loss.name='am_softmax'"):
        config_from_dict({"data": {"positives": "views", "augment": "light"}, "loss": {"name": "am_softmax"}})
    with pytest.raises(ConfigError, match="data.positives"):
        config_from_dict({"data": {"positives": "pixels"}})
