"""XBM (`CrossBatchMemory`) against a NumPy loop over a sequence of batches, its edges, its state round trip, and the
run that trains with it (`train.memory_size` on a P×K loss)."""

import numpy as np
import pytest
import tensorflow as tf

from reprlearn.losses import CircleLoss, MultiSimilarityLoss, NTXentLoss, TripletSemiHardLoss
from reprlearn.losses.memory import CrossBatchMemory
from tests import reference

RNG = np.random.default_rng(11)
BATCHES = [(RNG.integers(0, 3, 6), RNG.normal(size=(6, 4))) for _ in range(5)]


@pytest.mark.parametrize("memory_size", [6, 10, 16, 40])
def test_multi_similarity_with_memory_equals_the_loop_batch_after_batch(memory_size):
    loss = CrossBatchMemory(MultiSimilarityLoss(), embedding_size=4, memory_size=memory_size)
    got = [float(loss(labels, embeddings.astype(np.float32))) for labels, embeddings in BATCHES]
    np.testing.assert_allclose(got, reference.multi_similarity_with_memory(BATCHES, memory_size), rtol=1e-4)


def test_a_memory_of_one_batch_is_the_loss_of_the_batch():
    for inner in (MultiSimilarityLoss(), NTXentLoss(temperature=0.1), CircleLoss()):
        memory = CrossBatchMemory(inner, embedding_size=4, memory_size=6)
        for labels, embeddings in BATCHES[:3]:
            embeddings = embeddings.astype(np.float32)
            assert float(memory(labels, embeddings)) == pytest.approx(float(inner(labels, embeddings)), rel=1e-4,
                                                                      abs=1e-6)


def test_warmup_scores_the_batch_alone_while_the_memory_fills():
    warm = CrossBatchMemory(MultiSimilarityLoss(), embedding_size=4, memory_size=40, warmup_steps=2)
    plain = MultiSimilarityLoss()
    got = [float(warm(labels, embeddings.astype(np.float32))) for labels, embeddings in BATCHES]
    expected = reference.multi_similarity_with_memory(BATCHES, 40)
    for step, (labels, embeddings) in enumerate(BATCHES[:2]):
        assert got[step] == pytest.approx(float(plain(labels, embeddings.astype(np.float32))), rel=1e-4)
    np.testing.assert_allclose(got[2:], expected[2:], rtol=1e-4)  # the memory filled during the warm-up


def test_state_round_trip_continues_exactly_and_gradients_reach_only_the_batch():
    first = CrossBatchMemory(MultiSimilarityLoss(), embedding_size=4, memory_size=16)
    for labels, embeddings in BATCHES[:3]:
        first(labels, embeddings.astype(np.float32))
    second = CrossBatchMemory(MultiSimilarityLoss(), embedding_size=4, memory_size=16)
    second.restore(first.state())
    labels, embeddings = BATCHES[3]
    assert float(second(labels, embeddings.astype(np.float32))) == pytest.approx(
        float(first(labels, embeddings.astype(np.float32))), rel=1e-6)
    variable = tf.Variable(BATCHES[4][1].astype(np.float32))
    with tf.GradientTape() as tape:
        value = first(BATCHES[4][0], variable)
    assert float(tf.reduce_sum(tf.abs(tape.gradient(value, variable)))) > 0


def test_edges_nan_float16_and_refusals():
    labels, embeddings = BATCHES[0]
    half = CrossBatchMemory(MultiSimilarityLoss(), embedding_size=4, memory_size=12)(labels, embeddings.astype(
        np.float16))
    rounded = embeddings.astype(np.float16).astype(np.float32)
    assert float(half) == pytest.approx(reference.multi_similarity_with_memory([(labels, rounded)], 12)[0], rel=1e-3)
    loss = CrossBatchMemory(MultiSimilarityLoss(), embedding_size=4, memory_size=12)
    broken = embeddings.astype(np.float32).copy()
    broken[1, 2] = np.nan
    assert np.isnan(float(loss(labels, broken)))
    one_class = CrossBatchMemory(MultiSimilarityLoss(), embedding_size=4, memory_size=12)
    # One class, no negatives anywhere: only the positive term, as the loop gives.
    same = [(np.zeros(6, int), e) for _, e in BATCHES[:2]]
    np.testing.assert_allclose([float(one_class(l, e.astype(np.float32))) for l, e in same],
                               reference.multi_similarity_with_memory(same, 12), rtol=1e-4)
    with pytest.raises(ValueError, match="loss must be one of"):
        CrossBatchMemory(TripletSemiHardLoss(), embedding_size=4, memory_size=12)
    with pytest.raises(ValueError, match="memory_size=0"):
        CrossBatchMemory(MultiSimilarityLoss(), embedding_size=4, memory_size=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="memory_size must hold a whole batch"):
        CrossBatchMemory(MultiSimilarityLoss(), embedding_size=4, memory_size=4)(labels, embeddings)


def test_config_round_trip():
    import keras
    loss = CrossBatchMemory(NTXentLoss(temperature=0.2), embedding_size=4, memory_size=12, warmup_steps=3)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert (again.memory_size, again.warmup_steps, again.loss.temperature) == (12, 3, 0.2)


@pytest.mark.slow
@pytest.mark.parametrize("name, ours, args", [
    ("MultiSimilarityLoss", lambda: MultiSimilarityLoss(), {}),
    ("NTXentLoss", lambda: NTXentLoss(temperature=0.1), {"temperature": 0.1}),
    ("CircleLoss", lambda: CircleLoss(), {}),
])
def test_equal_to_pml_cross_batch_memory_on_the_same_batches(name, ours, args):
    """pytorch-metric-learning's CrossBatchMemory over five batches (the ring wraps): each batch's value and
    gradient."""
    from tests.test_pml_parity import pml
    batches = [(labels.tolist(), (embeddings * 0.6).tolist()) for labels, embeddings in BATCHES]
    theirs = pml([{"kind": "memory", "loss": name, "args": args, "distance": "cosine", "embedding_size": 4,
                   "memory_size": 16, "batches": batches}])[0]
    memory = CrossBatchMemory(ours(), embedding_size=4, memory_size=16)
    for (labels, embeddings), expected in zip(batches, theirs):
        variable = tf.Variable(np.asarray(embeddings, np.float32))
        with tf.GradientTape() as tape:
            value = memory(np.asarray(labels), variable)
        assert float(value) == pytest.approx(expected["value"], rel=1e-4, abs=1e-6)
        np.testing.assert_allclose(tape.gradient(value, variable).numpy(), expected["gradient"], rtol=1e-3,
                                   atol=1e-5)


XBM_CONFIG = {"data": {"name": "digits", "protocol": "seen-classes"},
              "model": {"tower": "mlp", "hidden": [32], "embedding_dim": 16},
              "loss": {"name": "multi_similarity"},
              "train": {"epochs": 2, "steps_per_epoch": 6, "classes_per_batch": 4, "examples_per_class": 4,
                        "memory_size": 64, "memory_warmup": 2},
              "eval": {"verification_pairs": 300, "projection": "pca", "projection_points": 50,
                       "projector_points": 20, "grid_queries": 2, "grid_neighbours": 3}}


@pytest.mark.slow
def test_a_run_with_a_memory_resumes_to_the_uninterrupted_run(tmp_path):
    import keras

    from reprlearn.config.io import config_from_dict
    from reprlearn.runs import embed
    from reprlearn.training import run_training

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    cfg = config_from_dict(XBM_CONFIG)
    whole = run_training(cfg, tmp_path / "whole", verbose=0)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "resumed", verbose=0, callbacks=[StopAfterFirstEpoch()])
    assert (tmp_path / "resumed" / "checkpoints" / "loss_state.npz").is_file()
    resumed = run_training(cfg, tmp_path / "resumed", verbose=0)
    assert resumed["train"]["history"][-1]["loss"] == pytest.approx(whole["train"]["history"][-1]["loss"], rel=1e-5)
    images = np.random.default_rng(0).uniform(0, 16, (4, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(embed(keras.models.load_model(tmp_path / "resumed" / "model.keras"), images),
                               embed(keras.models.load_model(tmp_path / "whole" / "model.keras"), images), atol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"loss": {"name": "triplet_semihard"}}, r"train.memory_size keeps a cross-batch memory for an embedding run"),
    ({"train": {"memory_size": 8}}, r"must hold a whole batch \(4 × 4 = 16\)"),
    ({"train": {"memory_size": None, "memory_warmup": 3}}, "set train.memory_size"),
    ({"loss": {"name": "multi_similarity", "reconstruction_weight": 0.5}}, "does not combine"),
])
def test_memory_configs_refused_naming_the_key(change, message):
    from reprlearn.config.io import config_from_dict
    from reprlearn.errors import ConfigError

    raw = {section: dict(values) for section, values in XBM_CONFIG.items()}
    for section, values in change.items():
        raw[section].update(values)
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)
