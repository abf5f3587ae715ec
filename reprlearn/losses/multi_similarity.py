"""Multi-Similarity loss (Wang et al., CVPR 2019), with pytorch-metric-learning 2.9's numbers.

For each anchor i, with S the cosine similarity, P_i and N_i its positives and negatives:
`L_i = (1/α) log(1 + Σ_{P_i} exp(−α (S_ip − λ))) + (1/β) log(1 + Σ_{N_i} exp(β (S_in − λ)))`,
averaged over every anchor of the batch (PML's `MeanReducer`: an anchor without pairs counts as 0).
A batch without positive pairs still has its negative term: the loss pushes the negatives apart
(PML does the same). With `pair_miner=MultiSimilarityMiner()` only the mined pairs count, as in
the paper; a batch without positives then gives 0.

Example:
    loss = MultiSimilarityLoss(pair_miner=MultiSimilarityMiner(epsilon=0.1))
    model.compile(optimizer="adam", loss=loss)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from reprlearn.losses.in_batch import InBatchLoss
from reprlearn.losses.pairs import (
    log_one_plus_sum_exp,
    misranked_share,
    pair_margin,
    scored_pairs,
    similarity_matrix,
)
from reprlearn.ops.checks import check_finite_number, check_positive_number
from reprlearn.ops.distances import Distance, check_metric
from reprlearn.ops.labels import nan_unless_finite


def _check_base(base) -> float:
    return check_finite_number("base", base, " (λ, the similarity both terms are measured from)")


def _anchor_losses(distances, positive, negative, metric, alpha: float, beta: float, base: float) -> tf.Tensor:
    """`[N]` each anchor's Multi-Similarity loss over the pairs in the masks."""
    matrix, inverted = similarity_matrix(distances, metric)
    positive_term = log_one_plus_sum_exp(alpha * pair_margin(matrix, base, inverted), positive) / alpha
    negative_term = log_one_plus_sum_exp(beta * pair_margin(base, matrix, inverted), negative) / beta
    return positive_term + negative_term


def multi_similarity_loss(labels, embeddings, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
                          distance: Distance = "angular", pair_miner=None) -> tf.Tensor:
    """The Multi-Similarity loss of a batch: PML's `MultiSimilarityLoss(alpha, beta, base)`.

    Example:
        multi_similarity_loss([0, 0, 1, 1], tf.random.normal([4, 8]))

    Args:
        labels: `[N]` or `[N, 1]` class ids.
        embeddings: `[N, d]`; float16/bfloat16 are computed in float32.
        alpha: α > 0, the weight of positive pairs (PML: 2).
        beta: β > 0, the weight of negative pairs (PML: 50).
        base: λ, the similarity both terms are measured from (PML: 0.5).
        distance: `"angular"` (cosine similarity, PML's default), `"L2"`, `"squared-L2"` or a callable.
        pair_miner: None (every pair), `"multi_similarity"` or a pair miner: only its pairs count.

    Returns:
        A scalar in the embeddings' dtype (NaN if an embedding is NaN or infinite).
    """
    embeddings, metric, distances, positive, negative = scored_pairs(labels, embeddings, distance, pair_miner)
    losses = _anchor_losses(distances, positive, negative, metric, check_positive_number("alpha", alpha),
                            check_positive_number("beta", beta), _check_base(base))
    return tf.cast(nan_unless_finite(tf.reduce_mean(losses), embeddings), embeddings.dtype)


@keras.saving.register_keras_serializable(package="reprlearn")
class MultiSimilarityLoss(InBatchLoss):
    """Multi-Similarity for `compile(loss=...)`: `y_true` class ids, `y_pred` embeddings.

    Example:
        model.compile(optimizer="adam", loss=MultiSimilarityLoss(pair_miner="multi_similarity"))

    Args:
        alpha, beta, base, distance, pair_miner: as in `multi_similarity_loss`.
        cross_replica: under a strategy, the loss of the global batch (see `InBatchLoss`).

    Its training metric `ActiveFraction` reports the share of positive pairs with a negative ranked closer.
    """

    takes_pair_miner = True

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, distance: Distance = "angular",
                 name: str = "multi_similarity_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha = check_positive_number("alpha", alpha)
        self.beta = check_positive_number("beta", beta)
        self.base = _check_base(base)
        self.distance = check_metric(distance)

    def batch_loss(self, distances, positive, negative):
        losses = _anchor_losses(distances, positive, negative, self.distance, self.alpha, self.beta, self.base)
        return tf.reduce_mean(losses), lambda: misranked_share(distances, positive, negative)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta, "base": self.base,
                "distance": self.distance}
