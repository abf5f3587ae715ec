"""reprlearn tune: search space checks, results, resume after a kill, and chief + 2 workers on 127.0.0.1."""

import csv
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reprlearn.cli import main
from reprlearn.config import ConfigError, load_config
from reprlearn.training.tuning import describe

SMOKE = Path(__file__).resolve().parents[1] / "tuner" / "digits_smoke.yaml"
REPRLEARN = [sys.executable, "-m", "reprlearn.cli"]


def _rows(out: Path) -> list[dict]:
    with open(out / "trials.csv") as f:
        return list(csv.DictReader(f))


def _trial_files(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "search").glob("trial_*/trial.json")}


def test_tune_refuses_a_pair_model_loss_and_a_per_loss_range_no_loss_takes(tmp_path, capsys):
    # search.gamma is Circle's; the smoke config's losses do not take it.
    assert main(["tune", str(SMOKE), "--out", str(tmp_path / "t"), "--set", "search.gamma=[10, 100]"]) == 2
    err = capsys.readouterr().err
    assert "search.gamma applies to ['circle']" in err and "Received: search.gamma=[10.0, 100.0]" in err
    assert not (tmp_path / "t").exists()
    assert main(["tune", str(SMOKE), "--out", str(tmp_path / "t"), "--set", "loss.name=pair_contrastive",
                 "--set", "search.loss=[]"]) == 2
    assert "Received: loss.name='pair_contrastive'" in capsys.readouterr().err


@pytest.mark.parametrize("override, match", [
    ("search.margin=[1.0, 0.5]", r"search.margin=\[1.0, 0.5\]"),
    ("search.learning_rate=[]", None),
    ("search.embedding_dim=[]", None),
    ("search.dropout=[0.1, 0.5]", "unknown key 'search.dropout'"),
    ("search.objective=val_loss", "search.objective='val_loss'"),
    ("search.loss=[contrastive, pair_contrastive]", "search.loss="),
])
def test_search_space_is_checked_before_any_trial(override, match):
    if match is None:
        load_config(SMOKE, [override])  # an empty list fixes the hyperparameter: allowed
        return
    with pytest.raises(ConfigError, match=match):
        load_config(SMOKE, [override])


def test_an_empty_search_section_is_an_error_not_the_whole_default_space(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data: {name: digits}\nsearch: {}\n")
    assert main(["tune", str(config), "--out", str(tmp_path / "search")]) == 2
    err = capsys.readouterr().err
    assert "lists no hyperparameter to search" in err and "Traceback" not in err
    assert not (tmp_path / "search").exists()


def test_batch_shape_the_training_classes_cannot_fill_fails_before_any_trial(tmp_path, capsys):
    assert main(["tune", str(SMOKE), "--out", str(tmp_path), "--set", "search.classes_per_batch=[4, 9]"]) == 2
    assert "search.classes_per_batch" in capsys.readouterr().err
    assert not (tmp_path / "search").exists()


@pytest.mark.slow
def test_tune_writes_trials_plots_and_a_best_config_that_trains(tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["tune", str(SMOKE), "--tuner", "bayesian", "--max-trials", "3", "--out", str(out), "--quiet",
                 "--retrain-best"]) == 0
    rows = _rows(out)
    assert len(rows) == 3 and all(r["status"] == "COMPLETED" for r in rows)
    assert all(r["loss"] in ("contrastive", "triplet_semihard") and r["embedding_dim"] in ("8", "16") for r in rows)
    assert all(0.0 <= float(r["objective"]) <= 1.0 and float(r["seconds"]) > 0 and r["epochs"] == "1.0"
               for r in rows)
    best = max(rows, key=lambda r: float(r["objective"]))
    best_cfg = load_config(out / "best.yaml")
    assert best_cfg.loss.name == best["loss"] and best_cfg.model.embedding_dim == int(best["embedding_dim"])
    assert best_cfg.loss.margin == pytest.approx(float(best["margin"]))
    assert (out / "objective_vs_margin.png").is_file() and (out / "objective_vs_embedding_dim.png").is_file()
    report = json.loads((out / "best_run" / "report.json").read_text())
    assert report["config"]["loss"]["name"] == best["loss"]
    assert "Best trial" in capsys.readouterr().out


@pytest.mark.slow
def test_killed_search_resumes_instead_of_restarting(tmp_path):
    out = tmp_path / "tune"
    command = [*REPRLEARN, "tune", str(SMOKE), "--tuner", "random", "--max-trials", "3", "--out", str(out), "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if any(t["status"] == "COMPLETED" for t in _trial_files(out).values()):
            break
        time.sleep(0.2)
    process.kill()
    process.wait()
    first = {name: t for name, t in _trial_files(out).items() if t["status"] == "COMPLETED"}
    assert 1 <= len(first) < 3, "the kill must land after the first trial and before the last"
    subprocess.run(command, env=env, check=True, capture_output=True)
    trials = _trial_files(out)
    assert sorted(t["status"] for t in trials.values()) == ["COMPLETED"] * 3
    for name, trial in first.items():  # finished trials were kept, not re-run
        assert trials[name]["score"] == trial["score"]
        assert trials[name]["hyperparameters"]["values"] == trial["hyperparameters"]["values"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_chief_and_two_workers_complete_every_trial_exactly_once(tmp_path):
    out = tmp_path / "dist"
    script = Path(__file__).resolve().parents[1] / "tuner" / "launch_distributed.sh"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "REPRLEARN": str(Path(sys.executable).parent / "reprlearn")}
    done = subprocess.run(["bash", str(script), str(SMOKE), str(out), "2", str(_free_port()), "--tuner", "random",
                           "--max-trials", "4"], env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stdout + (out / "chief.log").read_text()
    rows = _rows(out)
    assert len(rows) == 4 and len({r["trial"] for r in rows}) == 4
    assert all(r["status"] == "COMPLETED" for r in rows)
    assert sorted(_trial_files(out)) == sorted(f"trial_{r['trial']}" for r in rows)
    # Each trial ran in exactly one worker: across the workers' logs, every trial's hyperparameters finish once.
    finished = [line.split(": ", 1)[1].split(" -> ")[0] for i in range(2)
                for line in (out / f"worker{i}.log").read_text().splitlines()
                if line.startswith(f"Trial done on tuner{i}: ")]
    trials = [describe(t["hyperparameters"]["values"]) for t in _trial_files(out).values()]
    assert sorted(finished) == sorted(trials) and len(set(trials)) == 4


@pytest.mark.slow
def test_retrain_best_replaces_a_best_run_left_by_an_earlier_search(tmp_path, capsys):
    from reprlearn.training import run_training

    out = tmp_path / "search"
    earlier = load_config(SMOKE, ["model.embedding_dim=12"])  # a config no trial of this search can have
    run_training(earlier, out / "best_run", verbose=0)
    assert main(["tune", str(SMOKE), "--tuner", "random", "--max-trials", "2", "--out", str(out), "--quiet",
                 "--retrain-best"]) == 0
    assert "holds an earlier best trial" in capsys.readouterr().out
    assert load_config(out / "best_run" / "config.yaml") == load_config(out / "best.yaml")


@pytest.mark.slow
def test_tune_searches_the_open_set_keys_on_a_classifier_loss(tmp_path):
    out = tmp_path / "tune"
    sets = ["loss.name=am_softmax", "search.loss=[]", "search.margin=[]", "search.embedding_dim=[]",
            "search.jrd_weight=[0.0, 1.0]", "search.reconstruction_weight=[0.0, 0.5]",
            "search.joint_layers=['', pool1]", "search.augment=[none, light]"]
    assert main(["tune", str(SMOKE), "--tuner", "random", "--max-trials", "3", "--out", str(out), "--quiet",
                 *[arg for item in sets for arg in ("--set", item)]]) == 0
    rows = _rows(out)
    assert len(rows) == 3 and all(r["status"] == "COMPLETED" for r in rows)
    assert all(r["jrd_weight"] in ("0.0", "1.0") and r["reconstruction_weight"] in ("0.0", "0.5")
               and r["joint_layers"] in ("", "pool1") and r["augment"] in ("none", "light") for r in rows)
    best = max(rows, key=lambda r: float(r["objective"]))
    best_cfg = load_config(out / "best.yaml")
    assert best_cfg.model.joint_layers == ([best["joint_layers"]] if best["joint_layers"] else [])
    assert best_cfg.data.augment == best["augment"]


@pytest.mark.parametrize("item, message", [
    ("search.jrd_weight=[1.0]", "search.jrd_weight needs a classifier"),
    ("search.joint_layers=[pool1+nowhere]", r"lacks: \['nowhere'\]"),
    ("search.augment=[heavy]", "search.augment"),
])
def test_open_set_search_keys_are_checked_before_any_trial(tmp_path, capsys, item, message):
    assert main(["tune", str(SMOKE), "--out", str(tmp_path), "--set", item]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "search").exists()


def test_trials_of_the_losses_beyond_triplet_take_their_own_defaults_and_ranges():
    import keras_tuner

    from reprlearn.config import config_from_dict, config_to_dict
    from reprlearn.config.rules import check_config
    from reprlearn.training.tuning import RetrievalHyperModel, trial_config

    cfg = config_from_dict({"loss": {"name": "triplet_semihard", "margin": 0.2},
                            "search": {"loss": ["triplet_semihard", "circle", "ntxent", "proxy_anchor", "arcface"],
                                       "temperature": [0.03, 0.3], "gamma": [16.0, 256.0]}})
    # (margin, distance, temperature, gamma): a loss that reads no margin (NT-Xent) takes the schema's 0.5, so its
    # best.yaml carries no value the loss ignores (and loads again).
    want = {"triplet_semihard": (0.2, "L2", None, None), "circle": (0.4, "angular", None, 80.0),
            "ntxent": (0.5, "angular", 0.07, None), "proxy_anchor": (0.1, "angular", None, None),
            "arcface": (0.5, "angular", None, None)}
    for loss, (margin, distance, temperature, gamma) in want.items():
        trial = trial_config(cfg, {"loss": loss, "margin": 0.3})
        check_config(trial)
        config_from_dict(config_to_dict(trial))   # what best.yaml holds loads back
        margin = 0.3 if loss == "triplet_semihard" else margin   # a searched margin goes to the losses that read it
        margin = 0.3 if loss in ("circle", "proxy_anchor", "arcface") else margin
        assert (trial.loss.margin, trial.loss.distance, trial.loss.temperature, trial.loss.gamma) == (
            margin, distance, temperature, gamma), loss
    assert trial_config(cfg, {"loss": "proxy_anchor"}).loss.proxy_learning_rate_factor == 100.0
    assert trial_config(cfg, {"loss": "arcface"}).loss.scale == 64.0
    # A per-loss range is declared under the loss it belongs to: a trial of another loss has no value for it.
    model = RetrievalHyperModel(cfg, splits=None, verbose=0)
    for loss in ("ntxent", "circle", "triplet_semihard"):
        hp = keras_tuner.HyperParameters()
        hp.values["loss"] = loss
        values = model.declare(hp)
        assert ("temperature" in values) == (loss == "ntxent") and ("gamma" in values) == (loss == "circle")
        assert trial_config(cfg, values).loss.temperature == values.get(
            "temperature", 0.07 if loss == "ntxent" else None)
