"""Galleries on Milvus (Milvus Lite in a temporary .db file): the exact backend's answers on FLAT, recall on HNSW,
add and remove, reload in a fresh process, the command line, and every bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the milvus extra (in dev) is not installed")

from reprlearn.index import UNKNOWN, Gallery, GalleryError  # noqa: E402
from reprlearn.index.milvus import META_PROPERTY, MilvusCollection  # noqa: E402

METRICS = ["L2", "squared-L2", "angular"]


def clustered(n, d, classes, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    return (centres[labels] + 0.6 * rng.normal(size=(n, d))).astype(np.float32), labels


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "milvus" / "gallery.db")


def _pair(metric, db, items, labels, collection="g", index="FLAT", ids=None):
    exact, milvus = Gallery(metric), Gallery(metric, "milvus", uri=db, collection=collection, index=index)
    exact.add(items, labels, ids)
    milvus.add(items, labels, ids)
    return exact, milvus


@pytest.mark.parametrize("metric", METRICS)
def test_flat_search_returns_the_exact_backends_items_and_distances(metric, db):
    items, labels = clustered(600, 24, 12, seed=0)
    queries, _ = clustered(50, 24, 12, seed=1)
    exact, milvus = _pair(metric, db, items, labels)
    assert len(milvus) == 600 and milvus.dim == 24 and milvus.embeddings is None
    want_distances, want = exact.search(queries, 10)
    got_distances, got_labels, got_ids = milvus.neighbours(queries, 10)
    np.testing.assert_array_equal(got_ids, exact.ids[want])
    np.testing.assert_array_equal(got_labels, exact.labels[want])
    np.testing.assert_allclose(got_distances, want_distances, rtol=1e-5, atol=1e-5)
    distances, indices = milvus.search(queries, 10)  # positions in enrolment order, as the exact backend's
    np.testing.assert_array_equal(distances, got_distances)
    np.testing.assert_array_equal(indices, want)
    np.testing.assert_array_equal(milvus.classify(queries, 5, "distance"), exact.classify(queries, 5, "distance"))
    np.testing.assert_array_equal(milvus.classify(queries, 5), exact.classify(queries, 5))


def test_distances_match_a_numpy_loop_in_each_metric(db):
    items = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]], np.float32)
    query = np.array([[0.0, 0.0], [2.0, 2.0]], np.float32)
    for metric in METRICS:
        gallery = Gallery(metric, "milvus", uri=db, collection=metric.replace("-", "_"))
        gallery.add(items, [0, 1, 2], ["a", "b", "c"])
        distances, _, ids = gallery.neighbours(query, 3)
        for row, q in enumerate(query):
            if metric == "angular":
                want = [1.0 - (q @ e) / (np.linalg.norm(q) * np.linalg.norm(e)) if q.any() else 1.0 for e in items]
            else:
                want = [float(((q - e) ** 2).sum()) for e in items]
                want = want if metric == "squared-L2" else np.sqrt(want).tolist()
            order = np.argsort(want, kind="stable")
            if metric != "angular" or query[row].any():  # a zero query is equally far (1) from everything
                assert ids[row].tolist() == np.array(["a", "b", "c"])[order].tolist()
            np.testing.assert_allclose(distances[row], np.sort(want), atol=1e-6)


def test_a_trained_runs_embeddings_give_the_same_answers_as_the_exact_gallery(digits_run, db):
    from reprlearn.runs import load_run

    run = load_run(digits_run)
    test = run.split("test")
    embeddings = run.embed(test)
    enrolled = np.arange(len(embeddings)) % 3 != 0
    exact, milvus = _pair(run.metric, db, embeddings[enrolled], test.labels[enrolled])
    queries = embeddings[~enrolled]
    threshold = float(np.median(exact.search(queries, 1)[0]))  # half the queries accepted
    want, got = exact.identify(queries, threshold, k=5), milvus.identify(queries, threshold, k=5)
    np.testing.assert_array_equal(got.neighbour_ids, want.neighbour_ids)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.distances, want.distances, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("index", ["HNSW", "IVF_FLAT"])
def test_approximate_indexes_keep_recall_at_10_above_the_floor(index, db):
    items, labels = clustered(4000, 32, 40, seed=2)
    queries, _ = clustered(200, 32, 40, seed=3)
    exact, milvus = _pair("L2", db, items, labels, index=index)
    _, want = exact.search(queries, 10)
    _, _, got = milvus.neighbours(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact.ids[want])])
    assert recall >= 0.95, recall  # measured 1.000 (HNSW) and 1.000 (IVF_FLAT) at this size


def test_remove_and_add_change_what_search_finds(db):
    items, labels = clustered(300, 16, 6, seed=4)
    exact, milvus = _pair("L2", db, items, labels)
    gone = [str(i) for i in range(0, 300, 3)]
    exact.remove(gone)
    milvus.remove(gone)
    assert len(milvus) == 200
    queries = items[:20]
    np.testing.assert_array_equal(milvus.neighbours(queries, 4)[2], exact.neighbours(queries, 4)[2])
    assert not set(milvus.neighbours(queries, 4)[2].ravel()) & set(gone)
    with pytest.raises(GalleryError, match=r"no item with id '0'"):
        milvus.remove(["0", "1"])
    assert len(milvus) == 200  # nothing was removed
    with pytest.raises(GalleryError, match=r"unique.*\['1'\]"):
        milvus.add(items[:2], labels[:2], ["new", "1"])
    assert len(milvus) == 200  # nothing was added
    milvus.add(items[:1], [5], ["0"])  # a removed id may come back
    distances, found_labels, ids = milvus.neighbours(items[:1], 1)
    assert ids[0, 0] == "0" and found_labels[0, 0] == 5 and distances[0, 0] == pytest.approx(0.0, abs=1e-3)


def test_calibrate_and_identify_as_the_exact_gallery(db):
    items, labels = clustered(500, 16, 10, seed=5)
    enrolled = labels < 6
    exact, milvus = _pair("angular", db, items[enrolled], labels[enrolled])
    probes, probe_labels = clustered(200, 16, 10, seed=6)
    threshold = exact.calibrate(probes, probe_labels, far=0.1)
    assert milvus.calibrate(probes, probe_labels, far=0.1) == pytest.approx(threshold, rel=1e-5)
    got, want = milvus.identify(probes, threshold), exact.identify(probes)
    clear = np.abs(want.distances[:, 0] - threshold) > 1e-5  # the impostor that sets it sits on the edge
    np.testing.assert_array_equal(got.labels[clear], want.labels[clear])
    assert (got.labels == UNKNOWN).any() and (got.labels != UNKNOWN).any()
    with pytest.raises(GalleryError, match="impostor"):
        milvus.calibrate(probes[probe_labels < 6], probe_labels[probe_labels < 6])


def test_a_saved_gallery_reloads_in_a_fresh_process_importing_only_reprlearn_index(tmp_path):
    items, labels = clustered(200, 8, 4, seed=7)
    gallery = Gallery("L2", "milvus", model_fingerprint="abc", class_names=["a", "b", "c", "d"],
                      uri=str(tmp_path / "g" / "gallery.db"))
    gallery.add(items, labels)
    gallery.calibrate(items[labels < 2], np.where(labels[labels < 2] == 0, 9, 8), far=0.2)
    gallery.save(tmp_path / "g")
    saved = json.loads((tmp_path / "g" / "gallery.json").read_text())
    assert saved["uri"] == "gallery.db" and saved["backend"] == "milvus"  # inside the folder: relative
    gallery.close()  # Milvus Lite serves a file to one process at a time
    (tmp_path / "g").rename(tmp_path / "moved")
    np.save(tmp_path / "q.npy", items[:5])
    script = textwrap.dedent(f"""
        import json, numpy as np
        from reprlearn.index import Gallery
        gallery = Gallery.load({str(tmp_path / 'moved')!r}, model_fingerprint="abc")
        result = gallery.identify(np.load({str(tmp_path / 'q.npy')!r}), k=2)
        print(json.dumps({{"n": len(gallery), "threshold": gallery.threshold, "names": gallery.class_names,
                          "ids": result.neighbour_ids.tolist(), "labels": result.labels.tolist()}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    exact = Gallery("L2", threshold=gallery.threshold)
    exact.add(items, labels)
    want = exact.identify(items[:5], k=2)
    assert out["n"] == 200 and out["threshold"] == gallery.threshold and out["names"] == ["a", "b", "c", "d"]
    assert out["ids"] == want.neighbour_ids.tolist() and out["labels"] == want.labels.tolist()


def test_an_unreachable_server_fails_at_once_naming_it():
    started = time.monotonic()
    with pytest.raises(GalleryError, match=r"127\.0\.0\.1:9.*connecting"):
        Gallery("L2", "milvus", uri="http://127.0.0.1:9")
    assert time.monotonic() - started < 15


def test_a_collection_of_another_metric_dimension_or_model_is_refused(db):
    gallery = Gallery("L2", "milvus", model_fingerprint="model-a", uri=db, collection="shared")
    gallery.add(np.ones((3, 4), np.float32), [0, 1, 2])
    with pytest.raises(GalleryError, match=r"'L2', not 'angular'"):
        Gallery("angular", "milvus", uri=db, collection="shared")
    with pytest.raises(GalleryError, match=r"model-a.*model-b"):
        Gallery("L2", "milvus", model_fingerprint="model-b", uri=db, collection="shared")
    reopened = Gallery("L2", "milvus", uri=db, collection="shared")
    assert reopened.model_fingerprint == "model-a" and reopened.dim == 4 and len(reopened) == 3
    with pytest.raises(GalleryError, match=r"dimension 4.*\(2, 5\)"):
        reopened.add(np.ones((2, 5), np.float32), [0, 1], ["x", "y"])
    with pytest.raises(GalleryError, match=r"dimension 4.*\(1, 6\)"):
        reopened.search(np.ones((1, 6), np.float32))


def test_a_gallery_folder_of_another_model_or_a_dropped_collection_is_refused(tmp_path):
    gallery = Gallery("L2", "milvus", model_fingerprint="model-a", uri=str(tmp_path / "g" / "gallery.db"))
    gallery.add(np.eye(3, dtype=np.float32), [0, 1, 2])
    gallery.save(tmp_path / "g")
    with pytest.raises(GalleryError, match=r"another model.*model-a.*model-b"):
        Gallery.load(tmp_path / "g", model_fingerprint="model-b")
    MilvusCollection(str(tmp_path / "g" / "gallery.db"), "reprlearn_gallery", "L2").drop()
    with pytest.raises(GalleryError, match="does not exist"):
        Gallery.load(tmp_path / "g")


def test_a_collection_reprlearn_did_not_make_is_refused(db):
    from pymilvus import MilvusClient

    Path(db).parent.mkdir(parents=True)
    MilvusClient(db).create_collection("theirs", dimension=4)
    with pytest.raises(GalleryError, match="not a reprlearn gallery"):
        Gallery("L2", "milvus", uri=db, collection="theirs")
    assert META_PROPERTY == "reprlearn.gallery"


@pytest.mark.parametrize("kwargs, pattern", [
    ({"uri": None}, r"uri must be.*Received: uri=None"),
    ({"uri": "gallery.sqlite"}, r"ending in \.db.*gallery\.sqlite"),
    ({"uri": "{db}", "collection": "9lives"}, r"collection must be.*'9lives'"),
    ({"uri": "{db}", "collection": "a-b"}, r"collection must be.*'a-b'"),
    ({"uri": "{db}", "index": "DISKANN"}, r"index must be one of.*'DISKANN'"),
])
def test_bad_connection_arguments_name_the_value(kwargs, pattern, db):
    kwargs = {key: value.format(db=db) if isinstance(value, str) else value for key, value in kwargs.items()}
    with pytest.raises(GalleryError, match=pattern):
        Gallery("L2", "milvus", **kwargs)


def test_bad_items_and_queries_are_refused_before_milvus_sees_them(db):
    gallery = Gallery("L2", "milvus", uri=db)
    with pytest.raises(GalleryError, match="empty"):
        gallery.search(np.ones((1, 4), np.float32))
    with pytest.raises(GalleryError, match="NaN"):
        gallery.add(np.full((2, 4), np.nan, np.float32), [0, 1])
    with pytest.raises(GalleryError, match=r"at most 512 bytes.*600 bytes"):
        gallery.add(np.ones((1, 4), np.float32), [0], ["x" * 600])
    assert len(gallery) == 0
    gallery.add(np.eye(4, dtype=np.float32), [0, 1, 2, 3])
    with pytest.raises(GalleryError, match=r"k must be an int in \[1, 4\].*k=5"):
        gallery.search(np.ones((1, 4), np.float32), 5)
    with pytest.raises(GalleryError, match=r"k must be.*k=True"):
        gallery.search(np.ones((1, 4), np.float32), True)


def test_the_command_line_enrols_adds_removes_and_identifies_on_milvus(digits_run, tmp_path):
    from reprlearn.data import load_spec
    from reprlearn.runs import load_run
    from tests.test_use import _write_folder, reprlearn

    test = load_spec("digits:all")
    rng = np.random.default_rng(0)
    picks = {label: rng.permutation(np.flatnonzero(test.labels == label))[:12] for label in range(5, 10)}
    first, more = np.concatenate([picks[5][:8], picks[6][:8]]), picks[7][:8]  # enrolled, then added
    queries = np.concatenate([p[8:] for p in picks.values()])  # of the enrolled classes and two others
    for folder, members in (("first", first), ("more", more), ("queries", queries)):
        _write_folder(tmp_path / folder, test.images[members], test.labels[members])
    gallery_dir = tmp_path / "gallery"

    done = reprlearn("index", digits_run, "--data", f"folder:{tmp_path / 'first'}", "--out", gallery_dir,
                     "--backend", "milvus", "--far", 0.05)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (gallery_dir / "gallery.db").exists() and len(Gallery.load(gallery_dir)) == 16
    again = reprlearn("index", digits_run, "--data", f"folder:{tmp_path / 'first'}", "--out", gallery_dir,
                      "--backend", "milvus")
    assert again.returncode == 2 and "already holds 16 items" in again.stderr
    done = reprlearn("index", digits_run, "--data", f"folder:{tmp_path / 'more'}", "--out", gallery_dir, "--add")
    assert done.returncode == 0, done.stderr[-3000:]
    gallery = Gallery.load(gallery_dir)
    assert len(gallery) == 24 and gallery.class_names == ["class5", "class6", "class7"]
    more_names = load_spec(f"folder:{tmp_path / 'more'}").names
    done = reprlearn("index", digits_run, "--out", gallery_dir, "--remove", *more_names[:3])
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(Gallery.load(gallery_dir)) == 21
    done = reprlearn("index", digits_run, "--out", gallery_dir, "--remove", "no/such/item.png")
    assert done.returncode == 2 and "no/such/item.png" in done.stderr

    done = reprlearn("identify", digits_run, "--gallery", gallery_dir, "--data", f"folder:{tmp_path / 'queries'}",
                     "--k", 3, "--out", tmp_path / "results.csv")
    assert done.returncode == 0, done.stderr[-3000:]
    # the same items enrolled in process give the same answers
    run, gallery = load_run(digits_run), Gallery.load(gallery_dir)
    exact = Gallery(run.metric, threshold=gallery.threshold)
    kept = [load_spec(f"folder:{tmp_path / 'first'}"), load_spec(f"folder:{tmp_path / 'more'}")]
    exact.add(run.embed(kept[0]), kept[0].labels, kept[0].names)
    exact.add(run.embed(kept[1])[3:], np.full(5, 2), kept[1].names[3:])
    probe = run.embed(load_spec(f"folder:{tmp_path / 'queries'}"))
    got, want = gallery.identify(probe, k=3), exact.identify(probe, k=3)
    np.testing.assert_array_equal(got.neighbour_ids, want.neighbour_ids)
    np.testing.assert_array_equal(got.labels, want.labels)
    done = reprlearn("evaluate", digits_run, "--data", f"folder:{tmp_path / 'queries'}", "--gallery", gallery_dir,
                     "--k", 3)
    assert done.returncode == 0 and "DIR" in done.stdout, done.stderr[-3000:]
    from reprlearn.evaluation.scoring import identification_scores

    written = Path(done.stdout.split("Report: ")[1].strip())
    report = json.loads(written.with_suffix(".json").read_text())
    shutil.rmtree(written.parent)  # the run is shared with other tests, which count its evaluations
    query_set = load_spec(f"folder:{tmp_path / 'queries'}")
    names = gallery.class_names
    as_gallery = np.asarray([names.index(n) if n in names else -1 for n in query_set.class_names])[query_set.labels]
    want = identification_scores(exact, probe, as_gallery, k=3)
    assert report["backend"] == "milvus" and report["genuine"] == 12 and report["impostors"] == 8
    for key in ("dir", "rank_1", "recall_at_k", "frr", "far"):
        assert report[key] == pytest.approx(want[key]), key
    exported = reprlearn("export", digits_run, "--out", tmp_path / "models", "--format", "saved_model",
                         "--gallery", gallery_dir)
    assert exported.returncode == 2 and "searched by Milvus" in exported.stderr


@pytest.mark.slow   # ~15 s: two processes on one Milvus Lite file
def test_a_lite_file_open_in_another_process_is_named_as_such(tmp_path):
    gallery = Gallery("L2", "milvus", uri=str(tmp_path / "g.db"))
    gallery.add(np.eye(2, dtype=np.float32), [0, 1])
    script = textwrap.dedent(f"""
        from reprlearn.index import Gallery, GalleryError
        try:
            Gallery("L2", "milvus", uri={str(tmp_path / 'g.db')!r})
        except GalleryError as err:
            print(err)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "open in another process" in done.stdout, done.stdout + done.stderr[-2000:]
    gallery.close()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr[-2000:]


def test_a_gallery_on_a_milvus_server_answers_as_the_embedded_one(tmp_path):
    """The server path (a uri, not a file), against `milvus-lite server`: the gRPC protocol a Milvus cluster speaks."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "milvus-lite"), "server", "--data-dir",
                               str(tmp_path / "served.db"), "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # the server answers within a few seconds
            try:
                gallery = Gallery("squared-L2", "milvus", model_fingerprint="m", uri=uri, collection="served")
                break
            except GalleryError:
                time.sleep(0.5)
        items, labels = clustered(400, 16, 8, seed=8)
        gallery.add(items, labels)
        gallery.remove(["3", "4"])
        exact = Gallery("squared-L2")
        exact.add(np.delete(items, [3, 4], axis=0), np.delete(labels, [3, 4]),
                  [str(i) for i in range(400) if i not in (3, 4)])
        queries, _ = clustered(30, 16, 8, seed=9)
        got, want = gallery.neighbours(queries, 5), exact.neighbours(queries, 5)
        np.testing.assert_array_equal(got[2], want[2])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
        gallery.threshold = 1.5
        gallery.save(tmp_path / "g")
        assert json.loads((tmp_path / "g" / "gallery.json").read_text())["uri"] == uri
        again = Gallery.load(tmp_path / "g", model_fingerprint="m")  # a second client of the same server
        assert len(again) == 398 and again.threshold == 1.5 and again.metric == "squared-L2"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_run_enrols_chunk_by_chunk_and_finds_what_one_add_finds(digits_run, tmp_path, monkeypatch):
    import reprlearn.runs.api as api
    from reprlearn.runs import load_run

    run = load_run(digits_run)
    test = run.split("test").subset(np.arange(60))
    calls = []
    add = Gallery.add
    monkeypatch.setattr(Gallery, "add", lambda self, *a, **k: (calls.append(len(a[0])), add(self, *a, **k))[1])
    monkeypatch.setattr(api, "EMBED_CHUNK", 25)
    chunked = run.gallery(test, test.labels, backend="milvus", uri=str(tmp_path / "g.db"))
    assert calls == [25, 25, 10] and len(chunked) == 60  # embeddings held: one chunk at a time
    whole = Gallery(run.metric)
    add(whole, run.embed(test), test.labels)
    queries = run.embed(test)[::5]
    np.testing.assert_array_equal(chunked.neighbours(queries, 4)[2], whole.neighbours(queries, 4)[2])
