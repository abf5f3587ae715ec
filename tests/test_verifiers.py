"""Learned verifiers (designs 1a, 1b, 2) and their runs: the pair features, tied weights, a frozen tower, learning,
and the saved verifier used from a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from reprlearn.config import ConfigError, config_from_dict
from reprlearn.data import flat_pixels, splits_for
from reprlearn.layers import PairFeatures
from reprlearn.metrics import sample_pairs, verification_metrics
from reprlearn.models import build_verifier, mlp_tower, siamese_head_model, two_channel_model
from reprlearn.runs import load_run, match_probabilities
from reprlearn.evaluation.scoring import pair_distances
from reprlearn.training import run_training

BASE = {"data": {"name": "digits"}, "model": {"kind": "verifier", "tower": "mlp", "hidden": [64], "embedding_dim": 16},
        "train": {"epochs": 3, "steps_per_epoch": 150, "pair_batch_size": 64},
        "eval": {"verification_pairs": 2000}}


def _config(**sections):
    raw = {name: dict(values) for name, values in BASE.items()}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


def test_pair_features_are_the_absolute_difference_then_the_product():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
    expected = np.array([[abs(a[i, j] - b[i, j]) for j in range(3)] + [a[i, j] * b[i, j] for j in range(3)]
                         for i in range(5)], np.float32)
    np.testing.assert_allclose(PairFeatures()([a, b]), expected, rtol=1e-6)
    np.testing.assert_array_equal(PairFeatures()([a, b]), PairFeatures()([b, a]))
    half = PairFeatures(dtype="float16")([a.astype(np.float16), b.astype(np.float16)])
    assert half.dtype == "float16"
    np.testing.assert_allclose(np.float32(half), expected, rtol=2e-3, atol=2e-3)
    assert PairFeatures().compute_output_shape(((None, 3), (None, 3))) == (None, 6)
    with pytest.raises(ValueError, match="a list of two tensors"):
        PairFeatures()(a)


def test_the_siamese_head_ties_one_tower_and_sums_both_branches_gradients():
    keras.utils.set_random_seed(0)
    tower = mlp_tower((4, 4, 1), hidden=[8], embedding_dim=5)
    model = siamese_head_model(tower, hidden=6)
    # One set of tower variables (no copy per branch) plus the head's two Dense layers.
    assert len(model.trainable_variables) == len(tower.trainable_variables) + 4
    rng = np.random.default_rng(1)
    a, b = (rng.uniform(0, 255, (7, 4, 4, 1)).astype(np.float32) for _ in range(2))
    y = np.float32(rng.integers(0, 2, 7))
    np.testing.assert_array_equal(model([a, b]), model([b, a]))  # symmetric by construction

    def head(features):
        x = model.get_layer("verifier_hidden")(features)
        return model.get_layer("match_probability")(x)

    bce = keras.losses.BinaryCrossentropy()

    def gradients(constant_branch=None):
        with tf.GradientTape() as tape:
            ea, eb = tower(a), tower(b)
            if constant_branch == "a":
                ea = tf.stop_gradient(ea)
            if constant_branch == "b":
                eb = tf.stop_gradient(eb)
            loss = bce(y, head(PairFeatures()([ea, eb])))
        return tape.gradient(loss, tower.trainable_variables)

    with tf.GradientTape() as tape:
        loss = bce(y, model([a, b]))
    whole = tape.gradient(loss, tower.trainable_variables)
    through_a, through_b = gradients("b"), gradients("a")
    for total, ga, gb in zip(whole, through_a, through_b):
        np.testing.assert_allclose(total, ga + gb, rtol=1e-5, atol=1e-7)
        assert np.abs(ga).max() > 0 and np.abs(gb).max() > 0


def test_the_two_channel_network_reads_both_images_stacked_and_is_not_symmetric():
    keras.utils.set_random_seed(0)
    network = mlp_tower((4, 4, 2), hidden=[8], embedding_dim=5, l2_normalize=False, name="tower")
    model = two_channel_model(network, hidden=6)
    rng = np.random.default_rng(2)
    a, b = (rng.uniform(0, 255, (6, 4, 4, 1)).astype(np.float32) for _ in range(2))
    manual = model.get_layer("match_probability")(model.get_layer("verifier_hidden")(
        network(np.concatenate([a, b], axis=-1))))
    np.testing.assert_allclose(model([a, b]), manual, rtol=1e-6)
    assert np.abs(np.asarray(model([a, b])) - np.asarray(model([b, a]))).max() > 1e-4
    with pytest.raises(ValueError, match="even number of channels"):
        two_channel_model(mlp_tower((4, 4, 3), hidden=[8], embedding_dim=5))
    verifier, built = build_verifier(_config(model={"verifier": "two_channel"}).model, (8, 8, 1))
    assert tuple(built.inputs[0].shape[1:]) == (8, 8, 2) and len(verifier.inputs) == 2


@pytest.mark.parametrize("sections, message", [
    ({"model": {"verifier": "three_channel"}}, "model.verifier must be one of"),
    ({"model": {"verifier": "two_channel", "tower": "backbone"}}, "Received: model.tower='backbone'"),
    ({"loss": {"name": "am_softmax", "jrd_weight": 1.0}}, "Received: loss.jrd_weight=1.0"),
    ({"model": {"joint_layers": ["hidden1_relu"]}}, "Received: model.joint_layers"),
    ({"model": {"verifier_hidden": 0}}, "Received: model.verifier_hidden=0"),
])
def test_bad_verifier_configs_name_the_key(sections, message):
    with pytest.raises(ConfigError, match=message):
        _config(**sections)


@pytest.fixture(scope="module")
def designs(tmp_path_factory):
    """Digits runs of designs 1c (pair contrastive), 1a (1c frozen + head), 1b and 2, and an untrained 1b."""
    root = tmp_path_factory.mktemp("designs")
    metric_run = config_from_dict({**BASE, "model": {"tower": "mlp", "hidden": [64], "embedding_dim": 16},
                                   "loss": {"name": "pair_contrastive", "margin": 1.0}})
    reports = {"1c": run_training(metric_run, root / "1c", verbose=0)}
    configs = {"1a": _config(model={"init_from": str(root / "1c"), "freeze": True}),
               "1b": _config(train={"keep": "best"}),
               "2": _config(model={"verifier": "two_channel"})}
    for name, cfg in configs.items():
        reports[name] = run_training(cfg, root / name, verbose=0)
    cfg = _config()
    keras.utils.set_random_seed(cfg.train.seed)
    untrained, _ = build_verifier(cfg.model, (8, 8, 1))
    return root, reports, untrained


@pytest.mark.slow
def test_verifiers_learn_beyond_raw_pixels_and_their_untrained_selves(designs):
    root, reports, untrained = designs
    cfg = _config()
    test = splits_for(cfg.data).test
    first, second, match = sample_pairs(test.labels, cfg.eval.verification_pairs, seed=cfg.data.seed)
    untrained_auc = verification_metrics(1 - match_probabilities(untrained, test.images[first], test.images[second]),
                                         match)["roc_auc"]
    raw_auc = max(verification_metrics(pair_distances(flat_pixels(test.images), test.labels,
                                                      cfg.eval.verification_pairs, metric, cfg.data.seed)[0],
                                       match)["roc_auc"] for metric in ("L2", "angular"))
    assert raw_auc < 0.9 and untrained_auc < 0.9  # room to learn
    for design in ("1a", "1b", "2"):
        verification = reports[design]["metrics"]["verification"]
        assert verification["roc_auc"] > max(raw_auc, untrained_auc) + 0.05, (design, verification, raw_auc)
        assert verification["accuracy"] > 0.8 and verification["calibration"]["pairs"] > 0


@pytest.mark.slow
def test_verifiers_validate_every_epoch_and_keep_the_best(designs):
    _, reports, _ = designs
    for design in ("1a", "1b", "2"):
        history = reports[design]["train"]["history"]
        assert len(history) == 3 and all(0.5 < epoch["val_roc_auc"] <= 1.0 for epoch in history), design
    scores = [epoch["val_roc_auc"] for epoch in reports["1b"]["train"]["history"]]
    best = int(np.argmax(scores))
    assert reports["1b"]["kept"] == {"keep": "best", "epoch": best + 1, "val_roc_auc": scores[best]}
    assert reports["2"]["kept"] == {"keep": "last", "epoch": 3}


@pytest.mark.slow
def test_design_1a_trains_the_head_alone_on_the_1c_tower(designs):
    root, reports, _ = designs
    source, verifier = load_run(root / "1c").model, load_run(root / "1a").model
    tower = verifier.get_layer("tower")
    for layer in tower.layers:
        if layer.weights:
            for kept, original in zip(layer.get_weights(), source.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(kept, original)
    model = reports["1a"]["model"]
    head = sum(int(np.prod(w.shape)) for name in ("verifier_hidden", "match_probability")
               for w in verifier.get_layer(name).weights)
    assert model["trained_parameters"] == head and model["initialised_from"]["frozen"] is True
    assert model["parameters"] == head + tower.count_params()


@pytest.mark.slow
def test_every_design_scores_the_embedding_runs_test_pairs(designs):
    _, reports, _ = designs
    pairs = {design: report["metrics"]["verification"]["num_pairs"] for design, report in reports.items()}
    assert len(set(pairs.values())) == 1
    assert reports["1b"]["metrics"]["pair_order"]["max_abs_difference"] == 0.0
    assert reports["2"]["metrics"]["pair_order"]["mean_abs_difference"] > 0.0
    assert "verification_swapped_average" in reports["2"]["metrics"]
    assert "verification_swapped_average" not in reports["1b"]["metrics"]
    text = (designs[0] / "2" / "report.md").read_text()
    assert "p averaged over (a, b) and (b, a)" in text and "roc.png" in text


@pytest.mark.slow
def test_a_saved_verifier_answers_in_a_fresh_process_and_refuses_to_embed(designs):
    root = designs[0]
    run = load_run(root / "1b")
    images = run.evaluation["test_images"][:2]
    np.save(root / "pair.npy", images)
    script = textwrap.dedent(f"""
        import json, numpy as np, reprlearn
        run = reprlearn.load_run({str(root / '1b')!r})
        a, b = np.load({str(root / 'pair.npy')!r})
        try:
            run.embed(a[None])
            refused = ""
        except ValueError as error:
            refused = str(error)
        print(json.dumps({{"verdict": run.verify(a, b), "refused": refused}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    probability = float(match_probabilities(run.model, images[:1], images[1:])[0])
    threshold = run.report["metrics"]["verification"]["threshold"]
    assert out["verdict"] == {"distance": 1.0 - probability, "threshold": threshold, "match_probability": probability,
                              "match": bool(1.0 - probability <= threshold)}
    assert "Received: run kind 'verifier'" in out["refused"]
    from PIL import Image

    for name, image in zip(("a.png", "b.png"), images):
        Image.fromarray(image[..., 0].astype(np.uint8), mode="L").save(root / name)
    cli = subprocess.run([sys.executable, "-m", "reprlearn.cli", "verify", str(root / "1b"), str(root / "a.png"),
                          str(root / "b.png")], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr[-3000:]
    decision = "match" if out["verdict"]["match"] else "no match"
    assert cli.stdout.strip().endswith(f"threshold {threshold:.4f}: {decision}")
    assert f"match probability {probability:.4f}" in cli.stdout
    from reprlearn.export import export_run

    with pytest.raises(ValueError, match="kind 'verifier'"):
        export_run(root / "1b", root / "exported")
    assert not (root / "exported").exists()


@pytest.mark.slow
def test_an_interrupted_frozen_verifier_resumes_to_the_uninterrupted_model(designs, tmp_path):
    from tests.test_train import StopAfterFirstEpoch

    root = designs[0]
    cfg = _config(model={"init_from": str(root / "1c"), "freeze": True})
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "a", verbose=0, callbacks=[StopAfterFirstEpoch()])
    resumed = run_training(cfg, tmp_path / "a", verbose=0)
    assert resumed["train"]["resumed_from_epoch"] == 1 and len(resumed["train"]["history"]) == cfg.train.epochs
    assert resumed["model"]["trained_parameters"] == designs[1]["1a"]["model"]["trained_parameters"]
    straight, again = load_run(root / "1a").model.get_weights(), load_run(tmp_path / "a").model.get_weights()
    for a, b in zip(again, straight):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
