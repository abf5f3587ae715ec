"""The losses beyond triplet (Multi-Similarity and its miner, Circle, NT-Xent, Proxy-Anchor, ArcFace) against the
NumPy loops in `tests/reference.py`, their edges, dtypes, XLA, Keras forms and bad input. Their agreement with
pytorch-metric-learning itself is `tests/test_pml_parity.py`."""

import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from reprlearn.layers import CosineClassifier
from reprlearn.losses import (
    ArcFaceLoss,
    CircleLoss,
    MultiSimilarityLoss,
    MultiSimilarityMiner,
    NTXentLoss,
    ProxyAnchorLoss,
    arcface_loss,
    circle_loss,
    multi_similarity_loss,
    multi_similarity_miner,
    ntxent_loss,
    proxy_anchor_loss,
)
from tests import reference

METRICS = ("angular", "L2", "squared-L2")


def batch(seed, n=12, d=5, classes=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    labels[-1] = classes + 3  # a singleton class: an anchor without positives
    return labels, rng.normal(size=(n, d)).astype(np.float32)


def unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("metric", METRICS)
def test_multi_similarity_matches_loop(seed, metric):
    labels, e = batch(seed)
    e = unit_rows(e) * (1.0 if metric == "angular" else 0.7)  # distances in the range λ = 0.5 separates
    want = reference.multi_similarity(labels, e, 2.0, 50.0, 0.5, metric)
    assert float(multi_similarity_loss(labels, e, distance=metric)) == pytest.approx(want, rel=1e-4)
    assert float(MultiSimilarityLoss(distance=metric)(labels, e)) == pytest.approx(want, rel=1e-4)
    other = reference.multi_similarity(labels, e, 3.0, 20.0, 0.3, metric)
    assert float(multi_similarity_loss(labels, e, 3.0, 20.0, 0.3, metric)) == pytest.approx(other, rel=1e-4)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("metric", METRICS)
def test_multi_similarity_miner_matches_loop(seed, metric):
    labels, e = batch(seed, n=16)
    for epsilon in (0.0, 0.1, 0.5):
        want_positive, want_negative = reference.multi_similarity_mined(labels, e, epsilon, metric)
        positive, negative = multi_similarity_miner(labels, e, epsilon, metric)
        np.testing.assert_array_equal(positive.numpy(), want_positive)
        np.testing.assert_array_equal(negative.numpy(), want_negative)
    # The miner keeps a strict subset here, and the mined loss is the loop over the kept pairs.
    assert 0 < want_negative.sum() < (labels[:, None] != labels[None, :]).sum()
    want = reference.multi_similarity(labels, e, metric=metric, epsilon=0.5)
    for value in (multi_similarity_loss(labels, e, distance=metric, pair_miner=MultiSimilarityMiner(0.5)),
                  MultiSimilarityLoss(distance=metric, pair_miner=MultiSimilarityMiner(0.5))(labels, e)):
        assert float(value) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_circle_matches_loop(seed):
    labels, e = batch(seed)
    for m, gamma in ((0.4, 80.0), (0.25, 256.0), (0.0, 1.0)):
        want = reference.circle(labels, e, m, gamma)
        assert float(circle_loss(labels, e, m, gamma)) == pytest.approx(want, rel=1e-4)
        assert float(CircleLoss(m, gamma)(labels, e)) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("metric", METRICS)
def test_ntxent_matches_loop(seed, metric):
    labels, e = batch(seed)
    for temperature in (0.07, 0.5):
        want = reference.ntxent(labels, e, temperature, metric)
        assert float(ntxent_loss(labels, e, temperature, metric)) == pytest.approx(want, rel=1e-4)
        assert float(NTXentLoss(temperature, metric)(labels, e)) == pytest.approx(want, rel=1e-4)


def test_ntxent_is_not_supcon_with_several_positives():
    # With one positive per anchor NT-Xent is SupCon; with more, each pair has its own denominator.
    from reprlearn.losses import supervised_contrastive_loss
    rng = np.random.default_rng(3)
    e = rng.normal(size=(8, 4)).astype(np.float32)
    views = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    assert float(ntxent_loss(views, e, 0.2)) == pytest.approx(float(supervised_contrastive_loss(views, e, 5.0)),
                                                              rel=1e-5)
    classes = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    assert abs(float(ntxent_loss(classes, e, 0.2)) - float(supervised_contrastive_loss(classes, e, 5.0))) > 1e-3


@pytest.mark.parametrize("seed", range(3))
def test_proxy_anchor_matches_loop(seed):
    labels, e = batch(seed, classes=5)
    labels[-1] = 6
    proxies = np.random.default_rng(seed + 10).normal(size=(8, 5)).astype(np.float32)
    for margin, alpha in ((0.1, 32.0), (0.0, 4.0)):
        want = reference.proxy_anchor(labels, e, proxies, margin, alpha)
        assert float(proxy_anchor_loss(labels, e, proxies, margin, alpha)) == pytest.approx(want, rel=1e-4)
        # The Keras form reads a CosineClassifier's cosines; its weights [d, C] are the proxies transposed.
        cosines = unit_rows(e) @ unit_rows(proxies).T
        assert float(ProxyAnchorLoss(margin, alpha)(labels, cosines)) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_arcface_matches_loop(seed):
    rng = np.random.default_rng(seed)
    cosines = np.tanh(rng.normal(size=(10, 6))).astype(np.float32)
    labels = rng.integers(0, 6, 10)
    cosines[0, labels[0]] = -0.99  # past π − m: the monotone fallback
    cosines[1, labels[1]] = 1.0    # θ = 0
    for scale, margin in ((64.0, 0.5), (30.0, math.radians(28.6)), (10.0, 0.0)):
        want = reference.arcface(labels, cosines, scale, margin)
        assert float(arcface_loss(labels, cosines, scale, margin)) == pytest.approx(want, rel=1e-4)
        assert float(ArcFaceLoss(scale, margin)(labels, cosines)) == pytest.approx(want, rel=1e-4)


def test_sub_centre_arcface_takes_each_class_best_centre():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(6, 4)).astype(np.float32)
    layer = CosineClassifier(3, sub_centers=2)
    layer.build((None, 4))
    weights = rng.normal(size=(4, 6)).astype(np.float32)
    layer.class_weights.assign(weights)
    full = unit_rows(e) @ unit_rows(weights.T).T                     # [6, 6]: class c's centres are 2c, 2c + 1
    want = full.reshape(6, 3, 2).max(axis=2)
    np.testing.assert_allclose(layer(e).numpy(), want, rtol=1e-5, atol=1e-6)
    labels = np.array([0, 1, 2, 0, 1, 2])
    assert float(ArcFaceLoss()(labels, layer(e))) == pytest.approx(reference.arcface(labels, want), rel=1e-4)


IN_BATCH = [("multi_similarity", multi_similarity_loss), ("circle", circle_loss), ("ntxent", ntxent_loss)]


@pytest.mark.parametrize("name,loss", IN_BATCH)
def test_pair_losses_edges(name, loss):
    z = tf.Variable(unit_rows(np.random.default_rng(1).normal(size=(4, 3))).astype(np.float32))
    # No positive pair: Circle and NT-Xent are 0 with a zero gradient; Multi-Similarity keeps its negative term
    # (as pytorch-metric-learning does) unless the miner runs, which keeps nothing.
    with tf.GradientTape() as tape:
        value = loss([0, 1, 2, 3], z)
    gradient = tape.gradient(value, z)
    if name == "multi_similarity":
        assert float(value) == pytest.approx(reference.multi_similarity([0, 1, 2, 3], z.numpy()), rel=1e-4)
        with tf.GradientTape() as tape:
            mined = loss([0, 1, 2, 3], z, pair_miner="multi_similarity")
        assert float(mined) == 0.0 and np.all(tape.gradient(mined, z).numpy() == 0.0)
    else:
        assert float(value) == 0.0 and np.all(gradient.numpy() == 0.0)
    # One class: no negatives. One item: nothing at all.
    want_one_class = {"multi_similarity": reference.multi_similarity([0] * 4, z.numpy()),
                      "circle": 0.0, "ntxent": 0.0}[name]
    assert float(loss([0, 0, 0, 0], z)) == pytest.approx(want_one_class, rel=1e-4, abs=1e-7)
    assert float(loss([5], z[:1])) == 0.0
    # Identical embeddings: a finite loss and finite gradients.
    same = tf.Variable(np.ones((6, 3), np.float32))
    with tf.GradientTape() as tape:
        value = loss([0, 0, 1, 1, 2, 2], same)
    assert np.isfinite(float(value)) and np.all(np.isfinite(tape.gradient(value, same).numpy()))
    # NaN in, NaN out (never a finite number hiding a NaN row).
    bad = z.numpy().copy()
    bad[2, 0] = np.nan
    assert np.isnan(float(loss([0, 0, 1, 1], bad)))


@pytest.mark.parametrize("name,loss", IN_BATCH)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_pair_losses_half_precision(name, loss, dtype):
    labels, e = batch(0)
    e = unit_rows(e)
    half = tf.cast(e, dtype)
    value = loss(labels, half)
    assert value.dtype == tf.as_dtype(dtype)
    # float32 maths inside: the value is the float32 loss of the rounded inputs, rounded once.
    want = float(loss(labels, tf.cast(half, tf.float32)))
    assert float(value) == pytest.approx(want, rel=1e-2)


def test_classifier_losses_edges_and_dtypes():
    rng = np.random.default_rng(2)
    e = tf.Variable(rng.normal(size=(5, 4)).astype(np.float32))
    proxies = tf.Variable(rng.normal(size=(3, 4)).astype(np.float32))
    # One class in the batch, a singleton class, identical embeddings: finite values and gradients.
    for labels, embeddings in (([1] * 5, e), ([0, 0, 1, 1, 2], e), ([0, 0, 1, 1, 2], tf.Variable(np.ones((5, 4),
                                                                                                       np.float32)))):
        with tf.GradientTape() as tape:
            value = proxy_anchor_loss(labels, embeddings, proxies)
        assert float(value) == pytest.approx(reference.proxy_anchor(labels, embeddings.numpy(), proxies.numpy()),
                                             rel=1e-4)
        assert all(np.all(np.isfinite(g.numpy())) for g in tape.gradient(value, [embeddings, proxies]))
    assert proxy_anchor_loss([0, 1], tf.cast(e[:2], "float16"), proxies).dtype == tf.float16
    cosines = tf.Variable(np.array([[1.0, 0.0], [-1.0, 0.2], [0.3, 0.3]], np.float32))
    with tf.GradientTape() as tape:
        value = arcface_loss([0, 0, 1], cosines)
    assert np.all(np.isfinite(tape.gradient(value, cosines).numpy()))
    assert float(value) == pytest.approx(reference.arcface([0, 0, 1], cosines.numpy()), rel=1e-4)
    assert np.isnan(float(proxy_anchor_loss([0, 1], [[np.nan, 0, 0, 0], [1, 0, 0, 0]], proxies)))


def test_losses_run_under_xla():
    labels, e = batch(1)
    proxies = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    cosines = np.tanh(e @ proxies.T)
    labels_in_range = labels % 8
    for compute, args, eager in (
            (lambda y, x: MultiSimilarityLoss(pair_miner="multi_similarity")(y, x), (labels, e), None),
            (lambda y, x: CircleLoss()(y, x), (labels, e), None),
            (lambda y, x: NTXentLoss()(y, x), (labels, e), None),
            (lambda y, x: ProxyAnchorLoss()(y, x), (labels_in_range, cosines), None),
            (lambda y, x: ArcFaceLoss()(y, x), (labels_in_range, cosines), None)):
        want = float(compute(*args))
        assert float(tf.function(compute, jit_compile=True)(*args)) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("loss", [MultiSimilarityLoss(alpha=3.0, pair_miner=MultiSimilarityMiner(0.2)),
                                  CircleLoss(m=0.25, gamma=256.0), NTXentLoss(temperature=0.2, distance="L2"),
                                  ProxyAnchorLoss(margin=0.2, alpha=16.0), ArcFaceLoss(scale=30.0, margin=0.3)])
def test_keras_losses_serialise(loss):
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is type(loss) and again.get_config() == loss.get_config()


def test_bad_input_names_the_argument():
    cosines = np.zeros((2, 3), np.float32)
    for call, text in (
            (lambda: arcface_loss([0, 3], cosines), "label 3 with num_classes=3"),
            (lambda: arcface_loss([-1, 0], cosines), "label -1 with num_classes=3"),
            (lambda: ProxyAnchorLoss()([0, 7], cosines), "label 7 with num_classes=3"),
            (lambda: proxy_anchor_loss([0, 4], np.ones((2, 4)), np.ones((3, 4))), "label 4 with num_classes=3"),
            (lambda: CosineClassifier(3, sub_centers=0), "sub_centers=0"),
            (lambda: proxy_anchor_loss([0, 1], np.ones((2, 4)), np.ones((3, 5))), "proxies.shape=(3, 5)"),
            (lambda: NTXentLoss(temperature=0.0), "temperature=0.0"),
            (lambda: ntxent_loss([0, 0], np.ones((2, 3)), temperature=-1.0), "temperature=-1.0"),
            (lambda: ArcFaceLoss(scale=0), "scale=0"),
            (lambda: ArcFaceLoss(margin=math.pi / 2), "margin=1.57"),
            (lambda: ArcFaceLoss(margin=-0.1), "margin=-0.1"),
            (lambda: CircleLoss(gamma=0.0), "gamma=0.0"),
            (lambda: CircleLoss(m=1.0), "m=1.0"),
            (lambda: MultiSimilarityLoss(beta=float("nan")), "beta=nan"),
            (lambda: MultiSimilarityMiner(epsilon=-0.1), "epsilon=-0.1"),
            (lambda: ProxyAnchorLoss(alpha=-1), "alpha=-1"),
            (lambda: keras.losses.Loss.__new__(ProxyAnchorLoss).__init__(margin=-0.5), "margin=-0.5"),
            (lambda: multi_similarity_loss([0, 1], np.ones((3, 4))), "one row per item"),
            (lambda: MultiSimilarityLoss(pair_miner="hardest"), "pair_miner='hardest'")):
        with pytest.raises(ValueError, match=re.escape(text)):
            call()
    from reprlearn.losses import TripletSemiHardLoss
    with pytest.raises(ValueError, match="pair_miner"):
        TripletSemiHardLoss(pair_miner="multi_similarity")


def test_models_compiled_with_each_loss_reload_in_a_fresh_process(tmp_path):
    """A `.keras` file keeps the loss (its miner and settings); a process that imports only keras and reprlearn
    loads it and gets the same loss value."""
    import json
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(12, 6)).astype(np.float32), np.repeat(np.arange(4), 3)
    losses = {"multi_similarity": MultiSimilarityLoss(alpha=3.0, pair_miner=MultiSimilarityMiner(0.2)),
              "circle": CircleLoss(m=0.25, gamma=64.0), "ntxent": NTXentLoss(temperature=0.2),
              "proxy_anchor": ProxyAnchorLoss(margin=0.2), "arcface": ArcFaceLoss(scale=32.0, margin=0.3)}
    want = {}
    for name, loss in losses.items():
        keras.utils.set_random_seed(0)
        layers = [keras.Input((6,)), keras.layers.Dense(4)]
        if name in ("proxy_anchor", "arcface"):
            layers.append(CosineClassifier(4, sub_centers=2 if name == "arcface" else 1))
        model = keras.Sequential(layers)
        model.compile(optimizer="adam", loss=loss)
        model.save(tmp_path / f"{name}.keras")
        want[name] = [float(model.compute_loss(x, labels, model(x))), loss.get_config()]
    script = f"""
import json, sys
import keras, numpy as np
import reprlearn
x, labels = np.random.default_rng(0).normal(size=(12, 6)).astype(np.float32), np.repeat(np.arange(4), 3)
out = {{}}
for name in {sorted(losses)!r}:
    model = keras.saving.load_model({str(tmp_path)!r} + "/" + name + ".keras")
    out[name] = [float(model.compute_loss(x, labels, model(x))), model.loss.get_config()]
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (value, config) in want.items():
        assert got[name][0] == pytest.approx(value, rel=1e-5), name
        assert got[name][1] == json.loads(json.dumps(config)), name
