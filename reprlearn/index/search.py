"""The exact k-nearest-neighbour kernel every search in reprlearn uses: galleries and retrieval metrics.

Queries are scored against every reference item in chunks (a matrix product), the top k of each
chunk's scores are kept, and the chunk is dropped before the next, so memory is
O(chunk × N + Q × k), never Q × N. Ranking is exact for the metric; ties go to the lower index,
as `tf.math.top_k` breaks them.

The top k of a row is found without scanning it with `tf.math.top_k`, which costs ~3 ns an element
on CPU where a maximum costs ~0.2: the row is cut into groups of g, the k groups with the largest
maxima are kept (they hold the row's top k, see `top_k_by_group_maxima`), and only their k·g
scores are ranked. Past `HOST_SELECTION_K` neighbours, where that no longer pays, rows are ranked on
the host on every core (`top_k_rows`): a bound on each row's k-th score is read from a strided sample
of it (or the score itself found by `numpy.partition`), and only the scores above it are sorted.

Example:
    for rows, distances, indices in search_chunks(gallery, k=5, queries=probe):
        ...   # rows: the probe rows of this chunk; [chunk, 5] distances and gallery indices, nearest first
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from reprlearn.errors import GalleryError
from reprlearn.ops.distances import METRICS, canonical_metric

# Scores per chunk: chunk × N float32 values kept under about 128 MB.
_CHUNK_VALUES = 1 << 25
# From this many neighbours on, rows are ranked by selection on the host: at N = 10^5 the graph path was
# faster up to k = 512 (180 vs 211 ms a chunk), host selection from k = 1,024 (183 vs 256 ms).
HOST_SELECTION_K = 768
# Items from which a search goes block by block (`nearest_in_blocks`): BLOCK_QUERIES × BLOCK_ITEMS scores at
# a time (64 MB). At 10^6 × 128, 1,000 queries: 0.87 s against 2.15 s by whole rows (faiss flat 1.34 s); at
# 2 × 10^5, 0.93 against 1.1 s; at 10^5 whole rows are as fast (benchmarks/search.py).
BLOCKED_FROM, BLOCK_QUERIES, BLOCK_ITEMS = 131_072, 1_024, 16_384
# Beam of an HNSW search (faiss' efSearch, Milvus' ef), at least 2k: recall@10 0.96 at 10^5 × 128 in
# benchmarks/search.py, where faiss' default 16 loses much more.
HNSW_EF_SEARCH = 128
# Host selection bounds each row's k-th score from an evenly strided sample of about this many scores (rows of
# at least twice as many): `numpy.partition` of a 2 × 10^5 row costs 1.3 ms, a comparison pass 0.1 ms.
# A larger sample bounds tighter (fewer extra candidates to sort) but costs more to partition; 4,096 was as
# fast as 2,048 and 8,192 at 10^5 items, k = 10^3, and at 2 × 10^5, k = 2 × 10^4.
THRESHOLD_SAMPLE, SAMPLE_MARGIN = 4_096, 4.0
# Largest group: past it the k·g candidates cost more than the maxima save (measured at N = 10^5, k = 1-100).
_MAX_GROUP = 32


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


class SearchReference(NamedTuple):
    """Items as the kernel searches them (unit rows for angular) and their squared norms, as tensors: made
    once by `search_reference`, so a gallery searched again and again does not convert its items each time."""
    items: tf.Tensor
    squared_norms: tf.Tensor
    metric: str


def search_reference(reference, metric: str) -> SearchReference:
    """`[N, d]` items prepared for `search_chunks(prepared, k, metric, queries=...)`."""
    metric = canonical_metric(metric)
    items, squared_norms = prepare_reference(reference, metric)
    return SearchReference(tf.constant(items), tf.constant(squared_norms), metric)


def top_k_by_group_maxima(scores, k):
    """`tf.math.top_k(scores, k)` (values and indices, ties to the lower index), found from group maxima.

    Each row is cut into groups of g consecutive scores. An element of the row's top k lies in one of
    the k groups with the largest maxima (ties to the lower group): were its group not among them,
    those k groups' maxima would be k elements ranked before it. So only those groups' k·g scores
    are ranked, taken in index order so that ties still go to the lower index.

    Args:
        scores: `[rows, n]` float32, higher = nearer.
        k: scalar int, 1 <= k <= n.

    Returns:
        `(values [rows, k], indices [rows, k] int32)`, as `tf.math.top_k(scores, k, sorted=True)`.
    """
    rows, n = tf.shape(scores)[0], tf.shape(scores)[1]
    k = tf.convert_to_tensor(k, tf.int32)
    group = tf.clip_by_value(tf.cast(tf.sqrt(tf.cast(n, tf.float32) / tf.cast(k, tf.float32)), tf.int32),
                             1, _MAX_GROUP)

    def from_groups():
        groups = (n + group - 1) // group
        padded = tf.pad(scores, [[0, 0], [0, groups * group - n]], constant_values=-np.inf)
        grouped = tf.reshape(padded, [rows, groups, group])
        _, best_groups = tf.math.top_k(tf.reduce_max(grouped, axis=2), k)
        best_groups = tf.sort(best_groups, axis=1)
        candidates = tf.reshape(tf.gather(grouped, best_groups, batch_dims=1), [rows, k * group])
        values, positions = tf.math.top_k(candidates, k)
        return values, tf.gather(best_groups, positions // group, batch_dims=1) * group + positions % group

    # Groups of one (k close to n) would only rank every score twice.
    return tf.cond(group > 1, from_groups, lambda: tuple(tf.math.top_k(scores, k)))


def query_scores(queries, reference, squared_norms, metric: str) -> tuple[tf.Tensor, tf.Tensor]:
    """`(queries as compared, scores [Q, N])`, higher = nearer: the kernel's one formula, also served by SavedModels.

    `reference` and `squared_norms` come from `prepare_reference`. For L2 the score is
    q·e − ||e||²/2 = (||q||² − ||q − e||²)/2: the term constant per query is added back only to turn
    scores into distances (`score_distances`).
    """
    queries = compared_queries(queries, metric)
    return queries, item_scores(queries, reference, squared_norms, metric)


def compared_queries(queries, metric: str):
    """Queries as the kernel compares them: float32, unit rows for angular."""
    queries = tf.cast(queries, tf.float32)
    return unit_rows(queries) if metric == "angular" else queries


def item_scores(queries, reference, squared_norms, metric: str, transposed: bool = False):
    """`[Q, N]` scores of compared queries against (prepared) items: q·e, less ||e||²/2 unless angular.

    `transposed`: `reference` is given as `[d, N]` (the same scores, bit for bit; the product of many
    chunks against one reference is ~20% faster from that layout on CPU).
    """
    scores = tf.matmul(queries, reference, transpose_b=not transposed)
    return scores if metric == "angular" else scores - 0.5 * squared_norms[None, :]


def engine_distances(scores: np.ndarray, metric: str) -> np.ndarray:
    """Distances in `metric` from what faiss and Milvus return: the inner product of unit rows for angular,
    the squared L2 distance otherwise."""
    if metric == "angular":
        distances = np.maximum(1.0 - scores, 0.0)
    else:
        distances = np.maximum(scores, 0.0) if metric == "squared-L2" else np.sqrt(np.maximum(scores, 0.0))
    return distances.astype(np.float32)


def score_distances(queries, top_scores, metric: str):
    """Distances in `metric` of the scores `query_scores` gave (queries as it returned them)."""
    if metric == "angular":
        return tf.maximum(1.0 - top_scores, 0.0)
    squared = tf.maximum(tf.reduce_sum(tf.square(queries), axis=1, keepdims=True) - 2.0 * top_scores, 0.0)
    return tf.sqrt(squared) if metric == "L2" else squared


def drop_excluded(values, indices, excluded):
    """The k best of each row's k + 1 (`values`, `indices` [Q, k + 1], best first) other than item `excluded[q]`.

    Removing one item from a ranking leaves the others in order, so this is the top k of the row with
    that item left out: it is dropped where it appears, else the (k + 1)-th is. No score is overwritten,
    so the score matrix is never copied.
    """
    indices = tf.cast(indices, tf.int64)
    is_excluded = tf.equal(indices, tf.cast(excluded, tf.int64)[:, None])
    width = tf.shape(indices)[1]
    dropped = tf.where(tf.reduce_any(is_excluded, axis=1),
                       tf.argmax(tf.cast(is_excluded, tf.int32), axis=1, output_type=tf.int32), width - 1)
    slots = tf.range(width - 1)[None, :]
    kept = slots + tf.cast(slots >= dropped[:, None], tf.int32)
    return tf.gather(values, kept, batch_dims=1), tf.gather(indices, kept, batch_dims=1)


def nearest(queries, reference, squared_norms, k, metric: str, excluded=None) -> tuple[tf.Tensor, tf.Tensor]:
    """`(distances [Q, k], indices [Q, k])` in TensorFlow, nearest first: what SavedModels serve.

    Arguments as `query_scores`; `excluded[q]`, if given, is an item query q may not match (itself, in
    a self-search), and then k < N.
    """
    queries, scores = query_scores(queries, reference, squared_norms, metric)
    if excluded is None:
        top, indices = top_k_by_group_maxima(scores, k)
    else:
        top, indices = drop_excluded(*top_k_by_group_maxima(scores, k + 1), excluded)
    return score_distances(queries, top, metric), indices


def nearest_in_blocks(queries, reference, squared_norms, k, metric: str, block,
                      excluded=None) -> tuple[tf.Tensor, tf.Tensor]:
    """`nearest` with the items taken `block` at a time and a running merge of each block's k best.

    The scores of one block stay small enough to be ranked while still in cache, and a chunk of many
    queries reads the items once. Exact, with the same ties (lower index first): the running best come
    before the block's in each merge, and `top_k` keeps the earlier of equal values.
    """
    queries = compared_queries(queries, metric)
    n = tf.shape(reference)[0]

    def merge(start, best_values, best_indices):
        stop = tf.minimum(start + block, n)
        scores = item_scores(queries, reference[start:stop], squared_norms[start:stop], metric)
        values, indices = top_k_by_group_maxima(scores, tf.minimum(wanted, stop - start))
        values = tf.concat([best_values, values], axis=1)
        indices = tf.concat([best_indices, indices + start], axis=1)
        top, positions = tf.math.top_k(values, tf.minimum(wanted, tf.shape(values)[1]))
        return stop, top, tf.gather(indices, positions, batch_dims=1)

    rows, wanted = tf.shape(queries)[0], k if excluded is None else k + 1
    _, top, indices = tf.while_loop(
        lambda start, *_: start < n, merge,
        (tf.constant(0), tf.zeros([rows, 0], tf.float32), tf.zeros([rows, 0], tf.int32)),
        shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None]), tf.TensorShape([None, None])))
    if excluded is not None:
        top, indices = drop_excluded(top, indices, excluded)
    return score_distances(queries, top, metric), indices


def descending_order(values: np.ndarray) -> np.ndarray:
    """Positions of the float32 `values` from largest to smallest, equal values (−0 and +0 too) in their given
    order: a stable radix sort, 16 bits at a time (0.49 ms for 22,000 values where numpy's sort of
    (value, position) keys takes 0.75).

    With the values of ascending indices, ties go to the lower index, as `tf.math.top_k` breaks them.
    """
    bits = (values + np.float32(0.0)).view(np.uint32)   # + 0 turns −0 into +0: equal scores, equal keys
    negative = (bits.view(np.int32) >> 31).view(np.uint32)   # all ones where the sign bit is set
    # Unsigned keys ascending as the values descend: positives' 31 lower bits flipped, negatives' kept.
    keys = bits ^ (~negative & np.uint32(0x7FFFFFFF))
    by_low = np.argsort(keys.astype(np.uint16), kind="stable")    # numpy radix-sorts 16-bit integers
    return by_low[np.argsort((keys >> np.uint32(16)).astype(np.uint16)[by_low], kind="stable")]


def top_candidates(line: np.ndarray, wanted: int) -> np.ndarray:
    """Indices (ascending) of the scores of `line` at or above a bound on its `wanted`-th largest: its top
    `wanted` (ties included) and a few more, found in about one comparison pass.

    The bound is read from an evenly strided sample of the row, `SAMPLE_MARGIN` binomial standard deviations
    below where the `wanted`-th largest is expected; if fewer than `wanted` scores reach it (about once in
    30,000 rows), or the row is shorter than 2 × `THRESHOLD_SAMPLE`, the `wanted`-th largest itself is found
    by `numpy.partition`. At least `wanted` scores are >= the bound, so the `wanted`-th largest is too, and
    every item of the top `wanted` is returned, whatever the row: the sample only decides how many more
    (about 19% more at N = 2 × 10^5, `wanted` = 2 × 10^4; 60% at N = 10^5, `wanted` = 10^3).
    """
    n = len(line)
    stride = n // THRESHOLD_SAMPLE
    if stride >= 2:
        sample = line[::stride]
        share = wanted / n
        expected_above = share * len(sample)
        position = int(expected_above + SAMPLE_MARGIN * np.sqrt(expected_above * (1.0 - share)) + 1)
        if position < len(sample):
            bound = np.partition(sample, len(sample) - 1 - position)[len(sample) - 1 - position]
            candidates = np.flatnonzero(line >= bound)
            if len(candidates) >= wanted:
                return candidates
    return np.flatnonzero(line >= np.partition(line, n - wanted)[n - wanted])


def top_k_rows(scores: np.ndarray, k: int, excluded: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(values [rows, k], indices [rows, k] int64)` as `tf.math.top_k`, by selection on every core.

    Each row's candidates (`top_candidates`: its top k and a few more, in about one pass, by ascending
    index) are sorted by score descending, ties kept in index order (`descending_order`), and the first k kept.
    `excluded[row]`, if given, is an item that row may not match: its k + 1 best are kept and that item
    dropped, or the last (as `drop_excluded`).
    """
    rows = scores.shape[0]
    wanted = k if excluded is None else k + 1
    values = np.empty((rows, k), np.float32)
    indices = np.empty((rows, k), np.int64)

    def rank(start: int, stop: int) -> None:
        for row in range(start, stop):
            line = scores[row]
            candidates = top_candidates(line, wanted)
            best = candidates[descending_order(line[candidates])[:wanted]]
            if excluded is not None:
                hit = np.flatnonzero(best == excluded[row])
                best = np.delete(best, hit[0] if len(hit) else k)
            indices[row] = best
            values[row] = line[best]

    on_every_core(rows, rank)
    return values, indices


def on_every_core(rows: int, work: Callable[[int, int], None]) -> None:
    """Calls `work(start, stop)` once per core, in threads, on consecutive slices covering `range(rows)`:
    numpy releases the GIL in its partitions, comparisons and sorts (1.5–1.9× on 2 cores)."""
    workers = max(1, min(os.cpu_count() or 1, rows))
    bounds = np.linspace(0, rows, workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, bounds[:-1], bounds[1:]))


_CHUNK_SIGNATURE = (tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.float32),
                    tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.int32))
# One graph per metric, for any sizes: scoring many sets (embeddings, pixels, PCA) never retraces.
_NEAREST_CHUNK = {metric: tf.function(lambda q, r, n, k, metric=metric: nearest(q, r, n, k, metric),
                                      input_signature=_CHUNK_SIGNATURE[:3] + _CHUNK_SIGNATURE[4:])
                  for metric in METRICS}
_NEAREST_OTHER_CHUNK = {metric: tf.function(lambda q, r, n, x, k, metric=metric: nearest(q, r, n, k, metric, x),
                                            input_signature=_CHUNK_SIGNATURE) for metric in METRICS}
_BLOCKED_SIGNATURE = _CHUNK_SIGNATURE + (tf.TensorSpec([], tf.int32),)
_NEAREST_IN_BLOCKS = {metric: tf.function(lambda q, r, n, k, b, metric=metric: nearest_in_blocks(q, r, n, k, metric, b),
                                          input_signature=_BLOCKED_SIGNATURE[:3] + _BLOCKED_SIGNATURE[4:])
                      for metric in METRICS}
_NEAREST_OTHER_IN_BLOCKS = {
    metric: tf.function(lambda q, r, n, x, k, b, metric=metric: nearest_in_blocks(q, r, n, k, metric, b, x),
                        input_signature=_BLOCKED_SIGNATURE) for metric in METRICS}
_SCORES_CHUNK = {metric: tf.function(lambda q, r, n, metric=metric: query_scores(q, r, n, metric),
                                     input_signature=_CHUNK_SIGNATURE[:3]) for metric in METRICS}
_SELF_SCORES_CHUNK = {metric: tf.function(
    lambda q, r, n, metric=metric: item_scores(compared_queries(q, metric), r, n, metric, transposed=True),
    input_signature=_CHUNK_SIGNATURE[:3]) for metric in METRICS}
_SCORE_DISTANCES = {metric: tf.function(lambda q, s, metric=metric: score_distances(q, s, metric),
                                        input_signature=_CHUNK_SIGNATURE[:2]) for metric in METRICS}


def _nearest_chunk(queries, reference, squared_norms, excluded, k: int, metric: str, blocked: bool = False):
    """`(distances, indices)` as NumPy: in the graph for small k (`blocked`: item block by item block), by
    host selection from `HOST_SELECTION_K` on.

    `excluded`: `[c]` item each query may not match (a self-search), or None.
    """
    if blocked:
        block = tf.constant(BLOCK_ITEMS)
        if excluded is None:
            distances, indices = _NEAREST_IN_BLOCKS[metric](queries, reference, squared_norms, tf.constant(k), block)
        else:
            distances, indices = _NEAREST_OTHER_IN_BLOCKS[metric](queries, reference, squared_norms, excluded,
                                                                  tf.constant(k), block)
        return distances.numpy(), indices.numpy().astype(np.int64)
    if k < HOST_SELECTION_K:
        if excluded is None:
            distances, indices = _NEAREST_CHUNK[metric](queries, reference, squared_norms, tf.constant(k))
        else:
            distances, indices = _NEAREST_OTHER_CHUNK[metric](queries, reference, squared_norms, excluded,
                                                              tf.constant(k))
        return distances.numpy(), indices.numpy().astype(np.int64)
    compared, scores = _SCORES_CHUNK[metric](queries, reference, squared_norms)
    top, indices = top_k_rows(scores.numpy(), k, None if excluded is None else excluded.numpy())
    return _SCORE_DISTANCES[metric](compared, tf.constant(top)).numpy(), indices


def search_chunks(reference, k: int, metric: str = "L2", queries=None, query_rows=None,
                  chunk_size: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yields `(rows, distances [c, k] float32, indices [c, k] int64)` per chunk of queries, nearest first.

    Args:
        reference: `[N, d]` float items searched, or a `SearchReference` of them (searched with `queries`
            in its metric).
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
    self_search = queries is None
    if isinstance(reference, SearchReference):
        if self_search or reference.metric != metric:
            raise ValueError(f"a SearchReference is searched with queries, in its own metric "
                             f"{reference.metric!r}. Received: metric={metric!r}, queries={queries is not None}")
        prepared = reference
    else:
        reference, squared_norms = prepare_reference(reference, metric)
        prepared = SearchReference(tf.constant(reference), tf.constant(squared_norms), metric)
    n = int(prepared.items.shape[0])
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
    # Past BLOCKED_FROM items a chunk of the usual size holds few queries and reads every item per chunk:
    # take more queries and the items block by block instead.
    blocked = chunk_size is None and n > BLOCKED_FROM and k < HOST_SELECTION_K
    chunk = BLOCK_QUERIES if blocked else chunk
    reference_t, squared_norms_t = prepared.items, prepared.squared_norms

    def scored(rows):
        excluded = tf.constant(rows, tf.int64) if self_search else None
        distances, indices = _nearest_chunk(tf.constant(query_vectors[rows]), reference_t, squared_norms_t,
                                            excluded, k, metric, blocked)
        return rows, distances, indices

    # Checked and set up now; each chunk is scored only when the consumer asks for it.
    return (scored(rows_all[start:start + chunk]) for start in range(0, len(rows_all), chunk))


def for_each_self_score_chunk(items, on_chunk: Callable[[np.ndarray, np.ndarray], None], metric: str = "L2",
                              query_rows=None, chunk_size: int | None = None) -> None:
    """Calls `on_chunk(rows, scores [c, N] float32)` per chunk of items queried against all N (themselves
    included): the scores `search_chunks` ranks (higher = nearer), for a caller that ranks rows its own way.

    Args as `search_chunks` with `queries=None`. The next chunk's product runs in a second thread while
    `on_chunk` ranks the current one (TensorFlow's kernels and numpy's large operations release the GIL):
    0.77× the time of the two in turn at 10^5 items in 100 classes, level at 2 × 10^5 in 10 (medians of 3
    alternating repeats). So that two chunks take the memory one did, a default chunk holds half as many
    scores. Each chunk is dropped once ranked (a callback, not a generator, so no caller holds one longer).
    """
    metric = canonical_metric(metric)
    reference, squared_norms = prepare_reference(items, metric)
    columns, squared_norms_t = tf.constant(np.ascontiguousarray(reference.T)), tf.constant(squared_norms)
    n = len(reference)
    rows_all = np.arange(n) if query_rows is None else np.asarray(query_rows, dtype=np.int64)
    chunk = chunk_size or max(1, _CHUNK_VALUES // 2 // max(n, 1))
    chunks = [rows_all[start:start + chunk] for start in range(0, len(rows_all), chunk)]
    if not chunks:
        return

    def scored(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rows, _SELF_SCORES_CHUNK[metric](tf.constant(reference[rows]), columns, squared_norms_t).numpy()

    with ThreadPoolExecutor(1) as product:
        pending = product.submit(scored, chunks[0])
        for following in [*chunks[1:], None]:
            rows, scores = pending.result()
            pending = product.submit(scored, following) if following is not None else None
            on_chunk(rows, scores)
            del scores   # before the next chunk arrives: two at most
