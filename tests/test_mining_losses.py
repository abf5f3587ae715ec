"""Miners, triplet and lifted-structure losses against NumPy loops, addons ports, and the edge cases."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from reprlearn.layers import LiftedStructLossLayer
from reprlearn.losses import (InBatchContrastiveLoss, LiftedStructLoss, TripletHardLoss, TripletLoss,
                              TripletSemiHardLoss, in_batch_contrastive_loss, lifted_struct_loss, triplet_hard_loss,
                              triplet_loss, triplet_semihard_loss)
from reprlearn.metrics import ActiveFraction, MeanNegativeDistance, MeanPositiveDistance
from reprlearn.losses.miners import BatchAllMiner, BatchHardMiner, SemiHardMiner, get_miner
from reprlearn.ops.distances import pairwise_distance
from tests import reference

# Rows 1 and 2 are duplicates with different labels; row 5 duplicates row 0 with the same label.
EMB = np.array([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0], [1.0, 0.0], [0.0, -2.0], [0.0, 0.0], [2.0, 1.0]], np.float32)
LABELS = np.array([0, 0, 1, 1, 0, 0, 1])


def random_batch(seed, n=16, dim=4, classes=4, duplicates=True):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    if duplicates:
        emb[1] = emb[0]
        emb[3] = emb[2]
    return emb, labels


BATCHES = [(EMB, LABELS)] + [random_batch(seed) for seed in range(4)]


@pytest.mark.parametrize("path", ["sort", "sort-free"])
@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
@pytest.mark.parametrize("batch", range(len(BATCHES)))
def test_semihard_matches_loop(metric, batch, path):
    emb, labels = BATCHES[batch]
    emb = emb + 1e-3 if metric == "angular" else emb  # no zero vector for cosine
    want = reference.triplet_semihard(labels, emb, 0.5, metric)
    got = TripletLoss(SemiHardMiner(path=path), 0.5, metric)(labels, emb).numpy()
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert TripletLoss("semi-hard", 0.5, metric)(labels, emb).numpy() == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("path", ["sort", "sort-free"])
@pytest.mark.parametrize("batch", range(len(BATCHES)))
def test_semihard_equals_tensorflow_addons(batch, path):
    emb, labels = BATCHES[batch]
    want = reference.addons_triplet_semihard(labels, emb, 1.0)
    assert triplet_semihard_loss(labels, emb).numpy() == pytest.approx(want, rel=1e-5)
    got = TripletLoss(SemiHardMiner(addons_edge_cases=True, path=path), 1.0)(labels, emb).numpy()
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("classes, width", [(64, "16"), (10, "32"), (8, "sort")])
def test_semihard_paths_agree_on_every_label_layout(classes, width):
    # 256 items: at most 8, 30 and 44 per class, so the automatic choice takes each of the three paths.
    rng = np.random.default_rng(classes)
    emb, labels = rng.normal(size=(256, 8)).astype(np.float32), rng.integers(0, classes, 256)
    most = np.bincount(labels).max() - 1
    assert (most <= 16) == (width == "16") and (16 < most <= 32) == (width == "32")
    d = pairwise_distance(emb)
    sorted_choice = SemiHardMiner(path="sort")(d, labels)
    auto = SemiHardMiner()(d, labels)
    mask = sorted_choice.pair_mask.numpy()
    np.testing.assert_array_equal(auto.pair_mask.numpy(), mask)
    pick = lambda mined: tf.gather(d, mined.negative_index, batch_dims=1).numpy()[mask]  # noqa: E731
    np.testing.assert_array_equal(pick(auto), pick(sorted_choice))
    assert float(triplet_semihard_loss(labels, emb, 0.3)) == pytest.approx(
        reference.addons_triplet_semihard(labels, emb, 0.3), rel=1e-5)


@pytest.mark.parametrize("path", ["sort", "sort-free"])
@pytest.mark.parametrize("labels", [[0, 0, 1, 1], [0, 1, 0, 1]])
def test_semihard_negative_at_the_positives_distance_is_not_farther(path, labels):
    # Anchor 0: its positive and one negative both at distance 1 (before or after it in column order), the
    # other negative at 2: the semi-hard negative must be the one at 2 (column 3), whichever path runs.
    d = tf.constant([[0.0, 1.0, 1.0, 2.0], [1.0, 0.0, 3.0, 3.0], [1.0, 3.0, 0.0, 4.0], [2.0, 3.0, 4.0, 0.0]])
    mined = SemiHardMiner(path=path)(d, labels)
    positive = labels.index(0, 1)
    assert bool(mined.pair_mask[0, positive]) and int(mined.negative_index[0, positive]) == 3


def test_sorted_semihard_traced_without_a_static_batch_size_matches_eager():
    emb, labels = random_batch(7, n=40, classes=2)
    d = pairwise_distance(emb)
    miner = SemiHardMiner(path="sort")
    traced = tf.function(lambda d, y: miner(d, y).negative_index,
                         input_signature=[tf.TensorSpec([None, None]), tf.TensorSpec([None], tf.int64)])
    np.testing.assert_array_equal(traced(d, labels).numpy(), miner(d, labels).negative_index.numpy())


def test_sorted_semihard_in_row_chunks_equals_one_chunk(monkeypatch):
    import reprlearn.losses.miners as miners

    emb, labels = random_batch(8, n=150, classes=3)
    d = pairwise_distance(emb)
    whole = SemiHardMiner(path="sort")(d, labels).negative_index.numpy()
    monkeypatch.setattr(miners, "_SORT_CHUNK_ELEMENTS", 40 * 150)  # 4 chunks of 40 rows, the last one padded
    np.testing.assert_array_equal(SemiHardMiner(path="sort")(d, labels).negative_index.numpy(), whole)


def test_semihard_path_is_checked_and_serialized():
    with pytest.raises(ValueError, match="path='fast'"):
        SemiHardMiner(path="fast")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(SemiHardMiner(path="sort")))
    assert clone.path == "sort"


def test_semihard_fallback_takes_the_farthest_negative():
    # Anchor 0's positive is at 5; its negatives are at 1 and 2: none farther, so the farthest (2) is used.
    emb = np.array([[0.0], [5.0], [1.0], [2.0]], np.float32)
    labels = np.array([0, 0, 1, 1])
    mined = SemiHardMiner()(pairwise_distance(emb), labels)
    assert mined.negative_index.numpy()[0, 1] == 3
    # Anchor 2's positive (3) is at distance 1; negatives 0 and 1 are at 1 and 4: 4 is the first strictly farther.
    assert mined.negative_index.numpy()[2, 3] == 1
    assert mined.pair_mask.numpy().tolist() == [[False, True, False, False], [True, False, False, False],
                                                [False, False, False, True], [False, False, True, False]]


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("batch", range(len(BATCHES)))
def test_batch_hard_matches_loop(soft, batch):
    emb, labels = BATCHES[batch]
    want = reference.triplet_batch_hard(labels, emb, 0.3, soft)
    assert triplet_loss(labels, emb, "batch-hard", 0.3, soft=soft).numpy() == pytest.approx(want, rel=1e-5)
    assert TripletLoss("batch-hard", 0.3, soft=soft)(labels, emb).numpy() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_batch_hard_equals_tensorflow_addons_with_singleton_classes(soft, seed):
    # 20 examples of 4 random classes often leave a class with one example; addons averages over every anchor.
    emb, labels = random_batch(seed, n=20, classes=4, duplicates=False)
    labels[-1] = 9  # always at least one singleton
    want = reference.addons_triplet_hard(labels, emb, 0.3, soft)
    assert triplet_hard_loss(labels, emb, 0.3, soft).numpy() == pytest.approx(want, rel=1e-5)
    assert TripletHardLoss(0.3, soft)(labels, emb).numpy() == pytest.approx(want, rel=1e-5)
    assert TripletLoss("batch-hard", 0.3, soft=soft)(labels, emb).numpy() != pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("loss, port", [(triplet_semihard_loss, reference.addons_triplet_semihard),
                                        (triplet_hard_loss, reference.addons_triplet_hard)],
                         ids=["semihard", "hard"])
def test_addons_named_losses_follow_addons_on_a_one_class_batch(loss, port):
    emb, _ = random_batch(3, n=6, duplicates=False)
    labels = np.zeros(6, np.int64)
    want = port(labels, emb, 0.4)
    assert want >= 0.4 - 1e-6  # every anchor is charged the margin at least
    assert loss(labels, emb, 0.4).numpy() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("active_only", [False, True])
@pytest.mark.parametrize("metric", ["L2", "squared-L2"])
@pytest.mark.parametrize("batch", range(len(BATCHES)))
def test_batch_all_matches_loop(active_only, metric, batch):
    emb, labels = BATCHES[batch]
    want = reference.triplet_batch_all(labels, emb, 0.4, active_only, metric)
    got = triplet_loss(labels, emb, "batch-all", 0.4, metric, active_only=active_only).numpy()
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("batch", range(len(BATCHES)))
def test_lifted_matches_loop_and_tensorflow_addons(batch):
    emb, labels = BATCHES[batch]
    want = reference.lifted_struct(labels, emb, 1.0)
    assert lifted_struct_loss(labels, emb, 1.0).numpy() == pytest.approx(want, rel=1e-5)
    assert reference.addons_lifted_struct(labels, emb, 1.0) == pytest.approx(want, rel=1e-5)
    assert LiftedStructLoss(margin=1.0)(labels, emb).numpy() == pytest.approx(want, rel=1e-5)


def test_lifted_with_an_anchor_without_negatives_in_one_row():
    emb, labels = np.array([[0.0], [0.5], [3.0], [3.2]], np.float32), np.array([0, 0, 1, 1])
    assert lifted_struct_loss(labels, emb, 2.0).numpy() == pytest.approx(reference.lifted_struct(labels, emb, 2.0),
                                                                         rel=1e-5)


# name → (function of (labels, embeddings), its NumPy reference)
LOSSES = {
    "semi-hard": (lambda y, e: triplet_loss(y, e, "semi-hard", 0.5), lambda y, e: reference.triplet_semihard(y, e, 0.5)),
    "semi-hard-sort": (lambda y, e: triplet_loss(y, e, SemiHardMiner(path="sort"), 0.5),
                       lambda y, e: reference.triplet_semihard(y, e, 0.5)),
    "batch-hard": (lambda y, e: triplet_loss(y, e, "batch-hard", 0.5),
                   lambda y, e: reference.triplet_batch_hard(y, e, 0.5)),
    "batch-hard-soft": (lambda y, e: triplet_loss(y, e, "batch-hard", 0.5, soft=True),
                        lambda y, e: reference.triplet_batch_hard(y, e, 0.5, soft=True)),
    # The addons-named functions, against line-by-line ports of addons 0.23 (edge cases included).
    "addons-semihard": (lambda y, e: triplet_semihard_loss(y, e, 0.5),
                        lambda y, e: reference.addons_triplet_semihard(y, e, 0.5)),
    "addons-hard": (lambda y, e: triplet_hard_loss(y, e, 0.5), lambda y, e: reference.addons_triplet_hard(y, e, 0.5)),
    "batch-all": (lambda y, e: triplet_loss(y, e, "batch-all", 0.5),
                  lambda y, e: reference.triplet_batch_all(y, e, 0.5)),
    "lifted": (lambda y, e: lifted_struct_loss(y, e, 1.0), lambda y, e: reference.lifted_struct(y, e, 1.0)),
    "contrastive": (lambda y, e: in_batch_contrastive_loss(y, e, 0.5),
                    lambda y, e: reference.in_batch_contrastive(y, e, 0.5)),
}


def value_and_gradient(fn, labels, emb, dtype=tf.float32):
    x = tf.cast(emb, dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = fn(labels, x)
    return value, tape.gradient(value, x)


@pytest.mark.parametrize("name", [name for name in LOSSES if name not in ("contrastive", "addons-hard")])
def test_no_positive_pair_gives_zero_with_zero_gradient(name):
    emb = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    value, grad = value_and_gradient(LOSSES[name][0], np.arange(5), emb)
    assert value.numpy() == 0.0
    assert grad is None or np.all(grad.numpy() == 0.0)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("case", ["one class", "identical", "zero embedding"])
def test_edge_cases_match_the_loop_and_stay_finite(name, case):
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(6, 3)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    if case == "one class":
        labels = np.zeros(6, int)
    elif case == "identical":
        emb = np.ones((6, 3), np.float32)
    else:
        emb[0] = 0.0
    fn, ref = LOSSES[name]
    value, grad = value_and_gradient(fn, labels, emb)
    assert value.numpy() == pytest.approx(ref(labels, emb), rel=1e-5, abs=1e-6)
    assert np.all(np.isfinite(grad.numpy())) if grad is not None else True
    if case == "one class" and name not in ("contrastive", "addons-semihard", "addons-hard"):
        assert value.numpy() == 0.0  # no negative anywhere: nothing to mine, no lifted term


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_is_finite_and_keeps_the_dtype(name, policy):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(8)(inputs))
        x = np.random.default_rng(1).normal(size=(12, 4)).astype(np.float32)
        labels = np.repeat(np.arange(4), 3)
        with tf.GradientTape() as tape:
            embeddings = model(x)
            value = LOSSES[name][0](labels, embeddings)
        grads = tape.gradient(value, model.trainable_weights)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert embeddings.dtype == value.dtype == policy.split("_")[1]
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    want = LOSSES[name][1](labels, tf.cast(embeddings, tf.float32).numpy())
    assert float(value) == pytest.approx(want, rel=2e-2)


@pytest.mark.parametrize("name", LOSSES)
def test_runs_under_xla(name):
    emb, labels = random_batch(7)
    fn = LOSSES[name][0]
    compiled = tf.function(lambda y, e: value_and_gradient(fn, y, e), jit_compile=True)
    value, grad = compiled(tf.constant(labels), tf.constant(emb))
    eager_value, eager_grad = value_and_gradient(fn, labels, emb)
    assert value.numpy() == pytest.approx(eager_value.numpy(), rel=1e-5)
    np.testing.assert_allclose(grad.numpy(), eager_grad.numpy(), rtol=1e-4, atol=1e-6)


def test_gradients_match_finite_differences():
    emb, labels = random_batch(11, n=8, dim=3, duplicates=False)
    for name in ("semi-hard", "batch-hard", "batch-all", "lifted", "addons-semihard", "addons-hard"):
        fn = LOSSES[name][0]
        _, grad = value_and_gradient(fn, labels, emb.astype(np.float64), tf.float64)
        step, numeric = 1e-4, np.zeros_like(emb, np.float64)
        for i in range(emb.shape[0]):
            for j in range(emb.shape[1]):
                plus, minus = emb.astype(np.float64), emb.astype(np.float64)
                plus[i, j] += step
                minus[i, j] -= step
                numeric[i, j] = (LOSSES[name][1](labels, plus) - LOSSES[name][1](labels, minus)) / (2 * step)
        np.testing.assert_allclose(grad.numpy(), numeric, atol=2e-3, err_msg=name)


@pytest.mark.parametrize("y_form", ["int", "float", "column"])
def test_label_forms_give_the_same_value(y_form):
    emb, labels = random_batch(5)
    y = {"int": labels, "float": labels.astype(np.float32), "column": labels.reshape(-1, 1)}[y_form]
    for loss in (TripletSemiHardLoss(0.2), TripletHardLoss(0.2), TripletLoss("batch-all", 0.2), LiftedStructLoss()):
        assert loss(y, emb).numpy() == pytest.approx(loss(labels, emb).numpy(), rel=1e-6)


def test_miners_return_fixed_shape_masks_and_serialize():
    d = pairwise_distance(EMB)
    for miner in (SemiHardMiner(), BatchHardMiner(), BatchAllMiner()):
        mined = miner(d, LABELS)
        assert mined.pair_mask.shape == (7, 7) and mined.pair_mask.dtype == tf.bool
        if mined.negative_index is not None:
            assert mined.negative_index.shape in ((7, 7), (7, 1))
            chosen = LABELS[np.broadcast_to(mined.negative_index.numpy(), (7, 7))]
            assert np.all(chosen[mined.pair_mask.numpy()] != np.repeat(LABELS[:, None], 7, 1)[mined.pair_mask.numpy()])
        restored = get_miner(keras.saving.serialize_keras_object(miner))
        assert restored == miner
    hard = BatchHardMiner()(d, LABELS)
    assert hard.pair_mask.numpy().sum(axis=1).tolist() == [1] * 7  # one hardest positive per anchor
    assert hard.pair_mask.numpy()[0, 1] and hard.negative_index.numpy()[0, 0] == 3


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="miner='hardest'"):
        TripletLoss(miner="hardest")
    with pytest.raises(ValueError, match="margin=-0.1"):
        TripletSemiHardLoss(margin=-0.1)
    with pytest.raises(ValueError, match="soft=True"):
        TripletLoss(miner="batch-all", soft=True)
    with pytest.raises(ValueError, match="metric='cosin'"):
        TripletHardLoss(distance_metric="cosin")
    with pytest.raises(ValueError, match="margin=nan"):
        LiftedStructLoss(margin=float("nan"))


def test_training_metrics_match_numpy():
    emb, labels = random_batch(9)
    d = reference.pairwise(emb)
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    positive = MeanPositiveDistance()
    positive.update_state(labels, emb)
    negative = MeanNegativeDistance()
    negative.update_state(labels, emb)
    assert float(positive.result()) == pytest.approx(d[same & off].mean(), rel=1e-5)
    assert float(negative.result()) == pytest.approx(d[~same].mean(), rel=1e-5)

    # Active fraction of batch-all: triplets with margin + d_ap - d_an > 0 among all triplets.
    terms = [0.4 + d[a, p] - d[a, n] for a in range(16) for p in range(16) for n in range(16)
             if a != p and labels[a] == labels[p] and labels[n] != labels[a]]
    active = ActiveFraction(TripletLoss("batch-all", 0.4))
    active.update_state(labels, emb)
    assert float(active.result()) == pytest.approx(np.mean(np.array(terms) > 0), rel=1e-6)
    semi = TripletSemiHardLoss(0.4)
    assert float(semi.active_fraction(labels, emb)) > 0


@pytest.mark.parametrize("loss", [TripletSemiHardLoss(0.2, "squared-L2"), TripletHardLoss(0.3, soft=True),
                                  TripletLoss(BatchAllMiner(), 0.1, "angular", active_only=True),
                                  LiftedStructLoss(0.8), InBatchContrastiveLoss(0.5)],
                         ids=lambda loss: type(loss).__name__)
def test_compiled_model_survives_save_and_load(loss, tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.compile(optimizer="adam", loss=loss,
                  metrics=[ActiveFraction(loss), MeanPositiveDistance(), MeanNegativeDistance()])
    x = np.random.default_rng(0).normal(size=(24, 4)).astype(np.float32)
    y = np.repeat(np.arange(6), 4)
    model.fit(x, y, batch_size=24, epochs=2, verbose=0, shuffle=False)
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(reloaded.loss) is type(loss) and reloaded.loss.get_config() == loss.get_config()
    before = model.evaluate(x, y, batch_size=24, verbose=0, return_dict=True)
    after = reloaded.evaluate(x, y, batch_size=24, verbose=0, return_dict=True)
    assert after == pytest.approx(before, rel=1e-6)
    assert 0.0 <= after["active_fraction"] <= 1.0 and after["mean_negative_distance"] > 0


def test_lifted_layer_trains_a_functional_model_with_label_input(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 6)) * 3.0
    y = np.repeat(np.arange(4), 16)
    x = (centres[y] + rng.normal(size=(64, 6))).astype(np.float32)
    images, labels = keras.Input((6,)), keras.Input((), dtype="int32")
    embeddings = LiftedStructLossLayer(margin=1.0)([keras.layers.Dense(4)(images), labels])
    model = keras.Model([images, labels], embeddings)
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    initial = float(lifted_struct_loss(y, model.predict([x, y], verbose=0)))
    losses = model.fit([x, y], epochs=8, batch_size=64, verbose=0, shuffle=False).history["loss"]
    assert losses[0] == pytest.approx(initial, rel=1e-5)  # one full batch: epoch 1 is the untrained loss
    assert losses[-1] < 0.85 * losses[0]
    out = model([x, y])
    assert float(model.losses[0]) == pytest.approx(float(lifted_struct_loss(y, out)), rel=1e-5)
    out = out.numpy()
    model.save(tmp_path / "lifted.keras")
    reloaded = keras.saving.load_model(tmp_path / "lifted.keras")
    np.testing.assert_allclose(reloaded.predict([x, y], verbose=0), out, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="margin=-1"):
        LiftedStructLossLayer(margin=-1)


@pytest.mark.parametrize("loss", [TripletSemiHardLoss(0.2), TripletLoss("batch-all", 0.2), LiftedStructLoss(1.0),
                                  InBatchContrastiveLoss(0.5)], ids=lambda loss: loss.name)
def test_a_training_step_computes_the_distance_matrix_once(loss, monkeypatch):
    import reprlearn.metrics.training as training_metrics

    calls = []
    real = training_metrics.pairwise_distance
    monkeypatch.setattr(training_metrics, "pairwise_distance", lambda *a, **k: calls.append(1) or real(*a, **k))
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(8)(inputs))
    metrics = [ActiveFraction(loss), MeanPositiveDistance(loss=loss), MeanNegativeDistance(loss=loss)]
    model.compile("sgd", loss=loss, metrics=metrics)
    x, y = np.random.default_rng(0).normal(size=(24, 4)).astype(np.float32), np.repeat(np.arange(6), 4)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert calls == []  # the metrics read the loss's memo: no distance matrix of their own
    # ... and report what they would have computed themselves (the weights moved, so evaluate both after).
    shared = model.evaluate(x, y, batch_size=24, verbose=0, return_dict=True)
    alone = [ActiveFraction(type(loss).from_config(loss.get_config())), MeanPositiveDistance(), MeanNegativeDistance()]
    embeddings = model(x)
    for metric in alone:
        metric.update_state(y, embeddings)
        assert float(metric.result()) == pytest.approx(shared[metric.name], rel=1e-5, abs=1e-7)
    assert set(logs) >= {"active_fraction", "mean_positive_distance", "mean_negative_distance"}


@pytest.mark.parametrize("classes", [64, 10, 8], ids=["16-slots", "32-slots", "all-pairs"])
def test_lifted_slot_and_all_pair_paths_equal_addons(classes):
    # 256 items with at most 8, 30 and 44 per class: J on 16 or 32 positive slots, or on all N² pairs.
    rng = np.random.default_rng(classes)
    emb, labels = rng.normal(size=(256, 8)).astype(np.float32), rng.integers(0, classes, 256)
    want = reference.addons_lifted_struct(labels, emb, 1.0)
    assert float(lifted_struct_loss(labels, emb, 1.0)) == pytest.approx(want, rel=1e-5)
    loss = LiftedStructLoss(1.0)
    assert float(loss(labels, emb)) == pytest.approx(want, rel=1e-5)
    _, grad = value_and_gradient(lambda y, e: lifted_struct_loss(y, e, 1.0), labels, emb.astype(np.float64),
                                 tf.float64)
    assert np.all(np.isfinite(grad.numpy())) and np.abs(grad.numpy()).sum() > 0
