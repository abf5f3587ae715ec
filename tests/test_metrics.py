import numpy as np
import pytest

from reprlearn.metrics import retrieval_metrics, sample_pairs, verification_metrics
from reprlearn.metrics.retrieval import nearest_neighbours
from reprlearn.metrics.verification import best_threshold, equal_error_rate, roc_auc, roc_curve, tar_at_far
from tests import reference

KEYS = ("precision_at_1", "r_precision", "map_at_r", "recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8")


def _assert_matches_reference(embeddings, labels, metric="L2", **kwargs):
    got = retrieval_metrics(embeddings, labels, metric=metric, compute_nmi=False, **kwargs)
    want = reference.retrieval(embeddings, labels, metric=metric)
    for key in KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key  # float32 per-query sums
    return got


def test_hand_made_example_by_hand():
    # 1-D points. Query 0 (class 0): others sorted by distance are 1 (c0), 2 (c1), 3 (c0).
    emb = np.array([[0.0], [1.0], [1.5], [3.0], [10.0]], np.float32)
    labels = np.array([0, 0, 1, 0, 1])
    got = retrieval_metrics(emb, labels, compute_nmi=False)
    # Per query (R; ranked relevance):
    # q0: R=2, [1,0,1,..] -> AP@R = 1/2 (1/1) = .5, RP = .5, P@1 = 1
    # q1: R=2, others by distance 2 (.5), 0 (1), 3 (2) -> [0,1,1] -> AP@R = (1/2)(1/2) = .25, RP .5, P@1 0
    # q2: R=1, nearest is 1 (c0) -> 0
    # q3: R=2, others by distance 2 (1.5), 1 (2), 0 (3) -> [0,1,1] -> .25, .5, 0
    # q4: R=1, nearest is 3 (c0) -> 0
    assert got["map_at_r"] == pytest.approx((0.5 + 0.25 + 0 + 0.25 + 0) / 5)
    assert got["r_precision"] == pytest.approx((0.5 + 0.5 + 0 + 0.5 + 0) / 5)
    assert got["precision_at_1"] == pytest.approx(1 / 5)
    # Top 2: q0 [1, 2], q1 [2, 0], q2 [1, 0], q3 [2, 1], q4 [3, 2] -> all but q2 hold a match.
    assert got["recall_at_2"] == pytest.approx(4 / 5)
    _assert_matches_reference(emb, labels)


def test_ties_are_broken_by_index():
    # All items identical: every distance ties, so ranks follow the index order.
    emb = np.zeros((6, 3), np.float32)
    labels = np.array([1, 0, 1, 0, 1, 0])
    got = _assert_matches_reference(emb, labels)
    # Every query's nearest is the lowest other index: item 0 (class 1) for q1..q5, item 1 for q0.
    # Matches: q2 and q4 (class 1) only.
    assert got["precision_at_1"] == pytest.approx(2 / 6)


def test_class_of_one_is_skipped_and_query_excluded():
    emb = np.array([[0.0], [0.1], [5.0], [5.1], [9.0]], np.float32)
    labels = np.array([0, 0, 1, 1, 2])  # class 2 has one item: no R, skipped
    got = _assert_matches_reference(emb, labels)
    assert got["num_queries"] == 4
    assert got["map_at_r"] == pytest.approx(1.0)  # the query itself (distance 0) is never counted


def test_random_inputs_match_reference_in_every_metric_and_chunking():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(60, 4)).astype(np.float32)
    labels = rng.integers(0, 5, 60)
    for metric in ("L2", "squared-L2", "angular"):
        _assert_matches_reference(emb, labels, metric=metric, chunk_size=7)
    whole = retrieval_metrics(emb, labels, compute_nmi=False)
    chunked = retrieval_metrics(emb, labels, compute_nmi=False, chunk_size=1)
    assert whole == pytest.approx(chunked, abs=1e-7)


def test_nmi_is_one_for_separated_clusters_and_low_for_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)
    separated = np.eye(4)[labels] * 10 + rng.normal(scale=0.1, size=(100, 4))
    assert retrieval_metrics(separated, labels)["nmi"] == pytest.approx(1.0)
    assert retrieval_metrics(rng.normal(size=(100, 4)), labels)["nmi"] < 0.3


def test_nearest_neighbours_for_chosen_queries():
    emb = np.array([[0.0], [1.0], [3.0], [3.5]], np.float32)
    assert nearest_neighbours(emb, 2, query_index=[2, 0]).tolist() == [[3, 1], [1, 2]]


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="labels.shape"):
        retrieval_metrics(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        retrieval_metrics(np.full((4, 2), np.nan), np.zeros(4))
    with pytest.raises(ValueError, match="metric"):
        retrieval_metrics(np.zeros((4, 2)), np.zeros(4), metric="cosin")
    with pytest.raises(ValueError, match="no query"):
        retrieval_metrics(np.zeros((3, 2)), np.arange(3))


# --- verification -------------------------------------------------------------------

D = np.array([0.1, 0.2, 0.2, 0.4, 0.5, 0.5, 0.7, 0.9, 0.3, 0.6])
M = np.array([1, 1, 0, 1, 0, 1, 0, 0, 1, 0], bool)


def test_roc_and_auc_match_loop_reference_with_ties():
    far, tar, _ = roc_curve(D, M)
    np.testing.assert_allclose(np.stack([far, tar], 1), np.array(reference.roc_points(list(D), list(M))))
    assert roc_auc(D, M) == pytest.approx(reference.auc_mann_whitney(list(D), list(M)))


def test_tar_at_far_and_best_accuracy_match_reference():
    for target in (0.0, 0.2, 0.5):
        assert tar_at_far(D, M, target) == pytest.approx(reference.tar_at_far(list(D), list(M), target))
    threshold, accuracy = best_threshold(D, M)
    assert accuracy == pytest.approx(reference.best_accuracy(list(D), list(M)))
    assert np.mean((D <= threshold) == M) == pytest.approx(accuracy)


def test_eer_on_a_symmetric_example():
    # Perfectly separable: EER 0. Reversed: EER 1. Interleaved 1-D example: EER 0.5.
    assert equal_error_rate([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == pytest.approx(0.0)
    assert equal_error_rate([0.8, 0.9, 0.1, 0.2], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert equal_error_rate([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 0]) == pytest.approx(0.5)


def test_verification_metrics_score_a_threshold_calibrated_on_other_pairs():
    rng = np.random.default_rng(0)
    match = rng.random(400) < 0.5
    distances = np.where(match, rng.normal(0.3, 0.1, 400), rng.normal(0.8, 0.1, 400))
    threshold, _ = best_threshold(distances[:200], match[:200])
    out = verification_metrics(distances[200:], match[200:], threshold)
    assert out["threshold"] == threshold and 0.4 < threshold < 0.7
    held = distances[200:] <= threshold
    assert out["accuracy"] == pytest.approx(np.mean(held == match[200:]))
    assert out["far"] == pytest.approx(held[~match[200:]].mean())
    assert out["frr"] == pytest.approx(1 - held[match[200:]].mean())
    assert out["roc_auc"] > 0.99 and out["eer"] < 0.05
    assert "threshold" not in verification_metrics(distances, match)


def test_verification_rejects_one_sided_pairs():
    with pytest.raises(ValueError, match="both matching and non-matching"):
        verification_metrics([0.1, 0.2], [1, 1])


def test_sample_pairs_are_balanced_and_correct():
    labels = np.array([0, 0, 0, 1, 1, 2])
    first, second, match = sample_pairs(labels, 200, seed=1)
    assert match.sum() == 100
    assert np.all((labels[first] == labels[second]) == match)
    assert np.all(first[match] != second[match])


@pytest.mark.slow
def test_retrieval_memory_is_chunk_by_n_not_n_by_r():
    # N = 200,000 items in 10 classes: R = 19,999 per query. An [N, max R] array alone would be 32 GB; each
    # chunk of queries is reduced before the next, so the peak stays near the chunk × N score block.
    # 400 random queries (each ranked against all N items) keep the test short; the per-chunk memory is the same.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import numpy as np
        from reprlearn.metrics import retrieval_metrics
        n = 200_000
        rng = np.random.default_rng(0)
        labels = np.repeat(np.arange(10), n // 10)
        embeddings = (rng.normal(size=(n, 4)) + labels[:, None] * 0.5).astype(np.float32)
        m = retrieval_metrics(embeddings, labels, compute_nmi=False, query_index=rng.choice(n, 400, replace=False))
        assert m["num_queries"] == 400 and 0 < m["map_at_r"] < 1
        peak_kb = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
        print(peak_kb)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    peak_gb = int(result.stdout.split()[-1]) / 2 ** 20
    assert peak_gb < 2.0, f"peak {peak_gb:.2f} GB"


def test_query_subset_scores_equal_the_full_run_on_those_queries():
    rng = np.random.default_rng(4)
    emb, labels = rng.normal(size=(60, 3)).astype(np.float32), rng.integers(0, 4, 60)
    subset = np.arange(0, 60, 3)
    got = retrieval_metrics(emb, labels, compute_nmi=False, query_index=subset, chunk_size=7)
    want = reference.retrieval(emb, labels, queries=subset)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-6), name
