"""Self-supervised losses on two views of a batch: SimCLR's NT-Xent, MoCo's InfoNCE, BYOL, SimSiam, Barlow Twins,
VICReg. Each is a function and a registered `keras.losses.Loss` whose `(y_true, y_pred)` are the two views'
outputs (for BYOL and SimSiam: the target's projection, then the online predictor's output).

Row i of both inputs comes from image i. Every loss computes in float32 (float16 / bfloat16 inputs are cast) and
returns NaN for a non-finite input, never a finite number that hides it. Under `tf.distribute`, callers hand the
global batch (`reprlearn.ops.replicas.global_batch`): the batch statistics of Barlow Twins and VICReg and the
negatives of NT-Xent are then those of the whole batch.

Example:
    loss = barlow_twins_loss(projector(tower(view_1)), projector(tower(view_2)))
"""

from __future__ import annotations

import keras
import tensorflow as tf

from reprlearn.ops.checks import check_positive_number
from reprlearn.ops.labels import nan_unless_finite

# Barlow Twins standardises each dimension over the batch as its BatchNorm (no affine) does: ε in the variance.
STANDARDISE_EPSILON = 1e-5


def _float32(*tensors):
    return [tf.cast(tf.convert_to_tensor(t), tf.float32) for t in tensors]


def _normalise(z):
    return tf.math.l2_normalize(z, axis=-1, epsilon=1e-12)


def nt_xent_views_loss(views_1, views_2, temperature: float = 0.1, negatives=None) -> tf.Tensor:
    """SimCLR's NT-Xent over the 2N views of N images: each view's positive is its twin, the other 2N − 2 views
    (and `negatives`, if given) its negatives; the mean of `−log(exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ))` over all 2N.

    Example:
        nt_xent_views_loss(tf.random.normal([8, 16]), tf.random.normal([8, 16]), temperature=0.2)

    Args:
        views_1, views_2: `[N, d]` outputs of the two views (normalised here: s is the cosine).
        temperature: τ > 0.
        negatives: `[M, d]` more negatives (a memory of earlier batches), or None.

    Returns:
        A scalar float32 (0 for N = 1 without `negatives`: the twin is the only candidate).
    """
    check_positive_number("temperature", temperature)
    views_1, views_2 = _float32(views_1, views_2)
    count = tf.shape(views_1)[0]
    every = _normalise(tf.concat([views_1, views_2], axis=0))                       # [2N, d]
    candidates = every if negatives is None else tf.concat([every, _normalise(_float32(negatives)[0])], axis=0)
    logits = tf.matmul(every, candidates, transpose_b=True) / temperature            # [2N, 2N + M]
    self_mask = tf.one_hot(tf.range(2 * count), tf.shape(candidates)[0], on_value=True, off_value=False)
    logits = tf.where(self_mask, tf.constant(-1e9, tf.float32), logits)
    twins = tf.concat([tf.range(count, 2 * count), tf.range(count)], axis=0)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(twins, logits)
    return nan_unless_finite(tf.reduce_mean(losses), tf.concat([views_1, views_2], axis=0))


def info_nce_loss(queries, keys, queue=None, temperature: float = 0.2) -> tf.Tensor:
    """MoCo's InfoNCE: each query against its own key (the positive), the other keys of the batch and the `queue`
    (negatives); the mean over queries of `−log(exp(q·k⁺/τ) / Σ exp(q·k/τ))`, q and k normalised.

    MoCo v2 scores each query against its key and the queue only; here the batch's other keys are negatives too
    (as MoCo v3 and SimCLR do), so the loss learns from the first batch, before any queue is filled.

    Example:
        info_nce_loss(queries, tf.stop_gradient(keys), queue=memory)

    Args:
        queries, keys: `[N, d]`, row i of both from image i.
        queue: `[M, d]` negatives from earlier batches, or None.
        temperature: τ > 0 (MoCo v2: 0.2).

    Returns:
        A scalar float32.
    """
    check_positive_number("temperature", temperature)
    queries, keys = _float32(queries, keys)
    candidates = _normalise(keys) if queue is None else tf.concat([_normalise(keys), _normalise(_float32(queue)[0])],
                                                                  axis=0)
    logits = tf.matmul(_normalise(queries), candidates, transpose_b=True) / temperature
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.range(tf.shape(queries)[0]), logits)
    return nan_unless_finite(tf.reduce_mean(losses), tf.concat([queries, keys], axis=0))


def byol_loss(targets, predictions) -> tf.Tensor:
    """BYOL's regression loss, `2 − 2·cos(prediction, target)` averaged over the batch; the target carries no
    gradient. Symmetrise by adding the loss with the views swapped.

    Example:
        byol_loss(target_projector(target(view_2)), predictor(projector(tower(view_1))))

    Args:
        targets: `[N, d]`, the target network's projections (gradient stopped here).
        predictions: `[N, d]`, the online predictor's outputs.

    Returns:
        A scalar float32 in [0, 4].
    """
    targets, predictions = _float32(targets, predictions)
    cosine = tf.reduce_sum(_normalise(predictions) * _normalise(tf.stop_gradient(targets)), axis=-1)
    return nan_unless_finite(tf.reduce_mean(2.0 - 2.0 * cosine), tf.concat([targets, predictions], axis=0))


def simsiam_loss(targets, predictions) -> tf.Tensor:
    """SimSiam's `D(p, sg(z)) = −cos(p, z)` averaged over the batch, for one direction; the paper's loss is half
    of each direction: `simsiam_loss(z2, p1) / 2 + simsiam_loss(z1, p2) / 2`.

    Example:
        simsiam_loss(projector(tower(view_2)), predictor(projector(tower(view_1))))

    Args:
        targets: `[N, d]` projections z (gradient stopped here).
        predictions: `[N, d]` predictor outputs p.

    Returns:
        A scalar float32 in [−1, 1].
    """
    targets, predictions = _float32(targets, predictions)
    cosine = tf.reduce_sum(_normalise(predictions) * _normalise(tf.stop_gradient(targets)), axis=-1)
    return nan_unless_finite(-tf.reduce_mean(cosine), tf.concat([targets, predictions], axis=0))


def _standardised(z):
    mean, variance = tf.nn.moments(z, axes=[0])
    return (z - mean) / tf.sqrt(variance + STANDARDISE_EPSILON)


def barlow_twins_loss(views_1, views_2, off_diagonal_weight: float = 5e-3) -> tf.Tensor:
    """Barlow Twins: `Σ_i (1 − C_ii)² + λ·Σ_{i≠j} C_ij²`, C the `[d, d]` cross-correlation of the two views'
    outputs, each dimension standardised over the batch (biased variance + 1e-5, as a BatchNorm without affine).

    Example:
        barlow_twins_loss(projector(tower(view_1)), projector(tower(view_2)))

    Args:
        views_1, views_2: `[N, d]` projector outputs (not normalised).
        off_diagonal_weight: λ ≥ 0 (the paper's 5e-3).

    Returns:
        A scalar float32.
    """
    if not off_diagonal_weight >= 0:
        raise ValueError(f"off_diagonal_weight must be >= 0. Received: off_diagonal_weight={off_diagonal_weight!r}")
    views_1, views_2 = _float32(views_1, views_2)
    count = tf.cast(tf.shape(views_1)[0], tf.float32)
    correlation = tf.matmul(_standardised(views_1), _standardised(views_2), transpose_a=True) / count
    diagonal = tf.linalg.diag_part(correlation)
    on = tf.reduce_sum(tf.square(1.0 - diagonal))
    off = tf.reduce_sum(tf.square(correlation)) - tf.reduce_sum(tf.square(diagonal))
    return nan_unless_finite(on + off_diagonal_weight * off, tf.concat([views_1, views_2], axis=0))


def _variance_term(z, epsilon: float):
    variance = tf.reduce_sum(tf.square(z - tf.reduce_mean(z, axis=0)), axis=0) / tf.maximum(
        tf.cast(tf.shape(z)[0], tf.float32) - 1.0, 1.0)
    return tf.reduce_mean(tf.nn.relu(1.0 - tf.sqrt(variance + epsilon)))


def _covariance_term(z):
    count, dims = tf.cast(tf.shape(z)[0], tf.float32), tf.cast(tf.shape(z)[1], tf.float32)
    centred = z - tf.reduce_mean(z, axis=0)
    covariance = tf.matmul(centred, centred, transpose_a=True) / tf.maximum(count - 1.0, 1.0)
    off = tf.reduce_sum(tf.square(covariance)) - tf.reduce_sum(tf.square(tf.linalg.diag_part(covariance)))
    return off / dims


def vicreg_loss(views_1, views_2, invariance_weight: float = 25.0, variance_weight: float = 25.0,
                covariance_weight: float = 1.0, epsilon: float = 1e-4) -> tf.Tensor:
    """VICReg: `λ·MSE(z1, z2) + μ·[v(z1) + v(z2)] + ν·[c(z1) + c(z2)]`, v(z) the mean over dimensions of
    `max(0, 1 − sqrt(Var(z_j) + ε))`, c(z) the squared off-diagonal covariances summed, over d (variances and
    covariances unbiased, over N − 1).

    The paper's equation is followed; the authors' code halves the variance term (`/ 2` on each view's).

    Example:
        vicreg_loss(projector(tower(view_1)), projector(tower(view_2)))

    Args:
        views_1, views_2: `[N, d]` projector outputs (not normalised).
        invariance_weight, variance_weight, covariance_weight: λ, μ, ν (the paper's 25, 25, 1).
        epsilon: ε in the standard deviation.

    Returns:
        A scalar float32.
    """
    views_1, views_2 = _float32(views_1, views_2)
    invariance = tf.reduce_mean(tf.square(views_1 - views_2))
    variance = _variance_term(views_1, epsilon) + _variance_term(views_2, epsilon)
    covariance = _covariance_term(views_1) + _covariance_term(views_2)
    total = invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
    return nan_unless_finite(total, tf.concat([views_1, views_2], axis=0))


def output_spread(outputs) -> tf.Tensor:
    """The mean over dimensions of the batch standard deviation of the L2-normalised outputs (TF Similarity's
    `proj_std`): about 1/√d for a healthy d-dimensional embedding, near 0 once every image maps to one point."""
    normalised = _normalise(_float32(outputs)[0])
    return tf.reduce_mean(tf.math.reduce_std(normalised, axis=0))


class _TwoViewLoss(keras.losses.Loss):
    """A loss on two views' outputs, `y_true` the first view's (or the target's), `y_pred` the second's."""

    def __init__(self, name: str, reduction: str = "sum_over_batch_size", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)


@keras.saving.register_keras_serializable(package="reprlearn")
class NTXentViewsLoss(_TwoViewLoss):
    """SimCLR's NT-Xent on two views (`nt_xent_views_loss`).

    Example:
        NTXentViewsLoss(temperature=0.2)(projections_1, projections_2)
    """

    def __init__(self, temperature: float = 0.1, name: str = "nt_xent_views", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = check_positive_number("temperature", temperature)

    def call(self, y_true, y_pred):
        return nt_xent_views_loss(y_true, y_pred, self.temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="reprlearn")
class InfoNCELoss(_TwoViewLoss):
    """MoCo's InfoNCE of queries (`y_pred`) against keys (`y_true`) without a queue (`info_nce_loss`).

    Example:
        InfoNCELoss(temperature=0.2)(keys, queries)
    """

    def __init__(self, temperature: float = 0.2, name: str = "info_nce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = check_positive_number("temperature", temperature)

    def call(self, y_true, y_pred):
        return info_nce_loss(y_pred, tf.stop_gradient(y_true), None, self.temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="reprlearn")
class BYOLLoss(_TwoViewLoss):
    """BYOL's `2 − 2·cos` of predictions (`y_pred`) to targets (`y_true`) (`byol_loss`).

    Example:
        BYOLLoss()(target_projections, predictions)
    """

    def __init__(self, name: str = "byol", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return byol_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="reprlearn")
class SimSiamLoss(_TwoViewLoss):
    """SimSiam's `−cos` of predictions (`y_pred`) to projections (`y_true`), one direction (`simsiam_loss`).

    Example:
        SimSiamLoss()(projections_2, predictions_1)
    """

    def __init__(self, name: str = "simsiam", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return simsiam_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="reprlearn")
class BarlowTwinsLoss(_TwoViewLoss):
    """Barlow Twins on two views' projections (`barlow_twins_loss`).

    Example:
        BarlowTwinsLoss(off_diagonal_weight=5e-3)(projections_1, projections_2)
    """

    def __init__(self, off_diagonal_weight: float = 5e-3, name: str = "barlow_twins", **kwargs):
        super().__init__(name=name, **kwargs)
        if not off_diagonal_weight >= 0:
            raise ValueError(f"off_diagonal_weight must be >= 0. Received: off_diagonal_weight={off_diagonal_weight!r}")
        self.off_diagonal_weight = float(off_diagonal_weight)

    def call(self, y_true, y_pred):
        return barlow_twins_loss(y_true, y_pred, self.off_diagonal_weight)

    def get_config(self):
        return {**super().get_config(), "off_diagonal_weight": self.off_diagonal_weight}


@keras.saving.register_keras_serializable(package="reprlearn")
class VICRegLoss(_TwoViewLoss):
    """VICReg on two views' projections (`vicreg_loss`).

    Example:
        VICRegLoss()(projections_1, projections_2)
    """

    def __init__(self, invariance_weight: float = 25.0, variance_weight: float = 25.0, covariance_weight: float = 1.0,
                 epsilon: float = 1e-4, name: str = "vicreg", **kwargs):
        super().__init__(name=name, **kwargs)
        self.weights_ = (float(invariance_weight), float(variance_weight), float(covariance_weight))
        self.epsilon = float(epsilon)

    def call(self, y_true, y_pred):
        return vicreg_loss(y_true, y_pred, *self.weights_, self.epsilon)

    def get_config(self):
        invariance, variance, covariance = self.weights_
        return {**super().get_config(), "invariance_weight": invariance, "variance_weight": variance,
                "covariance_weight": covariance, "epsilon": self.epsilon}
