import numpy as np
import pytest
import tensorflow as tf
import keras

from reprlearn.ops.distances import paired_distance, pairwise_distance
from reprlearn.losses import ContrastiveLoss, InBatchContrastiveLoss, contrastive_loss, in_batch_contrastive_loss
from tests import reference

EMB = np.array([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0], [1.0, 0.0], [0.0, -2.0]], np.float32)
LABELS = np.array([0, 0, 1, 1, 0])


@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
def test_pairwise_distance_matches_loop(metric):
    rng = np.random.default_rng(1)
    emb = np.concatenate([EMB, rng.normal(size=(6, 2)).astype(np.float32)])
    emb[1:] += 1e-3  # keep every vector non-zero for the angular case
    got = pairwise_distance(emb, metric).numpy()
    np.testing.assert_allclose(got, reference.pairwise(emb, metric), rtol=1e-5, atol=1e-5)
    assert np.all(np.diag(got) == 0)


def test_l2_gradient_is_finite_at_zero_distance():
    x = tf.constant(EMB)  # rows 1 and 2 are identical
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(pairwise_distance(x, "L2"))
    grad = tape.gradient(total, x).numpy()
    assert np.all(np.isfinite(grad))
    a = tf.constant([[1.0, 2.0]])
    with tf.GradientTape() as tape:
        tape.watch(a)
        d = paired_distance(a, a, "L2")
    assert np.all(tape.gradient(d, a).numpy() == 0)


def test_callable_distance_and_bad_name():
    np.testing.assert_allclose(pairwise_distance(EMB, lambda e: tf.ones([5, 5])).numpy(), np.ones((5, 5)))
    with pytest.raises(ValueError, match="metric='cosin'"):
        pairwise_distance(EMB, "cosin")
    # "cosine" is the common name of angular distance.
    np.testing.assert_array_equal(pairwise_distance(EMB, "cosine").numpy(), pairwise_distance(EMB, "angular").numpy())


def test_pair_contrastive_matches_loop_for_every_label_form():
    d = np.array([0.2, 0.3, 1.5, 0.0], np.float32)
    y = np.array([1, 0, 0, 1])
    want = [reference.contrastive_pair(m, v, 1.0) for m, v in zip(y, d)]
    for y_form in (y, y.astype(bool), y.astype(np.float32), y.reshape(-1, 1)):
        np.testing.assert_allclose(contrastive_loss(y_form, d.reshape(-1, 1)).numpy(), want, rtol=1e-6)
    assert ContrastiveLoss(margin=1.0)(y, d).numpy() == pytest.approx(np.mean(want), rel=1e-6)


@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
def test_in_batch_contrastive_matches_loop(metric):
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(9, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 9)
    got = in_batch_contrastive_loss(labels, emb, margin=0.7, distance=metric).numpy()
    assert got == pytest.approx(reference.in_batch_contrastive(labels, emb, 0.7, metric), rel=1e-5)
    loss = InBatchContrastiveLoss(margin=0.7, distance=metric)
    assert loss(labels.reshape(-1, 1).astype(np.float32), emb).numpy() == pytest.approx(got, rel=1e-6)


@pytest.mark.parametrize("labels", [np.zeros(5), np.arange(5)], ids=["one_class", "no_positive_pair"])
def test_in_batch_edge_cases_are_finite(labels):
    for emb in (EMB, np.zeros_like(EMB), np.ones_like(EMB)):
        x = tf.constant(emb)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = in_batch_contrastive_loss(labels, x, margin=1.0)
        assert np.isfinite(value.numpy())
        assert np.all(np.isfinite(tape.gradient(value, x).numpy()))
        assert value.numpy() == pytest.approx(reference.in_batch_contrastive(labels, emb, 1.0), rel=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_compute_in_float32(dtype):
    want = reference.in_batch_contrastive(LABELS, EMB, 1.0)
    got = in_batch_contrastive_loss(LABELS, tf.cast(EMB, dtype), margin=1.0)
    assert got.dtype == dtype
    assert float(got) == pytest.approx(want, rel=1e-2)


def test_contrastive_loss_serializes_and_rejects_negative_margin():
    loss = InBatchContrastiveLoss(margin=0.3, distance="angular")
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(clone) is InBatchContrastiveLoss and (clone.margin, clone.distance) == (0.3, "angular")
    with pytest.raises(ValueError, match="margin=-1"):
        ContrastiveLoss(margin=-1)
