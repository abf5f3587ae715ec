"""Self-supervised runs: the step under two replicas, the momentum copies and memory, every method learning, the run
as an ordinary embedding run (a fresh process, transfer), the collapse guard, resume, and the refusals."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from reprlearn.config.io import config_from_dict
from reprlearn.config.self_supervised import PREDICTOR_METHODS
from reprlearn.errors import ConfigError
from reprlearn.metrics import retrieval_metrics
from reprlearn.models import build_tower, mlp_tower
from reprlearn.models.self_supervised import SelfSupervisedModel
from reprlearn.runs import embed
from reprlearn.training import run_training
from reprlearn.training import self_supervised as ssl_driver
from tests.ssl_shapes import shape_sets

EVAL = {"verification_pairs": 500, "projection": "pca", "projection_points": 50, "projector_points": 20,
        "grid_queries": 2, "grid_neighbours": 3}
TOWER = {"tower": "conv", "filters": [16, 32], "dense": 64, "embedding_dim": 32, "batch_norm": True}


def ssl_config(method: str = "simclr", steps: int = 60, epochs: int = 3, **sections):
    raw = {"data": {"name": "shapes", "augment": "byol" if method == "byol" else "simclr",
                    "validation_fraction": 0.2},
           "model": {"kind": "self_supervised", "method": method, **TOWER, "projector": [64, 32],
                     **({"predictor": [64, 32]} if method in PREDICTOR_METHODS else {})},
           "train": {"epochs": epochs, "steps_per_epoch": steps, "batch_size": 64, "learning_rate": 0.003},
           "eval": EVAL}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def replica_steps() -> dict:
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "self_supervised_replica_steps.py")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "moco", "moco_v3", "byol", "simsiam", "barlow_twins", "vicreg"])
def test_a_two_replica_step_equals_the_one_device_step(replica_steps, method):
    """Global-batch losses, synchronised BatchNorm in the heads, the EMA and the memory inside the step: two
    replicas move every weight (momentum copies and memory too) as one device does on the whole batch."""
    result = replica_steps[method]
    assert result["max_weight_difference"] <= 5e-4 * max(1.0, result["largest_weight"])
    assert result["loss_two_replicas"] == pytest.approx(result["loss_one_device"], rel=1e-4, abs=1e-5)


def test_the_target_moves_by_the_momentum_and_the_memory_is_a_fifo():
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 6, 6, 1)).astype(np.float32)
    for method, extra in (("byol", {"predictor": (8, 8), "momentum": 0.9}), ("moco", {"memory_size": 24})):
        model = SelfSupervisedModel(mlp_tower((6, 6, 1), hidden=(16,), embedding_dim=8, name="tower"), method,
                                    projector=(12, 8), total_steps=10, **extra)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        target_before = [np.array(w.numpy()) for w in model.target_tower.weights + model.target_projector.weights]
        memory_before = None if model.memory is None else model.memory.numpy().copy()
        model.fit(tf.data.Dataset.from_tensors((images[0], images[1])), epochs=1, steps_per_epoch=1, verbose=0)
        momentum = 0.9 if method == "byol" else 0.99  # BYOL at step 0 of its cosine: its base
        online = [w.numpy() for w in model.tower.weights + model.projector.weights]
        targets = model.target_tower.weights + model.target_projector.weights
        # (BatchNorm's moving statistics also move with the target's own forward pass: not compared.)
        for before, variable, now in zip(target_before, targets, online):
            if "moving_" not in variable.path:
                np.testing.assert_allclose(variable.numpy(), momentum * before + (1 - momentum) * now, atol=1e-6)
        if memory_before is not None:  # 16 new keys first, then the oldest 8 of the 24 kept
            memory = model.memory.numpy()
            np.testing.assert_allclose(memory[16:], memory_before[:8], atol=1e-7)
            np.testing.assert_allclose(np.linalg.norm(memory[:16], axis=1), 1.0, atol=1e-5)
            assert not np.allclose(memory[:16], memory_before[:16])


def _untrained_map_at_r(cfg, sets) -> float:
    keras.utils.set_random_seed(cfg.train.seed)
    tower = build_tower(cfg.model, sets["test"].image_shape)
    return retrieval_metrics(embed(tower, sets["test"].images), sets["test"].labels, "L2",
                             compute_nmi=False)["map_at_r"]


# Shapes at random places: raw pixels score about 0.14 MAP@R and the untrained conv tower about 0.2, so a method that
# learns nothing (a zero loss leaves the untrained weights) fails the margin. BYOL needs the longest budget.
BUDGETS = {"simclr": 60, "simsiam": 60, "vicreg": 60, "moco": 150, "moco_v3": 200, "barlow_twins": 200}


# SimCLR in the fast set, the others (10-30 s each) in the slow one.
@pytest.mark.parametrize("method", [pytest.param(m, marks=[] if m == "simclr" else [pytest.mark.slow])
                                    for m in sorted(BUDGETS)])
def test_each_method_learns_shapes_that_raw_pixels_and_the_untrained_tower_do_not(tmp_path, method):
    sets = shape_sets(seed=len(method))
    cfg = ssl_config(method, BUDGETS[method])
    report = run_training(cfg, tmp_path, sets=sets, verbose=0)
    metrics = report["metrics"]
    baseline = max(metrics["baseline_raw"]["map_at_r"], metrics["baseline_raw_cosine"]["map_at_r"],
                   _untrained_map_at_r(cfg, sets))
    assert baseline < 0.35
    assert metrics["test"]["map_at_r"] >= baseline + 0.15, (metrics["test"], baseline)
    history = report["train"]["history"]
    assert history[-1]["val_knn_accuracy"] > history[0]["val_knn_accuracy"] - 0.05
    assert report["self_supervised"]["linear_probe_accuracy"] > 0.8
    assert report["kept"]["epoch"] in range(1, 4) and not history[report["kept"]["epoch"] - 1]["val_collapsed"]


@pytest.fixture(scope="module")
def ssl_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ssl") / "run"
    sets = shape_sets(seed=5)
    report = run_training(ssl_config("simclr", 30, 2), out, sets=sets, verbose=0)
    return out, sets, report


def test_an_ssl_run_is_an_ordinary_embedding_run_in_a_fresh_process(ssl_run, tmp_path):
    out, sets, report = ssl_run
    assert json.loads((out / "run.json").read_text())["kind"] == "embedding"
    np.save(tmp_path / "images.npy", sets["test"].images[:10])
    code = ("import sys, numpy as np\nfrom reprlearn.runs import load_run\nrun = load_run(sys.argv[1])\n"
            "print(run.model.name, len(run.model.layers), run.model.output_shape[-1])\n"
            "np.save(sys.argv[3], run.embed(np.load(sys.argv[2])))\n")
    done = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "images.npy"),
                           str(tmp_path / "embedded.npy")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    name, _, width = done.stdout.split()
    assert (name, width) == ("tower", "32")  # the tower alone: projector and momentum copies stayed behind
    here = embed(keras.models.load_model(out / "model.keras"), sets["test"].images[:10])
    np.testing.assert_allclose(np.load(tmp_path / "embedded.npy"), here, atol=1e-6)
    assert {"val_knn_accuracy", "val_map_at_r", "val_output_spread", "val_collapsed"} <= set(
        report["train"]["history"][0])
    assert report["self_supervised"]["method"] == "simclr"


@pytest.mark.slow
def test_a_supervised_run_starts_from_the_ssl_tower(ssl_run, tmp_path):
    out, sets, _ = ssl_run
    cfg = config_from_dict({"data": {"name": "shapes"}, "model": {**TOWER, "init_from": str(out)},
                            "loss": {"name": "multi_similarity"},
                            "train": {"epochs": 1, "steps_per_epoch": 3, "classes_per_batch": 4,
                                      "examples_per_class": 4}, "eval": EVAL})
    report = run_training(cfg, tmp_path / "supervised", sets=sets, verbose=0)
    copied = report["model"]["initialised_from"]["layers"]
    assert {"conv1", "conv2", "embedding_dense"} <= set(copied)


@pytest.mark.slow
def test_a_collapsed_epoch_is_never_kept(tmp_path, monkeypatch):
    sets = shape_sets(seed=2, per_class=40)
    # Every epoch collapsed: nothing can be kept, and the run says what to change.
    monkeypatch.setattr(ssl_driver, "COLLAPSE_SHARE", 1e9)
    with pytest.raises(ConfigError, match="collapsed.*train.learning_rate"):
        run_training(ssl_config("simclr", 3, 2), tmp_path / "all", sets=sets, verbose=0)
    # Only the last epoch collapsed: the best earlier one is kept, and the report says so.
    monkeypatch.undo()
    original = ssl_driver.SelfSupervisedValidation.on_epoch_end

    def last_collapses(self, epoch, logs=None):
        original(self, epoch, logs)
        logs["val_collapsed"] = float(epoch == 2)

    monkeypatch.setattr(ssl_driver.SelfSupervisedValidation, "on_epoch_end", last_collapses)
    report = run_training(ssl_config("simclr", 3, 3), tmp_path / "last", sets=sets, verbose=0)
    assert report["kept"]["epoch"] in (1, 2) and "collapsed" in report["kept"]["note"]


class StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(tmp_path):
    sets = shape_sets(seed=3, per_class=40)
    cfg = ssl_config("byol", 4, 2)
    whole = run_training(cfg, tmp_path / "whole", sets=sets, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "resumed", sets=sets, verbose=0, callbacks=[StopAfterFirstEpoch()])
    resumed = run_training(cfg, tmp_path / "resumed", sets=sets, verbose=0)
    assert resumed["train"]["history"][-1]["loss"] == pytest.approx(whole["train"]["history"][-1]["loss"], rel=1e-5)
    np.testing.assert_allclose(embed(keras.models.load_model(tmp_path / "resumed" / "model.keras"),
                                     sets["test"].images[:8]),
                               embed(keras.models.load_model(tmp_path / "whole" / "model.keras"),
                                     sets["test"].images[:8]), atol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"model": {"kind": "embedding", "method": "byol"}}, r"'model.method'.* apply to model.kind: self_supervised"),
    ({"data": {"augment": "light"}}, "set data.augment to one of"),
    ({"data": {"augment": "none", "augment_options": {"hue": 0.0}}}, "data.augment_options sets the ops of a recipe"),
    ({"model": {"method": "vicreg"}, "train": {"memory_size": 10}}, "vicreg compares no negatives"),
    ({"model": {"method": "byol", "predictor": [64, 16]}}, r"predictor's output width must equal the projector's"),
    ({"train": {"batch_size": 1}}, "at least 2 images"),
    ({"model": {"momentum": 1.0}}, r"model.momentum must be in \[0, 1\)"),
])
def test_bad_self_supervised_configs_are_refused_naming_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        ssl_config(**change)


def test_data_checks_come_before_any_folder(tmp_path):
    sets = shape_sets(seed=4, per_class=10)
    for change, message in (({"train": {"batch_size": 64}}, "holds 32. Received: train.batch_size=64"),
                            ({"train": {"memory_size": 32, "batch_size": 16}, "model": {"method": "moco"}},
                             "below the 32 training images")):
        with pytest.raises(ConfigError, match=message):
            run_training(ssl_config(**change), tmp_path / "run", sets=sets, verbose=0)
        assert not (tmp_path / "run").exists()


def _flat_folder(root: Path, count: int = 48) -> Path:
    """A folder of photos with no class folders (and a CSV of their paths without a label column)."""
    from tests.photo_folder import make_photo_folder

    make_photo_folder(root / "classes", classes=4, per_class=count // 4, seed=1)
    flat = root / "flat"
    flat.mkdir()
    for i, path in enumerate(sorted(p for p in (root / "classes").rglob("*") if p.is_file())):
        path.rename(flat / f"{i:03d}{path.suffix}")
    (root / "paths.csv").write_text("path\n" + "".join(f"flat/{p.name}\n" for p in sorted(flat.iterdir())))
    return flat


UNLABELLED_RUN = {"data": {"image_size": [24, 24], "augment": "simclr"},
                  "model": {"kind": "self_supervised", "tower": "conv", "filters": [8], "dense": 16,
                            "embedding_dim": 8, "projector": [16, 8]},
                  "train": {"epochs": 1, "steps_per_epoch": 3, "batch_size": 8}, "eval": EVAL}


@pytest.mark.slow
@pytest.mark.parametrize("source", ["folder", "csv", "arrays"])
def test_images_without_labels_train_a_self_supervised_run_and_nothing_else(tmp_path, source):
    from reprlearn.data import make_imageset

    flat = _flat_folder(tmp_path)
    raw = json.loads(json.dumps(UNLABELLED_RUN))
    sets = None
    if source == "arrays":
        sets = {"all": make_imageset(shape_sets(seed=1, per_class=12)["train"].images, None)}
        raw["data"].pop("image_size")
    else:
        raw["data"]["name"] = f"folder:{flat}" if source == "folder" else f"csv:{tmp_path / 'paths.csv'}"
    report = run_training(config_from_dict(raw), tmp_path / "run", sets=sets, verbose=0)
    assert report["unlabelled"] is True and report["metrics"] == {}
    assert "val_output_spread" in report["train"]["history"][0] and "val_knn_accuracy" not in report["train"][
        "history"][0]
    assert "without labels" in (tmp_path / "run" / "report.md").read_text()
    tower = keras.models.load_model(tmp_path / "run" / "model.keras")
    assert tower.output_shape[-1] == 8
    supervised = {**raw, "model": {"tower": "conv", "filters": [8], "dense": 16, "embedding_dim": 8},
                  "data": {k: v for k, v in raw["data"].items() if k != "augment"}, "train": {"epochs": 1}}
    with pytest.raises(Exception, match="has no labels.*model.kind: self_supervised"):
        run_training(config_from_dict(supervised), tmp_path / "supervised", sets=sets, verbose=0)
    assert not (tmp_path / "supervised").exists()


def test_an_unlabelled_run_is_gated_on_each_image_finding_itself():
    from reprlearn.export.run import _self_recall_score

    embeddings = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    score = _self_recall_score(embeddings, "L2")
    assert score.of([embeddings]) == 1.0
    assert score.of([embeddings + 1e-3]) == 1.0
    assert score.of([embeddings[::-1].copy()]) == 0.0
    assert score.of([np.zeros_like(embeddings)]) == pytest.approx(1 / 30)  # every image ties: the first wins


@pytest.mark.slow
def test_an_unlabelled_run_exports_and_serves_in_a_fresh_process(tmp_path):
    flat = _flat_folder(tmp_path)
    raw = json.loads(json.dumps(UNLABELLED_RUN))
    raw["data"]["name"] = f"folder:{flat}"
    run_training(config_from_dict(raw), tmp_path / "run", verbose=0)
    code = ("import sys, json\nfrom reprlearn.export import export_run\n"
            "result = export_run(sys.argv[1], sys.argv[2], formats='saved_model,tflite', quantize='dynamic', "
            "verbose=False)\nprint(json.dumps({k: v for k, v in result.items() if k.startswith('keras_')}))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run"), str(tmp_path / "export")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"keras_self_recall_at_1": 1.0}
    parity = json.loads(next((tmp_path / "export").rglob("parity.json")).read_text())
    assert [row["self_recall_at_1"] for row in parity["formats"]] and all(
        row["self_recall_at_1"] >= 0.97 for row in parity["formats"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "byol", "vicreg"])
def test_mixed_precision_trains_without_nan(tmp_path, method):
    """float16 towers and heads, losses computed in float32, the loss scaled by the optimizer: finite losses and an
    embedding that is kept (users of other SSL libraries report NaN here)."""
    cfg = ssl_config(method, 15, 2, train={"mixed_precision": "mixed_float16"})
    report = run_training(cfg, tmp_path, sets=shape_sets(seed=1, per_class=60), verbose=0)
    assert all(np.isfinite(epoch["loss"]) for epoch in report["train"]["history"])
    assert report["kept"]["epoch"] in (1, 2) and np.isfinite(report["metrics"]["test"]["map_at_r"])
