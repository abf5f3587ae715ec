"""JRD's joint representation similarity against a NumPy loop, its edges, and its Keras loss form."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from reprlearn.losses import JointRepresentationSimilarity, joint_representation_similarity
from tests import reference


def layers(seed, n=7):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, 2, 3, 2)).astype(np.float32), rng.normal(size=(n, 4)).astype(np.float32),
            rng.normal(size=(n, 3)).astype(np.float32)]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("single", [[False, False, True], [False, False, False], [True, True, True]])
def test_jrs_matches_loop(seed, single):
    features = layers(seed)
    labels = np.random.default_rng(seed + 10).integers(0, 3, 7)
    want = reference.joint_representation_similarity(labels, features, single)
    got = float(joint_representation_similarity(labels, features, single))
    assert got == pytest.approx(want, rel=1e-5)
    assert 0.0 < got < 1.0


def test_jrs_edges():
    features = layers(0)
    # One class: no pair from different classes.
    assert float(joint_representation_similarity(np.zeros(7), features)) == 0.0
    # Identical features everywhere: every kernel is 1, with finite gradients.
    same = [tf.Variable(np.ones((5, 4), np.float32)), tf.Variable(np.ones((5, 2), np.float32))]
    with tf.GradientTape() as tape:
        value = joint_representation_similarity([0, 0, 1, 1, 2], same)
    assert float(value) == pytest.approx(1.0)
    assert all(np.isfinite(g.numpy()).all() for g in tape.gradient(value, same))
    # float16 inputs are computed in float32.
    half = [f.astype(np.float16) for f in features]
    labels = [0, 1, 2, 0, 1, 2, 0]
    assert float(joint_representation_similarity(labels, half)) == pytest.approx(
        reference.joint_representation_similarity(labels, half, [False] * 3), rel=1e-4)


def test_jrs_gradient_pushes_classes_apart():
    # Two classes; the regulariser's gradient step must lower JRS (it is minimised).
    rng = np.random.default_rng(0)
    z = tf.Variable(rng.normal(size=(8, 3)).astype(np.float32))
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    with tf.GradientTape() as tape:
        before = joint_representation_similarity(labels, [z, z * 2.0])
    z.assign_sub(0.5 * tape.gradient(before, z))
    assert float(joint_representation_similarity(labels, [z, z * 2.0])) < float(before)


def test_packed_loss_equals_function_and_round_trips():
    features = layers(1)
    labels = np.array([0, 1, 1, 2, 2, 0, 1])
    packed = np.concatenate([f.reshape(7, -1) for f in features], axis=1)
    loss = JointRepresentationSimilarity([12, 4, 3], [False, False, True])
    want = float(joint_representation_similarity(labels, features, [False, False, True]))
    assert float(loss(labels, packed)) == pytest.approx(want, rel=1e-6)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert clone.part_sizes == [12, 4, 3] and clone.single_bandwidth == [False, False, True]
    assert float(clone(labels, packed)) == pytest.approx(want, rel=1e-6)
    jitted = tf.function(lambda y, p: loss(y, p), jit_compile=True)
    assert float(jitted(labels, packed)) == pytest.approx(want, rel=1e-5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"part_sizes=\[5\]"):
        JointRepresentationSimilarity([5])
    with pytest.raises(ValueError, match="single_bandwidth"):
        JointRepresentationSimilarity([5, 3], [True])
    with pytest.raises(ValueError, match="features=\\[\\]"):
        joint_representation_similarity([0, 1], [])
