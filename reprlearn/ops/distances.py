"""Pairwise and paired distances: the one place where sqrt-at-zero is handled.

Example:
    d = pairwise_distance(embeddings, "L2")          # [N, N], diagonal 0
    d = paired_distance(a, b, "angular")             # [B]

Float16/bfloat16 inputs are computed in float32; the result is float32 (losses cast
their final value back to the input dtype).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Union

import tensorflow as tf

Distance = Union[str, Callable[[tf.Tensor], tf.Tensor]]
# The distance names every loss, metric, index and config accepts; "cosine" is the common name of angular.
METRICS = ("L2", "squared-L2", "angular")
ALIASES = {"cosine": "angular"}


def canonical_metric(metric: str) -> str:
    """The canonical name of a distance metric (`"cosine"` → `"angular"`); ValueError for an unknown name."""
    if isinstance(metric, str) and ALIASES.get(metric, metric) in METRICS:
        return ALIASES.get(metric, metric)
    raise ValueError(f"distance metric must be one of {list(METRICS) + list(ALIASES)}. Received: metric={metric!r}")


def check_metric(metric: Distance) -> Distance:
    """Returns `metric` as a canonical name, or the callable itself; raises ValueError otherwise."""
    return metric if callable(metric) else canonical_metric(metric)


def check_margin(margin: float) -> float:
    """Returns `margin` as a float if it is finite and >= 0; raises ValueError otherwise."""
    if not isinstance(margin, numbers.Real) or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0. Received: margin={margin!r}")
    return float(margin)


def _as_float32(x) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    return tf.cast(x, tf.float32) if x.dtype != tf.float32 else x


def safe_sqrt(squared: tf.Tensor) -> tf.Tensor:
    """sqrt with value 0 and gradient 0 where the input is 0 (plain sqrt has an infinite gradient there)."""
    positive = squared > 0.0
    return tf.where(positive, tf.sqrt(tf.where(positive, squared, 1.0)), 0.0)


def pairwise_distance(embeddings, metric: Distance = "L2") -> tf.Tensor:
    """All-pairs distances of a batch of embeddings.

    Args:
        embeddings: `[N, d]` float tensor.
        metric: `"L2"`, `"squared-L2"`, `"angular"` (1 - cosine), or a callable `f(embeddings) -> [N, N]`.

    Returns:
        `[N, N]` float32 distances, clamped at 0, with a zero diagonal.
    """
    metric = check_metric(metric)
    if callable(metric):
        return _as_float32(metric(embeddings))
    x = _as_float32(embeddings)
    zero_diagonal = tf.zeros(tf.shape(x)[:1], tf.float32)
    if metric == "angular":
        unit = tf.math.l2_normalize(x, axis=1)
        return tf.linalg.set_diag(tf.maximum(1.0 - tf.matmul(unit, unit, transpose_b=True), 0.0), zero_diagonal)
    # ||a||² + ||b||² − 2ab cancels catastrophically for close points. Centring first (distances do not change)
    # shrinks the norms and so the error; reading the norms off the Gram diagonal makes exact duplicates
    # come out at exactly 0, since all three terms are then the same dot product.
    x = x - tf.reduce_mean(x, axis=0, keepdims=True)
    gram = tf.matmul(x, x, transpose_b=True)
    squared_norm = tf.linalg.diag_part(gram)
    squared = squared_norm[:, None] + squared_norm[None, :] - 2.0 * gram
    squared = tf.linalg.set_diag(tf.maximum(squared, 0.0), zero_diagonal)
    return squared if metric == "squared-L2" else safe_sqrt(squared)


def paired_distance(a, b, metric: str = "L2") -> tf.Tensor:
    """Row-wise distance between two `[B, d]` batches, `[B]` float32 (same metrics as `pairwise_distance`)."""
    metric = canonical_metric(metric)
    a, b = _as_float32(a), _as_float32(b)
    if metric == "angular":
        cosine = tf.reduce_sum(tf.math.l2_normalize(a, axis=1) * tf.math.l2_normalize(b, axis=1), axis=1)
        return tf.maximum(1.0 - cosine, 0.0)
    squared = tf.reduce_sum(tf.square(a - b), axis=1)
    return squared if metric == "squared-L2" else safe_sqrt(squared)


def cross_distance(a, b, metric: str = "L2") -> tf.Tensor:
    """Distances from every row of `a` `[N, d]` to every row of `b` `[M, d]`: `[N, M]` float32, clamped at 0 (the
    distance between two views' embeddings: queries against references)."""
    metric = canonical_metric(metric)
    a, b = _as_float32(a), _as_float32(b)
    if metric == "angular":
        cosine = tf.matmul(tf.math.l2_normalize(a, axis=1), tf.math.l2_normalize(b, axis=1), transpose_b=True)
        return tf.maximum(1.0 - cosine, 0.0)
    # Centred on the union's mean, as pairwise_distance is, to keep ||a||² + ||b||² − 2ab from cancelling.
    centre = tf.reduce_mean(tf.concat([a, b], axis=0), axis=0, keepdims=True)
    a, b = a - centre, b - centre
    squared = (tf.reduce_sum(tf.square(a), axis=1)[:, None] + tf.reduce_sum(tf.square(b), axis=1)[None, :]
               - 2.0 * tf.matmul(a, b, transpose_b=True))
    squared = tf.maximum(squared, 0.0)
    return squared if metric == "squared-L2" else safe_sqrt(squared)
