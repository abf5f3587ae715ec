"""The exact k-nearest-neighbour kernel every search in reprlearn uses: galleries and retrieval metrics.

Queries are scored against every reference item in chunks (a matrix product), the top k of each
chunk's scores are kept, and the chunk is dropped before the next, so memory is
O(chunk × N + Q × k), never Q × N. Ranking is exact for the metric; ties go to the lower index,
as `tf.math.top_k` breaks them.

Example:
    for rows, distances, indices in search_chunks(gallery, k=5, queries=probe):
        ...   # rows: the probe rows of this chunk; [chunk, 5] distances and gallery indices, nearest first
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from reprlearn.distances import canonical_metric

# Scores per chunk: chunk × N float32 values kept under about 128 MB.
_CHUNK_VALUES = 1 << 25


@tf.function(reduce_retracing=True)
def _top_k(queries, reference, scale, bias, excluded, k):
    """Top-k scores of `queries` against `reference` (higher = nearer); `excluded[i]` (or -1) is skipped for row i."""
    scores = scale * tf.matmul(queries, reference, transpose_b=True) + bias[None, :]
    is_excluded = tf.equal(excluded[:, None], tf.range(tf.shape(reference, out_type=tf.int64)[0])[None, :])
    scores = tf.where(is_excluded, tf.constant(-np.inf, tf.float32), scores)
    return tf.math.top_k(scores, k=k, sorted=True)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero): how angular search compares vectors."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def search_chunks(reference, k: int, metric: str = "L2", queries=None, query_rows=None,
                  chunk_size: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yields `(rows, distances [c, k] float32, indices [c, k] int64)` per chunk of queries, nearest first.

    Args:
        reference: `[N, d]` float items searched.
        k: neighbours per query.
        metric: `"L2"`, `"squared-L2"` or `"angular"` (1 − cosine); distances are in that metric.
        queries: `[Q, d]` queries, none of them in `reference`; `rows` index them. Default: the
            reference items `query_rows` (all by default) query the reference, each never its own
            neighbour, and `rows` are reference indices.
        query_rows: with `queries=None`, which reference items query.
        chunk_size: queries scored at once; default keeps chunk × N under 2**25.

    Raises:
        ValueError: k outside [1, number of candidates], or an unknown metric.
    """
    metric = canonical_metric(metric)
    reference = np.asarray(reference, dtype=np.float32)
    if metric == "angular":
        reference = unit_rows(reference)
    n = reference.shape[0]
    self_search = queries is None
    candidates = n - 1 if self_search else n
    if not 1 <= k <= candidates:
        raise ValueError(f"k must be in [1, {candidates}] (the items a query can be matched with). Received: k={k}")
    if self_search:
        rows_all = np.arange(n) if query_rows is None else np.asarray(query_rows, dtype=np.int64)
        query_vectors = reference
    else:
        query_vectors = np.asarray(queries, dtype=np.float32)
        if metric == "angular":
            query_vectors = unit_rows(query_vectors)
        rows_all = np.arange(len(query_vectors))
    chunk = chunk_size or max(1, _CHUNK_VALUES // max(n, 1))
    reference_t = tf.constant(reference)
    # Higher score = nearer. For L2, -||q - e||² = 2 q·e - ||e||² - ||q||²; the last term is constant per
    # query, so it cannot change the ranking and is added back only to report distances.
    if metric == "angular":
        scale, bias = tf.constant(1.0), tf.zeros([n])
    else:
        scale, bias = tf.constant(2.0), tf.constant(-np.sum(reference ** 2, axis=1))

    def scored(rows):
        vectors = query_vectors[rows]
        excluded = rows if self_search else np.full(len(rows), -1, np.int64)
        scores, indices = _top_k(tf.constant(vectors), reference_t, scale, bias, tf.constant(excluded, tf.int64),
                                 tf.constant(k))
        scores = scores.numpy()
        if metric == "angular":
            distances = np.maximum(1.0 - scores, 0.0)
        else:
            distances = np.maximum(np.sum(vectors ** 2, axis=1, keepdims=True) - scores, 0.0)
            if metric == "L2":
                distances = np.sqrt(distances)
        return rows, distances.astype(np.float32), indices.numpy().astype(np.int64)

    # Checked and set up now; each chunk is scored only when the consumer asks for it.
    return (scored(rows_all[start:start + chunk]) for start in range(0, len(rows_all), chunk))
