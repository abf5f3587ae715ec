"""The weighted kNN monitor of self-supervised training (InstDisc, Wu et al. 2018; MoCo): how well the embedding
separates classes it was never told about, without training a classifier.

For each query q: its k nearest bank items by cosine similarity s_i vote `exp(s_i / T)` for their class; the
prediction is the class with the most votes (ties: the lowest class id), and the score is the accuracy.

Example:
    weighted_knn_accuracy(train_embeddings, train_labels, val_embeddings, val_labels, k=200, temperature=0.1)
"""

from __future__ import annotations

import numpy as np

from reprlearn.ops.checks import check_positive_number

# Queries scored at once: a [chunk, bank] similarity matrix at a time.
_CHUNK = 1024


def weighted_knn_accuracy(bank, bank_labels, queries, query_labels, k: int = 200, temperature: float = 0.1) -> float:
    """The accuracy of the weighted kNN vote of `bank` for `queries` (see the module).

    Args:
        bank: `[M, d]` embeddings of labelled images (the training side, not augmented).
        bank_labels: `[M]` int class ids.
        queries: `[N, d]` embeddings to classify (validation images).
        query_labels: `[N]` int class ids.
        k: neighbours that vote (at most M are used).
        temperature: T > 0 in `exp(s / T)`.

    Returns:
        The share of queries whose top-voted class is their own, in [0, 1] (NaN for a non-finite embedding).

    Raises:
        ValueError: an empty bank or query set, labels that do not match their embeddings, or k < 1.
    """
    check_positive_number("temperature", temperature)
    bank, queries = np.asarray(bank, np.float64), np.asarray(queries, np.float64)
    bank_labels, query_labels = np.asarray(bank_labels).reshape(-1), np.asarray(query_labels).reshape(-1)
    if len(bank) == 0 or len(queries) == 0:
        raise ValueError(f"the kNN monitor needs a bank and queries. Received: {len(bank)} bank items, "
                         f"{len(queries)} queries")
    if len(bank_labels) != len(bank) or len(query_labels) != len(queries):
        raise ValueError(f"each embedding needs one label. Received: {len(bank)} bank items with {len(bank_labels)} "
                         f"labels, {len(queries)} queries with {len(query_labels)} labels")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1. Received: k={k!r}")
    if not (np.isfinite(bank).all() and np.isfinite(queries).all()):
        return float("nan")
    classes, bank_ids = np.unique(bank_labels, return_inverse=True)
    k = min(int(k), len(bank))
    bank = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    right = 0
    for start in range(0, len(queries), _CHUNK):
        similarity = queries[start:start + _CHUNK] @ bank.T
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        weights = np.exp(np.take_along_axis(similarity, nearest, axis=1) / temperature)
        votes = np.zeros((len(similarity), len(classes)))
        np.add.at(votes, (np.repeat(np.arange(len(similarity)), k), bank_ids[nearest].reshape(-1)),
                  weights.reshape(-1))
        predicted = classes[np.argmax(votes, axis=1)]
        right += int(np.sum(predicted == query_labels[start:start + _CHUNK]))
    return right / len(queries)
