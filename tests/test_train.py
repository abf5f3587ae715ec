import json

import keras
import numpy as np
import pytest

from reprlearn.cli import main
from reprlearn.config import ConfigError, config_from_dict
from reprlearn.config.losses import LOSS_TRAITS
from reprlearn.data.imageset import ImageSet
from reprlearn.training import run_training

REPORT_KEYS = ("precision_at_1", "r_precision", "map_at_r", "recall_at_1", "recall_at_2", "recall_at_4",
               "recall_at_8", "nmi")


def _cfg(**sections):
    raw = {"data": {"name": "tiny", "protocol": "seen-classes"},
           "model": {"tower": "conv", "filters": [4], "dense": 16, "embedding_dim": 8},
           "train": {"epochs": 2, "steps_per_epoch": 5, "classes_per_batch": 4, "examples_per_class": 4},
           "eval": {"verification_pairs": 200, "projection": "pca", "projection_points": 50,
                    "projector_points": 20, "grid_queries": 2, "grid_neighbours": 3}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


class StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt


def test_run_writes_every_artefact(tmp_path, tiny_sets):
    report = run_training(_cfg(train={"epochs": 2}), tmp_path, sets=tiny_sets, verbose=0)
    for name in ("config.yaml", "run.json", "evaluation.npz", "model.keras", "report.json", "report.md",
                 "projection.png", "distances.png", "roc.png", "retrieval_grid.png", "training.png",
                 "logs/projector_config.pbtxt", "logs/sprite.png",
                 "logs/metadata.tsv"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(REPORT_KEYS) <= set(saved["metrics"]["test"]) and set(REPORT_KEYS) <= set(saved["metrics"]["baseline_raw"])
    assert {"roc_auc", "eer", "tar_at_far_1e-3", "threshold", "accuracy"} <= set(saved["metrics"]["verification"])
    assert saved["metrics"]["verification"]["calibration"]["split"] == "val"
    assert {"epochs", "seconds", "examples_per_second"} <= set(saved["train"])
    assert {"name", "protocol", "train_classes", "test_classes", "n_train", "n_test"} <= set(saved["data"])
    assert saved["model"]["reload_max_abs_diff"] == 0.0
    assert len(saved["train"]["history"]) == 2 and "val_map_at_r" in saved["train"]["history"][0]
    assert report["metrics"]["test"] == saved["metrics"]["test"]


# Digits, seen classes: raw pixels score about 0.53 MAP@R (L2 and cosine) and an untrained MLP about 0.32,
# so a model that learns nothing (a zero loss leaves the untrained weights) fails the margin below.
LEARNING = {"data": {"name": "digits", "protocol": "seen-classes"},
            "model": {"tower": "mlp", "hidden": [64], "embedding_dim": 16},
            "train": {"epochs": 3, "steps_per_epoch": 60, "learning_rate": 0.003, "classes_per_batch": 8,
                      "examples_per_class": 8, "pair_batch_size": 64},
            "eval": {"verification_pairs": 1000, "projection": "pca", "projection_points": 50,
                     "projector_points": 20, "grid_queries": 2, "grid_neighbours": 3}}
MARGIN = 0.15


def _untrained_scores(cfg) -> dict:
    from reprlearn.data import splits_for
    from reprlearn.metrics import retrieval_metrics, sample_pairs, verification_metrics
    from reprlearn.models import build_tower
    from reprlearn.runs import embed

    test = splits_for(cfg.data).test
    keras.utils.set_random_seed(cfg.train.seed)
    embeddings = embed(build_tower(cfg.model, test.images.shape[1:]), test.images)
    first, second, match = sample_pairs(test.labels, cfg.eval.verification_pairs, seed=cfg.data.seed)
    distances = np.linalg.norm(embeddings[first] - embeddings[second], axis=1)
    return {"map_at_r": retrieval_metrics(embeddings, test.labels, compute_nmi=False)["map_at_r"],
            "roc_auc": verification_metrics(distances, match)["roc_auc"]}


@pytest.mark.parametrize("loss", [{"name": "contrastive", "margin": 0.5},
                                  {"name": "triplet_semihard", "margin": 0.2},
                                  {"name": "triplet_hard", "margin": 0.2},
                                  {"name": "triplet_hard", "margin": 0.2, "soft": True},
                                  {"name": "triplet_batch_all", "margin": 0.2},
                                  {"name": "lifted_struct", "margin": 1.0},
                                  {"name": "pair_contrastive", "margin": 1.0},
                                  {"name": "am_softmax", "margin": 0.2, "scale": 10.0},
                                  {"name": "supervised_contrastive", "scale": 10.0, "distance": "cosine"},
                                  {"name": "am_softmax", "margin": 0.2, "scale": 10.0, "jrd_weight": 1.0,
                                   "reconstruction_weight": 1.0},
                                  # pytorch-metric-learning's losses at its defaults (CI: make test-all)
                                  pytest.param({"name": "multi_similarity", "miner": "multi_similarity"},
                                               marks=pytest.mark.slow),
                                  pytest.param({"name": "circle"}, marks=pytest.mark.slow),
                                  pytest.param({"name": "ntxent"}, marks=pytest.mark.slow),
                                  pytest.param({"name": "proxy_anchor"}, marks=pytest.mark.slow),
                                  pytest.param({"name": "arcface", "sub_centers": 2}, marks=pytest.mark.slow)],
                         ids=lambda loss: loss["name"] + ("-soft" if loss.get("soft") else "")
                         + ("-jrd-reconstruction" if loss.get("jrd_weight") else ""))
def test_every_loss_learns_beyond_raw_pixels_and_the_untrained_tower(tmp_path, loss):
    cfg = config_from_dict({**LEARNING, "loss": loss})
    report = run_training(cfg, tmp_path, verbose=0)
    metrics, untrained = report["metrics"], _untrained_scores(cfg)
    raw_l2, raw_cosine = metrics["baseline_raw"]["map_at_r"], metrics["baseline_raw_cosine"]["map_at_r"]
    assert 0.4 < raw_l2 < 0.7 and 0.4 < raw_cosine < 0.7 and untrained["map_at_r"] < 0.5  # far from 1.0
    assert metrics["test"]["map_at_r"] > max(raw_l2, raw_cosine, untrained["map_at_r"]) + MARGIN
    # Its own objective too: verification ROC AUC rises over the untrained tower's.
    assert metrics["verification"]["roc_auc"] > untrained["roc_auc"] + 0.05
    history = report["train"]["history"]
    if LOSS_TRAITS[loss["name"]].classifier:  # trained through cosine class weights: it classifies its classes
        # (with JRD and reconstruction the model has several outputs, and Keras prefixes the output's name)
        assert history[-1]["class_cosines_accuracy" if loss.get("jrd_weight") else "accuracy"] > 0.8
    elif loss["name"] != "pair_contrastive":
        assert history[-1]["mean_negative_distance"] > history[-1]["mean_positive_distance"]


def test_views_learn_without_labels(tmp_path):
    # Self-supervised: P images × 2 augmented views, positives = views of one image (the batches never see a
    # label: `view_batches` takes none). The embedding still beats the untrained tower on the test classes.
    cfg = config_from_dict({**LEARNING, "data": {**LEARNING["data"], "positives": "views", "augment": "strong"},
                            "loss": {"name": "supervised_contrastive", "scale": 5.0, "distance": "cosine"},
                            "train": {**LEARNING["train"], "epochs": 2, "classes_per_batch": 32,
                                      "examples_per_class": 2}})
    report = run_training(cfg, tmp_path, verbose=0)
    untrained = _untrained_scores(cfg)
    assert report["metrics"]["test"]["map_at_r"] > untrained["map_at_r"] + 0.1
    history = report["train"]["history"][-1]
    assert history["mean_negative_distance"] > history["mean_positive_distance"]


def test_interrupted_run_resumes_from_last_finished_epoch(tmp_path, tiny_sets):
    cfg = _cfg(train={"epochs": 3})
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "a", sets=tiny_sets, verbose=0, callbacks=[StopAfterFirstEpoch()])
    assert json.loads((tmp_path / "a/checkpoints/state.json").read_text())["epochs_done"] == 1
    resumed = run_training(cfg, tmp_path / "a", sets=tiny_sets, verbose=0)
    assert resumed["train"]["resumed_from_epoch"] == 1 and resumed["train"]["epochs_this_session"] == 2
    assert len(resumed["train"]["history"]) == 3
    straight = run_training(cfg, tmp_path / "b", sets=tiny_sets, verbose=0)
    # Same batches (keyed by step) and restored optimizer state: the same final model.
    a = keras.saving.load_model(tmp_path / "a/model.keras").get_weights()
    b = keras.saving.load_model(tmp_path / "b/model.keras").get_weights()
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)
    assert resumed["metrics"]["test"]["map_at_r"] == pytest.approx(straight["metrics"]["test"]["map_at_r"], abs=0.02)


def test_loss_config_combinations_are_checked():
    with pytest.raises(ConfigError, match="loss.distance='angular'"):
        _cfg(loss={"name": "lifted_struct", "distance": "angular"})
    with pytest.raises(ConfigError, match=r"lifted_struct accepts loss.distance in \['L2'\]"):
        _cfg(loss={"name": "lifted_struct", "distance": "cosine"})
    assert _cfg(loss={"name": "triplet_semihard", "distance": "cosine"}).loss.distance == "angular"
    with pytest.raises(ConfigError, match="loss.name='triplet_semihard'"):
        _cfg(loss={"name": "triplet_semihard", "soft": True})
    with pytest.raises(ConfigError, match="loss.name='sphereface'"):
        _cfg(loss={"name": "sphereface"})
    # The losses beyond triplet take their own defaults for what the config leaves out, and their own keys only.
    arcface = _cfg(loss={"name": "arcface"}).loss
    assert (arcface.margin, arcface.scale, arcface.distance, arcface.sub_centers) == (0.5, 64.0, "angular", 1)
    assert _cfg(loss={"name": "circle", "margin": 0.25}).loss.margin == 0.25
    for loss, match in (({"name": "triplet_hard", "miner": "multi_similarity"}, "triplet_hard takes no pairs"),
                        ({"name": "contrastive", "temperature": 0.1},
                         r"loss.temperature applies to \['ntxent', 'info_nce'\]"),
                        ({"name": "arcface", "margin": 1.6}, "Received: loss.margin=1.6"),
                        ({"name": "circle", "distance": "L2"}, "Received: loss.distance='L2'"),
                        ({"name": "ntxent", "temperature": -0.1}, "Received: loss.temperature=-0.1"),
                        ({"name": "arcface", "sub_centers": 0}, "Received: loss.sub_centers=0")):
        with pytest.raises(ConfigError, match=match):
            _cfg(loss=loss)


def test_bad_inputs_fail_before_training(tmp_path, tiny_sets):
    images, labels = tiny_sets["all"].images, tiny_sets["all"].labels
    with pytest.raises(ValueError, match="too small for 4 2x2 poolings"):
        run_training(_cfg(model={"filters": [4, 4, 4, 4]}), tmp_path, sets={"all": ImageSet(
            images[:, :6, :6], labels, ["a", "b", "c", "d"])}, verbose=0)
    with pytest.raises(ValueError, match="classes_per_batch"):
        run_training(_cfg(train={"classes_per_batch": 9}), tmp_path, sets=tiny_sets, verbose=0)
    assert not (tmp_path / "checkpoints").exists()


def test_cli_reports_bad_config_and_unknown_dataset(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  epochs: five\n")
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "train.epochs must be a int. Received: train.epochs='five'" in capsys.readouterr().err
    config.write_text("data:\n  name: imagenet_typo\n")
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "name='imagenet_typo'" in capsys.readouterr().err


def test_cli_trains_digits_end_to_end(tmp_path, capsys):
    config = tmp_path / "digits.yaml"
    config.write_text("# reprlearn train digits.yaml\ndata:\n  name: digits\n  protocol: unseen-classes\n"
                      "model:\n  tower: mlp\n  hidden: [64]\n  embedding_dim: 16\n")
    code = main(["train", str(config), "--out", str(tmp_path / "run"), "--quiet",
                 "--set", "train.epochs=2", "--set", "train.steps_per_epoch=10", "--set", "train.classes_per_batch=4",
                 "--set", "eval.projection=pca", "--set", "eval.verification_pairs=400"])
    assert code == 0
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["data"]["train_classes"] == [0, 1, 2, 3, 4] and report["data"]["test_classes"] == [5, 6, 7, 8, 9]
    assert (tmp_path / "run/config.yaml").read_text().startswith("# reprlearn train")
    assert "Test MAP@R" in capsys.readouterr().out


def test_without_validation_pairs_no_threshold_is_fit_and_the_test_split_is_not_used_instead(tmp_path, tiny_sets):
    from reprlearn.evaluation.scoring import pair_distances
    from reprlearn.metrics import verification_metrics
    from reprlearn.runs import embed, load_run

    cfg = _cfg(data={"validation_fraction": 0.0})
    report = run_training(cfg, tmp_path, sets=tiny_sets, verbose=0)
    verification = report["metrics"]["verification"]
    assert "threshold" not in verification and "accuracy" not in verification
    assert verification["calibration"]["pairs"] == 0
    # The threshold-free figures are still the test pairs' own, recomputed here from the saved tower.
    run, tower = load_run(tmp_path), keras.saving.load_model(tmp_path / "model.keras")
    distances, match = pair_distances(embed(tower, run.evaluation["test_images"]), run.evaluation["test_labels"],
                                      cfg.eval.verification_pairs, cfg.loss.distance, cfg.data.seed)
    expected = verification_metrics(distances, match)
    assert verification["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-6)
    assert verification["eer"] == pytest.approx(expected["eer"], abs=1e-6)
    assert "no threshold" in (tmp_path / "report.md").read_text()


def test_the_threshold_is_fit_on_validation_pairs_only(tmp_path, tiny_sets):
    from reprlearn.metrics import sample_pairs
    from reprlearn.metrics.verification import best_threshold
    from reprlearn.runs import embed, load_run

    cfg = _cfg()
    report = run_training(cfg, tmp_path, sets=tiny_sets, verbose=0)
    run, tower = load_run(tmp_path), keras.saving.load_model(tmp_path / "model.keras")
    val_embeddings = embed(tower, run.evaluation["val_images"])
    first, second, match = sample_pairs(run.evaluation["val_labels"], cfg.eval.verification_pairs, seed=cfg.data.seed)
    distances = np.linalg.norm(val_embeddings[first] - val_embeddings[second], axis=1)
    assert report["metrics"]["verification"]["threshold"] == pytest.approx(best_threshold(distances, match)[0],
                                                                           abs=1e-5)
