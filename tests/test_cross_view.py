"""Two towers across two views: the polar transform, circular towers, cross-view losses, Recall@K, pair data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

import reprlearn  # noqa: F401  (registers the layers and losses)
from reprlearn.config import config_from_dict
from reprlearn.data.pairs import make_pairset
from reprlearn.data.pipelines import matched_pair_batches
from reprlearn.errors import ConfigError, DataError
from reprlearn.layers import CircularPadding2D, PolarTransform, WidthPooling
from reprlearn.losses import (
    CrossViewSoftMarginTripletLoss,
    SymmetricInfoNCELoss,
    TripletLoss,
    TwoViewLoss,
    cross_view_soft_margin_triplet_loss,
    symmetric_info_nce_loss,
)
from reprlearn.metrics.cross_view import cross_view_metrics, k_at_one_percent, one_direction
from reprlearn.models.two_tower import LogitScale, build_two_towers, check_view_images, towers_of, two_tower_model
from tests import reference

RNG = np.random.default_rng(0)


# --- geometry -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, strip", [((12, 12), (6, 16)), ((10, 14), (5, 9))])
def test_polar_transform_matches_the_numpy_loop(source, strip):
    image = RNG.uniform(0, 255, (2, *source, 3)).astype(np.float32)
    out = PolarTransform(*strip)(image).numpy()
    assert out.shape == (2, *strip, 3)
    for b in range(2):
        np.testing.assert_allclose(out[b], reference.polar_transform(image[b], *strip), rtol=1e-5, atol=1e-3)


def test_polar_transform_lays_the_outer_circle_on_top_and_the_centre_at_the_bottom():
    # An image bright at its centre only: the strip's bottom row is bright, its top row dark.
    image = np.zeros((1, 16, 16, 1), np.float32)
    image[0, 6:10, 6:10] = 255.0
    strip = PolarTransform(8, 32)(image).numpy()[0, ..., 0]
    assert strip[-1].min() > 200 and strip[0].max() == 0.0
    with pytest.raises(ValueError, match="Received: height=0"):
        PolarTransform(0, 32)


def test_circular_padding_wraps_the_width_and_zero_pads_the_height():
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4, 1)
    out = CircularPadding2D(1)(x).numpy()[0, ..., 0]
    assert out.shape == (5, 6)
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_array_equal(out[1], [3, 0, 1, 2, 3, 0])


@pytest.mark.parametrize("mode", ["avg", "max", "fourier"])
def test_width_pooling_ignores_any_circular_shift(mode):
    x = RNG.normal(size=(2, 3, 8, 4)).astype(np.float32)
    pooled = WidthPooling(mode)(x).numpy()
    for shift in (1, 3, 5):
        np.testing.assert_allclose(WidthPooling(mode)(np.roll(x, shift, axis=2)).numpy(), pooled, atol=1e-5)
    assert pooled.shape == ((2, 3, 5, 4) if mode == "fourier" else (2, 3, 4))
    assert not np.allclose(pooled, WidthPooling(mode)(np.roll(x, 1, axis=1)).numpy())  # rows are not pooled


def _model_cfg(**model):
    return config_from_dict({"data": {"name": "csv:pairs.csv"}, "loss": {"name": "soft_margin_triplet"},
                             "model": {"kind": "two_tower", "filters": [4, 8], "dense": 16, "embedding_dim": 8,
                                       **model}}).model


def test_a_circular_query_tower_gives_one_embedding_whatever_the_heading():
    query, _ = build_two_towers(_model_cfg(circular=True), (8, 32, 1), (16, 16, 1))
    strips = RNG.uniform(0, 255, (3, 8, 32, 1)).astype(np.float32)
    base = query(strips).numpy()
    for shift in (4, 8, 28):  # multiples of the total stride (2 poolings: 4 columns)
        np.testing.assert_allclose(query(np.roll(strips, shift, axis=2)).numpy(), base, atol=1e-5)
    plain, _ = build_two_towers(_model_cfg(), (8, 32, 1), (16, 16, 1))
    assert np.abs(plain(np.roll(strips, 4, axis=2)).numpy() - plain(strips).numpy()).max() > 1e-3


# --- towers ---------------------------------------------------------------------------------------------------------

def test_share_modes_own_share_the_head_or_share_everything():
    sizes = (8, 32, 1), (16, 16, 1)
    none_q, none_r = build_two_towers(_model_cfg(share="none"), *sizes)
    head_q, head_r = build_two_towers(_model_cfg(share="head"), *sizes)
    all_q, all_r = build_two_towers(_model_cfg(share="all", polar_size=[8, 32]), *sizes)
    assert not {id(w) for w in none_q.weights} & {id(w) for w in none_r.weights}
    shared = {id(w) for w in head_q.weights} & {id(w) for w in head_r.weights}
    assert shared == {id(w) for w in head_q.get_layer("embedding_dense").weights}
    assert {id(w) for w in all_q.weights} == {id(w) for w in all_r.weights}
    assert all_r.get_layer("polar").output.shape[1:] == (8, 32, 1)


def test_share_all_with_views_of_different_sizes_is_refused():
    with pytest.raises(ConfigError, match=r"query view is \[8, 32, 1\] and the reference view \[16, 16, 1\]"):
        build_two_towers(_model_cfg(share="all"), (8, 32, 1), (16, 16, 1))
    with pytest.raises(ConfigError, match="model.share: all"):
        config_from_dict({"data": {"name": "csv:p.csv", "image_size": [8, 32], "reference_size": [16, 16]},
                          "loss": {"name": "info_nce"}, "model": {"kind": "two_tower", "share": "all"}})


def test_a_tower_refuses_images_of_the_other_view_naming_both_sizes():
    _, reference_tower = build_two_towers(_model_cfg(), (8, 32, 1), (16, 16, 1))
    with pytest.raises(DataError, match="built for 16x16x1 images and received 8x32x1"):
        check_view_images(reference_tower, np.zeros((2, 8, 32, 1)), "reference")


# --- losses against NumPy loops -------------------------------------------------------------------------------------

def _pairs(n=6, d=5, dtype=np.float32):
    x = RNG.normal(size=(n, 2, d))
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 4, 5], [0, 0, 1, 2, 2, 3]], ids=["places", "shared-labels"])
@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
def test_soft_margin_triplet_matches_the_loop_in_both_directions(labels, metric):
    pairs = _pairs()
    got = float(cross_view_soft_margin_triplet_loss(labels, pairs, alpha=10.0, distance=metric))
    assert got == pytest.approx(reference.cross_view_soft_margin(labels, pairs, 10.0, metric), rel=1e-5)
    # Both directions count: the query-only mean differs.
    loss = CrossViewSoftMarginTripletLoss(alpha=3.0, distance=metric)
    assert float(loss(np.array(labels), pairs)) == pytest.approx(
        reference.cross_view_soft_margin(labels, pairs, 3.0, metric), rel=1e-5)


@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 4, 5], [0, 0, 1, 2, 2, 3]], ids=["places", "shared-labels"])
def test_symmetric_info_nce_matches_the_loop(labels):
    pairs = _pairs()
    for temperature in (0.07, 0.5):
        got = float(symmetric_info_nce_loss(labels, pairs, temperature))
        assert got == pytest.approx(reference.symmetric_info_nce(labels, pairs, temperature), rel=1e-5)
    assert float(SymmetricInfoNCELoss(0.1)(np.array(labels), pairs)) == pytest.approx(
        reference.symmetric_info_nce(labels, pairs, 0.1), rel=1e-5)


def test_two_view_loss_is_the_one_tower_loss_over_both_views():
    pairs, labels = _pairs(), np.array([0, 1, 2, 3, 4, 5])
    inner = TripletLoss("batch-all", margin=0.3)
    expected = float(inner(np.concatenate([labels, labels]), np.concatenate([pairs[:, 0], pairs[:, 1]])))
    assert float(TwoViewLoss(TripletLoss("batch-all", margin=0.3))(labels, pairs)) == pytest.approx(expected)


def test_edges_no_negative_one_label_identical_nan_and_float16():
    pairs = _pairs(4)
    # One pair, or every pair of one label: no negative, loss 0 and gradient 0.
    for labels, batch in (([0], pairs[:1]), ([7, 7, 7, 7], pairs)):
        assert float(cross_view_soft_margin_triplet_loss(labels, batch)) == 0.0
        assert float(symmetric_info_nce_loss(labels, batch)) == pytest.approx(0.0, abs=1e-6)
    # Identical embeddings everywhere: every d = 0, each term log 2; the gradient stays finite (no sqrt of 0).
    same = tf.Variable(np.ones((4, 2, 5), np.float32) / math.sqrt(5))
    with tf.GradientTape() as tape:
        value = cross_view_soft_margin_triplet_loss([0, 1, 2, 3], same)
    assert float(value) == pytest.approx(math.log(2.0), rel=1e-6)
    assert np.all(np.isfinite(tape.gradient(value, same).numpy()))
    broken = pairs.copy()
    broken[1, 0, 2] = np.nan
    assert np.isnan(float(cross_view_soft_margin_triplet_loss([0, 1, 2, 3], broken)))
    assert np.isnan(float(symmetric_info_nce_loss([0, 1, 2, 3], broken)))
    half = cross_view_soft_margin_triplet_loss([0, 1, 2, 3], pairs.astype(np.float16))
    assert half.dtype == tf.float16
    assert float(half) == pytest.approx(float(cross_view_soft_margin_triplet_loss([0, 1, 2, 3], pairs)), rel=1e-2)


def test_bad_loss_inputs_name_the_argument():
    with pytest.raises(ValueError, match=r"pairs must be \[B, 2, d\].*Received: pairs.shape=\(4, 5\)"):
        cross_view_soft_margin_triplet_loss([0, 1, 2, 3], np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="np.unique"):
        symmetric_info_nce_loss(np.array(["a", "b"]), _pairs(2))
    with pytest.raises(ValueError, match="Received: alpha=0"):
        CrossViewSoftMarginTripletLoss(alpha=0)


def test_a_learnt_temperature_scales_the_logits_and_is_clipped():
    pairs = _pairs(4)
    scaled = LogitScale(0.1)(pairs).numpy()
    # InfoNCE at τ = 1 over the scaled pairs is InfoNCE at τ = 0.1 over the pairs.
    assert float(symmetric_info_nce_loss([0, 1, 2, 3], scaled, 1.0)) == pytest.approx(
        float(symmetric_info_nce_loss([0, 1, 2, 3], pairs, 0.1)), rel=1e-5)
    layer = LogitScale(0.07)
    layer.build((None, 2, 5))
    layer.log_scale.assign(10.0)  # 1/τ = e^10: clipped at 100
    assert layer.temperature == pytest.approx(0.01)


# --- Recall@K against a hand count ------------------------------------------------------------------------------------

def test_recall_at_k_counts_references_strictly_nearer_with_ties_for_the_query():
    # One dimension: queries at 0, 10, 20; references at 0.5, 9, 11 (true for query 1), 30.
    queries, references = np.array([[0.0], [10.0], [20.0]]), np.array([[0.5], [9.0], [11.0], [30.0]])
    query_labels, reference_labels = np.array([0, 1, 2]), np.array([0, 9, 1, 2])
    scores = one_direction(queries, references, query_labels, reference_labels, ks=(1, 2, 3), map_at_r=True)
    # Query 0: nearest true at rank 0. Query 1: 9 is as near as 11 (a tie, not strictly nearer): rank 0.
    # Query 2: its true reference 30 is 10 away; 11 (9 away) is strictly nearer, 9 (11 away) is not: rank 1.
    assert scores["recall_at_1"] == pytest.approx(2 / 3)
    assert scores["recall_at_2"] == pytest.approx(1.0)
    assert scores["recall_at_3"] == pytest.approx(1.0)
    assert scores["k_at_1pct"] == 1 and scores["recall_at_1pct"] == pytest.approx(2 / 3)
    for k in (1, 2, 3):
        assert scores[f"recall_at_{k}"] == pytest.approx(reference.cross_view_recall(
            queries, references, query_labels, reference_labels, k))
    # MAP@R with one true reference (R = 1) is the precision of the first ranked, ties broken by index: reference 1
    # (label 9) comes first for query 1, so only query 0 scores, where Recall@1 counted the tie for the query.
    assert scores["map_at_r"] == pytest.approx(1 / 3)


def test_recall_on_random_data_matches_the_loop_both_directions_and_at_one_percent():
    q, r = RNG.normal(size=(40, 6)), RNG.normal(size=(250, 6))
    q_labels, r_labels = RNG.integers(0, 30, 40), RNG.integers(0, 30, 250)
    scores = cross_view_metrics(q, r, q_labels, r_labels, "angular")
    assert k_at_one_percent(250) == 3 == scores["query_to_reference"]["k_at_1pct"]
    for k, key in ((1, "recall_at_1"), (5, "recall_at_5"), (3, "recall_at_1pct")):
        assert scores["query_to_reference"][key] == pytest.approx(
            reference.cross_view_recall(q, r, q_labels, r_labels, k, "angular"))
    assert scores["reference_to_query"]["recall_at_1"] == pytest.approx(
        reference.cross_view_recall(r, q, r_labels, q_labels, 1, "angular"))


def test_recall_refuses_non_finite_embeddings_and_queries_without_any_match():
    with pytest.raises(DataError, match="NaN"):
        one_direction(np.array([[np.nan]]), np.array([[0.0]]), [0], [0])
    with pytest.raises(DataError, match="no query has a true reference"):
        one_direction(np.zeros((2, 3)), np.zeros((2, 3)), [0, 1], [5, 6])


# --- matched-pair batches -------------------------------------------------------------------------------------------

def test_pair_batches_keep_rows_matched_and_never_put_one_label_twice_in_a_batch():
    n = 40
    labels = np.repeat(np.arange(20), 2)  # one-to-many: two queries of each place
    queries = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 2, 4, 1)).copy()
    references = np.broadcast_to(labels.astype(np.float32)[:, None, None, None] + 100, (n, 3, 3, 1)).copy()
    pairs = make_pairset(queries, references, labels)
    batches = matched_pair_batches(pairs.query, pairs.reference, 8, seed=3)
    for (q, r), y in batches.take(5).as_numpy_iterator():
        assert q.shape == (8, 2, 4, 1) and r.shape == (8, 3, 3, 1)
        assert len(set(y.tolist())) == 8                               # distinct places: no false negative
        np.testing.assert_array_equal(labels[q[:, 0, 0, 0].astype(int)], y)  # each query is of its place
        np.testing.assert_array_equal(r[:, 0, 0, 0] - 100, y)           # and so is its reference
    again = matched_pair_batches(pairs.query, pairs.reference, 8, seed=3, start_step=2)
    third = list(batches.skip(2).take(1).as_numpy_iterator())[0]
    np.testing.assert_array_equal(list(again.take(1).as_numpy_iterator())[0][1], third[1])  # resumes exactly
    with pytest.raises(DataError, match="train.pair_batch_size"):
        matched_pair_batches(pairs.query, pairs.reference, 21)


def test_the_training_model_outputs_both_views_and_its_towers_come_back_out():
    query, reference = build_two_towers(_model_cfg(polar_size=[8, 32]), (8, 32, 1), (16, 16, 1))
    model = two_tower_model(query, reference)
    out = model([np.zeros((3, 8, 32, 1), np.float32), np.zeros((3, 16, 16, 1), np.float32)]).numpy()
    assert out.shape == (3, 2, 8)
    assert towers_of(model) == (query, reference)


# --- global-batch negatives under tf.distribute --------------------------------------------------------------------

@pytest.fixture(scope="module")
def replica_steps() -> dict:
    import json
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, str(Path(__file__).parent / "cross_view_replica_steps.py")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.slow   # a subprocess with two virtual devices (about 30 s); make test-all runs it
@pytest.mark.parametrize("name", ["soft_margin_triplet", "info_nce", "info_nce_learnt", "two_view_triplet"])
def test_a_two_replica_step_equals_the_one_device_step_on_the_global_batch(replica_steps, name):
    assert replica_steps["replicas"] == 2
    steps = replica_steps[name]
    single, gathered, local = (np.array(steps[key]) for key in ("single", "cross_replica", "local"))
    assert np.abs(single).max() > 1e-3  # the step moved the weights
    np.testing.assert_allclose(gathered, single, rtol=1e-5, atol=1e-7)
    assert steps["loss"]["cross_replica"] == pytest.approx(steps["loss"]["single"], rel=1e-5)
    # Each replica's own half alone gives another step: why the global batch is gathered.
    assert np.abs(local - single).max() > 1e-4
