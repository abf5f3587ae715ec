"""AM-Softmax and its cosine classifier against plain NumPy loops, with the edges."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from reprlearn.layers import CosineClassifier
from reprlearn.losses import AMSoftmaxLoss, am_softmax_loss


def numpy_am_softmax(labels, cosines, scale, margin) -> float:
    """Mean over rows of −log softmax(s·(cos − m·[j = y]))_y, one row at a time."""
    total = 0.0
    for y, row in zip(labels, cosines):
        logits = [scale * (c - (margin if j == y else 0.0)) for j, c in enumerate(row)]
        top = max(logits)
        total += -(logits[y] - top - np.log(sum(np.exp(v - top) for v in logits)))
    return total / len(labels)


def numpy_cosines(embeddings, weights) -> np.ndarray:
    out = np.zeros((len(embeddings), weights.shape[1]))
    for i, e in enumerate(embeddings):
        for j in range(weights.shape[1]):
            w = weights[:, j]
            out[i, j] = float(np.dot(e, w) / (np.linalg.norm(e) * np.linalg.norm(w)))
    return out


COSINES = np.array([[0.9, 0.1, -0.2], [0.3, 0.35, 0.0], [-0.5, 0.2, 0.8], [0.0, 0.0, 0.0]], np.float32)
LABELS = np.array([0, 1, 2, 0])


@pytest.mark.parametrize("scale, margin", [(30.0, 0.35), (20.0, 0.1), (1.0, 0.0)])
def test_loss_equals_a_numpy_loop(scale, margin):
    got = float(am_softmax_loss(LABELS, COSINES, scale, margin))
    assert got == pytest.approx(numpy_am_softmax(LABELS, COSINES, scale, margin), rel=1e-5)
    assert float(AMSoftmaxLoss(scale, margin)(LABELS[:, None], COSINES)) == pytest.approx(got, rel=1e-6)


def test_the_margin_raises_the_loss_and_zero_margin_is_the_scaled_softmax():
    plain = float(am_softmax_loss(LABELS, COSINES, 30.0, 0.0))
    expected = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(LABELS, 30.0 * COSINES))
    assert plain == pytest.approx(expected, rel=1e-5)
    assert float(am_softmax_loss(LABELS, COSINES, 30.0, 0.35)) > plain


def test_edges_identical_embeddings_one_class_batch_and_float16():
    # Identical cosines everywhere: the loss is log C + a margin term, finite, gradients finite.
    flat = np.full((4, 3), 0.5, np.float32)
    assert float(am_softmax_loss(LABELS, flat, 30.0, 0.35)) == pytest.approx(
        numpy_am_softmax(LABELS, flat, 30.0, 0.35), rel=1e-5)
    # A batch of one class (no negative pair) is still a classification loss.
    same = np.zeros(4, np.int64)
    assert float(am_softmax_loss(same, COSINES, 30.0, 0.35)) == pytest.approx(
        numpy_am_softmax(same, COSINES, 30.0, 0.35), rel=1e-5)
    half = float(AMSoftmaxLoss()(LABELS, COSINES.astype(np.float16)))
    assert np.isfinite(half) and half == pytest.approx(numpy_am_softmax(LABELS, COSINES, 30.0, 0.35), rel=1e-2)
    x = tf.Variable(np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32))
    layer = CosineClassifier(3)
    with tf.GradientTape() as tape:
        loss = am_softmax_loss(LABELS, layer(x), 30.0, 0.35)
    gradients = tape.gradient(loss, [x, *layer.trainable_weights])
    assert all(np.all(np.isfinite(g.numpy())) for g in gradients)


def test_cosine_classifier_equals_a_numpy_loop_and_survives_zero_embeddings():
    layer = CosineClassifier(4)
    embeddings = np.random.default_rng(1).normal(size=(6, 5)).astype(np.float32)
    got = layer(embeddings).numpy()
    np.testing.assert_allclose(got, numpy_cosines(embeddings, layer.class_weights.numpy()), atol=1e-5)
    assert np.all(np.isfinite(layer(np.zeros((2, 5), np.float32)).numpy()))


def test_bad_input_names_the_value():
    with pytest.raises(ValueError, match="num_classes must be an int >= 2. Received: num_classes=1"):
        CosineClassifier(1)
    with pytest.raises(ValueError, match="scale must be a finite number > 0. Received: scale=0"):
        AMSoftmaxLoss(scale=0)
    with pytest.raises(ValueError, match="margin must be a finite number >= 0. Received: margin=-0.1"):
        AMSoftmaxLoss(margin=-0.1)
    with pytest.raises(ValueError, match="Received: label 3 with num_classes=3"):
        am_softmax_loss(np.array([0, 3]), COSINES[:2], 30.0, 0.35)
    # Inside a traced step (no XLA) the same check stops the step, naming the labels and the class count.
    with pytest.raises(tf.errors.InvalidArgumentError, match="every label must be a class id in"):
        tf.function(am_softmax_loss)(np.array([0, 3]), COSINES[:2], 30.0, 0.35)


def test_a_model_with_the_classifier_trains_and_reloads_in_a_fresh_process(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    x = (rng.normal(size=(60, 8)) + 2.0 * np.eye(3, 8)[labels]).astype(np.float32)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, CosineClassifier(3)(keras.layers.Dense(4)(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=AMSoftmaxLoss(scale=10.0, margin=0.2))
    before = float(model.evaluate(x, labels, verbose=0))
    model.fit(x, labels, epochs=30, batch_size=60, verbose=0)
    after = float(model.evaluate(x, labels, verbose=0))
    assert after < 0.5 * before
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import numpy as np, keras, reprlearn
        m = keras.saving.load_model({str(tmp_path / 'model.keras')!r})
        np.save({str(tmp_path / 'out.npy')!r}, m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), model.predict(x, verbose=0))


def test_the_loss_compiles_with_xla_and_gives_the_eager_value():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, CosineClassifier(3)(inputs))
    model.compile(optimizer="sgd", loss=AMSoftmaxLoss(), jit_compile=True)
    x = np.random.default_rng(2).normal(size=(8, 3)).astype(np.float32)
    labels = np.arange(8) % 3
    eager = float(am_softmax_loss(labels, model(x), 30.0, 0.35))
    assert float(model.evaluate(x, labels, verbose=0)) == pytest.approx(eager, rel=1e-5)
