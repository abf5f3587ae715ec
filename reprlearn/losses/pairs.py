"""What the pair losses share (pytorch-metric-learning's `GenericPairLoss` semantics): a similarity or distance
matrix with its direction, PML's `margin`, and `log(1 + Σ exp)` over a row's pairs.

With the angular distance D = 1 − cos the losses work on the cosine similarity S = 1 − D, where larger is
closer (PML's `CosineSimilarity`, "inverted"); with `L2` or `squared-L2` they work on the distance itself
(PML's `LpDistance`, which L2-normalises the embeddings first: reprlearn's distances do not, so normalise the
embeddings, as the towers' unit-norm heads do, to get PML's numbers).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from reprlearn.losses.in_batch import masked_logsumexp
from reprlearn.losses.pair_miners import get_pair_miner
from reprlearn.ops.distances import check_metric, pairwise_distance
from reprlearn.ops.labels import check_batch, pair_masks


def scored_pairs(labels, embeddings, metric, pair_miner):
    """What a pair loss's function form scores: `(embeddings, metric, distances, positive, negative)`, the pairs
    being every pair of the batch or those `pair_miner` keeps."""
    labels, embeddings = check_batch(labels, embeddings)
    metric = check_metric(metric)
    distances = pairwise_distance(embeddings, metric)
    positive, negative = pair_masks(labels)
    if pair_miner is not None:
        positive, negative = get_pair_miner(pair_miner).mine(distances, positive, negative)
    return embeddings, metric, distances, positive, negative


def similarity_matrix(distances: tf.Tensor, metric) -> tuple[tf.Tensor, bool]:
    """`(matrix, inverted)`: the cosine similarities `1 − D` for the angular distance (`inverted`: larger is
    closer), the distances themselves otherwise."""
    if metric == "angular":
        return 1.0 - distances, True
    return distances, False


def pair_margin(x, y, inverted: bool):
    """By how much `x` is farther than `y` on the matrix's scale (PML's `BaseDistance.margin`)."""
    return y - x if inverted else x - y


def log_one_plus_sum_exp(logits: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Per row, `log(1 + Σ_{k: mask} exp(logits_k))`, stable; 0 (and no gradient) for a row without a True."""
    return tf.nn.softplus(masked_logsumexp(logits, mask, -np.inf))


def misranked_share(distances, positive, negative) -> tf.Tensor:
    """The share of positive pairs (a, p) with some negative closer to a than p (what the loss still pushes on
    hardest); 0 without positive pairs."""
    nearest_negative = tf.reduce_min(tf.where(negative, distances, np.inf), axis=1, keepdims=True)
    misranked = tf.logical_and(positive, distances > nearest_negative)
    return tf.math.divide_no_nan(tf.reduce_sum(tf.cast(misranked, tf.float32)),
                                 tf.reduce_sum(tf.cast(positive, tf.float32)))
