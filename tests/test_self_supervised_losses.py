"""The self-supervised losses, the kNN monitor and the output spread against plain NumPy loops (tests/reference.py),
with their edges: one image, identical outputs, NaN in, float16."""

import numpy as np
import pytest
import tensorflow as tf

from reprlearn.losses.self_supervised import (
    BarlowTwinsLoss,
    BYOLLoss,
    InfoNCELoss,
    NTXentViewsLoss,
    SimSiamLoss,
    VICRegLoss,
    barlow_twins_loss,
    byol_loss,
    info_nce_loss,
    nt_xent_views_loss,
    output_spread,
    simsiam_loss,
    vicreg_loss,
)
from reprlearn.losses import ntxent_loss
from reprlearn.metrics import weighted_knn_accuracy
from tests import reference

RNG = np.random.default_rng(3)
Z1, Z2 = RNG.normal(size=(5, 4)), RNG.normal(size=(5, 4))
QUEUE = RNG.normal(size=(3, 4))


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_views_equals_the_loop_with_and_without_a_memory(temperature):
    assert float(nt_xent_views_loss(Z1, Z2, temperature)) == pytest.approx(
        reference.nt_xent_views(Z1, Z2, temperature), rel=1e-5)
    assert float(nt_xent_views_loss(Z1, Z2, temperature, negatives=QUEUE)) == pytest.approx(
        reference.nt_xent_views(Z1, Z2, temperature, QUEUE), rel=1e-5)


def test_nt_xent_views_is_pml_ntxent_with_image_labels():
    labels = np.concatenate([np.arange(5), np.arange(5)])
    views = np.concatenate([Z1, Z2]).astype(np.float32)
    assert float(nt_xent_views_loss(Z1, Z2, 0.2)) == pytest.approx(float(ntxent_loss(labels, views, 0.2)), rel=1e-5)


def test_info_nce_equals_the_loop():
    assert float(info_nce_loss(Z1, Z2, QUEUE, 0.2)) == pytest.approx(reference.info_nce(Z1, Z2, QUEUE, 0.2), rel=1e-5)
    assert float(info_nce_loss(Z1, Z2, None, 0.2)) == pytest.approx(reference.info_nce(Z1, Z2, [], 0.2), rel=1e-5)
    assert float(InfoNCELoss(0.2)(Z2, Z1)) == pytest.approx(reference.info_nce(Z1, Z2, [], 0.2), rel=1e-5)


def test_byol_and_simsiam_equal_the_loop_and_stop_the_target_gradient():
    assert float(byol_loss(Z1, Z2)) == pytest.approx(reference.byol(Z1, Z2), rel=1e-5)
    assert float(simsiam_loss(Z1, Z2)) == pytest.approx(reference.simsiam(Z1, Z2), rel=1e-5)
    targets, predictions = tf.Variable(Z1, dtype=tf.float32), tf.Variable(Z2, dtype=tf.float32)
    for loss in (byol_loss, simsiam_loss):
        with tf.GradientTape() as tape:
            value = loss(targets, predictions)
        to_targets, to_predictions = tape.gradient(value, [targets, predictions])
        assert to_targets is None
        assert float(tf.reduce_sum(tf.abs(to_predictions))) > 0


def test_barlow_twins_and_vicreg_equal_the_loop():
    assert float(barlow_twins_loss(Z1, Z2, 5e-3)) == pytest.approx(reference.barlow_twins(Z1, Z2, 5e-3), rel=1e-4)
    assert float(barlow_twins_loss(Z1, Z2, 0.5)) == pytest.approx(reference.barlow_twins(Z1, Z2, 0.5), rel=1e-4)
    assert float(vicreg_loss(Z1, Z2)) == pytest.approx(reference.vicreg(Z1, Z2), rel=1e-4)
    assert float(vicreg_loss(Z1, Z2, 1.0, 2.0, 3.0)) == pytest.approx(reference.vicreg(Z1, Z2, 1.0, 2.0, 3.0),
                                                                         rel=1e-4)


def test_the_classes_equal_their_functions_and_round_trip_their_config():
    import keras
    pairs = [(NTXentViewsLoss(0.3), lambda a, b: nt_xent_views_loss(a, b, 0.3)),
             (BYOLLoss(), byol_loss), (SimSiamLoss(), simsiam_loss),
             (BarlowTwinsLoss(0.01), lambda a, b: barlow_twins_loss(a, b, 0.01)),
             (VICRegLoss(1.0, 2.0, 3.0), lambda a, b: vicreg_loss(a, b, 1.0, 2.0, 3.0))]
    for loss, function in pairs:
        assert float(loss(Z1, Z2)) == pytest.approx(float(function(Z1, Z2)), rel=1e-6)
        again = keras.losses.deserialize(keras.losses.serialize(loss))
        assert float(again(Z1, Z2)) == pytest.approx(float(loss(Z1, Z2)), rel=1e-6)


def test_edges_one_image_identical_outputs_nan_and_float16():
    one_1, one_2 = Z1[:1], Z2[:1]
    assert float(nt_xent_views_loss(one_1, one_2, 0.1)) == pytest.approx(0.0, abs=1e-6)  # the twin alone
    same = np.ones((4, 3))
    # Identical outputs: NT-Xent is log(2N − 1) (every candidate equal), BYOL 0, Barlow Twins d (C = 0),
    # VICReg's variance term at its largest (μ·2·(1 − √ε)) with no invariance or covariance.
    assert float(nt_xent_views_loss(same, same, 0.1)) == pytest.approx(np.log(7), rel=1e-5)
    assert float(byol_loss(same, same)) == pytest.approx(0.0, abs=1e-6)
    assert float(barlow_twins_loss(same, same)) == pytest.approx(3.0, rel=1e-5)
    assert float(vicreg_loss(same, same)) == pytest.approx(25 * 2 * (1 - np.sqrt(1e-4)), rel=1e-5)
    broken = Z1.copy()
    broken[2, 1] = np.nan
    for loss in (lambda a, b: nt_xent_views_loss(a, b, 0.1), byol_loss, simsiam_loss, barlow_twins_loss,
                 vicreg_loss, lambda a, b: info_nce_loss(a, b, QUEUE, 0.2)):
        assert np.isnan(float(loss(broken, Z2)))
        half = float(loss(Z1.astype(np.float16), Z2.astype(np.float16)))
        assert half == pytest.approx(float(loss(Z1.astype(np.float16).astype(np.float32),
                                               Z2.astype(np.float16).astype(np.float32))), rel=1e-6)
    with pytest.raises(ValueError, match="temperature=0"):
        nt_xent_views_loss(Z1, Z2, 0)


def test_output_spread_is_near_one_over_root_d_for_spread_outputs_and_zero_when_collapsed():
    spread = RNG.normal(size=(4096, 64))
    assert float(output_spread(spread)) == pytest.approx(1 / np.sqrt(64), rel=0.05)
    assert float(output_spread(np.tile(spread[:1], (16, 1)))) == pytest.approx(0.0, abs=1e-6)


def test_weighted_knn_accuracy_equals_the_loop_and_its_edges():
    bank, bank_labels = RNG.normal(size=(30, 6)), RNG.integers(0, 3, 30)
    queries, query_labels = RNG.normal(size=(12, 6)), RNG.integers(0, 3, 12)
    for k in (1, 5, 200):
        assert weighted_knn_accuracy(bank, bank_labels, queries, query_labels, k, 0.1) == pytest.approx(
            reference.weighted_knn_accuracy(bank, bank_labels, queries, query_labels, k, 0.1))
    # Queries equal to bank items, k = 1: every one finds its own label.
    assert weighted_knn_accuracy(bank, bank_labels, bank, bank_labels, k=1) == 1.0
    assert np.isnan(weighted_knn_accuracy(np.full((3, 2), np.nan), [0, 1, 0], queries[:, :2], query_labels))
    with pytest.raises(ValueError, match="k=0"):
        weighted_knn_accuracy(bank, bank_labels, queries, query_labels, k=0)
    with pytest.raises(ValueError, match="12 queries with 11 labels"):
        weighted_knn_accuracy(bank, bank_labels, queries, query_labels[:11])
