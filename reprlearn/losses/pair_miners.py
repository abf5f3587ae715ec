"""Pair miners: given a batch's distances and its pairs, which positive and negative pairs a pair loss scores.

A pair miner returns two `[N, N]` bool masks (fixed shape, so it runs under `tf.function`, XLA,
`tf.distribute` and export), a subset of the batch's ordered positive and negative pairs. Any pair
loss (`MultiSimilarityLoss`, `CircleLoss`, `NTXentLoss`, `InBatchContrastiveLoss`,
`SupervisedContrastiveLoss`) takes one as `pair_miner=`, as pytorch-metric-learning's losses take
a miner's pairs.

Example:
    positive, negative = multi_similarity_miner(labels, embeddings, epsilon=0.1)
    loss = MultiSimilarityLoss(pair_miner=MultiSimilarityMiner(epsilon=0.1))
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from reprlearn.ops.checks import check_non_negative_number
from reprlearn.ops.distances import Distance, check_metric, pairwise_distance
from reprlearn.ops.labels import check_batch, pair_masks


@keras.saving.register_keras_serializable(package="reprlearn")
class MultiSimilarityMiner:
    """Multi-Similarity's pair mining (Wang et al. 2019): the pairs that break the ranking by less than ε.

    With cosine similarities S, a negative (a, n) is kept when `S_an + ε > min_p S_ap` (it comes within ε
    of the anchor's least similar positive) and a positive (a, p) when `S_ap − ε < max_n S_an`. On a
    distance D the same rule reads `D_an − ε < max_p D_ap` and `D_ap + ε > min_n D_an`; with the angular
    distance D = 1 − S the two are one rule. An anchor without positives keeps no negative and one
    without negatives keeps no positive (pytorch-metric-learning 2.9's `MultiSimilarityMiner`).

    Example:
        positive, negative = MultiSimilarityMiner(epsilon=0.1).mine(distances, *pair_masks(labels))

    Args:
        epsilon: ε >= 0, the slack of the ranking rule.
    """

    def __init__(self, epsilon: float = 0.1):
        self.epsilon = check_non_negative_number("epsilon", epsilon)

    def mine(self, distances: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """`(positive, negative)`: the kept ordered pairs of `[N, N]` distances, as `[N, N]` bool masks."""
        # Mining chooses pairs; the loss's gradient flows through the distances it scores, not through the choice.
        distances = tf.stop_gradient(distances)
        farthest_positive = tf.reduce_max(tf.where(positive, distances, -np.inf), axis=1, keepdims=True)
        nearest_negative = tf.reduce_min(tf.where(negative, distances, np.inf), axis=1, keepdims=True)
        kept_negative = tf.logical_and(negative, distances - self.epsilon < farthest_positive)
        kept_positive = tf.logical_and(positive, distances + self.epsilon > nearest_negative)
        return kept_positive, kept_negative

    def get_config(self) -> dict:
        return {"epsilon": self.epsilon}

    @classmethod
    def from_config(cls, config: dict) -> "MultiSimilarityMiner":
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __repr__(self):
        return f"MultiSimilarityMiner(epsilon={self.epsilon})"


PAIR_MINERS = {"multi_similarity": MultiSimilarityMiner}


def resolve_miner(identifier, kind: type, registry: dict, argument: str, example: str):
    """A miner of class `kind` from a name in `registry`, a serialized config, or such a miner (returned as is);
    ValueError naming `argument` otherwise."""
    if isinstance(identifier, kind):
        return identifier
    if isinstance(identifier, dict):
        miner = keras.saving.deserialize_keras_object(identifier)
        if isinstance(miner, kind):
            return miner
    if isinstance(identifier, str) and identifier in registry:
        return registry[identifier]()
    raise ValueError(f"{argument} must be one of {list(registry)} or {example}. Received: {argument}={identifier!r}")


def get_pair_miner(identifier) -> MultiSimilarityMiner:
    """A pair miner from a name in `PAIR_MINERS`, a serialized config, or a pair miner (returned as is)."""
    return resolve_miner(identifier, MultiSimilarityMiner, PAIR_MINERS, "pair_miner",
                         "a pair miner such as MultiSimilarityMiner()")


def multi_similarity_miner(labels, embeddings, epsilon: float = 0.1,
                           distance: Distance = "angular") -> tuple[tf.Tensor, tf.Tensor]:
    """The positive and negative pairs Multi-Similarity's miner keeps in a batch.

    Example:
        positive, negative = multi_similarity_miner([0, 0, 1, 1], tf.random.normal([4, 8]))

    Args:
        labels: `[N]` or `[N, 1]` class ids.
        embeddings: `[N, d]`; float16/bfloat16 are computed in float32.
        epsilon: ε >= 0 (pytorch-metric-learning's default 0.1).
        distance: `"angular"` (cosine similarity, the default), `"L2"`, `"squared-L2"` or a callable.

    Returns:
        `(positive, negative)`: `[N, N]` bool masks of the kept ordered pairs.
    """
    labels, embeddings = check_batch(labels, embeddings)
    distances = pairwise_distance(embeddings, check_metric(distance))
    return MultiSimilarityMiner(epsilon).mine(distances, *pair_masks(labels))
