"""One gallery suite over every backend (exact, faiss-flat, Milvus Lite on FLAT): `search`, `neighbours`,
`classify` and `identify` give a NumPy loop's answers, in one numbering (0-based positions in enrolment order among
the items held now), before and after `remove` and `add`, and after a save and a load. A backend that answers
differently fails here."""

from __future__ import annotations

import numpy as np
import pytest

from reprlearn.index import Gallery

METRICS = ["L2", "squared-L2", "angular"]


@pytest.fixture(params=["exact", "faiss-flat", "milvus"])
def backend(request):
    if request.param == "milvus":
        pytest.importorskip("pymilvus", reason="the milvus extra (in dev) is not installed")
    return request.param


def _gallery(backend, metric, tmp_path, collection="g"):
    options = {"uri": str(tmp_path / "milvus" / "gallery.db"), "collection": collection} if backend == "milvus" \
        else {}
    return Gallery(metric, backend, **options)


def _items(n=400, d=12, classes=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    labels = rng.integers(0, classes, n)
    return (centres[labels] + 0.7 * rng.normal(size=(n, d))).astype(np.float32), labels


def _loop_distances(queries, items, metric):
    """Every query against every item, one pair at a time."""
    out = np.zeros((len(queries), len(items)))
    for i, q in enumerate(queries.astype(np.float64)):
        for j, e in enumerate(items.astype(np.float64)):
            if metric == "angular":
                out[i, j] = 1.0 - q @ e / (np.linalg.norm(q) * np.linalg.norm(e))
            else:
                squared = float(((q - e) ** 2).sum())
                out[i, j] = squared if metric == "squared-L2" else np.sqrt(squared)
    return out


def _loop_search(queries, items, metric, k):
    distances = _loop_distances(queries, items, metric)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]   # ties: the lower position
    return np.take_along_axis(distances, order, axis=1), order


@pytest.mark.parametrize("metric", METRICS)
def test_search_gives_the_loops_positions_and_distances(backend, metric, tmp_path):
    items, labels = _items()
    queries, _ = _items(30, seed=1)
    gallery = _gallery(backend, metric, tmp_path)
    gallery.add(items[:250], labels[:250])
    gallery.add(items[250:], labels[250:])   # a second add appends: positions 250..399
    want_distances, want = _loop_search(queries, items, metric, 7)
    distances, indices = gallery.search(queries, 7)
    np.testing.assert_array_equal(indices, want)
    np.testing.assert_allclose(distances, want_distances, atol=2e-5)
    got_distances, got_labels, got_ids = gallery.neighbours(queries, 7)
    np.testing.assert_array_equal(got_labels, labels[want])
    np.testing.assert_array_equal(got_ids, np.array([str(i) for i in range(400)])[want])


def test_classify_and_identify_answer_as_the_loop(backend, tmp_path):
    items, labels = _items()
    queries, _ = _items(40, seed=2)
    gallery = _gallery(backend, "L2", tmp_path)
    gallery.add(items, labels)
    distances, order = _loop_search(queries, items, "L2", 5)
    votes = labels[order]
    majority = []
    for row in votes:   # the most frequent label; among equals, the nearest such
        counts = {label: int((row == label).sum()) for label in row}
        best = max(counts.values())
        majority.append(next(label for label in row if counts[label] == best))
    np.testing.assert_array_equal(gallery.classify(queries, 5), majority)
    threshold = float(np.median(distances[:, 0]))
    found = gallery.identify(queries, threshold, k=5)
    accepted = distances[:, 0] <= threshold
    np.testing.assert_array_equal(found.accepted, accepted)
    np.testing.assert_array_equal(found.labels, np.where(accepted, labels[order[:, 0]], -1))
    np.testing.assert_array_equal(found.neighbour_labels, votes)


def test_after_a_removal_later_items_move_down_and_ids_stay(backend, tmp_path):
    items, labels = _items(300)
    queries, _ = _items(25, seed=3)
    gallery = _gallery(backend, "L2", tmp_path)
    gallery.add(items, labels)
    gone = [str(i) for i in range(0, 300, 3)]
    gallery.remove(gone)
    kept = np.array([i for i in range(300) if i % 3])
    gallery.add(items[:2] + 0.01, labels[:2], ["new0", "new1"])   # appended after the 200 kept
    held = np.concatenate([items[kept], items[:2] + 0.01])
    held_ids = np.array([str(i) for i in kept] + ["new0", "new1"])
    assert len(gallery) == 202
    want_distances, want = _loop_search(queries, held, "L2", 6)
    distances, indices = gallery.search(queries, 6)
    np.testing.assert_array_equal(indices, want)
    np.testing.assert_allclose(distances, want_distances, atol=2e-5)
    np.testing.assert_array_equal(gallery.neighbours(queries, 6)[2], held_ids[want])
    # The new items are found at the last two positions.
    np.testing.assert_array_equal(gallery.search(items[:2] + 0.01, 1)[1][:, 0], [200, 201])


def test_a_saved_gallery_answers_the_same_after_loading(backend, tmp_path):
    items, labels = _items(200)
    queries, _ = _items(10, seed=4)
    gallery = _gallery(backend, "angular", tmp_path)
    gallery.add(items, labels)
    gallery.remove(["5", "17"])
    before = gallery.search(queries, 4)
    gallery.threshold = 0.5
    gallery.save(tmp_path / "saved")
    gallery.close()
    again = Gallery.load(tmp_path / "saved")
    after = again.search(queries, 4)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)
    assert again.threshold == 0.5 and len(again) == 198
    again.close()


def test_an_interrupted_milvus_insert_is_repaired_before_the_next(tmp_path):
    """Rows inserted without their bookkeeping (a process killed between the two) are counted in by the next
    insert, so positions stay enrolment order."""
    pytest.importorskip("pymilvus", reason="the milvus extra (in dev) is not installed")
    items, labels = _items(60)
    gallery = _gallery("milvus", "L2", tmp_path)
    gallery.add(items[:40], labels[:40])
    collection = gallery._milvus
    collection._call("inserting items", "insert", collection.name, [
        {"row": 40 + i, "vector": items[40 + i], "label": int(labels[40 + i]), "item_id": str(40 + i)}
        for i in range(10)])   # the insert landed; next_row was never moved on
    collection._call("flushing", "flush", collection.name)
    gallery.add(items[50:], labels[50:], [str(i) for i in range(50, 60)])
    assert len(gallery) == 60
    np.testing.assert_array_equal(gallery.search(items, 1)[1][:, 0], np.arange(60))


def test_the_command_line_identifies_and_evaluates_alike_on_every_backend(digits_run, tmp_path):
    """`index`, `identify` and `evaluate --gallery` on one trained run: the same CSV rows (distances to float32
    rounding) and the same report figures from exact, faiss-flat and Milvus."""
    import csv
    import json

    from reprlearn.cli import main

    from reprlearn.data import load_spec
    from tests.test_use import _write_folder

    pytest.importorskip("pymilvus", reason="the milvus extra (in dev) is not installed")
    digits = load_spec("digits:all")   # the run trained on classes 0-4: enrol 5-7, ask 5-9
    rng = np.random.default_rng(0)
    enrolled = np.concatenate([rng.permutation(np.flatnonzero(digits.labels == c))[:15] for c in (5, 6, 7)])
    asked = np.concatenate([rng.permutation(np.flatnonzero(digits.labels == c))[15:40] for c in range(5, 10)])
    _write_folder(tmp_path / "enrol", digits.images[enrolled], digits.labels[enrolled])
    _write_folder(tmp_path / "ask", digits.images[asked], digits.labels[asked])
    outputs = {}
    for backend in ("exact", "faiss-flat", "milvus"):
        gallery = tmp_path / backend
        assert main(["index", str(digits_run), "--data", f"folder:{tmp_path / 'enrol'}", "--out", str(gallery),
                     "--backend", backend]) == 0
        assert main(["identify", str(digits_run), "--gallery", str(gallery), "--data", f"folder:{tmp_path / 'ask'}",
                     "--k", "3", "--out", str(tmp_path / f"{backend}.csv")]) == 0
        assert main(["evaluate", str(digits_run), "--gallery", str(gallery), "--data",
                     f"folder:{tmp_path / 'ask'}"]) == 0
        report = json.loads(next((digits_run / "evaluations").glob("folder_*ask/identification.json")).read_text())
        outputs[backend] = (list(csv.DictReader((tmp_path / f"{backend}.csv").open())), report)
    rows, report = outputs["exact"]
    assert len(rows) == 125 and report["genuine"] == 75 and report["impostors"] == 50
    for backend in ("faiss-flat", "milvus"):
        other_rows, other_report = outputs[backend]
        for want, got in zip(rows, other_rows, strict=True):
            assert {k: v for k, v in want.items() if "distance" not in k} == {
                k: v for k, v in got.items() if "distance" not in k}, backend
            # Squared: an L2 distance near 0 carries float32's rounding of |q|² + |e|² - 2q·e through a square
            # root (a duplicate image is 0.0 in one engine and 3e-4 in another).
            np.testing.assert_allclose([float(v) ** 2 for k, v in got.items() if "distance" in k],
                                       [float(v) ** 2 for k, v in want.items() if "distance" in k], atol=1e-5)
        for key in ("dir", "rank_1", "recall_at_k", "frr", "far", "genuine", "impostors"):
            assert other_report[key] == report[key], (backend, key)


def test_a_milvus_collection_without_enrolment_numbers_answers_neighbours_and_refuses_search(tmp_path):
    """A collection made by an earlier reprlearn (auto-assigned row keys, no `next_row` in its facts)."""
    import json

    from reprlearn.index import GalleryError
    from reprlearn.index.milvus import META_PROPERTY

    pytest.importorskip("pymilvus", reason="the milvus extra (in dev) is not installed")
    items, labels = _items(50)
    gallery = _gallery("milvus", "L2", tmp_path)
    gallery.add(items, labels)
    collection = gallery._milvus
    facts = {key: value for key, value in collection.meta().items() if key not in ("next_row", "removed_rows")}
    collection._call("test", "alter_collection_properties", collection.name,
                     properties={META_PROPERTY: json.dumps(facts)})
    assert gallery.neighbours(items[:3], 1)[2][:, 0].tolist() == ["0", "1", "2"]
    with pytest.raises(GalleryError, match="made by an earlier reprlearn.*enrol it again"):
        gallery.search(items[:3], 1)
