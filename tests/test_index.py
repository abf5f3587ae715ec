"""Galleries: exact search against a NumPy loop, faiss flat against exact, identify / unknown, calibration, files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from reprlearn.index import UNKNOWN, Gallery, GalleryError
from reprlearn.metrics import retrieval_metrics


def numpy_search(reference, queries, k, metric):
    """Each query's k nearest items by a plain loop: distance, then lower index first."""
    distances, indices = [], []
    for q in queries:
        row = []
        for i, e in enumerate(reference):
            if metric == "angular":
                d = 1.0 - float(np.dot(q, e) / (np.linalg.norm(q) * np.linalg.norm(e)))
            else:
                d = float(np.sum((q - e) ** 2))
                d = d if metric == "squared-L2" else np.sqrt(d)
            row.append((round(d, 4), i, d))  # rounded so float noise cannot reorder exact ties
        row.sort()
        indices.append([i for _, i, _ in row[:k]])
        distances.append([d for _, _, d in row[:k]])
    return np.array(distances), np.array(indices)


rng = np.random.default_rng(0)
REFERENCE = rng.normal(size=(30, 5)).astype(np.float32)
REFERENCE[7] = REFERENCE[3]     # exact duplicates: the tie goes to the lower index
REFERENCE[20] = REFERENCE[3]
QUERIES = np.concatenate([rng.normal(size=(12, 5)), REFERENCE[3:4] + 1e-3]).astype(np.float32)
LABELS = np.arange(30) % 6


@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
def test_exact_search_equals_a_numpy_loop(metric):
    gallery = Gallery(metric)
    gallery.add(REFERENCE, LABELS)
    distances, indices = gallery.search(QUERIES, k=5)
    want_distances, want_indices = numpy_search(REFERENCE, QUERIES, 5, metric)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_allclose(distances, want_distances, rtol=1e-4, atol=1e-4)
    assert indices[-1, :3].tolist() == [3, 7, 20]  # the three duplicates, lower index first


def test_retrieval_metrics_and_galleries_share_one_kernel():
    # Leave-one-out through the gallery gives the same P@1 as retrieval_metrics.
    hits = 0
    for i in range(len(REFERENCE)):
        gallery = Gallery()
        keep = np.arange(len(REFERENCE)) != i
        gallery.add(REFERENCE[keep], LABELS[keep], ids=np.flatnonzero(keep).astype(str))
        hits += int(gallery.classify(REFERENCE[i:i + 1], k=1)[0] == LABELS[i])
    assert retrieval_metrics(REFERENCE, LABELS, compute_nmi=False)["precision_at_1"] == pytest.approx(
        hits / len(REFERENCE))


@pytest.mark.parametrize("metric", ["L2", "angular"])
def test_faiss_flat_finds_the_exact_neighbours(metric):
    pytest.importorskip("faiss", reason="faiss-cpu is in the dev extra; make test installs it")
    data = np.random.default_rng(1).normal(size=(500, 16)).astype(np.float32)
    queries = np.random.default_rng(2).normal(size=(50, 16)).astype(np.float32)
    exact, flat = Gallery(metric), Gallery(metric, backend="faiss-flat")
    for gallery in (exact, flat):
        gallery.add(data, np.arange(500) % 10)
    (d_exact, i_exact), (d_flat, i_flat) = exact.search(queries, 10), flat.search(queries, 10)
    np.testing.assert_array_equal(i_flat, i_exact)
    np.testing.assert_allclose(d_flat, d_exact, rtol=1e-4, atol=1e-4)
    hnsw = Gallery(metric, backend="faiss-hnsw")
    hnsw.add(data, np.arange(500) % 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hnsw.search(queries, 10)[1], i_exact)])
    assert recall > 0.9


def test_classify_by_majority_and_by_distance():
    gallery = Gallery()
    gallery.add(np.array([[0.0], [1.0], [1.1], [5.0]], np.float32), np.array([0, 1, 1, 2]))
    query = np.array([[0.2]], np.float32)
    # k = 3 neighbours: 0 (d 0.2), 1 (0.8), 1 (0.9): majority says 1, distance-weighted says 0 (5 > 1.25 + 1.11).
    assert gallery.classify(query, k=3, vote="majority").tolist() == [1]
    assert gallery.classify(query, k=3, vote="distance").tolist() == [0]
    # A majority tie goes to the class of the nearer item.
    assert gallery.classify(np.array([[0.6]], np.float32), k=2).tolist() == [1]


def test_identify_answers_unknown_beyond_the_threshold():
    gallery = Gallery()
    gallery.add(np.array([[0.0, 0.0], [10.0, 0.0]], np.float32), np.array([4, 9]), ids=["alice", "bob"])
    result = gallery.identify(np.array([[0.5, 0.0], [9.0, 0.0], [5.0, 0.0]], np.float32), threshold=1.0, k=2)
    assert result.labels.tolist() == [4, 9, UNKNOWN]
    assert result.accepted.tolist() == [True, True, False]
    assert result.neighbour_ids[0].tolist() == ["alice", "bob"]
    np.testing.assert_allclose(result.distances[:, 0], [0.5, 1.0, 5.0], atol=1e-5)


def test_calibrate_accepts_at_most_the_target_share_of_impostors():
    gallery = Gallery()
    gallery.add(np.zeros((1, 1), np.float32), np.array([0]))
    impostors = np.arange(1, 101, dtype=np.float32)[:, None]     # nearest distances 1, 2, ..., 100
    queries = np.concatenate([impostors, [[0.5]]]).astype(np.float32)
    labels = np.concatenate([np.full(100, 7), [0]])              # class 7 is not enrolled; the last is genuine
    threshold = gallery.calibrate(queries, labels, far=0.05)
    assert 5.0 <= threshold < 6.0                                # accepts 5 impostors of 100, not the 6th
    assert gallery.identify(impostors).accepted.sum() == 5
    assert gallery.calibrate(queries, labels, far=0.001) < 1.0  # no impostor may pass


def test_a_saved_gallery_reloads_in_a_fresh_process(tmp_path):
    gallery = Gallery("angular", model_fingerprint="abc123", threshold=0.25)
    gallery.add(REFERENCE, LABELS, ids=[f"item{i}" for i in range(30)])
    gallery.remove(["item5", "item6"])
    gallery.save(tmp_path / "gallery")
    distances, indices = gallery.search(QUERIES, 4)
    script = textwrap.dedent(f"""
        import json, numpy as np
        from reprlearn.index import Gallery
        g = Gallery.load({str(tmp_path / 'gallery')!r}, model_fingerprint="abc123")
        d, i = g.search(np.load({str(tmp_path / 'q.npy')!r}), 4)
        print(json.dumps({{"n": len(g), "metric": g.metric, "threshold": g.threshold, "d": d.tolist(),
                          "i": i.tolist(), "ids": g.ids[:6].tolist()}}))
    """)
    np.save(tmp_path / "q.npy", QUERIES)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert (loaded["n"], loaded["metric"], loaded["threshold"]) == (28, "angular", 0.25)
    assert loaded["ids"] == ["item0", "item1", "item2", "item3", "item4", "item7"]
    np.testing.assert_array_equal(loaded["i"], indices)
    np.testing.assert_array_equal(np.float32(loaded["d"]), distances)


@pytest.mark.parametrize("call, message", [
    (lambda g: g.search(np.zeros((2, 3), np.float32), 1), "queries must have the gallery's dimension 5"),
    (lambda g: g.search(REFERENCE[:2], 31), r"k must be an int in \[1, 30\]"),
    (lambda g: g.search(np.full((1, 5), np.nan, np.float32), 1), "contain NaN or inf"),
    (lambda g: g.classify(REFERENCE[:2], vote="loudest"), "vote must be one of"),
    (lambda g: g.identify(REFERENCE[:2]), "identify needs a finite threshold"),
    (lambda g: g.add(REFERENCE[:2], [1, 2], ids=["0", "x"]), r"ids must be unique in the gallery.*\['0'\]"),
    (lambda g: g.add(REFERENCE[:2], [-1, 2]), "labels must be \\[N\\] non-negative class ids"),
    (lambda g: g.remove(["nobody"]), "the gallery has no item with id 'nobody'"),
    (lambda g: g.calibrate(REFERENCE, LABELS), "calibrate needs impostor queries"),
])
def test_bad_input_names_the_argument_and_changes_nothing(call, message):
    gallery = Gallery()
    gallery.add(REFERENCE, LABELS)
    with pytest.raises(GalleryError, match=message):
        call(gallery)
    assert len(gallery) == 30 and gallery.threshold is None


def test_empty_galleries_unknown_metrics_and_bad_folders_are_refused(tmp_path):
    with pytest.raises(GalleryError, match="the gallery is empty"):
        Gallery().search(REFERENCE[:1], 1)
    with pytest.raises(GalleryError, match="distance metric must be one of"):
        Gallery("manhattan")
    with pytest.raises(GalleryError, match="backend must be one of"):
        Gallery(backend="annoy")
    with pytest.raises(GalleryError, match="holds no readable gallery"):
        Gallery.load(tmp_path / "missing")
    gallery = Gallery(model_fingerprint="run-a")
    gallery.add(REFERENCE, LABELS)
    gallery.save(tmp_path / "g")
    with pytest.raises(GalleryError, match="enrolled by another model"):
        Gallery.load(tmp_path / "g", model_fingerprint="run-b")
    meta = json.loads((tmp_path / "g" / "gallery.json").read_text())
    (tmp_path / "g" / "gallery.json").write_text(json.dumps({**meta, "size": 29}))
    with pytest.raises(GalleryError, match="is corrupt"):
        Gallery.load(tmp_path / "g")
    (tmp_path / "g" / "gallery.npz").write_bytes(b"not a zip")
    with pytest.raises(GalleryError, match="holds no readable gallery"):
        Gallery.load(tmp_path / "g")


def test_identification_scores_match_a_numpy_loop():
    from reprlearn.evaluation.scoring import identification_scores

    items = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], np.float32)
    gallery = Gallery("L2", threshold=0.5)
    gallery.add(items, [0, 1, 2, 2])
    queries = np.array([[0.1, 0.0], [0.9, 0.3], [0.0, 0.8], [0.6, 0.0], [4.0, 4.0], [5.1, 5.0], [0.2, 0.2]],
                       np.float32)
    labels = np.array([0, 1, 0, 1, 2, -1, 7])  # -1: a class the gallery has no name for; 7: none enrolled
    got = identification_scores(gallery, queries, labels, k=2)
    dist = np.sqrt(((queries[:, None] - items[None]) ** 2).sum(-1))
    order = np.argsort(dist, axis=1, kind="stable")
    top = np.array([0, 1, 2, 2])[order]
    accepted = dist[np.arange(7), order[:, 0]] <= 0.5
    genuine = np.array([label in (0, 1, 2) for label in labels])
    want = {"dir": np.mean([accepted[i] and top[i, 0] == labels[i] for i in range(7) if genuine[i]]),
            "rank_1": np.mean([top[i, 0] == labels[i] for i in range(7) if genuine[i]]),
            "recall_at_k": np.mean([labels[i] in top[i, :2] for i in range(7) if genuine[i]]),
            "frr": np.mean([not accepted[i] for i in range(7) if genuine[i]]),
            "far": np.mean([accepted[i] for i in range(7) if not genuine[i]])}
    assert got["genuine"] == 5 and got["impostors"] == 2 and got["k"] == 2
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert (got["dir"], got["rank_1"], got["far"]) == (pytest.approx(0.6), pytest.approx(0.8), 1.0)  # by hand
    none = identification_scores(gallery, queries[:1], np.array([0]))
    assert none["far"] is None and none["impostors"] == 0
