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
