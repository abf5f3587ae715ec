"""Run folders as records: artefacts reload in a fresh process, changed configs are refused, export reads the record."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from reprlearn.cli import main
from reprlearn.config import config_from_dict
from reprlearn.data.imageset import ImageSet
from reprlearn.runs import RunFolderError, load_run
from reprlearn.training import run_training

EVAL = {"verification_pairs": 200, "projection": "pca", "projection_points": 50, "projector_points": 20,
        "grid_queries": 2, "grid_neighbours": 3}
SHORT = {"epochs": 1, "steps_per_epoch": 2, "classes_per_batch": 4, "examples_per_class": 4, "batch_size": 32}


def _cfg(model, loss=None, train=None):
    return config_from_dict({"data": {"name": "tiny"}, "model": model, "loss": loss or {},
                             "train": {**SHORT, **(train or {})}, "eval": EVAL})


# Every kind of file a run writes that a user loads, with the model that produces comparable outputs.
RUNS = {
    "in_batch": _cfg({"tower": "conv", "filters": [4], "dense": 16, "embedding_dim": 8},
                     {"name": "triplet_semihard", "margin": 0.2}),
    "pair": _cfg({"tower": "mlp", "hidden": [16], "embedding_dim": 8}, {"name": "pair_contrastive"},
                 {"pair_batch_size": 16}),
    "autoencoder": _cfg({"kind": "autoencoder", "tower": "conv", "filters": [4], "code_dim": 4}),
    "vae": _cfg({"kind": "vae", "tower": "conv", "filters": [4], "code_dim": 2}),
    "backbone": _cfg({"tower": "backbone", "backbone": "MobileNetV2", "backbone_image_size": 32,
                      "embedding_dim": 8}, {"name": "contrastive"}),
}
FILES = {"in_batch": ["model.keras", "checkpoints/last.keras"],
         "pair": ["model.keras", "pair_model.keras", "checkpoints/last.keras"],
         "autoencoder": ["model.keras", "autoencoder.keras", "checkpoints/last.keras"],
         "vae": ["model.keras", "vae.keras", "checkpoints/last.keras"],
         "backbone": ["model.keras", "checkpoints/last.keras"]}


def _outputs(model, probe):
    if hasattr(model, "reconstruct"):  # the VAE: its deterministic reconstruction
        return np.asarray(model.reconstruct(probe))
    if len(model.inputs) == 2:  # the Siamese pair model: distances between probe pairs
        return np.asarray(model.predict([probe, probe[::-1]], verbose=0))
    return np.asarray(model.predict(probe, verbose=0))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_sets_module):
    root = tmp_path_factory.mktemp("runs")
    for name, cfg in RUNS.items():
        run_training(cfg, root / name, sets=tiny_sets_module, verbose=0)
    return root


@pytest.mark.slow
def test_every_artefact_reloads_in_a_fresh_process_that_imports_only_keras_and_reprlearn(runs, tiny_sets_module):
    probe = tiny_sets_module["all"].images[:6].astype(np.float32)
    np.save(runs / "probe.npy", probe)
    expected = {}
    for name, files in FILES.items():
        for file in files:
            expected[f"{name}/{file}"] = _outputs(keras.saving.load_model(runs / name / file), probe)
    np.savez(runs / "expected.npz", **{k.replace("/", "|"): v for k, v in expected.items()})
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import keras
        import reprlearn
        probe = np.load({str(runs / 'probe.npy')!r})
        expected = np.load({str(runs / 'expected.npz')!r})
        for key in expected.files:
            model = keras.saving.load_model({str(runs)!r} + "/" + key.replace("|", "/"))
            if hasattr(model, "reconstruct"):
                got = np.asarray(model.reconstruct(probe))
            elif len(model.inputs) == 2:
                got = np.asarray(model.predict([probe, probe[::-1]], verbose=0))
            else:
                got = np.asarray(model.predict(probe, verbose=0))
            np.testing.assert_array_equal(got, expected[key], err_msg=key)
            print("ok", key)
        assert not [m for m in sys.modules if m.startswith("reprlearn.training")], "loading imported the trainer"
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ok ") == sum(len(files) for files in FILES.values())


@pytest.mark.slow
def test_a_conv_tower_loads_with_keras_alone_and_carries_no_training_objects(runs, tiny_sets_module):
    config = json.loads(__import__("zipfile").ZipFile(runs / "in_batch/model.keras").read("config.json"))
    assert not config.get("compile_config")  # no loss, metrics or optimizer in the user's model file
    probe = tiny_sets_module["all"].images[:4].astype(np.float32)
    np.save(runs / "probe4.npy", probe)
    script = textwrap.dedent(f"""
        import sys, numpy as np, keras
        model = keras.saving.load_model({str(runs / 'in_batch/model.keras')!r}, compile=False)
        np.save({str(runs / 'keras_alone.npy')!r}, model.predict(np.load({str(runs / 'probe4.npy')!r}), verbose=0))
        assert "reprlearn" not in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    want = keras.saving.load_model(runs / "in_batch/model.keras").predict(probe, verbose=0)
    np.testing.assert_array_equal(np.load(runs / "keras_alone.npy"), want)


@pytest.mark.slow
def test_the_record_says_what_made_the_run(runs):
    run = load_run(runs / "in_batch")
    assert run.kind == "embedding" and run.metric == "L2"
    data = run.record["data"]
    assert data["name"] == "arrays" and "Python API" in data["source"]
    assert data["splits"]["test"]["n"] == len(run.evaluation["test_labels"])
    assert len(data["splits"]["test"]["fingerprint"]) == 16
    assert run.record["reprlearn_version"] and run.record["keras_version"] == keras.__version__
    report = json.loads((runs / "in_batch/report.json").read_text())
    assert report["data"]["name"] == "arrays" and report["record"]["metric"] == "L2"
    assert load_run(runs / "autoencoder").metric == "angular"  # what its report ranked with


def test_rerunning_with_a_changed_config_is_refused_and_lists_the_keys(tmp_path, tiny_sets, capsys):
    cfg = RUNS["in_batch"]
    run_training(cfg, tmp_path / "run", sets=tiny_sets, verbose=0)
    before = (tmp_path / "run/config.yaml").read_text()
    changed = config_from_dict({"data": {"name": "tiny"},
                                "model": {"tower": "conv", "filters": [4], "dense": 16, "embedding_dim": 8},
                                "loss": {"name": "triplet_hard", "margin": 0.3}, "train": SHORT, "eval": EVAL})
    with pytest.raises(RunFolderError, match=r"loss\.margin: 0\.2 → 0\.3.*loss\.name: 'triplet_semihard' → "
                                             r"'triplet_hard'"):
        run_training(changed, tmp_path / "run", sets=tiny_sets, verbose=0)
    assert (tmp_path / "run/config.yaml").read_text() == before  # nothing overwritten
    # Other data under the same config is refused too.
    other = ImageSet(tiny_sets["all"].images[::-1].copy(), tiny_sets["all"].labels[::-1].copy(),
                     tiny_sets["all"].class_names)
    with pytest.raises(RunFolderError, match="arrays differ"):
        run_training(cfg, tmp_path / "run", sets={"all": other}, verbose=0)
    # --force starts over with the new config; resume needs a run.
    report = run_training(changed, tmp_path / "run", sets=tiny_sets, verbose=0, force=True)
    assert report["config"]["loss"]["name"] == "triplet_hard" and report["train"]["resumed_from_epoch"] == 0
    with pytest.raises(RunFolderError, match="no run to continue"):
        run_training(cfg, tmp_path / "fresh", sets=tiny_sets, verbose=0, resume=True)
    assert not (tmp_path / "fresh").exists()


def test_cli_refuses_a_changed_config_with_one_line(tmp_path, capsys, digits_config):
    config = digits_config
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--quiet", "--set", "loss.margin=0.9"]) == 2
    err = capsys.readouterr().err
    assert "loss.margin: 0.5 → 0.9" in err and "--force" in err and "Traceback" not in err
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--quiet", "--resume"]) == 0


def test_a_failed_run_leaves_no_folder(tmp_path, tiny_sets):
    bad = _cfg({"tower": "conv", "filters": [4, 4, 4, 4]})  # 12×12 images cannot take 4 poolings
    with pytest.raises(ValueError, match="too small"):
        run_training(bad, tmp_path / "run", sets=tiny_sets, verbose=0)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_python_api_run_exports_and_is_checked_on_its_own_data(runs, tmp_path):
    from reprlearn.export import export_run

    result = export_run(runs / "in_batch", tmp_path / "serving", formats="saved_model", verbose=False)
    report = json.loads((runs / "in_batch/report.json").read_text())
    # Same arrays, same metric: the export's Keras MAP@R is the report's test MAP@R.
    assert result["keras_map_at_r"] == pytest.approx(report["metrics"]["test"]["map_at_r"], abs=1e-6)


def test_export_and_tuning_never_import_the_training_drivers():
    script = ("import sys, reprlearn.export, reprlearn.training.tuning, reprlearn.runs\n"
              "drivers = ('reprlearn.training.run', 'reprlearn.training.embedding', 'reprlearn.training.verifier', "
              "'reprlearn.training.autoencoder', 'reprlearn.training.two_tower')\n"
              "bad = [m for m in sys.modules if m in drivers]\n"
              "assert not bad, bad\n"
              "assert 'reprlearn.training.tuning' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_large_named_dataset_is_reloaded_from_its_record_and_checked(tmp_path, monkeypatch):
    from PIL import Image

    from reprlearn.runs import record

    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(24):  # enough that the validation split holds two of each class
            Image.fromarray((rng.integers(0, 60, (8, 8)) + 50 * c).astype(np.uint8)).save(root / f"class{c}/{i}.png")
    monkeypatch.setattr(record, "EVALUATION_LIMIT_BYTES", 100)  # any named dataset counts as large
    cfg = config_from_dict({"data": {"name": f"folder:{root}"}, "model": {"tower": "mlp", "hidden": [8], "embedding_dim": 4},
                            "train": SHORT, "eval": EVAL})
    report = run_training(cfg, tmp_path / "run", verbose=0)
    with np.load(tmp_path / "run/evaluation.npz") as kept:  # a folder streams: its paths are kept, not pixels
        assert "test_images" not in kept.files and "test_keys" in kept.files
        victim = str(kept["test_keys"][0])
    run = load_run(tmp_path / "run")
    assert len(run.evaluation["test_labels"]) == report["data"]["n_test"] == len(run.split("test"))
    (root / victim).unlink()  # the data changed since training
    with pytest.raises(RunFolderError, match=f"1 test files .* changed, moved or vanished.*{victim}"):
        load_run(tmp_path / "run")


def test_off_a_terminal_progress_is_one_line_per_epoch_and_quiet_is_quiet(tmp_path, capsys, digits_config):
    assert main(["train", str(digits_config), "--out", str(tmp_path / "run"), "--set", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"]
    assert all("loss" in line and "val_map_at_r" in line for line in epochs)
    assert "\r" not in out and "━" not in out and len(out.splitlines()) < 10
    assert main(["train", str(digits_config), "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
