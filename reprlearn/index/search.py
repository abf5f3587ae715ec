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

from reprlearn.errors import GalleryError
from reprlearn.ops.distances import METRICS, canonical_metric

# Scores per chunk: chunk × N float32 values kept under about 128 MB.
_CHUNK_VALUES = 1 << 25


def unit_rows(x):
    """Rows scaled to unit L2 norm (zero rows stay zero): how angular search compares vectors (NumPy or TF)."""
    if isinstance(x, np.ndarray):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x / tf.maximum(tf.norm(x, axis=1, keepdims=True), 1e-12)


def prepare_reference(reference, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """`(reference, squared norms)` as the kernel searches them: unit rows for angular, as given otherwise."""
    reference = np.asarray(reference, dtype=np.float32)
    if metric == "angular":
        reference = unit_rows(reference)
    return reference, np.sum(reference ** 2, axis=1)


def nearest(queries, reference, squared_norms, k, metric: str, excluded=None) -> tuple[tf.Tensor, tf.Tensor]:
    """`(distances [Q, k], indices [Q, k])` in TensorFlow: the kernel's one formula, also served by SavedModels.

    `reference` and `squared_norms` come from `prepare_reference`; `excluded[i]` (or -1) is an item
    query i may not match. Higher score = nearer: for L2, −||q − e||² = 2 q·e − ||e||² − ||q||², and
    the last term, constant per query, is added back only to turn scores into distances.
    """
    queries = tf.cast(queries, tf.float32)
    if metric == "angular":
        queries = unit_rows(queries)
        scores = tf.matmul(queries, reference, transpose_b=True)
    else:
        scores = 2.0 * tf.matmul(queries, reference, transpose_b=True) - squared_norms[None, :]
    if excluded is not None:
        is_excluded = tf.equal(excluded[:, None], tf.range(tf.shape(reference, out_type=tf.int64)[0])[None, :])
        scores = tf.where(is_excluded, tf.constant(-np.inf, tf.float32), scores)
    top, indices = tf.math.top_k(scores, k=k, sorted=True)
    if metric == "angular":
        return tf.maximum(1.0 - top, 0.0), indices
    squared = tf.maximum(tf.reduce_sum(tf.square(queries), axis=1, keepdims=True) - top, 0.0)
    return (tf.sqrt(squared) if metric == "L2" else squared), indices


_CHUNK_SIGNATURE = (tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.float32),
                    tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.int32))
# One graph per metric, for any sizes: scoring many sets (embeddings, pixels, PCA) never retraces.
_NEAREST_CHUNK = {metric: tf.function(lambda q, r, n, x, k, metric=metric: nearest(q, r, n, k, metric, x),
                                      input_signature=_CHUNK_SIGNATURE) for metric in METRICS}


def _nearest_chunk(queries, reference, squared_norms, excluded, k, metric):
    return _NEAREST_CHUNK[metric](queries, reference, squared_norms, excluded, k)


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
    reference, squared_norms = prepare_reference(reference, metric)
    n = reference.shape[0]
    self_search = queries is None
    candidates = n - 1 if self_search else n
    if not 1 <= k <= candidates:
        raise GalleryError(f"k must be in [1, {candidates}] (the items a query can be matched with). Received: k={k}")
    if self_search:
        rows_all = np.arange(n) if query_rows is None else np.asarray(query_rows, dtype=np.int64)
        query_vectors = reference
    else:
        query_vectors = np.asarray(queries, dtype=np.float32)
        rows_all = np.arange(len(query_vectors))
    chunk = chunk_size or max(1, _CHUNK_VALUES // max(n, 1))
    reference_t, squared_norms_t = tf.constant(reference), tf.constant(squared_norms)

    def scored(rows):
        excluded = rows if self_search else np.full(len(rows), -1, np.int64)
        distances, indices = _nearest_chunk(tf.constant(query_vectors[rows]), reference_t, squared_norms_t,
                                            tf.constant(excluded, tf.int64), tf.constant(k), metric)
        return rows, distances.numpy(), indices.numpy().astype(np.int64)

    # Checked and set up now; each chunk is scored only when the consumer asks for it.
    return (scored(rows_all[start:start + chunk]) for start in range(0, len(rows_all), chunk))
