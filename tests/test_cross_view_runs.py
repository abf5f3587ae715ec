"""Two-tower runs end to end: arrays and pair CSVs in, a report with raw-pixel and shared-tower rows out, towers that
reload in a fresh process; bad pair data and bad configs refused with one clear line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import reprlearn  # noqa: F401
from reprlearn.config import config_from_dict
from reprlearn.data.cross_view_views import write_pair_csv
from reprlearn.data.loaders import Decoding
from reprlearn.data.pairs import load_pairs, pair_splits_for
from reprlearn.errors import ConfigError, DataError, DatasetNotFoundError
from reprlearn.evaluation.cross_view import score_towers
from reprlearn.models.two_tower import build_two_towers
from reprlearn.training import run_training
from tests.pair_data import digit_pairs, digit_views

RUN = {"model": {"kind": "two_tower", "filters": [16, 32], "dense": 64, "embedding_dim": 32, "polar_size": [8, 32],
                 "circular": True},
       "loss": {"name": "soft_margin_triplet"},
       "train": {"epochs": 2, "steps_per_epoch": 100, "pair_batch_size": 64, "learning_rate": 2e-3}}


@pytest.fixture(scope="module")
def array_run(tmp_path_factory):
    train, test = digit_pairs()
    out = tmp_path_factory.mktemp("two_towers") / "run"
    cfg = config_from_dict(RUN)
    report = run_training(cfg, out, sets={"train": train, "test": test}, verbose=0)
    return cfg, out, report, test


def test_two_towers_learn_beyond_raw_pixels_the_untrained_towers_and_one_shared_tower(array_run):
    cfg, out, report, test = array_run
    m = report["metrics"]
    trained = m["test"]["query_to_reference"]["recall_at_1"]
    raw = max(m["baseline_raw"]["query_to_reference"]["recall_at_1"],
              m["baseline_raw_cosine"]["query_to_reference"]["recall_at_1"])
    untrained = score_towers(*build_two_towers(cfg.model, (8, 32, 1), (16, 16, 1)), test, "L2")
    assert raw < 0.1 and untrained["query_to_reference"]["recall_at_1"] < 0.5   # far from 1.0
    assert trained > max(raw, untrained["query_to_reference"]["recall_at_1"]) + 0.1
    assert trained > m["shared_tower"]["query_to_reference"]["recall_at_1"] + 0.1
    assert m["test"]["reference_to_query"]["recall_at_1"] > untrained["reference_to_query"]["recall_at_1"] + 0.1
    # Both directions, Recall@1/5/10/1% with its k, on the classes never trained on (digits 5-9).
    scores = m["test"]["query_to_reference"]
    assert scores["queries"] == len(test) and scores["k_at_1pct"] == int(np.ceil(len(test) / 100))
    assert scores["recall_at_1"] <= scores["recall_at_5"] <= scores["recall_at_10"]
    assert "val_recall_at_1" in report["train"]["history"][-1]
    text = (out / "report.md").read_text()
    assert "one shared tower" in text and "raw pixels, cosine" in text and "reference to query" in text


def test_the_towers_reload_in_a_fresh_process_to_the_same_embeddings(array_run):
    _, out, _, test = array_run
    queries, references = test.query.images[:20], test.reference.images[:20]
    np.save(out / "probe_q.npy", queries)
    np.save(out / "probe_r.npy", references)
    code = (f"import keras, numpy as np, reprlearn\n"
            f"q = keras.saving.load_model({str(out / 'query.keras')!r})\n"
            f"r = keras.saving.load_model({str(out / 'reference.keras')!r})\n"
            f"np.save({str(out / 'fresh_q.npy')!r}, q.predict(np.load({str(out / 'probe_q.npy')!r}), verbose=0))\n"
            f"np.save({str(out / 'fresh_r.npy')!r}, r.predict(np.load({str(out / 'probe_r.npy')!r}), verbose=0))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    import keras

    here_q = keras.saving.load_model(out / "query.keras").predict(queries, verbose=0)
    here_r = keras.saving.load_model(out / "reference.keras").predict(references, verbose=0)
    np.testing.assert_array_equal(np.load(out / "fresh_q.npy"), here_q)
    np.testing.assert_array_equal(np.load(out / "fresh_r.npy"), here_r)


def test_the_same_command_again_changes_nothing(array_run):
    cfg, out, report, _ = array_run
    train, test = digit_pairs()
    again = run_training(cfg, out, sets={"train": train, "test": test}, verbose=0)
    assert again["metrics"]["test"] == report["metrics"]["test"]


@pytest.fixture(scope="module")
def pair_csv(tmp_path_factory):
    """A pair CSV of PNG files (train, validation, test), one listed file missing and one corrupt."""
    queries, references, classes = digit_views(seed=1)
    root = tmp_path_factory.mktemp("pairs")
    train, test = np.flatnonzero(classes < 5)[:300], np.flatnonzero(classes >= 5)[:120]
    val = np.flatnonzero(classes < 5)[300:360]
    path = write_pair_csv(root, {name: (queries[index], references[index], index)
                                 for name, index in (("train", train), ("validation", val), ("test", test))})
    (root / "train" / "query" / "000003.png").write_bytes(b"not an image")
    with open(path, "a") as f:
        f.write("train/query/missing.png,train/reference/000000.png,99999,train\n")
    return root, path


@pytest.mark.slow
def test_a_pair_csv_streams_and_lists_the_pairs_it_left_out(pair_csv, tmp_path):
    root, path = pair_csv
    cfg = config_from_dict({**RUN, "data": {"name": f"csv:{path}"},
                            "train": {**RUN["train"], "epochs": 1, "steps_per_epoch": 10},
                            "eval": {"shared_baseline": False}})
    with pytest.warns(UserWarning, match="2 pairs left out"):
        report = run_training(cfg, tmp_path / "run", verbose=0)
    skipped = dict(report["files"]["skipped_pairs"])
    assert any("missing.png" in key and why == "missing" for key, why in skipped.items())
    assert any("000003.png" in key and "not an image" in why for key, why in skipped.items())
    assert report["data"]["n_train"] == 299 and report["data"]["n_test"] == 120 and report["data"]["n_val"] == 60
    assert report["data"]["image_shape"] == [8, 32, 1] and report["data"]["reference_shape"] == [16, 16, 1]
    assert "shared_tower" not in report["metrics"]
    assert "Pairs left out" in (tmp_path / "run" / "report.md").read_text()
    cfg.data.on_bad_image = "error"
    with pytest.raises(DataError, match="2 pairs have a missing or unusable file"):
        run_training(cfg, tmp_path / "refused", verbose=0)
    assert not (tmp_path / "refused").exists()


def test_a_csv_without_query_and_reference_columns_names_the_columns_found(tmp_path):
    (tmp_path / "p.csv").write_text("path,label\na.png,0\n")
    with pytest.raises(DataError, match=r"query,reference.*Received: columns=\['path', 'label'\]"):
        load_pairs(f"csv:{tmp_path / 'p.csv'}", Decoding(), Decoding())
    with pytest.raises(DatasetNotFoundError, match="pair CSV not found"):
        load_pairs(f"csv:{tmp_path / 'none.csv'}", Decoding(), Decoding())


def test_swapped_query_and_reference_columns_are_refused(pair_csv, tmp_path):
    _, path = pair_csv
    lines = open(path).read().splitlines()
    swapped = tmp_path / "swapped.csv"
    root = path.rsplit("/", 1)[0]
    swapped.write_text("reference,query,label,split\n" + "\n".join(
        ",".join([f"{root}/{cells[0]}", f"{root}/{cells[1]}", cells[2], cells[3]])
        for cells in (line.split(",") for line in lines[1:6])) + "\n")
    with pytest.raises(DataError, match="look swapped"):
        load_pairs(f"csv:{swapped}", Decoding((8, 32)), Decoding((16, 16)))


def test_a_pair_folder_matches_files_by_stem_and_lists_the_unmatched(pair_csv, tmp_path):
    root, _ = pair_csv
    import shutil

    for view in ("query", "reference"):
        shutil.copytree(root / "test" / view, tmp_path / "folder" / view)
    (tmp_path / "folder" / "query" / "000000.png").rename(tmp_path / "folder" / "query" / "lonely.png")
    with pytest.warns(UserWarning, match="left out"):
        parts, skipped, labelled = load_pairs(f"folder:{tmp_path / 'folder'}", Decoding(), Decoding())
    assert len(parts["all"]) == 119 and not labelled
    reasons = dict(skipped)
    assert reasons["query/lonely.png"] == "no reference file named lonely.*"
    assert reasons["reference/000000.png"] == "no query file named 000000.*"
    assert parts["all"].query.image_shape == (8, 32, 1) and parts["all"].reference.image_shape == (16, 16, 1)


def test_one_to_many_pairs_share_their_place_and_are_scored_against_distinct_references(tmp_path):
    queries, references, _ = digit_views()
    # Two queries for each of 30 references: the CSV lists each reference twice, without a label column.
    root = tmp_path / "many"
    write_pair_csv(root, {"all": (queries[:60], references[:60], np.arange(60))})
    lines = (root / "pairs.csv").read_text().splitlines()[1:]
    rows = ["query,reference"] + [f"{line.split(',')[0]},all/reference/{i // 2:06d}.png"
                                  for i, line in enumerate(lines)]
    (root / "many.csv").write_text("\n".join(rows) + "\n")
    cfg = config_from_dict({**RUN, "data": {"name": f"csv:{root / 'many.csv'}"}})
    splits = pair_splits_for(cfg.data)
    every = np.concatenate([part.labels for part in (splits.train, splits.val, splits.test)])
    assert len(every) == 60 and len(np.unique(every)) == 30 and np.all(np.bincount(every) == 2)
    assert len(splits.test.references()) == len(np.unique(splits.test.labels)) == len(splits.test) // 2


@pytest.mark.parametrize("section, key, value, message", [
    ("model", "share", "head", "set model.kind: two_tower"),
    ("loss", "name", "info_nce", "set model.kind: two_tower"),
    ("model", "polar_size", [8, 32], "set model.kind: two_tower"),
])
def test_two_tower_keys_without_two_towers_are_refused(section, key, value, message):
    raw = {"data": {"name": "digits"}, section: {key: value}}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


@pytest.mark.parametrize("change, message", [
    ({"loss": {"name": "am_softmax"}}, "two towers train with"),
    ({"loss": {"name": "soft_margin_triplet", "learn_temperature": True}}, "learn_temperature learns InfoNCE"),
    ({"model": {**RUN["model"], "tower": "mlp"}}, "model.circular wraps conv towers"),
    ({"model": {**RUN["model"], "polar_size": [8]}}, "model.polar_size must be"),
])
def test_bad_two_tower_configs_are_refused_before_anything_is_built(change, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({**RUN, "data": {"name": "csv:p.csv"}, **change})


@pytest.mark.slow
def test_every_loss_trains_two_towers_on_pairs(tmp_path):
    train, test = digit_pairs()
    for i, loss in enumerate(({"name": "info_nce", "learn_temperature": True}, {"name": "info_nce", "temperature": 0.1},
                              {"name": "triplet_semihard", "margin": 0.2})):
        cfg = config_from_dict({**RUN, "loss": loss, "train": {**RUN["train"], "epochs": 1},
                                "eval": {"shared_baseline": False}})
        report = run_training(cfg, tmp_path / str(i), sets={"train": train, "test": test},
                              verbose=0)
        assert report["metrics"]["test"]["query_to_reference"]["recall_at_1"] > 0.025, loss  # untrained: 0.003
        json.dumps(report)  # report.json is plain JSON


@pytest.mark.slow
def test_the_command_line_trains_two_towers_from_a_pair_csv_and_other_commands_say_what_they_do_not_serve(
        pair_csv, tmp_path):
    _, path = pair_csv
    reprlearn_cli = [sys.executable, "-m", "reprlearn.cli"]
    sets = ["--set", f"data.name=csv:{path}", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=5",
            "--set", "eval.shared_baseline=false", "--set", "data.cache=memory"]
    config = tmp_path / "two.yaml"
    config.write_text(json.dumps({**RUN, "data": {"name": "csv:pairs.csv"}}))
    done = subprocess.run([*reprlearn_cli, "train", str(config), "--out", str(tmp_path / "run"), *sets, "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Test queries → references: Recall@1" in done.stdout and "one shared tower not trained" in done.stdout
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["metrics"]["test"]) == {"query_to_reference", "reference_to_query"}
    refused = subprocess.run([*reprlearn_cli, "transfer", str(tmp_path / "run")],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].count("two-tower run") == 1
    assert "Traceback" not in refused.stderr


class _StopAfterFirstEpoch(__import__("keras").callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt("stopped after epoch 1")


def test_an_interrupted_two_tower_run_resumes_from_its_checkpoint(tmp_path, capsys):
    train, test = digit_pairs()
    cfg = config_from_dict({**RUN, "train": {**RUN["train"], "steps_per_epoch": 10},
                            "eval": {"shared_baseline": False}})
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "run", sets={"train": train, "test": test}, verbose=0,
                     callbacks=[_StopAfterFirstEpoch()])
    assert not (tmp_path / "run" / "report.json").exists()
    report = run_training(cfg, tmp_path / "run", sets={"train": train, "test": test}, verbose=1)
    assert "Resuming from" in capsys.readouterr().out
    assert report["train"]["resumed_from_epoch"] == 1 and len(report["train"]["history"]) == 2


@pytest.mark.slow
def test_two_towers_train_under_mixed_precision_with_float32_embeddings(tmp_path):
    train, test = digit_pairs()
    cfg = config_from_dict({**RUN, "train": {**RUN["train"], "epochs": 1, "steps_per_epoch": 20,
                                             "mixed_precision": "mixed_float16"},
                            "eval": {"shared_baseline": False}})
    report = run_training(cfg, tmp_path / "run", sets={"train": train, "test": test}, verbose=0)
    assert np.isfinite(report["train"]["history"][-1]["loss"])
    import keras

    query = keras.saving.load_model(tmp_path / "run" / "query.keras")
    assert query.predict(test.query.images[:4], verbose=0).dtype == np.float32
