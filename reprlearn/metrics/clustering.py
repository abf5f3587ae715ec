"""k-means for the NMI of retrieval metrics: k-means++ seeding, then Lloyd's iterations on every core.

Seeding is scikit-learn's greedy k-means++ (Arthur & Vassilvitskii 2007): each centre is the best of a
few items drawn with probability proportional to the squared distance to the nearest centre so far;
it runs on all items up to `SEEDING_ITEMS`, else on a random subset of that many or
`SEEDING_ITEMS_PER_CLUSTER` per cluster, since the seeding is sequential in k. Lloyd's iterations then run on all items:
faiss' when faiss is installed (the `faiss` extra), otherwise assignments by reprlearn's exact search
kernel (`reprlearn.index.search`) and centre means in TensorFlow. An iteration that moves no item stops
them early; a cluster left empty keeps its centre.

Example:
    assignments = kmeans(embeddings, k=100, seed=0)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from reprlearn.index.search import search_chunks

# Items the sequential seeding sees: all up to SEEDING_ITEMS, else this many per cluster (at least
# SEEDING_ITEMS); Lloyd's iterations see all of them.
SEEDING_ITEMS_PER_CLUSTER = 32
SEEDING_ITEMS = 16384
ITERATIONS = 25


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """`[k, d]` centres drawn from the rows of `x` by greedy D² sampling, as scikit-learn's `kmeans_plus_plus`.

    The first centre is uniform; each next one is the best (lowest summed squared distance to the
    nearest centre) of 2 + ⌊ln k⌋ items drawn with probability proportional to that squared distance.
    """
    trials = 2 + int(np.log(k))
    squared_norms = np.sum(x * x, axis=1)

    def squared_distances(rows: np.ndarray) -> np.ndarray:   # [len(rows), N], by one matrix product
        return np.maximum(squared_norms[rows, None] - 2.0 * (x[rows] @ x.T) + squared_norms[None, :], 0.0)

    picks = [int(rng.integers(len(x)))]
    nearest_squared = squared_distances(np.array(picks))[0]
    for _ in range(1, k):
        total = nearest_squared.sum()
        if total <= 0:   # every item coincides with a centre: any item will do
            candidates = rng.integers(len(x), size=trials)
        else:
            candidates = np.searchsorted(np.cumsum(nearest_squared), rng.random(trials) * total)
            candidates = np.minimum(candidates, len(x) - 1)
        updated = np.minimum(nearest_squared[None, :], squared_distances(candidates))
        best = int(np.argmin(updated.sum(axis=1)))
        picks.append(int(candidates[best]))
        nearest_squared = updated[best]
    return x[picks].astype(np.float32)


def _assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.concatenate([indices[:, 0] for _, _, indices in search_chunks(centres, 1, "squared-L2", queries=x)])


def _lloyd_tensorflow(x: np.ndarray, centres: np.ndarray, iterations: int) -> np.ndarray:
    assignments = _assign(x, centres)
    x_t = tf.constant(x)
    for _ in range(iterations):
        sums = tf.math.unsorted_segment_sum(x_t, assignments, len(centres)).numpy()
        counts = np.bincount(assignments, minlength=len(centres))
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
        moved = _assign(x, centres)
        if np.array_equal(moved, assignments):
            break
        assignments = moved
    return assignments


def _lloyd_faiss(x: np.ndarray, centres: np.ndarray, iterations: int, seed: int) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(x.shape[1], len(centres), niter=iterations, seed=seed, max_points_per_centroid=len(x),
                      min_points_per_centroid=1)
    km.train(x, init_centroids=centres)
    return _assign(x, km.centroids)


def kmeans(embeddings, k: int, seed: int = 0, iterations: int = ITERATIONS, backend: str = "auto") -> np.ndarray:
    """`[N]` cluster of each row of `embeddings` (int64 in [0, k)).

    Args:
        embeddings: `[N, d]` float, N >= k.
        k: clusters.
        seed: seeds the subset and the k-means++ draws (and faiss).
        iterations: most Lloyd's iterations.
        backend: `"faiss"`, `"tensorflow"` or `"auto"` (faiss when installed).

    Returns:
        The index of each row's nearest final centre.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if not 1 <= k <= len(x):
        raise ValueError(f"k must be in [1, {len(x)}] (the number of items). Received: k={k}")
    if backend not in ("auto", "faiss", "tensorflow"):
        raise ValueError(f"backend must be 'auto', 'faiss' or 'tensorflow'. Received: backend={backend!r}")
    rng = np.random.default_rng(seed)
    seeding_items = max(SEEDING_ITEMS, SEEDING_ITEMS_PER_CLUSTER * k)
    subset = x if len(x) <= seeding_items else x[rng.choice(len(x), seeding_items, replace=False)]
    centres = kmeans_plus_plus(subset, k, rng)
    if backend == "auto":
        try:
            import faiss  # noqa: F401
            backend = "faiss"
        except ImportError:
            backend = "tensorflow"
    if backend == "faiss":
        return _lloyd_faiss(x, centres, iterations, seed)
    return _lloyd_tensorflow(x, centres, iterations)
