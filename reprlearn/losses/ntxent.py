"""NT-Xent (SimCLR, Chen et al. 2020) with labels: one term per positive pair, with pytorch-metric-learning 2.9's
numbers.

For each ordered positive pair (i, p), with logits `S / τ` (cosine similarity S):
`ℓ_ip = −log(exp(S_ip/τ) / (exp(S_ip/τ) + Σ_{n ∈ N_i} exp(S_in/τ)))`: the pair's own positive is the only
positive in its denominator. The loss is the mean over positive pairs (0 without any). SupCon
(`SupervisedContrastiveLoss`) differs: one softmax over every other item, averaged over an anchor's
positives; with two views per image and nothing else the two agree.

Example:
    model.compile(optimizer="adam", loss=NTXentLoss(temperature=0.07))
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from reprlearn.losses.in_batch import InBatchLoss, masked_logsumexp
from reprlearn.losses.pairs import misranked_share, scored_pairs, similarity_matrix
from reprlearn.ops.checks import check_positive_number
from reprlearn.ops.distances import Distance, check_metric
from reprlearn.ops.labels import nan_unless_finite


def _ntxent(distances, positive, negative, metric, temperature: float) -> tf.Tensor:
    """The mean over positive pairs of each pair's cross-entropy against the anchor's negatives."""
    matrix, inverted = similarity_matrix(distances, metric)
    # PML: "if dealing with actual distances, use negative distances".
    logits = (matrix if inverted else -matrix) / temperature
    negatives = masked_logsumexp(logits, negative, -np.inf)
    # −log(e^a / (e^a + e^b)) = softplus(b − a); an anchor without negatives gives softplus(−inf) = 0.
    pair_losses = tf.where(positive, tf.nn.softplus(negatives[:, None] - logits), 0.0)
    return tf.math.divide_no_nan(tf.reduce_sum(pair_losses), tf.reduce_sum(tf.cast(positive, tf.float32)))


def ntxent_loss(labels, embeddings, temperature: float = 0.07, distance: Distance = "angular",
                pair_miner=None) -> tf.Tensor:
    """NT-Xent over a batch: PML's `NTXentLoss(temperature)`.

    Example:
        ntxent_loss([0, 1, 0, 1], tf.random.normal([4, 8]))   # two views each of images 0 and 1

    Args:
        labels: `[N]` or `[N, 1]` ids: image ids for augmented views, or class ids.
        embeddings: `[N, d]`; float16/bfloat16 are computed in float32.
        temperature: τ > 0 (PML: 0.07; SimCLR: 0.1–0.5).
        distance: `"angular"` (cosine similarity, PML's default), `"L2"`, `"squared-L2"` or a callable (logits
            −D / τ).
        pair_miner: None (every pair), `"multi_similarity"` or a pair miner: only its pairs count.

    Returns:
        A scalar in the embeddings' dtype; 0 with a zero gradient for a batch without a positive pair.
    """
    embeddings, metric, distances, positive, negative = scored_pairs(labels, embeddings, distance, pair_miner)
    value = _ntxent(distances, positive, negative, metric, check_positive_number("temperature", temperature))
    return tf.cast(nan_unless_finite(value, embeddings), embeddings.dtype)


@keras.saving.register_keras_serializable(package="reprlearn")
class NTXentLoss(InBatchLoss):
    """NT-Xent for `compile(loss=...)`: `y_true` ids, `y_pred` embeddings.

    Example:
        model.compile(optimizer="adam", loss=NTXentLoss(temperature=0.1))

    Args:
        temperature, distance, pair_miner: as in `ntxent_loss`.
        cross_replica: under a strategy, the loss of the global batch (see `InBatchLoss`).
    """

    takes_pair_miner = True

    def __init__(self, temperature: float = 0.07, distance: Distance = "angular", name: str = "ntxent_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = check_positive_number("temperature", temperature)
        self.distance = check_metric(distance)

    def batch_loss(self, distances, positive, negative):
        return (_ntxent(distances, positive, negative, self.distance, self.temperature),
                lambda: misranked_share(distances, positive, negative))

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "distance": self.distance}
