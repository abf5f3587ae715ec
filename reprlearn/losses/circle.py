"""Circle loss (Sun et al., CVPR 2020) on cosine similarities, with pytorch-metric-learning 2.9's numbers.

Each similarity gets its own weight, so a pair far from its optimum is pushed harder:
`α_p = [1 + m − S_p]_+`, `α_n = [S_n + m]_+` (constants: no gradient flows through them), margins
`Δ_p = 1 − m`, `Δ_n = m`, and per anchor
`L_i = softplus(logsumexp_{N_i} γ α_n (S_n − Δ_n) + logsumexp_{P_i} −γ α_p (S_p − Δ_p))`.
An anchor without a positive or without a negative scores 0, and the batch's loss is the mean over the
anchors with a non-zero loss (PML's `AvgNonZeroReducer`); 0 when there are none.

Example:
    model.compile(optimizer="adam", loss=CircleLoss(m=0.4, gamma=80.0))
"""

from __future__ import annotations

import keras
import tensorflow as tf

from reprlearn.losses.in_batch import InBatchLoss, masked_logsumexp
from reprlearn.losses.pairs import misranked_share, scored_pairs, similarity_matrix
from reprlearn.ops.checks import check_number_in, check_positive_number
from reprlearn.ops.labels import nan_unless_finite


def _check_relaxation(m) -> float:
    return check_number_in("m", m, 0.0, 1.0, "[0, 1) (the relaxation margin on cosine similarities)")


def _circle(distances, positive, negative, m: float, gamma: float) -> tf.Tensor:
    """The batch's Circle loss from its angular distances and the pairs in the masks."""
    similarity, _ = similarity_matrix(distances, "angular")
    constant = tf.stop_gradient(similarity)
    positive_logits = -gamma * tf.nn.relu(1.0 + m - constant) * (similarity - (1.0 - m))
    negative_logits = gamma * tf.nn.relu(constant + m) * (similarity - m)
    scored = tf.logical_and(tf.reduce_any(positive, axis=1), tf.reduce_any(negative, axis=1))
    losses = tf.where(scored, tf.nn.softplus(masked_logsumexp(positive_logits, positive, 0.0)
                                             + masked_logsumexp(negative_logits, negative, 0.0)), 0.0)
    return tf.math.divide_no_nan(tf.reduce_sum(losses), tf.reduce_sum(tf.cast(losses > 0.0, tf.float32)))


def circle_loss(labels, embeddings, m: float = 0.4, gamma: float = 80.0, pair_miner=None) -> tf.Tensor:
    """The Circle loss of a batch: PML's `CircleLoss(m, gamma)` (cosine similarity, the only one it takes).

    Example:
        circle_loss([0, 0, 1, 1], tf.random.normal([4, 8]), m=0.25, gamma=256.0)

    Args:
        labels: `[N]` or `[N, 1]` class ids.
        embeddings: `[N, d]`; float16/bfloat16 are computed in float32.
        m: the relaxation margin in [0, 1) (PML and the paper's retrieval setting: 0.4; faces: 0.25).
        gamma: γ > 0, the scale (PML: 80; faces: 256).
        pair_miner: None (every pair), `"multi_similarity"` or a pair miner: only its pairs count.

    Returns:
        A scalar in the embeddings' dtype; 0 with a zero gradient when no anchor has both a positive and a
        negative.
    """
    embeddings, _, distances, positive, negative = scored_pairs(labels, embeddings, "angular", pair_miner)
    value = _circle(distances, positive, negative, _check_relaxation(m), check_positive_number("gamma", gamma))
    return tf.cast(nan_unless_finite(value, embeddings), embeddings.dtype)


@keras.saving.register_keras_serializable(package="reprlearn")
class CircleLoss(InBatchLoss):
    """Circle loss for `compile(loss=...)`: `y_true` class ids, `y_pred` embeddings.

    Example:
        model.compile(optimizer="adam", loss=CircleLoss())

    Args:
        m, gamma, pair_miner: as in `circle_loss`.
        cross_replica: under a strategy, the loss of the global batch (see `InBatchLoss`).
    """

    takes_pair_miner = True
    distance = "angular"

    def __init__(self, m: float = 0.4, gamma: float = 80.0, name: str = "circle_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.m = _check_relaxation(m)
        self.gamma = check_positive_number("gamma", gamma)

    def batch_loss(self, distances, positive, negative):
        return (_circle(distances, positive, negative, self.m, self.gamma),
                lambda: misranked_share(distances, positive, negative))

    def get_config(self):
        return {**super().get_config(), "m": self.m, "gamma": self.gamma}
