"""Retrieval metrics with the query set as the reference set, the query itself excluded.

Exact (no approximate search) and chunked, on the search kernel of `reprlearn.index`: a chunk
of queries is scored against all N items, its top `k_max` neighbours are ranked, its per-query
scores are summed, and the chunk is dropped before the next, so memory is O(chunk × N), never
N×N or N × k_max.
`k_max` is the largest R (same-class items other than the query) or the largest k in
`ks`. Ties are broken by index (lower index first), as `tf.math.top_k` does.
From `HOST_SELECTION_K` on (classes of hundreds of items and more), each query's row of scores is
ranked on the host instead, on every core (`_positive_ranks`): only its top R and a few more are
sorted, and each query's metrics are read from the ranks of its positives there.

Example:
    m = retrieval_metrics(embeddings, labels)
    m["map_at_r"], m["precision_at_1"], m["recall_at_4"], m["nmi"]
"""

from __future__ import annotations

import numpy as np

from reprlearn.errors import DataError
from reprlearn.index import search as kernel
from reprlearn.index.search import search_chunks
from reprlearn.metrics.clustering import kmeans
from reprlearn.ops.distances import canonical_metric


def _check(embeddings, labels, ks, metric):
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2:
        raise DataError(f"embeddings must be [N, d]. Received: embeddings.shape={embeddings.shape}")
    if not np.all(np.isfinite(embeddings)):
        raise DataError("embeddings contain NaN or inf. Received: "
                         f"{int((~np.isfinite(embeddings)).sum())} non-finite values")
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (embeddings.shape[0],):
        raise DataError(f"labels must be [N] with N = {embeddings.shape[0]}. Received: labels.shape={labels.shape}")
    metric = canonical_metric(metric)
    if not ks or min(ks) < 1:
        raise DataError(f"ks must be positive integers. Received: ks={ks}")
    return embeddings, labels, metric


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
    parts = [indices for _, _, indices in search_chunks(embeddings, k, metric, query_rows=query_index,
                                                        chunk_size=chunk_size)]
    return np.concatenate(parts) if parts else np.empty((0, k), np.int64)


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
        raise DataError("no query has another item of its class (every class has one item); "
                         f"retrieval metrics are undefined. Received: {len(labels)} items")
    k_max = int(min(max(int(r.max()), max(ks)), len(labels) - 1))
    classes, query_rows = inverse.astype(np.int32), np.flatnonzero(valid)
    if k_max >= kernel.HOST_SELECTION_K:
        sums = _sums_by_positive_ranks(embeddings, classes, r, query_rows, metric, ks, chunk_size)
    else:
        sums = _sums_by_top_k(embeddings, classes, r, query_rows, metric, ks, chunk_size, k_max)
    num_queries = int(valid.sum())
    out = {name: total / num_queries for name, total in sums.items()}
    if compute_nmi:
        out["nmi"] = normalized_mutual_information(embeddings, labels, seed)
    out["num_queries"] = num_queries
    return out


def _metric_names(ks) -> list[str]:
    return ["precision_at_1", "r_precision", "map_at_r", *(f"recall_at_{k}" for k in ks)]


def _sums_by_top_k(embeddings, classes, r, query_rows, metric, ks, chunk_size, k_max) -> dict[str, float]:
    """Each metric summed over the queries `query_rows`, from each chunk's top `k_max` neighbours."""
    rank = np.arange(1, k_max + 1)
    inverse_rank = (1.0 / rank).astype(np.float32)
    sums = dict.fromkeys(_metric_names(ks), 0.0)
    # Only valid queries are ranked; each chunk is reduced to sums before the next is scored.
    for rows, _, neighbours in search_chunks(embeddings, k_max, metric, query_rows=query_rows,
                                             chunk_size=chunk_size):
        relevant = classes[neighbours] == classes[rows][:, None]                  # [chunk, k_max]
        r_rows = r[rows]
        hits = np.cumsum(relevant, axis=1, dtype=np.int32)                        # relevant among the top i
        # P(i)·rel(i) for i <= R: the precision at each relevant rank within the first R.
        precision_at_hits = hits * inverse_rank[None, :]
        precision_at_hits *= relevant & (rank[None, :] <= r_rows[:, None])
        sums["precision_at_1"] += float(relevant[:, 0].sum())
        sums["r_precision"] += float(np.sum(hits[np.arange(len(rows)), r_rows - 1] / r_rows))
        sums["map_at_r"] += float(np.sum(precision_at_hits.sum(axis=1, dtype=np.float64) / r_rows))
        for k in ks:
            sums[f"recall_at_{k}"] += float(np.count_nonzero(hits[:, min(k, k_max) - 1]))
    return sums


def _positive_ranks(line: np.ndarray, row: int, classes: np.ndarray, depth: int) -> np.ndarray:
    """Ranks (1-based, ascending) among all other items of the query `row`'s same-class items that rank within
    its `depth` nearest, from its row of scores `line` (higher = nearer, ties to the lower index).

    Only `kernel.top_candidates` (the top `depth` + 1, the query among them, and a few more) are sorted:
    an item ranked before a candidate scores at least as high, so is a candidate too.
    """
    candidates = kernel.top_candidates(line, depth + 1)
    candidates = candidates[candidates != row]
    nearest = candidates[kernel.descending_order(line[candidates])[:depth]]
    return np.flatnonzero(classes[nearest] == classes[row]) + 1


def _sums_by_positive_ranks(embeddings, classes, r, query_rows, metric, ks, chunk_size) -> dict[str, float]:
    """`_sums_by_top_k`'s sums from each query's positive ranks (`_positive_ranks`), rows ranked on every core."""
    n, deepest_k = len(classes), max(ks)
    totals = np.zeros(3 + len(ks))

    def on_chunk(rows: np.ndarray, scores: np.ndarray) -> None:
        per_query = np.zeros((len(rows), 3 + len(ks)))

        def rank(start: int, stop: int) -> None:
            for i in range(start, stop):
                row, relevant = rows[i], r[rows[i]]
                ranks = _positive_ranks(scores[i], row, classes, min(max(relevant, deepest_k), n - 1))
                within = ranks <= relevant
                first = ranks[0] if len(ranks) else np.inf
                # MAP@R: the j-th positive at rank ranks[j-1] <= R contributes its precision j / rank.
                per_query[i, :3] = (first == 1, np.count_nonzero(within) / relevant,
                                    np.sum(np.arange(1, len(ranks) + 1)[within] / ranks[within]) / relevant)
                per_query[i, 3:] = [first <= k for k in ks]

        kernel.on_every_core(len(rows), rank)
        totals[:] += per_query.sum(axis=0)

    kernel.for_each_self_score_chunk(embeddings, on_chunk, metric, query_rows=query_rows, chunk_size=chunk_size)
    return dict(zip(_metric_names(ks), totals.tolist()))


def normalized_mutual_information(embeddings, labels, seed: int = 0) -> float:
    """NMI between labels and k-means clusters (k = number of classes) of the embeddings.

    k-means is `reprlearn.metrics.clustering.kmeans` (greedy k-means++ seeding, Lloyd's iterations by
    faiss when installed); scikit-learn scores the agreement.
    """
    from sklearn.metrics import normalized_mutual_info_score

    num_classes = len(np.unique(labels))
    if num_classes < 2:
        return 0.0
    return float(normalized_mutual_info_score(labels, kmeans(embeddings, num_classes, seed)))
