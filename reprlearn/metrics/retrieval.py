"""Retrieval metrics with the query set as the reference set, the query itself excluded.

Exact (no approximate search) and chunked: a chunk of queries is scored against all N
items, its top `k_max` neighbours are ranked, its per-query scores are summed, and the
chunk is dropped before the next, so memory is O(chunk × N), never N×N or N × k_max.
`k_max` is the largest R (same-class items other than the query) or the largest k in
`ks`. Ties are broken by index (lower index first), as `tf.math.top_k` does.

Example:
    m = retrieval_metrics(embeddings, labels)
    m["map_at_r"], m["precision_at_1"], m["recall_at_4"], m["nmi"]
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from reprlearn.distances import canonical_metric
# Scores per chunk: chunk × N float32 values kept under about 128 MB.
_CHUNK_VALUES = 1 << 25


def _check(embeddings, labels, ks, metric):
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [N, d]. Received: embeddings.shape={embeddings.shape}")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("embeddings contain NaN or inf. Received: "
                         f"{int((~np.isfinite(embeddings)).sum())} non-finite values")
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(f"labels must be [N] with N = {embeddings.shape[0]}. Received: labels.shape={labels.shape}")
    metric = canonical_metric(metric)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers. Received: ks={ks}")
    return embeddings, labels, metric


@tf.function(reduce_retracing=True)
def _top_k_others(rows, reference, scale, bias, k):
    """Top-k scores of `reference[rows]` against all of `reference`, each row's own item excluded."""
    scores = scale * tf.matmul(tf.gather(reference, rows), reference, transpose_b=True) + bias[None, :]
    is_self = tf.equal(rows[:, None], tf.range(tf.shape(reference, out_type=tf.int64)[0])[None, :])
    scores = tf.where(is_self, tf.constant(-np.inf, tf.float32), scores)
    return tf.math.top_k(scores, k=k, sorted=True).indices


def nearest_neighbours(embeddings, k: int, metric: str = "L2", chunk_size: int | None = None,
                       query_index=None) -> np.ndarray:
    """Indices `[Q, k]` of each query's k nearest other items, nearest first, ties by lower index.

    Args:
        embeddings: `[N, d]` items; queries are items too and never their own neighbour.
        k: neighbours to return (<= N - 1).
        metric: `"L2"`, `"squared-L2"` (same ranking) or `"angular"`.
        chunk_size: queries scored at once; default keeps chunk × N under 2**25.
        query_index: `[Q]` indices of the query items; default: every item.
    """
    parts = [neighbours for _, neighbours in neighbour_chunks(embeddings, k, metric, chunk_size, query_index)]
    return np.concatenate(parts) if parts else np.empty((0, k), np.int64)


def neighbour_chunks(embeddings, k: int, metric: str = "L2", chunk_size: int | None = None, query_index=None):
    """`nearest_neighbours` one query chunk at a time: yields `(query rows, [chunk, k] neighbour indices)`.

    Holds one chunk's scores (chunk × N) at a time; a consumer that reduces each chunk keeps memory
    at O(chunk × N) whatever k is.
    """
    metric = canonical_metric(metric)
    reference = np.asarray(embeddings, dtype=np.float32)
    if metric == "angular":
        reference = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    n = reference.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, N - 1 = {n - 1}]. Received: k={k}")
    query_index = np.arange(n) if query_index is None else np.asarray(query_index, dtype=np.int64)
    chunk = chunk_size or max(1, _CHUNK_VALUES // n)
    reference_t = tf.constant(reference)
    # Higher score = nearer. For L2, -||q - e||² = 2 q·e - ||e||² - ||q||²; the last term
    # is constant per query, so it cannot change the ranking and is dropped.
    if metric == "angular":
        scale, bias = tf.constant(1.0), tf.zeros([n])
    else:
        scale, bias = tf.constant(2.0), tf.constant(-np.sum(reference ** 2, axis=1))
    args = (reference_t, scale, bias, tf.constant(k))
    # Checked and set up now; each chunk is scored only when the consumer asks for it.
    return ((rows, _top_k_others(tf.constant(rows), *args).numpy().astype(np.int64))
            for rows in (query_index[start:start + chunk] for start in range(0, len(query_index), chunk)))


def retrieval_metrics(embeddings, labels, metric: str = "L2", ks=(1, 2, 4, 8), chunk_size: int | None = None,
                      compute_nmi: bool = True, seed: int = 0, query_index=None) -> dict:
    """P@1, R-precision, MAP@R, Recall@k and NMI, as defined in docs/math.md.

    For query q with label y, R = number of other items labelled y; queries with R = 0
    are skipped by every ranking metric.

    Args:
        embeddings: `[N, d]`.
        labels: `[N]` (or `[N, 1]`) class labels.
        metric: `"L2"`, `"squared-L2"` or `"angular"`.
        ks: the k of each `recall_at_k` (Song 2016: at least one of the k nearest matches).
        chunk_size: queries per chunk (default: chunk × N ≤ 2**25 scores).
        compute_nmi: also cluster with k-means (k = number of classes) and report NMI.
        seed: k-means seed.
        query_index: score only these items as queries (each still ranks all N items); default: every
            item. A random subset estimates the metrics of a gallery too large to query whole.

    Returns:
        A dict of floats: `precision_at_1`, `r_precision`, `map_at_r`, `recall_at_{k}`,
        `nmi` (if asked), and `num_queries` (queries with R > 0).

    Raises:
        ValueError: shapes disagree, non-finite embeddings, unknown metric, or no query has R > 0.
    """
    embeddings, labels, metric = _check(embeddings, labels, ks, metric)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1
    valid = r > 0
    if query_index is not None:
        queries = np.zeros(len(labels), bool)
        queries[np.asarray(query_index, dtype=np.int64)] = True
        valid &= queries
    if not valid.any():
        raise ValueError("no query has another item of its class (every class has one item); "
                         f"retrieval metrics are undefined. Received: {len(labels)} items")
    k_max = int(min(max(int(r.max()), max(ks)), len(labels) - 1))
    rank = np.arange(1, k_max + 1)
    sums = dict.fromkeys(["precision_at_1", "r_precision", "map_at_r", *(f"recall_at_{k}" for k in ks)], 0.0)
    # Only valid queries are ranked; each chunk is reduced to sums before the next is scored.
    for rows, neighbours in neighbour_chunks(embeddings, k_max, metric, chunk_size, np.flatnonzero(valid)):
        relevant = labels[neighbours] == labels[rows][:, None]                    # [chunk, k_max]
        r_rows = r[rows]
        relevant_within_r = relevant & (rank[None, :] <= r_rows[:, None])
        precision_at_i = np.cumsum(relevant, axis=1) / rank[None, :]
        sums["precision_at_1"] += float(relevant[:, 0].sum())
        sums["r_precision"] += float(np.sum(relevant_within_r.sum(axis=1) / r_rows))
        sums["map_at_r"] += float(np.sum((precision_at_i * relevant_within_r).sum(axis=1) / r_rows))
        for k in ks:
            sums[f"recall_at_{k}"] += float(relevant[:, :min(k, k_max)].any(axis=1).sum())
    num_queries = int(valid.sum())
    out = {name: total / num_queries for name, total in sums.items()}
    if compute_nmi:
        out["nmi"] = normalized_mutual_information(embeddings, labels, seed)
    out["num_queries"] = num_queries
    return out


def normalized_mutual_information(embeddings, labels, seed: int = 0) -> float:
    """NMI between labels and k-means clusters (k = number of classes) of the embeddings."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    num_classes = len(np.unique(labels))
    if num_classes < 2:
        return 0.0
    clusters = KMeans(n_clusters=num_classes, n_init=1, random_state=seed).fit_predict(embeddings)
    return float(normalized_mutual_info_score(labels, clusters))
