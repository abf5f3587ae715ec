"""Using and serving a two-tower run: `load_run`, galleries of references enrolled by the reference tower (every
backend), `identify` / `evaluate` / `verify` / `embed` with the query tower, and an export whose SavedModel has
`embed_query` and `embed_reference` and whose TFLite and ONNX files exist per tower, gated on Recall@1."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import reprlearn  # noqa: F401
from reprlearn.config import config_from_dict
from reprlearn.data.cross_view_views import write_pair_csv
from reprlearn.errors import RunFolderError
from reprlearn.evaluation.cross_view import score_towers
from reprlearn.export.run import _gate
from reprlearn.runs import TwoTowerRun, load_run
from reprlearn.training import run_training
from tests.pair_data import digit_views

# Every test on the trained run is marked slow (the run trains for 20 s, each command is a fresh process);
# `make test-all` runs them.
CLI = [sys.executable, "-m", "reprlearn.cli"]
RUN = {"model": {"kind": "two_tower", "filters": [16, 32], "dense": 64, "embedding_dim": 32, "polar_size": [8, 32],
                 "circular": True},
       "loss": {"name": "info_nce", "learn_temperature": True},
       "train": {"epochs": 2, "steps_per_epoch": 60, "pair_batch_size": 64, "learning_rate": 2e-3},
       "eval": {"shared_baseline": False}}
PLACES = 40  # test places written as folders for the gallery commands


def _cli(*args, timeout=600):
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A two-tower run trained on a pair CSV (files), and the test places written as class folders: each place's
    reference under refs/<place>/ and its query under queries/<place>/."""
    queries, references, classes = digit_views(seed=2)
    root = tmp_path_factory.mktemp("serving")
    train, val = np.flatnonzero(classes < 5)[:600], np.flatnonzero(classes < 5)[600:700]
    test = np.flatnonzero(classes >= 5)[:200]
    path = write_pair_csv(root / "pairs", {name: (queries[index], references[index], index)
                                           for name, index in (("train", train), ("validation", val),
                                                               ("test", test))})
    cfg = config_from_dict({**RUN, "data": {"name": f"csv:{path}"}})
    report = run_training(cfg, root / "run", verbose=0)
    for folder, images in (("refs", references), ("queries", queries)):
        for place in test[:PLACES]:
            (root / folder / f"place{place}").mkdir(parents=True)
            Image.fromarray(np.clip(np.round(images[place][..., 0]), 0, 255).astype(np.uint8)).save(
                root / folder / f"place{place}" / "0.png")
    return root, report, path


@pytest.mark.slow
def test_a_two_tower_run_loads_with_its_towers_its_pairs_and_a_threshold_fit_on_validation(served):
    root, report, _ = served
    run = load_run(root / "run")
    assert isinstance(run, TwoTowerRun) and run.kind == "two_tower"
    assert run.model.input_shape[1:] == (8, 32, 1) and run.reference_model.input_shape[1:] == (16, 16, 1)
    test = run.split("test")
    assert len(test) == 200 and test.query.streamed and len(run.split("val")) == 100
    # The test pairs come back from their files: the towers score them as the run's report did.
    again = score_towers(run.model, run.reference_model, test, run.metric)
    assert again["query_to_reference"]["recall_at_1"] == pytest.approx(
        report["metrics"]["test"]["query_to_reference"]["recall_at_1"], abs=1e-9)
    verification = report["metrics"]["verification"]
    assert verification["split"] == "val" and run.verification_threshold == verification["threshold"]
    assert verification["test_accuracy"] > 0.6   # a query with its own reference vs another place's
    # Each view through its own tower: a reference image is refused by the query tower, naming both.
    reference = test.reference.pixels([0])
    assert run.embed(reference, view="reference").shape == (1, 32)
    with pytest.raises(ValueError, match=r"query tower.*images.shape=\(1, 16, 16, 1\)"):
        run.embed(reference)
    with pytest.raises(ValueError, match="view must be one of"):
        run.embed(reference, view="overhead")
    far = run.rejection_threshold(0.05)
    assert np.isfinite(far) and far > 0


@pytest.mark.slow
def test_index_enrols_references_and_identify_asks_with_the_query_tower_alike_on_every_backend(served):
    root, _, _ = served
    pytest.importorskip("pymilvus", reason="the milvus extra (in dev) is not installed")
    run = load_run(root / "run")
    names = sorted(p.name for p in (root / "refs").iterdir())
    refs = np.stack([np.asarray(Image.open(root / "refs" / n / "0.png"), np.float32)[..., None] for n in names])
    asks = np.stack([np.asarray(Image.open(root / "queries" / n / "0.png"), np.float32)[..., None] for n in names])
    q, r = run.embed(asks), run.embed(refs, view="reference")
    # The towers' own ranking, in NumPy: what every backend's rank-1 must equal.
    rank_1 = np.mean(np.argmin(((q[:, None] - r[None]) ** 2).sum(-1), axis=1) == np.arange(PLACES))
    answers = {}
    for backend in ("exact", "faiss-flat", "milvus"):
        gallery = root / f"gallery-{backend}"
        said = _cli("index", root / "run", "--data", f"folder:{root / 'refs'}", "--out", gallery, "--backend",
                    backend)
        assert f"Enrolled {PLACES} items of {PLACES} classes" in said
        _cli("identify", root / "run", "--gallery", gallery, "--data", f"folder:{root / 'queries'}", "--k", 3,
             "--out", root / f"found-{backend}.csv")
        _cli("evaluate", root / "run", "--gallery", gallery, "--data", f"folder:{root / 'queries'}")
        report = json.loads(next((root / "run" / "evaluations").glob("folder_*/identification.json")).read_text())
        assert report["backend"] == backend and report["genuine"] == PLACES
        assert report["rank_1"] == pytest.approx(rank_1, abs=1e-9)
        answers[backend] = list(csv.DictReader((root / f"found-{backend}.csv").open()))
    first = answers["exact"]
    for backend in ("faiss-flat", "milvus"):
        assert len(answers[backend]) == len(first) == PLACES
        for want, got in zip(first, answers[backend]):
            # The same decisions and neighbours; distances equal to float32 rounding.
            assert {k: v for k, v in want.items() if "distance" not in k} == {
                k: v for k, v in got.items() if "distance" not in k}, backend
            np.testing.assert_allclose([float(v) for k, v in got.items() if "distance" in k],
                                       [float(v) for k, v in want.items() if "distance" in k], atol=1e-5)


@pytest.mark.slow
def test_evaluate_scores_new_pairs_and_embed_verify_use_each_tower(served):
    root, report, path = served
    said = _cli("evaluate", root / "run", "--data", f"csv:{path}")
    assert "Recall@1" in said and "raw pixels" in said
    folder = next((root / "run" / "evaluations").glob("csv_*"))
    again = json.loads((folder / "report.json").read_text())
    # The CSV's test rows are the run's own test pairs: the same Recall@1 as the training report.
    assert again["metrics"]["test"]["query_to_reference"]["recall_at_1"] == pytest.approx(
        report["metrics"]["test"]["query_to_reference"]["recall_at_1"], abs=1e-9)
    assert again["metrics"]["verification"]["accuracy"] == pytest.approx(
        report["metrics"]["verification"]["test_accuracy"], abs=1e-9)
    for view, width in (("query", 32), ("reference", 32)):
        out = root / f"{view}.npz"
        said = _cli("embed", root / "run", "--data", f"folder:{root / ('queries' if view == 'query' else 'refs')}",
                    "--out", out, "--view", view)
        assert f"the {view} tower" in said
        with np.load(out) as arrays:
            assert arrays["embeddings"].shape == (PLACES, width)
    place = sorted(p.name for p in (root / "refs").iterdir())[0]
    said = _cli("verify", root / "run", root / "queries" / place / "0.png", root / "refs" / place / "0.png")
    assert "threshold" in said and "distance" in said
    refused = subprocess.run([*CLI, "transfer", str(root / "run")], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "two-tower run" in refused.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_export_writes_both_towers_and_a_served_identify_that_a_fresh_process_loads(served):
    root, report, _ = served
    gallery = root / "gallery-export"
    _cli("index", root / "run", "--data", f"folder:{root / 'refs'}", "--out", gallery)
    _cli("export", root / "run", "--out", root / "models", "--quantize", "none,float16", "--gallery", gallery)
    artifacts = root / "models" / "run" / "artifacts" / "1"
    names = sorted(p.name for p in artifacts.iterdir())
    assert {"query-float32.tflite", "reference-float32.tflite", "query-float16.tflite", "reference-float16.tflite",
            "query.onnx", "reference.onnx", "identify.json"} <= set(names)
    parity = json.loads((artifacts / "parity.json").read_text())
    assert parity["keras_recall_at_1"] == pytest.approx(
        report["metrics"]["test"]["query_to_reference"]["recall_at_1"], abs=1e-9)
    assert {"embed_query", "embed_reference", "embed_reference_encoded", "identify", "verify"} <= set(
        parity["signatures"])
    assert all(_gate(row, "recall_at_1") is None for row in parity["formats"])
    assert json.loads((artifacts / "identify.json").read_text())["decisions_equal"] == 200
    # A fresh process with TensorFlow alone: each signature embeds with its own tower, bytes as pixels.
    run = load_run(root / "run")
    place = sorted(p.name for p in (root / "refs").iterdir())[0]
    want_q = run.embed(run.read_image(root / "queries" / place / "0.png")[None])
    want_r = run.embed(run.read_image(root / "refs" / place / "0.png", view="reference")[None], view="reference")
    code = (f"import numpy as np, tensorflow as tf\n"
            f"m = tf.saved_model.load({str(root / 'models' / 'run' / '1')!r})\n"
            f"q = tf.io.read_file({str(root / 'queries' / place / '0.png')!r})[None]\n"
            f"r = tf.io.read_file({str(root / 'refs' / place / '0.png')!r})[None]\n"
            f"np.save({str(root / 'served_q.npy')!r}, m.signatures['embed_query_encoded'](image_bytes=q)"
            f"['embedding'].numpy())\n"
            f"np.save({str(root / 'served_r.npy')!r}, m.signatures['embed_reference_encoded'](image_bytes=r)"
            f"['embedding'].numpy())\n"
            f"print(m.signatures['identify_encoded'](image_bytes=q)['labels'].numpy()[0, 0])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(root / "served_q.npy"), want_q, atol=1e-5)
    np.testing.assert_allclose(np.load(root / "served_r.npy"), want_r, atol=1e-5)


def test_the_quantization_gate_of_two_towers_reads_recall_at_1():
    row = {"format": "tflite-int8", "recall_at_1": 0.80, "recall_at_1_drop": 0.05, "max_abs_diff": 0.5}
    assert "recall_at_1 drop 0.0500 exceeds 0.03" in _gate(row, "recall_at_1")
    assert _gate({**row, "recall_at_1_drop": 0.02}, "recall_at_1") is None
    assert "max abs diff" in _gate({**row, "format": "onnx", "max_abs_diff": 2e-4}, "recall_at_1")


@pytest.mark.slow
def test_a_gallery_enrolled_by_two_towers_is_refused_to_a_one_tower_run(served, tmp_path):
    root, _, _ = served
    _cli("index", root / "run", "--data", f"folder:{root / 'refs'}", "--out", tmp_path / "g")
    one = config_from_dict({"data": {"name": "digits"}, "train": {"epochs": 1, "steps_per_epoch": 2}})
    run_training(one, tmp_path / "one", verbose=0)
    refused = subprocess.run([*CLI, "identify", str(tmp_path / "one"), "--gallery", str(tmp_path / "g"), "--data",
                              "digits", "--out", str(tmp_path / "x.csv")], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "was enrolled by another model" in refused.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_tune_searches_two_towers_on_validation_recall_and_retrains_the_best(served, capsys):
    from reprlearn.cli import main

    root, _, path = served
    config = root / "search.yaml"
    config.write_text(json.dumps({**RUN, "data": {"name": f"csv:{path}"},
                                  "train": {**RUN["train"], "epochs": 1, "steps_per_epoch": 10},
                                  "search": {"objective": "val_recall_at_1",
                                             "loss": ["info_nce", "soft_margin_triplet"],
                                             "learning_rate": [0.001, 0.005]}}))
    out = root / "tune"
    assert main(["tune", str(config), "--tuner", "random", "--max-trials", "2", "--out", str(out), "--quiet",
                 "--retrain-best"]) == 0
    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(r["status"] == "COMPLETED" for r in rows)
    assert all(0.0 <= float(r["objective"]) <= 1.0 and r["loss"] in ("info_nce", "soft_margin_triplet")
               for r in rows)
    best = max(rows, key=lambda r: float(r["objective"]))
    report = json.loads((out / "best_run" / "report.json").read_text())
    assert report["config"]["loss"]["name"] == best["loss"]
    # InfoNCE's learnt τ belongs to the config's own loss: a soft-margin trial trains without it.
    assert report["config"]["loss"]["learn_temperature"] == (best["loss"] == "info_nce")
    assert "Retrained best: test Recall@1" in capsys.readouterr().out


def test_a_two_tower_search_is_scored_on_recall_and_refuses_one_tower_keys(tmp_path, capsys):
    from reprlearn.cli import main

    base = {**RUN, "data": {"name": "csv:missing.csv"}}
    for search, message in (({"learning_rate": [0.001, 0.01]}, "a two-tower search scores its trials on "
                                                               "['val_recall_at_1', 'val_recall_at_1pct']"),
                            ({"examples_per_class": [2, 4], "objective": "val_recall_at_1"},
                             "search.examples_per_class is a one-tower key"),
                            ({"loss": ["arcface"], "objective": "val_recall_at_1"}, "trained on matched pairs")):
        config = tmp_path / "c.yaml"
        config.write_text(json.dumps({**base, "search": search}))
        assert main(["tune", str(config), "--out", str(tmp_path / "t")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_changed_test_files_are_named_and_a_run_without_kept_pairs_reloads_them_from_its_source(served, tmp_path):
    import os
    import shutil

    root, report, _ = served
    run_dir = tmp_path / "run"
    shutil.copytree(root / "run", run_dir)
    # An evaluation.npz without the pairs (a run from before they were kept): read again from the CSV, checked.
    with np.load(run_dir / "evaluation.npz") as arrays:
        kept = {name: arrays[name] for name in arrays.files if name.startswith("train_sample")}
    np.savez_compressed(run_dir / "evaluation.npz", **kept)
    run = load_run(run_dir)
    assert len(run.split("test")) == 200 and len(run.split("val")) == 100
    again = score_towers(run.model, run.reference_model, run.split("test"), run.metric)
    assert again["query_to_reference"]["recall_at_1"] == pytest.approx(
        report["metrics"]["test"]["query_to_reference"]["recall_at_1"], abs=1e-9)
    # A test file edited since training: refused, named.
    victim = root / "pairs" / "test" / "reference" / "000003.png"
    saved = victim.read_bytes(), victim.stat()
    try:
        victim.write_bytes(saved[0] + b"\0")
        with pytest.raises(RunFolderError, match=r"test reference files .*000003\.png"):
            load_run(root / "run")
        with pytest.raises(RunFolderError, match="the test pairs of .* have changed"):
            load_run(run_dir)
    finally:
        victim.write_bytes(saved[0])
        os.utime(victim, ns=(saved[1].st_atime_ns, saved[1].st_mtime_ns))
    load_run(root / "run")  # restored: loads again
