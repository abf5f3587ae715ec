"""Cross-view retrieval metrics: queries of one view ranked against the references of the other.

Each query has its true reference (its pair's), or, where pairs carry labels, every reference of its label.
- `recall_at_k`: the share of queries whose nearest true reference has fewer than k references strictly nearer
  (ties count for the query). `recall_at_1pct` takes k = ⌈references / 100⌉ (the geo-localisation papers' R@1%).
- `map_at_r`: MAP@R (Musgrave et al. 2020) with R the query's number of true references, references ranked by
  distance, ties by index. With one true reference per query it is P@1 with ties broken by index (below Recall@1
  where the true reference ties with another).
Both directions are scored: queries → references, and references → queries (each reference's true queries
being those of its label).

Exact and chunked: a block of queries against every reference at a time, O(block × references) memory.

Example:
    m = cross_view_metrics(query_embeddings, reference_embeddings, query_labels, reference_labels)
    m["query_to_reference"]["recall_at_1"], m["reference_to_query"]["recall_at_1pct"]
"""

from __future__ import annotations

import math

import numpy as np

from reprlearn.errors import DataError
from reprlearn.ops.distances import canonical_metric

RECALL_KS = (1, 5, 10)
_BLOCK = 1024


def _checked(embeddings, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise DataError(f"{name} embeddings must be [N, d] with N >= 1. Received: shape={embeddings.shape}")
    if not np.all(np.isfinite(embeddings)):
        raise DataError(f"{name} embeddings contain NaN or inf. Received: "
                        f"{int((~np.isfinite(embeddings)).sum())} non-finite values")
    labels = np.asarray(labels).reshape(-1)
    if labels.shape != (len(embeddings),):
        raise DataError(f"{name} labels must be [N] with N = {len(embeddings)}. Received: labels.shape={labels.shape}")
    return embeddings, labels


def cross_distances(queries: np.ndarray, references: np.ndarray, metric: str) -> np.ndarray:
    """`[n, m]` float64 distances from each query row to each reference row (`L2`, `squared-L2`, `angular`)."""
    metric = canonical_metric(metric)
    q, r = queries.astype(np.float64), references.astype(np.float64)
    if metric == "angular":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
        return np.maximum(1.0 - q @ r.T, 0.0)
    squared = np.maximum((q * q).sum(1)[:, None] + (r * r).sum(1)[None, :] - 2.0 * q @ r.T, 0.0)
    return squared if metric == "squared-L2" else np.sqrt(squared)


def k_at_one_percent(references: int) -> int:
    """k of Recall@1%: ⌈references / 100⌉, at least 1."""
    return max(1, math.ceil(references / 100))


def one_direction(queries, references, query_labels, reference_labels, metric: str = "L2",
                  ks=RECALL_KS, map_at_r: bool = True) -> dict:
    """Recall@k (each of `ks` and 1%), and MAP@R, of `queries` searching `references`.

    Args:
        queries, references: `[n, d]` and `[m, d]` embeddings.
        query_labels, reference_labels: `[n]` and `[m]`; a reference is true for a query when their labels agree.
        metric: the distance that ranks.
        ks: the k of each Recall@k.
        map_at_r: also compute MAP@R.

    Returns:
        `{"recall_at_<k>": ..., "recall_at_1pct": ..., "k_at_1pct": K, "map_at_r": ..., "queries": scored,
        "references": m, "queries_without_match": skipped}`.

    Raises:
        DataError: bad shapes, non-finite values, or no query with a true reference.
    """
    queries, query_labels = _checked(queries, query_labels, "query")
    references, reference_labels = _checked(references, reference_labels, "reference")
    if queries.shape[1] != references.shape[1]:
        raise DataError(f"query and reference embeddings must have one size. Received: {queries.shape[1]} and "
                        f"{references.shape[1]}")
    k_percent = k_at_one_percent(len(references))
    all_ks = sorted(set(int(k) for k in ks) | {k_percent})
    hits = {k: 0 for k in all_ks}
    ap_sum, scored, skipped = 0.0, 0, 0
    for start in range(0, len(queries), _BLOCK):
        d = cross_distances(queries[start:start + _BLOCK], references, metric)
        true = query_labels[start:start + _BLOCK, None] == reference_labels[None, :]
        has_match = true.any(axis=1)
        skipped += int((~has_match).sum())
        d, true = d[has_match], true[has_match]
        if not len(d):
            continue
        nearest_true = np.where(true, d, np.inf).min(axis=1)
        rank = (d < nearest_true[:, None]).sum(axis=1)  # references strictly nearer than the nearest true one
        for k in all_ks:
            hits[k] += int((rank < k).sum())
        scored += len(d)
        if map_at_r:
            order = np.argsort(d, axis=1, kind="stable")   # ties by index
            relevant = np.take_along_axis(true, order, axis=1)
            r = true.sum(axis=1)
            width = int(r.max())
            top = relevant[:, :width].astype(np.float64)
            precision = np.cumsum(top, axis=1) / np.arange(1, width + 1)
            within_r = np.arange(width)[None, :] < r[:, None]
            ap_sum += float(((precision * top * within_r).sum(axis=1) / r).sum())
    if scored == 0:
        raise DataError(f"no query has a true reference (a reference of its label) to find. Received: "
                        f"{len(queries)} queries, {len(references)} references")
    out = {f"recall_at_{k}": hits[k] / scored for k in sorted(set(int(k) for k in ks))}
    out.update(recall_at_1pct=hits[k_percent] / scored, k_at_1pct=k_percent, queries=scored,
               references=len(references), queries_without_match=skipped)
    if map_at_r:
        out["map_at_r"] = ap_sum / scored
    return out


def cross_view_metrics(query_embeddings, reference_embeddings, query_labels, reference_labels, metric: str = "L2",
                       ks=RECALL_KS, map_at_r: bool = True) -> dict:
    """Both directions of `one_direction`: `{"query_to_reference": ..., "reference_to_query": ...}`.

    Example:
        cross_view_metrics(q, r, np.arange(len(q)), np.arange(len(r)))["query_to_reference"]["recall_at_1"]
    """
    return {"query_to_reference": one_direction(query_embeddings, reference_embeddings, query_labels,
                                                reference_labels, metric, ks, map_at_r),
            "reference_to_query": one_direction(reference_embeddings, query_embeddings, reference_labels,
                                                query_labels, metric, ks, map_at_r)}
