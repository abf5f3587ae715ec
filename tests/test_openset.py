"""Open-set pieces: augmentation, power normalisation, joint embeddings, JRD and reconstruction in the training
model, keeping the best validation epoch, the PCA baseline, and a run that exports a joint embedding."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from reprlearn.config import ConfigError, config_from_dict, load_config
from reprlearn.data import augment
from reprlearn.data.augment import Augmentation, augment_batch
from reprlearn.data.pipelines import pk_batches
from reprlearn.layers import SignedPower
from reprlearn.metrics import retrieval_metrics
from reprlearn.models import build_tower, joint_embedding_model, project_joint_embedding
from reprlearn.training.objectives import (CLASS_OUTPUT, JRD_OUTPUT, RECONSTRUCTION_OUTPUT, compile_embedding_model, tower_of,
                                  training_targets)
from reprlearn.evaluation.scoring import pca_baseline
from reprlearn.training.loop import BestEpoch, kept_epoch

SEED = tf.constant([3, 11], tf.int64)


def stripes(n=6, size=20):
    rng = np.random.default_rng(0)
    images = np.zeros((n, size, size, 1), np.float32)
    for i in range(n):
        row, col = rng.integers(6, size - 10, 2)  # 3+ pixels from every border
        images[i, row:row + 3, col:col + 5] = 200.0
        images[i, row, col] = 255.0  # left-right asymmetric
    return images


# --- augmentation ---

def test_augmentation_keeps_size_and_range_and_is_keyed_by_its_seed():
    images = stripes()
    out = augment_batch(tf.constant(images), SEED, "strong", flips=True).numpy()
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    again = augment_batch(tf.constant(images), SEED, "strong", flips=True).numpy()
    np.testing.assert_array_equal(out, again)
    other = augment_batch(tf.constant(images), tf.constant([3, 12], tf.int64), "strong", flips=True).numpy()
    assert np.abs(other - out).max() > 1.0
    np.testing.assert_array_equal(augment_batch(tf.constant(images), SEED, "none", flips=True), images)


def test_shifts_are_whole_pixel_moves_within_the_range():
    images = stripes()
    out = augment._affine(tf.constant(images), SEED, Augmentation(0.15, 0.0, 0.0)).numpy()
    moved = 0
    for before, after in zip(images, out):
        matches = [(dx, dy) for dx in range(-3, 4) for dy in range(-3, 4)
                   if np.allclose(np.roll(np.roll(before, dy, 0), dx, 1), after, atol=1e-3)]
        assert matches, "every output is its input moved by whole pixels (the stripes stay clear of the border)"
        moved += matches[0] != (0, 0)
    assert moved >= 3


def test_flips_only_when_allowed(monkeypatch):
    monkeypatch.setitem(augment.LEVELS, "light", Augmentation(0.0, 0.0, 0.0))  # flips alone
    images = stripes(n=16)
    mirrored = images[:, :, ::-1]
    flipped = augment_batch(tf.constant(images), SEED, "light", flips=True).numpy()
    is_mirror = [np.allclose(f, m, atol=1e-3) for f, m in zip(flipped, mirrored)]
    assert all(m or np.allclose(f, i, atol=1e-3) for f, m, i in zip(flipped, is_mirror, images))
    assert 0 < sum(is_mirror) < len(images)
    np.testing.assert_allclose(augment_batch(tf.constant(images), SEED, "light", flips=False), images, atol=1e-3)


def test_an_augmented_pk_pipeline_resumes_with_the_same_batches():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 8, 8, 1)).astype(np.uint8)
    labels = np.repeat(np.arange(6), 10)
    from_start = list(pk_batches(images, labels, 3, 4, seed=5, augment="strong", flips=True).take(4))
    resumed = next(iter(pk_batches(images, labels, 3, 4, seed=5, start_step=3, augment="strong", flips=True)))
    np.testing.assert_array_equal(from_start[3][0], resumed[0])
    plain = next(iter(pk_batches(images, labels, 3, 4, seed=5)))
    assert np.abs(plain[0].numpy() - from_start[0][0].numpy()).max() > 0


def test_bad_augmentation_is_named():
    with pytest.raises(ValueError, match="augment='heavy'"):
        augment_batch(tf.zeros([1, 4, 4, 1]), SEED, "heavy", flips=False)
    with pytest.raises(ConfigError, match="data.augment"):
        config_from_dict({"data": {"augment": "heavy"}})


# --- power normalisation and joint embeddings ---

def test_signed_power_equals_numpy_and_round_trips():
    x = np.array([[-4.0, -0.25, 0.0, 0.25, 9.0]], np.float32)
    layer = SignedPower(0.5)
    np.testing.assert_allclose(layer(x), np.sign(x) * np.abs(x) ** 0.5, rtol=1e-6)
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert clone.exponent == 0.5
    with pytest.raises(ValueError, match="exponent=0"):
        SignedPower(0)


def tiny_conv_tower(seed=0):
    keras.utils.set_random_seed(seed)
    cfg = config_from_dict({"model": {"tower": "conv", "filters": [4, 6], "dense": 8, "embedding_dim": 5}})
    return build_tower(cfg.model, (12, 12, 1))


def unit(x):
    x = x.reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def numpy_grid_average(x, grid):
    """Adaptive average pooling: cell i covers rows floor(i·H/g) .. ceil((i+1)·H/g) − 1."""
    n, h, w, c = x.shape
    out = np.zeros((n, grid, grid, c))
    for i in range(grid):
        for j in range(grid):
            rows = slice(i * h // grid, -(-(i + 1) * h // grid))
            cols = slice(j * w // grid, -(-(j + 1) * w // grid))
            out[:, i, j] = x[:, rows, cols].mean(axis=(1, 2))
    return out


def test_joint_embedding_equals_numpy_from_the_towers_own_layers():
    tower = tiny_conv_tower()
    images = np.random.default_rng(1).integers(0, 256, (5, 12, 12, 1)).astype(np.float32)
    joint = joint_embedding_model(tower, ["pool1", "pool2"], grid=2, power=0.5, weights=[1.0, 2.0, 0.5])
    inner = keras.Model(tower.input, [tower.get_layer("pool1").output, tower.get_layer("pool2").output, tower.output])
    pool1, pool2, head = (np.asarray(v, np.float64) for v in inner(images))
    parts = [unit(numpy_grid_average(np.sqrt(pool1), 2)), 2.0 * unit(numpy_grid_average(np.sqrt(pool2), 2)),
             0.5 * unit(head)]
    np.testing.assert_allclose(joint(images), unit(np.concatenate(parts, axis=1)), atol=1e-5)
    assert joint.output_shape[-1] == 4 * 4 + 4 * 6 + 5
    # A zero weight leaves the head out; the weights are shared with the tower.
    without_head = joint_embedding_model(tower, ["pool2"], grid=2, weights=[1.0, 0.0])
    assert without_head.output_shape[-1] == 24
    assert {id(w) for w in without_head.weights} <= {id(w) for w in tower.weights}


def test_joint_embedding_bad_input_is_named():
    tower = tiny_conv_tower()
    with pytest.raises(ValueError, match=r"lacks: \['pool9'\].*'pool1'"):
        joint_embedding_model(tower, ["pool9"])
    with pytest.raises(ValueError, match="joint_weights"):
        joint_embedding_model(tower, ["pool1"], weights=[1.0])
    with pytest.raises(ValueError, match="joint_weights"):
        joint_embedding_model(tower, ["pool1"], weights=[0.0, 0.0])
    with pytest.raises(ConfigError, match="model.joint_weights"):
        config_from_dict({"model": {"joint_layers": ["pool1"], "joint_weights": [1.0, -1.0]}})
    with pytest.raises(ConfigError, match="model.joint_dim=32"):
        config_from_dict({"model": {"joint_dim": 32}})
    with pytest.raises(ConfigError, match="model.joint_power"):
        config_from_dict({"model": {"joint_power": 2.0}})


def test_pca_cap_equals_sklearn_fit_on_the_given_features():
    from sklearn.decomposition import PCA

    tower = tiny_conv_tower()
    joint = joint_embedding_model(tower, ["pool1", "pool2"], grid=2)
    rng = np.random.default_rng(2)
    train, test = (rng.integers(0, 256, (n, 12, 12, 1)).astype(np.float32) for n in (40, 6))
    features = np.asarray(joint(train))
    capped = project_joint_embedding(joint, features, 7)
    want = unit(PCA(7, random_state=0).fit(features).transform(np.asarray(joint(test))))
    np.testing.assert_allclose(capped(test), want, atol=1e-4)
    assert project_joint_embedding(joint, features, 1000) is joint


# --- the training model: JRD, reconstruction ---

AM_JRD = {"loss": {"name": "am_softmax", "jrd_weight": 0.5, "reconstruction_weight": 0.25},
          "model": {"tower": "conv", "filters": [4, 6], "dense": 8, "embedding_dim": 5}}


def test_jrd_and_reconstruction_outputs_and_the_tower_inside():
    cfg = config_from_dict(AM_JRD)
    tower = build_tower(cfg.model, (12, 12, 1), name="tower")
    model = compile_embedding_model(cfg, tower, num_classes=3)
    images = np.random.default_rng(0).integers(0, 256, (6, 12, 12, 1)).astype(np.float32)
    outputs = model(images)
    assert set(outputs) == {CLASS_OUTPUT, JRD_OUTPUT, RECONSTRUCTION_OUTPUT}
    # Default JRD layers: the flattened last pool (3·3·6), the embedding (5) and the logits (3).
    assert outputs[JRD_OUTPUT].shape == (6, 54 + 5 + 3)
    assert outputs[RECONSTRUCTION_OUTPUT].shape == (6, 12, 12, 1)
    np.testing.assert_allclose(tower_of(model)(images), tower(images), atol=1e-6)
    labels = np.array([0, 0, 1, 1, 2, 2])
    batch = next(iter(training_targets(cfg, tf.data.Dataset.from_tensors((images, labels)))))
    np.testing.assert_allclose(batch[1][RECONSTRUCTION_OUTPUT], images / 255.0)
    np.testing.assert_array_equal(batch[1][JRD_OUTPUT], labels)
    logs = model.train_on_batch(images, batch[1], return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["loss"] > 0


def test_jrd_bad_input_is_named():
    cfg = config_from_dict({**AM_JRD, "loss": {"name": "am_softmax", "jrd_weight": 1.0,
                                               "jrd_layers": ["pool2", "nowhere"]}})
    with pytest.raises(ValueError, match=r"lacks: \['nowhere'\].*'pool1'"):
        compile_embedding_model(cfg, build_tower(cfg.model, (12, 12, 1), name="tower"), num_classes=3)
    with pytest.raises(ConfigError, match="at least two"):
        config_from_dict({"loss": {"name": "am_softmax", "jrd_weight": 1.0, "jrd_layers": ["pool2"]}})
    with pytest.raises(ConfigError, match="loss.jrd_weight"):
        config_from_dict({"loss": {"name": "triplet_semihard", "jrd_weight": 1.0}})
    with pytest.raises(ConfigError, match="loss.reconstruction_weight"):
        config_from_dict({"loss": {"name": "pair_contrastive", "reconstruction_weight": 1.0}})


# --- keeping the best validation epoch ---

def test_best_epoch_keeps_the_weights_of_the_best_validation_score(tmp_path):
    cfg = config_from_dict({"train": {"keep": "best"}})
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    callback = BestEpoch(tmp_path / "checkpoints")
    callback.set_model(model)
    weights, history = [], []
    for epoch, score in enumerate([0.5, 0.7, 0.6]):
        model.layers[0].kernel.assign(np.full((2, 1), float(epoch), np.float32))
        weights.append(model.get_weights())
        callback.on_epoch_end(epoch, {"val_map_at_r": score})
        history.append({"val_map_at_r": score})
    kept = kept_epoch(model, cfg, tmp_path, history)
    assert kept == {"keep": "best", "epoch": 2, "val_map_at_r": 0.7}
    np.testing.assert_array_equal(model.get_weights()[0], weights[1][0])
    last = kept_epoch(model, config_from_dict({}), tmp_path, history)
    assert last == {"keep": "last", "epoch": 3}


# --- the PCA baseline ---

def test_pca_baseline_is_fit_on_the_training_images_only():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (50, 4, 4, 1)).astype(np.float32)
    test = rng.integers(0, 256, (30, 4, 4, 1)).astype(np.float32)
    labels = np.repeat(np.arange(3), 10)
    got = pca_baseline(train, test, labels, 5, seed=0)
    projected = PCA(5, random_state=0).fit(train.reshape(50, -1) / 255.0).transform(test.reshape(30, -1) / 255.0)
    want = {metric: retrieval_metrics(projected, labels, m)["map_at_r"] for metric, m in (("L2", "L2"),
                                                                                          ("cosine", "angular"))}
    assert got["dim"] == 5 and got["map_at_r"] == pytest.approx(max(want.values()))
    assert got["metric"] == max(want, key=want.get)


# --- a run that exports a joint embedding ---

def test_open_set_run_exports_a_joint_embedding_that_reloads_in_a_fresh_process(tmp_path):
    from reprlearn.training import run_training

    cfg = load_config("configs/openset_digits.yaml", overrides=[
        "train.epochs=2", "train.steps_per_epoch=10", "model.joint_dim=40", "data.augment=light", "train.keep=best",
        "model.joint_layers=[pixels, hidden1_relu]", "model.joint_weights=[1.0, 1.0, 0.0]"])
    out = tmp_path / "run"
    report = run_training(cfg, out, verbose=0)
    assert report["model"]["embedding_dim"] == 40
    scores = [epoch["val_map_at_r"] for epoch in report["train"]["history"]]
    assert len(scores) == 2 and report["kept"] == {"keep": "best", "epoch": 1 + int(np.argmax(scores)),
                                                   "val_map_at_r": pytest.approx(max(scores))}
    assert report["metrics"]["baseline_pca"]["dim"] == 40
    raw = report["metrics"]
    assert raw["baseline_raw_better"] == ("cosine" if raw["baseline_raw_cosine"]["map_at_r"]
                                          > raw["baseline_raw"]["map_at_r"] else "L2")
    stored = json.loads((out / "report.json").read_text())
    assert stored["kept"] == report["kept"]
    # The same tower's own head is kept beside the joint embedding and scored on the same test items.
    from reprlearn.runs import load_run

    run = load_run(out)
    test = run.split("test")
    head = np.asarray(run.head_model(test.images))
    assert head.shape == (len(test.labels), 32) and report["metrics"]["head"]["dim"] == 32
    assert report["metrics"]["head"]["map_at_r"] == pytest.approx(retrieval_metrics(
        head, test.labels, run.metric, compute_nmi=False)["map_at_r"], abs=1e-6)
    assert "`embed_head`" in (out / "report.md").read_text()
    script = textwrap.dedent(f"""
        import numpy as np, keras, reprlearn
        from sklearn.datasets import load_digits
        model = keras.saving.load_model({str(out / 'model.keras')!r})
        images = (load_digits().images[:8, :, :, None] * (255.0 / 16.0)).astype("float32")
        vectors = np.asarray(model(images))
        head = keras.saving.load_model({str(out / 'head.keras')!r})
        assert np.asarray(head(images)).shape == (8, 32)
        print(vectors.shape, float(np.abs(np.linalg.norm(vectors, axis=1) - 1).max()))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    shape, norm_error = done.stdout.strip().rsplit(" ", 1)
    assert shape == "(8, 40)" and float(norm_error) < 1e-5


def test_jrd_training_model_round_trips_and_trains_under_mixed_precision(tmp_path):
    from reprlearn.training.strategies import dtype_policy

    cfg = config_from_dict(AM_JRD)
    images = np.random.default_rng(0).integers(0, 256, (6, 12, 12, 1)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    targets = next(iter(training_targets(cfg, tf.data.Dataset.from_tensors((images, labels)))))[1]
    with dtype_policy("mixed_float16"):
        keras.utils.set_random_seed(0)
        model = compile_embedding_model(cfg, build_tower(cfg.model, (12, 12, 1), name="tower"), num_classes=3)
        logs = model.train_on_batch(images, targets, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values())
    assert model(images)[JRD_OUTPUT].dtype == "float32"
    model.save(tmp_path / "training.keras")
    reloaded = keras.saving.load_model(tmp_path / "training.keras")
    for name in (CLASS_OUTPUT, JRD_OUTPUT):
        np.testing.assert_allclose(reloaded(images)[name], model(images)[name], atol=1e-3)
    jrd = reloaded.loss[JRD_OUTPUT]  # the compiled losses come back with the file
    assert type(jrd).__name__ == "JointRepresentationSimilarity" and jrd.part_sizes == [54, 5, 3]
    assert jrd.single_bandwidth == [False, False, True]


# --- transfer through the config: model.init_from, model.freeze ---

@pytest.mark.slow   # ~15 s: two trained runs
def test_init_from_copies_a_runs_tower_and_freeze_trains_only_the_head(tmp_path):
    from reprlearn.training import run_training

    small = ["train.epochs=1", "train.steps_per_epoch=5", "model.joint_layers=[]", "model.joint_weights=[]",
             "loss.jrd_weight=0.0", "train.keep=last"]
    source_cfg = load_config("configs/openset_digits.yaml", overrides=small)
    run_training(source_cfg, tmp_path / "source", verbose=0)
    cfg = load_config("configs/openset_digits.yaml", overrides=[
        *small, "loss.name=triplet_semihard", f"model.init_from={tmp_path / 'source'}", "model.freeze=true"])
    report = run_training(cfg, tmp_path / "target", verbose=0)
    assert report["model"]["initialised_from"] == {"run": str(tmp_path / "source"), "frozen": True,
                                                   "learning_rate_factor": 1.0,
                                                   "layers": ["hidden1", "hidden2", "embedding_dense"]}
    source = keras.saving.load_model(tmp_path / "source/model.keras")
    target = keras.saving.load_model(tmp_path / "target/model.keras")
    for name in ("hidden1", "hidden2"):  # frozen: exactly the source's weights
        for a, b in zip(source.get_layer(name).get_weights(), target.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert np.abs(source.get_layer("embedding_dense").get_weights()[0]
                  - target.get_layer("embedding_dense").get_weights()[0]).max() > 0
    assert all(layer.trainable for layer in target.layers)  # the saved tower is an ordinary one


def test_init_from_bad_input_is_named(tmp_path):
    from reprlearn.cli import main

    assert main(["train", "configs/openset_digits.yaml", "--out", str(tmp_path / "run"),
                 "--set", f"model.init_from={tmp_path / 'nowhere'}"]) == 2
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="model.freeze"):
        config_from_dict({"model": {"freeze": True}})
    for model in ({"init_learning_rate_factor": 0.1}, {"init_from": "runs/x", "init_learning_rate_factor": 0.0},
                  {"init_from": "runs/x", "freeze": True, "init_learning_rate_factor": 0.5}):
        with pytest.raises(ConfigError, match="Received: model.init_learning_rate_factor="):
            config_from_dict({"model": model})
    with pytest.raises(ValueError, match="no layer of the source model matches"):
        from reprlearn.models import initialise_from
        initialise_from(tiny_conv_tower(), keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="x")]))


def test_layer_rate_adam_steps_the_slow_layers_as_adam_at_the_lower_rate():
    from reprlearn.models.optimizers import LayerRateAdam

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="copied"),
                                 keras.layers.Dense(2, name="new")])

    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    results = {}
    for name, optimizer in (("layered", LayerRateAdam(0.01, layer_factors={"copied": 0.1})),
                            ("full", keras.optimizers.Adam(0.01)), ("slow", keras.optimizers.Adam(0.001))):
        net = model()
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(net(x) ** 2)
        optimizer.apply_gradients(zip(tape.gradient(loss, net.trainable_variables), net.trainable_variables))
        results[name] = {layer.name: layer.get_weights() for layer in net.layers}
    for got, want in zip(results["layered"]["copied"], results["slow"]["copied"]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for got, want in zip(results["layered"]["new"], results["full"]["new"]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.abs(results["slow"]["copied"][0] - results["full"]["copied"][0]).max() > 1e-3  # the rates differ
    config = LayerRateAdam(0.01, layer_factors={"copied": 0.1}).get_config()
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(LayerRateAdam.from_config(config)))
    assert isinstance(restored, LayerRateAdam) and restored.layer_factors == {"copied": 0.1}
    # A config saved by reprlearn 0.3 (one factor for a list of slow layers) still loads.
    old = {key: value for key, value in config.items() if key != "layer_factors"}
    assert LayerRateAdam.from_config({**old, "slow_layers": ["copied"], "factor": 0.1}).layer_factors == {"copied": 0.1}
    with pytest.raises(ValueError, match="Received: layer_factors={'copied': 0}"):
        LayerRateAdam(0.01, layer_factors={"copied": 0})


def test_init_learning_rate_factor_slows_only_the_copied_layers_of_the_compiled_model():
    cfg = config_from_dict({"data": {"name": "digits"}, "model": {"tower": "mlp", "hidden": [16], "embedding_dim": 8,
                                                                  "init_from": "runs/source",
                                                                  "init_learning_rate_factor": 0.1}})
    model = compile_embedding_model(cfg, build_tower(cfg.model, (8, 8, 1), name="tower"), copied_layers=["hidden1"])
    assert type(model.optimizer).__name__ == "LayerRateAdam"
    assert model.optimizer.layer_factors == {"hidden1": 0.1}
    model.optimizer.build(model.trainable_variables)
    slow = {model.trainable_variables[i].path for i in model.optimizer._factor_of}
    assert slow == {"hidden1/kernel", "hidden1/bias"}
    plain = compile_embedding_model(config_from_dict({"model": {"tower": "mlp"}}),
                                    build_tower(cfg.model, (8, 8, 1), name="tower"), copied_layers=["hidden1"])
    assert type(plain.optimizer) is keras.optimizers.Adam


def _study_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "openset.py"
    spec = importlib.util.spec_from_file_location("openset_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_split_margins_and_the_validation_rule_match_hand_computed_margins():
    study = _study_module()

    def runs(*pairs):  # (test MAP@R, validation MAP@R) per seed
        return [{"map_at_r": test, "val_map_at_r": val} for test, val in pairs]

    per_split = {
        "0-4": {"raw pixels, L2": runs((0.40, 0.30), (0.42, 0.32)),
                "raw pixels, cosine": runs((0.45, 0.20), (0.47, 0.22)),
                "joint": runs((0.50, 0.40), (0.52, 0.42)), "head": runs((0.30, 0.50), (0.30, 0.50))},
        "odd": {"raw pixels, L2": runs((0.20, 0.60), (0.22, 0.60)),
                "raw pixels, cosine": runs((0.26, 0.50), (0.26, 0.52)),
                "joint": runs((0.22, 0.61), (0.24, 0.61)), "head": runs((0.10, 0.70), (0.12, 0.72)),
                "unfinished": runs((0.90, 0.90))},
    }
    margins = study.split_margins(per_split)
    # joint: 0-4 is 0.51 - max(0.41, 0.46) = +0.05; odd is 0.23 - max(0.21, 0.26) = -0.03.
    assert margins["joint"]["margins"] == pytest.approx({"0-4": 0.05, "odd": -0.03})
    assert margins["joint"]["mean"] == pytest.approx(0.01)
    assert (margins["joint"]["worst"], margins["joint"]["worst_split"]) == (pytest.approx(-0.03), "odd")
    assert (margins["head"]["worst"], margins["head"]["worst_split"]) == (pytest.approx(0.30 - 0.46), "0-4")
    assert "unfinished" not in margins  # scored on one split only: no across-split figure
    assert set(margins) == {"joint", "head"}  # the raw rows are the reference, not rows
    # On validation classes the raw reference is the higher validation score: head +0.19 / +0.11, joint +0.10 / +0.01.
    val = study.split_margins(per_split, "val_map_at_r")
    assert val["head"]["margins"] == pytest.approx({"0-4": 0.19, "odd": 0.11})
    assert val["joint"]["margins"] == pytest.approx({"0-4": 0.10, "odd": 0.01})
    # The rule sees only validation scores, so it picks the head (worst split +0.11 against +0.01), though the joint
    # row tests better.
    assert study.select_by_validation(per_split) == "head"
    table = study.margins_table(per_split)
    assert ("| **head** (picked on validation) | -0.160 | -0.150 | -0.155 | -0.160 (0-4) | +0.110 (odd), +0.150 |"
            in table)
    assert "| joint | +0.050 | -0.030 | +0.010 | -0.030 (odd) | +0.010 (odd), +0.055 |" in table


def test_the_validation_rule_ranks_rows_by_their_worst_split_then_their_mean():
    study = _study_module()

    def runs(*vals):  # validation MAP@R per seed
        return [{"map_at_r": 0.5, "val_map_at_r": val, "dim": 64} for val in vals]

    raw = {"raw pixels, L2": runs(0.30, 0.30), "raw pixels, cosine": runs(0.20, 0.40)}  # better raw: 0.30
    per_split = {
        "0-4": {**raw, "uneven": runs(0.44, 0.40), "steady": runs(0.35, 0.35), "level": runs(0.35, 0.35)},
        "odd": {**raw, "uneven": runs(0.28, 0.30), "steady": runs(0.34, 0.36), "level": runs(0.35, 0.35)},
    }
    # Margins (means over seeds): uneven +0.12 / -0.01 (mean +0.055, the best), steady +0.05 / +0.05,
    # level +0.05 / +0.05: the two worst splits tie, so the higher mean decides.
    val = study.split_margins(per_split, "val_map_at_r")
    assert val["uneven"]["mean"] == pytest.approx(0.055)
    assert val["uneven"]["worst"] == pytest.approx(-0.01)
    assert val["steady"]["worst"] == pytest.approx(val["level"]["worst"]) == pytest.approx(0.05)
    assert study.select_by_validation(per_split) in ("steady", "level")
    per_split["odd"]["level"] = runs(0.36, 0.36)  # level: +0.05 / +0.06, same worst split, higher mean
    assert study.select_by_validation(per_split) == "level"


def test_study_class_splits_leave_five_test_classes_each():
    study = _study_module()
    assert {split: sorted(set(range(10)) - set(classes)) for split, classes in study.CLASS_SPLITS.items()} == {
        "0-4": [5, 6, 7, 8, 9], "5-9": [0, 1, 2, 3, 4], "even": [1, 3, 5, 7, 9], "odd": [0, 2, 4, 6, 8]}
    assert study._split_overrides("even") == {"data.train_classes": "[0, 2, 4, 6, 8]"}


def test_the_validation_rule_picks_only_among_rows_within_the_dimension_cap():
    study = _study_module()

    def runs(val, dim):
        return [{"map_at_r": 0.5, "val_map_at_r": val, "dim": dim}]

    per_split = {split: {"raw pixels, L2": runs(0.30, "–"), "raw pixels, cosine": runs(0.20, "–"),
                         "wide": runs(0.60, 384), "small": runs(0.40, 192), "tiny": runs(0.35, 64)}
                 for split in ("0-4", "odd")}
    assert study.select_by_validation(per_split) == "wide"
    assert study.select_by_validation(per_split, max_dim=256) == "small"
    assert study.select_by_validation(per_split, max_dim=100) == "tiny"
    assert study.select_by_validation(per_split, max_dim=10) is None
    assert "| **small** (picked on validation)" in study.margins_table(per_split, max_dim=256)
    assert study.orientations_row(12, 4) == "orientations, 12 bins × 4² cells (no training)"
