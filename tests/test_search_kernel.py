"""The exact search kernel's fast paths against plain references: top k from group maxima and host selection
(both against `tf.math.top_k`, ties to the lower index), the two paths of `search_chunks` against each other
and a NumPy loop, retrieval metrics on the host path, and k-means (both backends) against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from reprlearn.index import search
from reprlearn.metrics import retrieval_metrics
from reprlearn.metrics.clustering import kmeans, kmeans_plus_plus
from tests import reference
from tests.test_index import numpy_search


def score_rows(seed: int, rows: int, n: int, ties: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(rows, n)).astype(np.float32)
    if ties:   # few distinct values, so most scores tie; −0.0 and +0.0 among them
        scores = np.round(scores * 2) / 2
        scores[0, ::3] = -0.0
    return scores


CASES = [(seed, rows, n, k, ties) for seed, (rows, n) in enumerate([(3, 1), (5, 7), (4, 100), (6, 1000), (2, 4099)])
         for k in (1, 2, 5, 37, 300, 4099) if k <= n for ties in (False, True)]


@pytest.mark.parametrize("seed,rows,n,k,ties", CASES)
def test_top_k_by_group_maxima_is_tf_top_k(seed, rows, n, k, ties):
    scores = score_rows(seed, rows, n, ties)
    want_values, want_indices = tf.math.top_k(scores, k)
    values, indices = search.top_k_by_group_maxima(tf.constant(scores), k)   # eagerly; traced in the XLA test
    np.testing.assert_array_equal(indices.numpy(), want_indices.numpy())
    np.testing.assert_array_equal(values.numpy(), want_values.numpy())


@pytest.mark.parametrize("seed,rows,n,k,ties", CASES)
def test_host_selection_is_tf_top_k(seed, rows, n, k, ties):
    scores = score_rows(seed, rows, n, ties)
    want_values, want_indices = tf.math.top_k(scores, k)
    values, indices = search.top_k_rows(scores, k)
    np.testing.assert_array_equal(indices, want_indices.numpy())
    np.testing.assert_array_equal(values, want_values.numpy())


def test_group_maxima_keep_excluded_items_and_infinities_in_order():
    scores = np.array([[1.0, -np.inf, 3.0, -np.inf, 3.0, 0.5, -np.inf, 2.0, 3.0]], np.float32)
    for k in range(1, 10):
        want = tf.math.top_k(scores, k)
        got = search.top_k_by_group_maxima(tf.constant(scores), k)
        np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())
        np.testing.assert_array_equal(search.top_k_rows(scores, k)[1], want[1].numpy())


@pytest.mark.parametrize("jit_compile", [False, True])
def test_group_maxima_in_a_graph_and_under_xla(jit_compile):
    scores = score_rows(0, 8, 5000, ties=True)
    traced = tf.function(lambda s: search.top_k_by_group_maxima(s, 10), jit_compile=jit_compile)
    np.testing.assert_array_equal(traced(tf.constant(scores))[1].numpy(), tf.math.top_k(scores, 10)[1].numpy())


@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
def test_both_paths_of_search_chunks_agree_with_a_numpy_loop(metric, monkeypatch):
    rng = np.random.default_rng(1)
    items = np.round(rng.normal(size=(300, 6)), 1).astype(np.float32)   # rounded: ties in distance
    items[40] = items[10]
    queries = np.concatenate([rng.normal(size=(9, 6)), items[10:11]]).astype(np.float32)
    want, _ = numpy_search(items, queries, 40, metric)
    results = {}
    for path, threshold in (("graph", 10**9), ("host", 1)):
        monkeypatch.setattr(search, "HOST_SELECTION_K", threshold)
        results[path] = [list(search.search_chunks(items, 40, metric, queries=queries, chunk_size=4)),
                         list(search.search_chunks(items, 299, metric, chunk_size=64))]
    for (_, d_graph, i_graph), (_, d_host, i_host) in zip(*(sum(results[p], []) for p in ("graph", "host"))):
        np.testing.assert_array_equal(i_host, i_graph)
        np.testing.assert_array_equal(d_host, d_graph)
    # Against the loop, the 40 smallest distances (float noise may reorder near-ties, not change them).
    got = np.concatenate([d for _, d, _ in results["host"][0]])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sample", [64, 16_384])   # top candidates from a sampled bound, or by partition
def test_retrieval_metrics_on_the_host_path_match_the_reference(sample, monkeypatch):
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 240)        # R ≈ 80, past the host threshold set below
    embeddings = (np.eye(8)[labels] + rng.normal(scale=0.5, size=(240, 8))).astype(np.float32)
    monkeypatch.setattr(search, "HOST_SELECTION_K", 16)
    monkeypatch.setattr(search, "THRESHOLD_SAMPLE", sample)
    for metric in ("L2", "angular"):
        got = retrieval_metrics(embeddings, labels, metric=metric, compute_nmi=False, chunk_size=50)
        want = reference.retrieval(embeddings, labels, metric=metric)
        for key in ("precision_at_1", "r_precision", "map_at_r", "recall_at_4"):
            assert got[key] == pytest.approx(want[key], abs=1e-6), key
        assert 0.3 < got["map_at_r"] < 0.95   # neither trivial nor hopeless, so a wrong rank would show


def test_descending_order_is_a_stable_sort_from_largest_to_smallest():
    rng = np.random.default_rng(4)
    values = np.concatenate([rng.normal(scale=10.0 ** rng.integers(-30, 30, 500)), np.round(rng.normal(size=500), 1),
                             [0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.4e38, -3.4e38] * 3]).astype(np.float32)
    rng.shuffle(values)
    want = np.lexsort((np.arange(len(values)), -values.astype(np.float64)))   # by value descending, then position
    np.testing.assert_array_equal(search.descending_order(values), want)
    np.testing.assert_array_equal(search.descending_order(values[:0]), np.empty(0, np.int64))


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_top_candidates_hold_the_top_k_whichever_branch_finds_them(seed, ties, monkeypatch):
    monkeypatch.setattr(search, "THRESHOLD_SAMPLE", 64)      # the sampled bound from rows of 128 on
    rng = np.random.default_rng(seed)
    sampled = 0
    for n, wanted in ((100, 7), (2000, 1), (2000, 150), (2000, 1999), (5000, 600)):
        line = score_rows(seed, 1, n, ties)[0]
        got = search.top_candidates(line, wanted)
        want = tf.math.top_k(line[None], wanted)[1].numpy()[0]
        assert set(want) <= set(got.tolist()) and np.all(np.diff(got) > 0)
        # Every score at or above the lowest returned (no item ranked before a candidate is left out) ...
        np.testing.assert_array_equal(got, np.flatnonzero(line >= line[got].min()))
        kth_count = np.count_nonzero(line >= np.sort(line)[n - wanted])
        sampled += len(got) > kth_count                         # ... more than the top k only from the sample
        if not ties:   # (with a few distinct values, all the scores equal to the bound come too)
            assert len(got) < kth_count + n // 4
    assert sampled >= 2
    # A row whose sampled positions hold its largest scores: the bound is too high, so the row is partitioned.
    line = rng.normal(size=4096).astype(np.float32)
    line[::64] = 100.0 + np.arange(64)
    got = search.top_candidates(line, 500)
    np.testing.assert_array_equal(np.sort(got), np.sort(np.argsort(-line, kind="stable")[:500]))


@pytest.mark.parametrize("metric", ["L2", "angular"])
def test_retrieval_metrics_from_positive_ranks_equal_the_top_k_path(metric, monkeypatch):
    rng = np.random.default_rng(8)
    labels = np.repeat(np.arange(4), [200, 150, 90, 3])
    rng.shuffle(labels)
    # Rounded to one decimal in 4 dimensions: many positives tie with negatives (the (score, index) branch).
    embeddings = np.round(np.eye(4)[labels] + rng.normal(scale=0.6, size=(443, 4)), 1).astype(np.float32)
    embeddings[17] = embeddings[3]
    query_index = rng.choice(443, 300, replace=False)
    results = {}
    for path, threshold, sample in (("top k", 10**9, 16_384), ("ranks", 1, 64), ("ranks, partitioned", 1, 10**6)):
        monkeypatch.setattr(search, "HOST_SELECTION_K", threshold)
        monkeypatch.setattr(search, "THRESHOLD_SAMPLE", sample)
        results[path] = [retrieval_metrics(embeddings, labels, metric=metric, ks=(1, 4, 300), compute_nmi=False,
                                           chunk_size=70, query_index=rows) for rows in (None, query_index)]
    for path in ("ranks", "ranks, partitioned"):
        for got, want in zip(results[path], results["top k"]):
            assert got.keys() == want.keys()
            for key in want:   # the top-k path sums MAP@R's precisions in float32, this one in float64
                assert got[key] == pytest.approx(want[key], abs=1e-7 if key == "map_at_r" else 1e-12), (path, key)
    # (Against the NumPy loop on untied data: the test above; here float noise in its distances reorders ties.)
    assert 0.3 < results["ranks"][0]["map_at_r"] < 0.9


def test_kmeans_plus_plus_picks_distinct_rows_and_repeats_with_its_seed():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    centres = kmeans_plus_plus(x, 10, np.random.default_rng(4))
    rows = [int(np.flatnonzero(np.all(x == c, axis=1))[0]) for c in centres]
    assert len(set(rows)) == 10
    np.testing.assert_array_equal(kmeans_plus_plus(x, 10, np.random.default_rng(4)), centres)
    # Two far blobs and k = 2: D² sampling takes one centre from each.
    blobs = np.concatenate([rng.normal(size=(50, 2)), rng.normal(size=(50, 2)) + 100]).astype(np.float32)
    assert sorted(np.round(kmeans_plus_plus(blobs, 2, np.random.default_rng(1))[:, 0] / 100)) == [0.0, 1.0]
    # Fewer distinct points than k: the draws fall back to any item.
    assert kmeans_plus_plus(np.zeros((5, 2), np.float32), 3, rng).shape == (3, 2)


@pytest.mark.parametrize("backend", ["tensorflow", "faiss"])
def test_kmeans_nmi_within_0_005_of_scikit_learn(backend):
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    if backend == "faiss":
        pytest.importorskip("faiss", reason="faiss is in the dev extra; without it only the TensorFlow backend runs")
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(30, 16))
    labels = rng.integers(0, 30, 3000)
    x = (centres[labels] + rng.normal(scale=0.9, size=(3000, 16))).astype(np.float32)
    ours = [normalized_mutual_info_score(labels, kmeans(x, 30, seed, backend=backend)) for seed in range(3)]
    theirs = [normalized_mutual_info_score(labels, KMeans(30, n_init=1, random_state=seed).fit_predict(x))
              for seed in range(3)]
    assert 0.6 < np.mean(theirs) < 0.99     # local optima matter here, so the comparison can fail
    assert np.mean(ours) >= np.mean(theirs) - 0.005


def test_kmeans_backends_agree_and_refuse_bad_arguments():
    pytest.importorskip("faiss", reason="faiss is in the dev extra")
    rng = np.random.default_rng(3)
    x = (np.repeat(rng.normal(size=(6, 4)) * 10, 40, axis=0) + rng.normal(size=(240, 4))).astype(np.float32)
    tensorflow_clusters, faiss_clusters = kmeans(x, 6, backend="tensorflow"), kmeans(x, 6, backend="faiss")
    np.testing.assert_array_equal(tensorflow_clusters, faiss_clusters)
    assert len(np.unique(tensorflow_clusters)) == 6
    with pytest.raises(ValueError, match="k=7"):
        kmeans(x[:6], 7)
    with pytest.raises(ValueError, match="backend='sklearn'"):
        kmeans(x, 2, backend="sklearn")


def test_drop_excluded_keeps_the_order_of_the_others():
    values = tf.constant([[5.0, 4.0, 4.0, 3.0], [5.0, 4.0, 4.0, 3.0], [5.0, 4.0, 4.0, 3.0]])
    indices = tf.constant([[7, 2, 9, 1], [7, 2, 9, 1], [7, 2, 9, 1]], tf.int64)
    kept_values, kept = search.drop_excluded(values, indices, tf.constant([7, 9, 3], tf.int64))
    # Row 0 drops its first entry, row 1 its third, row 2 (item 3 absent) its last.
    assert kept.numpy().tolist() == [[2, 9, 1], [7, 2, 1], [7, 2, 9]]
    assert kept_values.numpy().tolist() == [[4.0, 4.0, 3.0], [5.0, 4.0, 3.0], [5.0, 4.0, 4.0]]


def test_host_selection_drops_the_excluded_item_as_the_graph_does():
    scores = score_rows(7, 6, 300, ties=True)
    excluded = np.array([0, 5, 299, 17, 17, 150])
    want = search.drop_excluded(*tf.math.top_k(scores, 11), tf.constant(excluded))
    got = search.top_k_rows(scores, 10, excluded)
    np.testing.assert_array_equal(got[1], want[1].numpy())
    np.testing.assert_array_equal(got[0], want[0].numpy())


@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
def test_a_prepared_reference_searches_exactly_as_the_array(metric):
    rng = np.random.default_rng(11)
    items, queries = rng.normal(size=(700, 12)).astype(np.float32), rng.normal(size=(90, 12)).astype(np.float32)
    prepared = search.search_reference(items, metric)
    for (rows_a, dist_a, idx_a), (rows_b, dist_b, idx_b) in zip(
            search.search_chunks(prepared, 7, metric, queries=queries, chunk_size=40),
            search.search_chunks(items, 7, metric, queries=queries, chunk_size=40)):
        np.testing.assert_array_equal(rows_a, rows_b)
        np.testing.assert_array_equal(dist_a, dist_b)
        np.testing.assert_array_equal(idx_a, idx_b)
    with pytest.raises(ValueError, match="with queries"):
        search.search_chunks(prepared, 7, metric)
    other = "angular" if metric != "angular" else "L2"
    with pytest.raises(ValueError, match=f"metric={other!r}"):
        search.search_chunks(prepared, 7, other, queries=queries)


def test_a_gallery_searched_then_changed_finds_its_new_items_and_not_its_removed_ones():
    from reprlearn.index import Gallery

    rng = np.random.default_rng(12)
    gallery = Gallery("L2")
    gallery.add(rng.normal(size=(300, 8)).astype(np.float32), np.zeros(300, np.int64))
    probe = np.full((1, 8), 9.0, np.float32)
    assert gallery.search(probe, 1)[1][0, 0] != 300  # nothing near the probe yet (the items are cached now)
    gallery.add(probe + 0.01, [1], ["near"])
    distances, indices = gallery.search(probe, 1)
    # q·e − ½‖e‖² in float32 at ‖e‖² ≈ 650 leaves ~1e-4 on d² (the kernel's documented cancellation)
    assert indices[0, 0] == 300 and distances[0, 0] == pytest.approx(0.01 * np.sqrt(8), abs=1e-3)
    gallery.remove(["near"])
    assert gallery.neighbours(probe, 1)[2][0, 0] != "near"


@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
@pytest.mark.parametrize("k", [1, 7, 100])
def test_the_search_block_by_block_finds_what_whole_rows_find(metric, k, monkeypatch):
    # integer coordinates: many exact ties, whose order (lower index first) must survive the running merge
    rng = np.random.default_rng(13)
    items = rng.integers(-3, 4, size=(1000, 4)).astype(np.float32)
    queries = rng.integers(-3, 4, size=(130, 4)).astype(np.float32)
    whole = list(search.search_chunks(items, k, metric, queries=queries))
    whole_self = list(search.search_chunks(items, k, metric, query_rows=np.arange(0, 1000, 7)))
    monkeypatch.setattr(search, "BLOCKED_FROM", 500)
    monkeypatch.setattr(search, "BLOCK_ITEMS", 64)   # 16 blocks, the last of 40 items; k = 100 spans blocks
    monkeypatch.setattr(search, "BLOCK_QUERIES", 50)
    for want, got in ((whole, list(search.search_chunks(items, k, metric, queries=queries))),
                      (whole_self, list(search.search_chunks(items, k, metric, query_rows=np.arange(0, 1000, 7))))):
        assert len(got) == 3  # the blocked path ran, 50 queries a chunk
        rows = np.concatenate([r for r, _, _ in got])
        np.testing.assert_array_equal(rows, np.concatenate([r for r, _, _ in want]))
        got_items, want_items = np.concatenate([i for _, _, i in got]), np.concatenate([i for _, _, i in want])
        want_distances = np.concatenate([d for _, d, _ in want])
        np.testing.assert_allclose(np.concatenate([d for _, d, _ in got]), want_distances, rtol=1e-6, atol=1e-6)
        tied = np.zeros(want_items.shape, bool)
        if metric == "angular":
            # Collinear integer vectors tie exactly only in exact arithmetic: after normalising, their cosines may
            # differ by an ulp either way depending on the product's blocking, so their order is not pinned.
            close = np.abs(np.diff(want_distances, axis=1)) <= 1e-6
            tied[:, 1:] |= close
            tied[:, :-1] |= close
            tied |= np.abs(want_distances - want_distances[:, -1:]) <= 1e-6   # a tie across the k-th place
        np.testing.assert_array_equal(got_items[~tied], want_items[~tied])
