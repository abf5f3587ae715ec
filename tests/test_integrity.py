"""Run folders that cannot be corrupted: one process per folder, a completion mark, re-runs that change nothing,
failures kept and finished later, and the inputs people type read as they mean them."""

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reprlearn.cli import main
from reprlearn.errors import ConfigError, RunFolderError
from reprlearn.runs import load_run
from reprlearn.runs.lock import lock_path, run_lock
from reprlearn.runs.record import run_state

QUICK = ("data: {name: digits, protocol: unseen-classes}\n"
         "model: {tower: mlp, hidden: [16], embedding_dim: 8}\n"
         "train: {epochs: 2, steps_per_epoch: 3, classes_per_batch: 4, examples_per_class: 4}\n"
         "eval: {verification_pairs: 200, projection: pca, projection_points: 50, projector_points: 20}\n")


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in args])
    return code, out.getvalue(), err.getvalue()


def snapshot(folder: Path) -> dict:
    """Every file's bytes (hashed) and modification time."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "quick.yaml"
    path.write_text(QUICK)
    return path


def test_a_folder_in_use_is_refused_naming_the_holder_and_changed_by_nothing(tmp_path, config):
    out = tmp_path / "run"
    with run_lock(out, "reprlearn train other.yaml"):
        code, _, err = cli("train", config, "--out", out, "--quiet")
    assert code == 2
    assert err.strip().splitlines() == [
        f"reprlearn train: error: {out} is in use by another reprlearn process (pid {os.getpid()}: reprlearn train "
        f"other.yaml); wait for it to end or stop it. Received: out={str(out)!r}"]
    assert not out.exists()
    # Released, the folder is free again (a killed holder releases it the same way: the OS drops its lock).
    assert cli("train", config, "--out", out, "--quiet")[0] == 0 and run_state(out)[0] == "complete"


def test_a_complete_run_run_again_changes_no_file_and_says_where_its_report_is(tmp_path, config):
    out = tmp_path / "run"
    assert cli("train", config, "--out", out)[0] == 0
    before = snapshot(tmp_path)  # the run folder and everything beside it: the lock lives elsewhere
    assert not lock_path(out).is_relative_to(tmp_path)
    time.sleep(0.01)
    code, printed, _ = cli("train", config, "--out", out)
    assert code == 0
    assert f"{out} already holds this run, complete; nothing to do. Report: {out / 'report.md'}" in printed
    assert snapshot(tmp_path) == before
    report = json.loads((out / "report.json").read_text())
    train = report["train"]  # the whole run's training time and rate, never "0.0 s this session"
    assert train["seconds"] > 0 and train["examples_per_second"] > 0


def test_an_unchanged_export_is_not_written_again(tmp_path, config):
    out = tmp_path / "run"
    assert cli("train", config, "--out", out, "--quiet")[0] == 0
    assert cli("export", out, "--out", tmp_path / "serving", "--format", "saved_model")[0] == 0
    before = snapshot(tmp_path / "serving")
    code, printed, _ = cli("export", out, "--out", tmp_path / "serving", "--format", "saved_model")
    assert code == 0 and "version 1 already holds this export" in printed
    assert snapshot(tmp_path / "serving") == before
    assert cli("export", out, "--out", tmp_path / "serving", "--format", "saved_model", "--new-version")[0] == 0
    assert sorted(p.name for p in (tmp_path / "serving" / "run").iterdir()) == ["1", "2", "artifacts"]


def test_a_run_that_fails_after_training_is_marked_failed_refused_and_finished_by_the_same_command(
        tmp_path, config, monkeypatch):
    from reprlearn.training import embedding

    out = tmp_path / "run"

    def fail(*args, **kwargs):
        raise MemoryError("embedding the test split ran out of memory")

    monkeypatch.setattr(embedding, "evaluate", fail)
    code, _, err = cli("train", config, "--out", out, "--quiet")
    assert code == 1 and "MemoryError: embedding the test split ran out of memory" in err
    assert run_state(out) == ("failed", "MemoryError: embedding the test split ran out of memory")
    assert (out / "checkpoints" / "last.keras").is_file()  # the trained weights are kept
    with pytest.raises(RunFolderError, match="is not a complete run \\(it failed: MemoryError"):
        load_run(out)
    code, _, err = cli("export", out, "--out", tmp_path / "serving")
    assert code == 2 and "reprlearn train" in err and "again finishes it" in err
    assert not (tmp_path / "serving").exists()
    trained = json.loads((out / "checkpoints" / "state.json").read_text())
    monkeypatch.undo()
    assert cli("train", config, "--out", out, "--quiet")[0] == 0  # evaluates from the checkpoint, no training
    report = json.loads((out / "report.json").read_text())
    assert report["train"]["epochs_this_session"] == 0 and report["train"]["resumed_from_epoch"] == 2
    assert report["train"]["seconds"] == round(trained["seconds"], 2)
    assert run_state(out) == ("complete", None) and load_run(out).kind == "embedding"


def test_what_can_be_known_before_training_is_refused_before_a_folder_exists(tmp_path, config):
    for setting, message in [("data.max_test=1", "the test split needs two classes and a class with two items"),
                             ("eval.verification_pairs=1", "eval.verification_pairs must be >= 2"),
                             ("data.validation_classes=1", "data.validation_classes must be 0 (a share of every "
                                                           "class) or >= 2"),
                             ("data.validation_fraction=0.01", "the validation split needs two classes and a class with two "
                                                  "items"),
                             ("model.embedding_dim=65", "model.embedding_dim is larger than the 64 values of each "
                                                        "8×8×1 image it encodes, so it cannot compress them; use "
                                                        "at most 64. Received: model.embedding_dim=65"),
                             ("model.hidden=[200000,200000]", "(40,014,800,008 parameters, 16 images")]:
        code, _, err = cli("train", config, "--set", setting, "--out", tmp_path / "run")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quick.yaml"]


def test_what_people_type_is_read_or_refused_in_one_line(tmp_path, config):
    code, _, err = cli("train", config, "--set", "model.hidden=[128,", "--out", tmp_path / "run")
    assert code == 2 and err.strip().splitlines() == [
        "reprlearn train: error: config: the value of model.hidden is not valid YAML (expected the node content, "
        "but found '<stream end>'). Received: model.hidden='[128,'"]
    (tmp_path / "afile").write_text("")
    code, _, err = cli("train", config, "--out", tmp_path / "afile" / "run")
    assert code == 2 and err.strip().splitlines() == [
        f"reprlearn train: error: cannot make the run folder {tmp_path / 'afile' / 'run'}: a folder on its path is a "
        f"file. Received: out={str(tmp_path / 'afile' / 'run')!r}"]
    code, _, err = cli("train", config, "--set", "train.learning_rate=3e-4", "--set", "model.dropout=.5",
                       "--out", tmp_path / "numbers", "--quiet")
    assert code == 0, err
    assert load_run(tmp_path / "numbers").config.train.learning_rate == 3e-4


def test_a_diverging_run_stops_at_the_first_non_finite_loss_with_the_step_and_a_hint():
    from reprlearn.config import config_from_dict
    from reprlearn.training.loop import StopOnNonFiniteLoss

    stop = StopOnNonFiniteLoss(config_from_dict({"train": {"learning_rate": 0.5, "mixed_precision": "mixed_float16"}}))
    stop.on_epoch_begin(2)
    stop.on_train_batch_end(0, {"loss": 0.75})
    with pytest.raises(ConfigError) as raised:
        stop.on_train_batch_end(1, {"loss": np.float32("nan")})
    assert str(raised.value) == (
        "training diverged at epoch 3, step 2: the loss is nan (last finite running loss: 0.75). Lower "
        "train.learning_rate (now 0.5) or set train.mixed_precision: none (now mixed_float16), then train again "
        "(with --force where the run folder was kept: it keeps the last finite epoch's checkpoint)")


def test_a_huge_learning_rate_fails_with_the_divergence_message(tmp_path, config):
    code, _, err = cli("train", config, "--set", "train.learning_rate=1e30", "--out", tmp_path / "run", "--quiet")
    assert code == 2 and "training diverged at epoch 1" in err and "Lower train.learning_rate (now 1e+30)" in err, err
    # No epoch finished, so nothing is kept.
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_processes_on_one_folder_then_a_kill_then_export_refused_then_the_same_command_finishes(tmp_path):
    out = tmp_path / "run"
    slow = tmp_path / "slow.yaml"
    # Epochs long enough (tens of seconds) that the first process is still training when the second starts.
    slow.write_text(QUICK.replace("epochs: 2, steps_per_epoch: 3", "epochs: 2, steps_per_epoch: 8000"))
    command = [sys.executable, "-m", "reprlearn.cli", "train", str(slow), "--out", str(out), "--quiet"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoints" / "state.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)  # the first process has finished an epoch and is training the next
        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"is in use by another reprlearn process (pid {first.pid}: " in second.stderr
        assert first.poll() is None  # the second changed nothing and the first trains on
    finally:
        first.kill()
        first.wait()
    code, _, err = cli("export", out, "--out", tmp_path / "serving")
    assert code == 2 and "is not a complete run (it is training or evaluating now, or was interrupted)" in err
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert run_state(out)[0] == "complete" and report["train"]["resumed_from_epoch"] >= 1
    assert len(report["train"]["history"]) == 2


# --- the API checks at the door ---

def _in_batch_losses():
    from reprlearn import losses

    return [losses.TripletSemiHardLoss(), losses.TripletHardLoss(), losses.InBatchContrastiveLoss(),
            losses.LiftedStructLoss(), losses.SupervisedContrastiveLoss(scale=10.0),
            losses.triplet_semihard_loss, losses.triplet_hard_loss, losses.lifted_struct_loss,
            losses.supervised_contrastive_loss]


def _name(loss) -> str:
    return getattr(loss, "name", None) or loss.__name__


@pytest.mark.parametrize("loss", _in_batch_losses(), ids=_name)
def test_a_non_finite_embedding_never_gives_a_finite_loss(loss):
    rng = np.random.default_rng(0)
    labels, embeddings = np.repeat(np.arange(3), 2), rng.normal(size=(6, 4)).astype(np.float32)
    assert np.isfinite(float(loss(labels, embeddings)))
    for bad in (np.nan, np.inf):
        broken = embeddings.copy()
        broken[4, 1] = bad
        assert np.isnan(float(loss(labels, broken)))


@pytest.mark.parametrize("loss", _in_batch_losses(), ids=_name)
def test_wrong_shapes_and_one_hot_labels_are_refused_naming_the_argument(loss):
    labels, embeddings = np.repeat(np.arange(3), 2), np.zeros((6, 4), np.float32)
    names = ("y_true", "y_pred") if hasattr(loss, "name") else ("labels", "embeddings")
    cases = [((labels, embeddings[:, 0]), f"{names[1]} must be [N, d], one row per item. Received: "
                                          f"{names[1]}.shape=(6,)"),
             ((labels[:5], embeddings), f"{names[0]} and {names[1]} must have one row per item. Received: "
                                        f"{names[0]}.shape=(5,), {names[1]}.shape=(6, 4)"),
             ((np.eye(3)[labels], embeddings), f"{names[0]} must be class ids [N] or [N, 1], not one-hot [N, C]")]
    for arguments, message in cases:
        with pytest.raises(ValueError) as raised:
            loss(*arguments)
        assert message in str(raised.value)


def test_match_labels_must_be_zero_or_one():
    from reprlearn.errors import DataError
    from reprlearn.losses import ContrastiveLoss
    from reprlearn.metrics import verification_metrics

    with pytest.raises(ValueError, match=r"y_true must mark each pair 1 \(match\) or 0 \(no match\), not class ids"):
        ContrastiveLoss()(np.array([0, 3]), np.array([0.1, 0.2]))
    assert float(ContrastiveLoss()(np.array([1, 0]), np.array([0.2, 0.3]))) == pytest.approx((0.04 + 0.49) / 2)
    with pytest.raises(DataError, match=r"match must mark each pair 1 / True \(same class\) or 0 / False"):
        verification_metrics(np.array([0.1, 0.2, 0.3]), np.array([0, 2, 1]))


def test_float_images_scaled_to_one_are_flagged_and_converted_on_request():
    from reprlearn.data import make_imageset
    from reprlearn.errors import DataError

    images = np.random.default_rng(0).random((8, 6, 6)).astype(np.float32)
    labels = np.repeat(np.arange(4), 2)
    with pytest.warns(UserWarning, match=r"dataset.images look scaled to \[0, 1\] \(maximum 0.997\), but towers take "
                                         r"pixels 0-255: multiply them by 255, or pass make_imageset"):
        make_imageset(images, labels)
    with pytest.raises(DataError, match=r"look scaled to \[0, 1\]"):
        make_imageset(images, labels, strict=True)
    converted = make_imageset(images, labels, scale="0-1")
    np.testing.assert_allclose(converted.images[..., 0], images * 255.0, rtol=1e-6)
    with pytest.raises(DataError, match="scale must be '0-255' or '0-1'. Received: scale='0-100'"):
        make_imageset(images, labels, scale="0-100")


def test_changing_only_eval_keys_re_evaluates_the_trained_model_without_training(tmp_path, config):
    out = tmp_path / "run"
    assert cli("train", config, "--out", out, "--quiet")[0] == 0
    first = json.loads((out / "report.json").read_text())
    weights = (out / "checkpoints" / "last.keras").read_bytes()
    code, printed, _ = cli("train", config, "--set", "eval.verification_pairs=400", "--out", out)
    assert code == 0 and "only eval keys changed (eval.verification_pairs: 200 → 400)" in printed
    second = json.loads((out / "report.json").read_text())
    assert second["config"]["eval"]["verification_pairs"] == 400 and run_state(out)[0] == "complete"
    assert second["train"]["epochs_this_session"] == 0 and second["train"]["seconds"] == first["train"]["seconds"]
    assert (out / "checkpoints" / "last.keras").read_bytes() == weights  # nothing trained
    assert second["metrics"]["test"] == first["metrics"]["test"]  # the same model scores the same retrieval
    code, _, err = cli("train", config, "--set", "train.epochs=3", "--out", out)
    assert code == 2 and "train.epochs: 2 → 3" in err  # a training key still needs a new run


def test_another_data_cache_continues_the_same_run(tmp_path, config):
    """data.cache says where decoded images are kept, not what is trained: the finished run stays as it was."""
    out = tmp_path / "run"
    assert cli("train", config, "--out", out, "--quiet")[0] == 0
    report = (out / "report.json").read_bytes()
    code, printed, _ = cli("train", config, "--set", f"data.cache={tmp_path / 'decoded'}", "--out", out)
    assert code == 0 and (out / "report.json").read_bytes() == report
    code, _, error = cli("train", config, "--set", "train.seed=5", "--out", out)
    assert code != 0 and "train.seed: 0 → 5" in error
