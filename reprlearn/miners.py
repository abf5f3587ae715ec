"""Online triplet miners: given a batch's distances and labels, which triplets count.

A miner returns fixed-shape tensors, never ragged index lists, so it runs under
`tf.function`, XLA, `tf.distribute` and export:

- `pair_mask` `[N, N]` bool: the anchor-positive pairs (a, p) the loss uses;
- `negative_index` `[N, N]` int32: the one negative mined for each (a, p) (`[N, 1]` when it
  depends on the anchor only), or `None` when every negative of the anchor counts (batch-all).

Example:
    d = pairwise_distance(embeddings, "L2")
    mined = SemiHardMiner()(d, labels)
    d_an = tf.gather(d, mined.negative_index, batch_dims=1)

Every miner needs only O(N²) memory.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf

from reprlearn.labels import pair_masks


class MinedTriplets(NamedTuple):
    """A miner's selection: anchor-positive pairs and, per pair, its negative (`None`: all negatives)."""
    pair_mask: tf.Tensor
    negative_index: Optional[tf.Tensor]


class Miner:
    """Base class: `miner(distances, labels) -> MinedTriplets`. Subclasses are Keras-serializable."""

    picks_one_negative = True  # False: every negative of the anchor counts (`negative_index` is None)

    def __call__(self, distances, labels) -> MinedTriplets:
        distances = tf.convert_to_tensor(distances)
        positive, negative = pair_masks(labels)
        return self.mine(distances, positive, negative)

    def mine(self, distances: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> MinedTriplets:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> "Miner":
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __repr__(self):
        return f"{type(self).__name__}()"


def _has_any(mask: tf.Tensor) -> tf.Tensor:
    """`[N, 1]` bool: the row has at least one True."""
    return tf.reduce_any(mask, axis=1, keepdims=True)


@keras.saving.register_keras_serializable(package="reprlearn")
class SemiHardMiner(Miner):
    """FaceNet semi-hard negatives with tensorflow-addons' fallback.

    For each positive pair (a, p): the closest negative farther than p, `min {D_an : D_an > D_ap}`;
    when no negative is farther, the farthest negative. O(N² log N) time, O(N²) memory: each
    anchor's negative distances are sorted once and every `D_ap` is binary-searched in them.

    Args:
        addons_edge_cases: what an anchor without any negative (a one-class batch) does. False: it mines
            nothing. True (tensorflow-addons): its pairs stay in the loss with a negative distance of 0
            (the anchor itself is taken as the negative), so each costs `margin + D_ap`.
    """

    def __init__(self, addons_edge_cases: bool = False):
        self.addons_edge_cases = bool(addons_edge_cases)

    def mine(self, distances, positive, negative):
        # One top_k gives each anchor's negative distances sorted ascending and their columns.
        negated_sorted, order = tf.math.top_k(tf.where(negative, -distances, -np.inf), k=tf.shape(distances)[1])
        sorted_negatives = -negated_sorted
        num_negatives = tf.reduce_sum(tf.cast(negative, tf.int32), axis=1, keepdims=True)
        first_farther = tf.searchsorted(sorted_negatives, distances, side="right")
        rank = tf.where(first_farther < num_negatives, first_farther, num_negatives - 1)
        negative_index = tf.gather(order, tf.maximum(rank, 0), batch_dims=1)
        if self.addons_edge_cases:
            # D_aa = 0: the anchor itself stands in for the missing negative, as addons' masked maximum does.
            anchor = tf.broadcast_to(tf.range(tf.shape(distances)[0])[:, None], tf.shape(negative_index))
            return MinedTriplets(positive, tf.where(num_negatives > 0, negative_index, anchor))
        return MinedTriplets(tf.logical_and(positive, num_negatives > 0), negative_index)

    def get_config(self) -> dict:
        return {"addons_edge_cases": self.addons_edge_cases}

    def __repr__(self):
        return f"SemiHardMiner(addons_edge_cases={self.addons_edge_cases})"


@keras.saving.register_keras_serializable(package="reprlearn")
class BatchHardMiner(Miner):
    """Hermans et al. batch-hard: per anchor, its farthest positive and its closest negative.

    Args:
        addons_edge_cases: False: anchors without a positive or without a negative mine nothing.
            True (tensorflow-addons' `triplet_hard_loss`): every anchor counts once; a missing positive
            has distance 0 (the anchor itself) and a missing negative is the farthest item of the row.
    """

    def __init__(self, addons_edge_cases: bool = False):
        self.addons_edge_cases = bool(addons_edge_cases)

    def mine(self, distances, positive, negative):
        n = tf.shape(distances)[0]
        hardest_positive = tf.argmax(tf.where(positive, distances, -1.0), axis=1, output_type=tf.int32)
        hardest_negative = tf.argmin(tf.where(negative, distances, np.inf), axis=1, output_type=tf.int32)
        if self.addons_edge_cases:
            hardest_positive = tf.where(_has_any(positive)[:, 0], hardest_positive, tf.range(n))
            farthest = tf.argmax(distances, axis=1, output_type=tf.int32)
            hardest_negative = tf.where(_has_any(negative)[:, 0], hardest_negative, farthest)
            return MinedTriplets(tf.equal(tf.range(n)[None, :], hardest_positive[:, None]), hardest_negative[:, None])
        is_hardest = tf.equal(tf.range(n)[None, :], hardest_positive[:, None])
        valid = tf.logical_and(_has_any(positive), _has_any(negative))
        pair_mask = tf.logical_and(is_hardest, valid)
        return MinedTriplets(pair_mask, hardest_negative[:, None])

    def get_config(self) -> dict:
        return {"addons_edge_cases": self.addons_edge_cases}

    def __repr__(self):
        return f"BatchHardMiner(addons_edge_cases={self.addons_edge_cases})"


@keras.saving.register_keras_serializable(package="reprlearn")
class BatchAllMiner(Miner):
    """Batch-all: every (anchor, positive, negative) triplet of the batch; anchors without a negative mine nothing."""

    picks_one_negative = False

    def mine(self, distances, positive, negative):
        return MinedTriplets(tf.logical_and(positive, _has_any(negative)), None)


MINERS = {"semi-hard": SemiHardMiner, "batch-hard": BatchHardMiner, "batch-all": BatchAllMiner}


def get_miner(identifier) -> Miner:
    """A miner from a name in `MINERS`, a serialized config, or a `Miner` (returned as is)."""
    if isinstance(identifier, Miner):
        return identifier
    if isinstance(identifier, dict):
        miner = keras.saving.deserialize_keras_object(identifier)
        if isinstance(miner, Miner):
            return miner
    if isinstance(identifier, str) and identifier in MINERS:
        return MINERS[identifier]()
    raise ValueError(f"miner must be one of {list(MINERS)} or a Miner. Received: miner={identifier!r}")
