"""Using a trained run: embed, enrol, identify with "unknown", verify, and serve identify, from a user's process."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from reprlearn.cli import main
from reprlearn.data import load_spec
from reprlearn.index import UNKNOWN, Gallery
from reprlearn.runs import load_run

def reprlearn(*args) -> SimpleNamespace:
    """`reprlearn ARGS` run in this process (`cli.main`): its exit code and what it printed. The checks that need a
    fresh process (reading the files a command wrote with other libraries alone) start their own."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in args])
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def _write_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image[..., 0], np.uint8)).save(root / f"class{label}" / f"{i:04d}.png")


@pytest.fixture(scope="module")
def used(tmp_path_factory, digits_run):
    """The shared digits run (trained on classes 0-4) as `run`, a gallery folder of classes 5-7 and a query folder
    of 5-9."""
    root = tmp_path_factory.mktemp("use")
    (root / "run").symlink_to(digits_run)
    test = load_spec("digits:all")
    rng = np.random.default_rng(0)
    enrolled, queries = [], []
    for label in range(5, 10):
        members = rng.permutation(np.flatnonzero(test.labels == label))
        if label <= 7:
            enrolled += members[:10].tolist()
        queries += members[10:30].tolist()
    _write_folder(root / "gallery_images", test.images[enrolled], test.labels[enrolled])
    _write_folder(root / "query_images", test.images[queries], test.labels[queries])
    return root


def test_embed_index_identify_from_the_command_line_agree_with_the_library(used):
    done = reprlearn("embed", used / "run", "--data", f"folder:{used / 'query_images'}", "--out", used / "q.npz")
    assert done.returncode == 0, done.stderr[-3000:]
    done = reprlearn("index", used / "run", "--data", f"folder:{used / 'gallery_images'}", "--out", used / "gallery",
                     "--far", 0.01)
    assert done.returncode == 0, done.stderr[-3000:]
    done = reprlearn("identify", used / "run", "--gallery", used / "gallery", "--data",
                     f"folder:{used / 'query_images'}", "--k", 3, "--out", used / "results.csv")
    assert done.returncode == 0, done.stderr[-3000:]

    run, gallery = load_run(used / "run"), Gallery.load(used / "gallery")
    queries = load_spec(f"folder:{used / 'query_images'}")
    with np.load(used / "q.npz") as saved:
        np.testing.assert_array_equal(saved["embeddings"], run.embed(queries))
        assert saved["names"].tolist() == queries.names
    assert gallery.threshold == run.rejection_threshold(0.01)  # fit on the run's validation split
    assert gallery.model_fingerprint == run.model_fingerprint and len(gallery) == 30
    want = gallery.identify(run.embed(queries), k=3)
    rows = list(csv.DictReader(open(used / "results.csv")))
    assert [r["query"] for r in rows] == queries.names
    gallery_classes = load_spec(f"folder:{used / 'gallery_images'}").class_names
    decided = [gallery_classes[label] if label != UNKNOWN else "unknown" for label in want.labels]
    assert [r["decision"] for r in rows] == decided
    assert [r["id_1"] for r in rows] == want.neighbour_ids[:, 0].tolist()
    np.testing.assert_allclose([float(r["distance_3"]) for r in rows], want.distances[:, 2], atol=1e-6)


def test_embed_writes_parquet_that_a_fresh_process_reads_with_pyarrow_alone(used):
    done = reprlearn("embed", used / "run", "--data", f"folder:{used / 'query_images'}", "--out", used / "q.parquet")
    assert done.returncode == 0, done.stderr[-3000:]
    script = textwrap.dedent(f"""
        import json, numpy as np, pyarrow.parquet as pq
        table = pq.read_table({str(used / 'q.parquet')!r})
        vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
        print(json.dumps({{"columns": table.column_names, "names": table.column("name").to_pylist(),
                          "labels": table.column("label").to_pylist(),
                          "classes": table.column("class_name").to_pylist(), "vectors": vectors.tolist(),
                          "metric": table.schema.metadata[b"metric"].decode()}}))
    """)
    read = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr[-2000:]
    got = json.loads(read.stdout)
    run, queries = load_run(used / "run"), load_spec(f"folder:{used / 'query_images'}")
    assert got["columns"] == ["name", "label", "class_name", "embedding"] and got["metric"] == run.metric
    assert got["names"] == queries.names and got["labels"] == queries.labels.tolist()
    assert got["classes"] == [queries.class_names[label] for label in queries.labels]
    np.testing.assert_array_equal(np.asarray(got["vectors"], np.float32), run.embed(queries))


def test_the_run_api_works_in_a_fresh_process_that_imports_only_reprlearn(used):
    probe = load_spec(f"folder:{used / 'query_images'}")
    np.save(used / "probe.npy", probe.pixels(np.arange(len(probe))))
    script = textwrap.dedent(f"""
        import json, numpy as np, reprlearn
        run = reprlearn.load_run({str(used / 'run')!r})
        images = np.load({str(used / 'probe.npy')!r})
        labels = np.arange(len(images)) % 3
        gallery = run.gallery(images, labels)
        same, other = run.verify(images[0], images[0]), run.verify(images[0], images[-1])
        print(json.dumps({{"embedding": run.embed(images[:2]).tolist(), "n": len(gallery),
                          "fingerprint": gallery.model_fingerprint, "same": same, "other": other}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    run = load_run(used / "run")
    np.testing.assert_array_equal(np.float32(out["embedding"]), run.embed(probe.pixels([0, 1])))
    assert out["n"] == len(probe) and out["fingerprint"] == run.model_fingerprint
    threshold = run.report["metrics"]["verification"]["threshold"]
    assert out["same"] == {"distance": 0.0, "threshold": threshold, "match": True}
    assert out["other"]["distance"] > 0 and out["other"]["match"] == (out["other"]["distance"] <= threshold)


def test_the_served_identify_signature_answers_like_the_gallery(used):
    if not (used / "gallery").is_dir():
        assert reprlearn("index", used / "run", "--data", f"folder:{used / 'gallery_images'}", "--out",
                         used / "gallery").returncode == 0
    done = reprlearn("export", used / "run", "--out", used / "serving", "--format", "saved_model", "--gallery",
                     used / "gallery", "--k", 4)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "identify" in done.stdout
    queries = load_spec(f"folder:{used / 'query_images'}")
    np.save(used / "query.npy", queries.pixels(np.arange(len(queries))))
    script = textwrap.dedent(f"""
        import json, numpy as np, tensorflow as tf
        served = tf.saved_model.load({str(used / 'serving' / 'digits_run' / '1')!r}).signatures["identify"]
        out = served(images=tf.constant(np.load({str(used / 'query.npy')!r})))
        print(json.dumps({{"label": out["label"].numpy().tolist(), "accepted": out["accepted"].numpy().tolist(),
                          "ids": [[i.decode() for i in row] for row in out["ids"].numpy()],
                          "distances": out["distances"].numpy().tolist()}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    run, gallery = load_run(used / "run"), Gallery.load(used / "gallery")
    want = gallery.identify(run.embed(queries), k=4)
    assert served["label"] == want.labels.tolist() and served["accepted"] == want.accepted.tolist()
    assert served["ids"] == want.neighbour_ids.tolist()
    np.testing.assert_allclose(served["distances"], want.distances, atol=1e-6)
    # Export's own gate ran the same comparison on the run's test split.
    check = json.loads((used / "serving" / "digits_run" / "artifacts" / "1" / "identify.json").read_text())
    assert check["decisions_equal"] == check["queries"] == len(run.evaluation["test_labels"])


def test_verify_from_the_command_line(used):
    files = sorted((used / "query_images").rglob("*.png"))
    done = reprlearn("verify", used / "run", files[0], files[-1])
    assert done.returncode == 0, done.stderr[-3000:]
    want = load_run(used / "run").verify(np.asarray(Image.open(files[0]))[..., None],
                                         np.asarray(Image.open(files[-1]))[..., None])
    assert f"distance {want['distance']:.4f}" in done.stdout
    assert done.stdout.strip().endswith("no match" if not want["match"] else ": match")


def test_bad_input_is_refused_with_the_argument_named(used, tmp_path):
    (tmp_path / "big").mkdir()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "big" / "a.png")
    files = sorted((used / "query_images").rglob("*.png"))
    done = reprlearn("verify", used / "run", files[0], tmp_path / "big.png")
    assert done.returncode == 2 and "image_b must be [8, 8, 1] for this run's model. Received: image_b.shape=(10, 10)" \
        in done.stderr
    # A folder is decoded at the run's image size (its data.resize): a 10 × 10 photo is embedded, not refused.
    done = reprlearn("embed", used / "run", "--data", f"folder:{tmp_path}", "--out", tmp_path / "e.npz")
    assert done.returncode == 0 and "1 embeddings of dimension" in done.stdout, done.stderr[-2000:]
    done = reprlearn("embed", used / "run", "--data", "digits", "--out", tmp_path / "e.csv")
    assert done.returncode == 2 and "--out must name a .npz or .parquet file" in done.stderr
    done = reprlearn("embed", used / "run", "--data", "digits:val", "--out", tmp_path / "e.npz")
    assert done.returncode == 2 and "digits has the splits ['all']" in done.stderr
    # A gallery enrolled by another model is refused.
    gallery = Gallery(model_fingerprint="another-run", threshold=1.0)
    gallery.add(np.zeros((2, 16), np.float32), [0, 1])
    gallery.save(tmp_path / "other")
    done = reprlearn("identify", used / "run", "--gallery", tmp_path / "other", "--data", "digits", "--out",
                     tmp_path / "r.csv")
    assert done.returncode == 2 and "enrolled by another model" in done.stderr
    assert not (tmp_path / "r.csv").exists()


def test_evaluate_rescores_a_run_on_other_data_without_touching_it(used):
    # The run is the session's shared digits run: other modules on this worker may have evaluated it on other data.
    evaluations = used / "run" / "evaluations"
    earlier = set(evaluations.iterdir()) if evaluations.is_dir() else set()
    before = {path: path.read_bytes() for path in (used / "run").iterdir() if path.is_file()}
    done = reprlearn("evaluate", used / "run", "--data", f"folder:{used / 'query_images'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert {path: path.read_bytes() for path in (used / "run").iterdir() if path.is_file()} == before
    folders = sorted(set(evaluations.iterdir()) - earlier)
    assert len(folders) == 1 and (folders[0] / "report.md").is_file()
    report = json.loads((folders[0] / "report.json").read_text())
    run, queries = load_run(used / "run"), load_spec(f"folder:{used / 'query_images'}")
    from reprlearn.metrics import retrieval_metrics
    want = retrieval_metrics(run.embed(queries), queries.labels, run.metric, seed=run.config.data.seed)
    assert report["metrics"]["test"]["map_at_r"] == pytest.approx(want["map_at_r"])
    assert report["metrics"]["verification"]["threshold"] == run.report["metrics"]["verification"]["threshold"]


def test_n_shot_draws_take_n_per_class_and_query_the_rest():
    from reprlearn.evaluation.transfer import n_shot_draw

    labels = np.array([0] * 5 + [1] * 3 + [2] * 2)
    support, queries = n_shot_draw(labels, 2, np.random.default_rng(0))
    assert np.bincount(labels[support]).tolist() == [2, 2, 1]  # a 2-item class keeps one query
    assert sorted(support.tolist() + queries.tolist()) == list(range(10))
    assert np.bincount(labels[queries]).tolist() == [3, 1, 1]


@pytest.mark.slow   # ~15 s: every transfer approach trained
def test_transfer_scores_every_approach_on_the_same_draws(used):
    from reprlearn.evaluation.transfer import APPROACHES, n_shot_draw, transfer_study

    run = load_run(used / "run")
    report = transfer_study(run, shots=(1, 5), draws=2, steps=20)
    images, labels = run.evaluation["test_images"], run.evaluation["test_labels"]
    assert report["target_classes"] == [5, 6, 7, 8, 9]
    # The raw-pixel L2 baseline, recomputed with a plain 1-NN loop on the same draws.
    for n in (1, 5):
        accuracies = []
        for draw in range(2):
            support, queries = n_shot_draw(labels, n, np.random.default_rng([0, n, draw]))
            pixels = images.reshape(len(images), -1).astype(np.float64) / 255.0
            nearest = [support[np.argmin(np.sum((pixels[support] - pixels[q]) ** 2, axis=1))] for q in queries]
            accuracies.append(np.mean(labels[nearest] == labels[queries]))
        assert report["shots"][str(n)]["top1"]["raw pixels k-NN (L2)"]["mean"] == pytest.approx(np.mean(accuracies))
        for name in APPROACHES:
            assert 0.0 <= report["shots"][str(n)]["top1"][name]["mean"] <= 1.0
            assert len(report["shots"][str(n)]["top1"][name]["draws"]) == 2
        for scores in report["shots"][str(n)]["open_set"].values():
            assert 0.0 <= scores["dir_mean"] <= 1.0 and 0.0 <= scores["far_reached"] <= 1.0
    # More examples per class help the frozen embedding's k-NN.
    assert report["shots"]["5"]["top1"]["frozen k-NN"]["mean"] > report["shots"]["1"]["top1"]["frozen k-NN"]["mean"]
    assert report["thresholds"]["frozen k-NN"] == run.rejection_threshold(0.01)
    assert set(report["shots"]["1"]["open_set"]) == {*report["thresholds"], "frozen + head", "fine-tuned"}


def test_softmax_open_set_accepts_the_top_class_above_a_threshold_fit_on_impostors():
    import keras

    from reprlearn.index import impostor_threshold
    from reprlearn.evaluation.transfer import _softmax_open_set

    # Logits in, probabilities out: the test picks each query's top probability directly.
    model = keras.Sequential([keras.Input((2,)), keras.layers.Softmax()])
    impostors = np.array([[0.0, 0.1], [0.0, 0.5], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]], np.float32)
    queries = np.array([[4.0, 0.0], [0.0, 0.2], [0.0, 4.0], [5.0, 0.0], [0.0, 0.3]], np.float32)
    query_y = np.array([7, 9, 9, 4, 4])  # class 4 is not enrolled; enrolled: 7 (column 0), 9 (column 1)
    far = 0.2
    impostor_top = np.exp(impostors).max(1) / np.exp(impostors).sum(1)
    # Accept when 1 − top ≤ τ: at most ⌊0.2 · 5⌋ = 1 impostor, the one with the highest top probability.
    threshold = impostor_threshold(1 - impostor_top, far)
    assert np.sum(1 - impostor_top <= threshold) == 1 and np.sum(1 - impostor_top <= np.nextafter(
        np.float32(threshold), np.float32(1))) == 2
    query_top = np.exp(queries).max(1) / np.exp(queries).sum(1)
    accepted = 1 - query_top <= threshold
    predicted = np.array([7, 9])[np.argmax(queries, 1)]
    genuine = query_y != 4
    got = _softmax_open_set(model, queries, query_y, np.array([7, 9]), impostors, far)
    assert got == pytest.approx({"dir": np.mean(accepted[genuine] & (predicted[genuine] == query_y[genuine])),
                                 "far": np.mean(accepted[~genuine])})
    assert got["dir"] == pytest.approx(2 / 3) and got["far"] == 0.5  # (4, 0) and (0, 4) pass; (5, 0) of class 4 too


def test_transfer_refuses_a_run_whose_test_classes_it_trained_on(used):
    from dataclasses import replace

    from reprlearn.evaluation.transfer import transfer_study

    run = load_run(used / "run")
    seen = replace(run, record={**run.record, "data": {**run.record["data"], "train_classes": [0, 1, 5]}})
    with pytest.raises(ValueError, match=r"never trained on: its test split holds training classes \[5\]"):
        transfer_study(seen)
    done = reprlearn("transfer", used / "run", "--shots", 1, "--draws", 1, "--steps", 5)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (used / "run" / "transfer" / "report.md").is_file() and "frozen + head" in done.stdout


def test_embed_writes_chunk_by_chunk_the_same_files(used, monkeypatch):
    import pyarrow.parquet as pq

    import reprlearn.runs.api as api

    monkeypatch.setattr(api, "EMBED_CHUNK", 7)  # 100 queries: 15 chunks, the last of 2
    for suffix in ("npz", "parquet"):
        done = reprlearn("embed", used / "run", "--data", f"folder:{used / 'query_images'}", "--out",
                         used / f"chunked.{suffix}")
        assert done.returncode == 0, done.stderr[-3000:]
    run, queries = load_run(used / "run"), load_spec(f"folder:{used / 'query_images'}")
    want = run.embed(queries)
    with np.load(used / "chunked.npz") as saved:  # batches of 7 through the model: equal to float32 rounding
        np.testing.assert_allclose(saved["embeddings"], want, rtol=1e-5, atol=1e-6)
        assert saved["names"].tolist() == queries.names and saved["labels"].tolist() == queries.labels.tolist()
        assert saved["class_names"].tolist() == queries.class_names
    parquet = pq.ParquetFile(used / "chunked.parquet")
    assert parquet.metadata.num_row_groups == 15 and parquet.schema_arrow.metadata[b"metric"].decode() == run.metric
    table = parquet.read()
    np.testing.assert_allclose(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), want, rtol=1e-5,
                               atol=1e-6)
    assert table.column("name").to_pylist() == queries.names
    assert not list(used.glob("*.tmp*"))  # the temporary files are gone
