"""The bad inputs a new user meets, each ending in one clear line (what is wrong, the value received, what to do)
or working as documented, with nothing half-written left behind."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from reprlearn.cli import main
from reprlearn.config import config_from_dict, load_config
from tests.photo_folder import make_photo_folder

SMALL_RUN = """
data:
  name: folder:{folder}
  image_size: [24, 24]
model:
  tower: conv
  filters: [8]
  dense: 16
  embedding_dim: 8
train:
  epochs: 1
  steps_per_epoch: 2
  classes_per_batch: 2
  examples_per_class: 2
eval:
  projection: pca
  verification_pairs: 200
"""


def _refused(tmp_path, capsys, *argv) -> str:
    code = main([*argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _config(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_a_one_image_class_is_left_out_named_once_and_reported_and_warnings_are_one_line(tmp_path, recwarn):
    import warnings as python_warnings

    from reprlearn.errors import ReprlearnWarning

    folder = tmp_path / "photos"
    make_photo_folder(folder, classes=4, per_class=20, seed=0, sizes=(24, 48))
    (folder / "class_09").mkdir()
    Image.fromarray(np.full((30, 30, 3), 200, np.uint8)).save(folder / "class_09" / "only.png")
    Image.new("RGB", (1, 1)).save(folder / "class_00" / "pixel.png")          # a tracking pixel: skipped, listed
    (folder / "class_01" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")  # not decodable: skipped
    config = _config(tmp_path, SMALL_RUN.format(folder=folder))
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    # Every warning prints as one line of its own (what stderr shows), without Python's file:line prefix.
    shown = [python_warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
             for w in recwarn if issubclass(w.category, ReprlearnWarning)]
    assert all(line.startswith("reprlearn: warning: ") and line.count("\n") == 1 and ".py:" not in line
               for line in shown), shown
    assert any("left out of the run" in line and "['class_09']" in line for line in shown), shown
    assert any("pixel.png: too small (1x1 pixels" in line for line in shown), shown
    record = json.loads((tmp_path / "run" / "run.json").read_text())["data"]
    assert record["classes_left_out"] == ["class_09"]
    assert 4 not in record["test_classes"] and 4 not in record["train_classes"]
    assert "Left out, fewer than 2 images each (nothing to test them on): ['class_09']" in (
        tmp_path / "run" / "report.md").read_text()


def test_a_warning_prints_as_one_line_in_a_fresh_process():
    code = ("import warnings, reprlearn\n"
            "warnings.warn('3 unusable image files were skipped', reprlearn.ReprlearnWarning)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == ["reprlearn: warning: 3 unusable image files were skipped"]


def test_a_folder_with_one_usable_class_says_so(tmp_path, capsys):
    folder = tmp_path / "photos"
    make_photo_folder(folder, classes=1, per_class=10, seed=0, sizes=(24, 48))
    (folder / "class_05").mkdir()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(folder / "class_05" / "lonely.png")
    config = _config(tmp_path, SMALL_RUN.format(folder=folder))
    for protocol in ("seen-classes", "unseen-classes"):
        err = _refused(tmp_path, capsys, "train", str(config), "--out", str(tmp_path / "run"), "--set",
                       f"data.protocol={protocol}")
        assert "holds 1 usable class ['class_00']" in err and "left out, too few images: ['class_05']" in err
        assert "Received: 1 class" in err
    assert not (tmp_path / "run").exists()


def test_a_loss_key_the_loss_does_not_read_is_refused_naming_what_it_reads(tmp_path, capsys):
    config = _config(tmp_path, "data:\n  name: digits\nloss:\n  name: multi_similarity\n  margin: 0.9\n")
    err = _refused(tmp_path, capsys, "train", str(config), "--out", str(tmp_path / "run"))
    assert "multi_similarity does not read loss.margin" in err
    assert "['loss.alpha', 'loss.beta', 'loss.base']" in err and "Received: loss.margin=0.9" in err
    assert not (tmp_path / "run").exists()
    for loss, key in (("ntxent", "scale"), ("triplet_semihard", "scale"), ("supervised_contrastive", "margin"),
                      ("info_nce", "margin")):
        extra = {"model": {"kind": "two_tower"}} if loss == "info_nce" else {}
        with pytest.raises(ValueError, match=f"{loss} does not read loss.{key}"):
            config_from_dict({**extra, "loss": {"name": loss, key: 0.123}})
    # The keys a loss reads are taken; the schema's own default is let through (every saved config.yaml holds it).
    assert config_from_dict({"loss": {"name": "multi_similarity", "margin": 0.5}}).loss.name == "multi_similarity"
    assert config_from_dict({"loss": {"name": "circle", "margin": 0.3}}).loss.margin == 0.3
    assert config_from_dict({"loss": {"name": "arcface", "scale": 30.0}}).loss.scale == 30.0


@pytest.mark.parametrize("text", ["", "\n\n", "# a config to fill in later\n"])
def test_an_empty_config_is_refused_instead_of_training_every_default(tmp_path, capsys, text):
    err = _refused(tmp_path, capsys, "train", str(_config(tmp_path, text)), "--out", str(tmp_path / "run"))
    assert "is empty (or only comments)" in err and "data: {}" in err
    assert not (tmp_path / "run").exists()
    # Every default on purpose: an empty section says so.
    assert load_config(_config(tmp_path, "data: {}\n")).data.name == "fashion_mnist"


def test_a_folder_given_as_the_config_is_named_with_the_yaml_files_in_it(tmp_path, capsys):
    (tmp_path / "configs").mkdir()
    for name in ("b.yaml", "a.yml", "notes.txt"):
        (tmp_path / "configs" / name).write_text("data: {}\n")
    err = _refused(tmp_path, capsys, "train", str(tmp_path / "configs"), "--out", str(tmp_path / "run"))
    assert "is a folder, not a config file (the YAML files in it: a.yml, b.yaml)" in err
    (tmp_path / "empty").mkdir()
    err = _refused(tmp_path, capsys, "train", str(tmp_path / "empty"), "--out", str(tmp_path / "run"))
    assert "it holds no YAML file" in err


def test_string_labels_are_refused_with_the_fix_by_every_kind_of_loss():
    import tensorflow as tf

    from reprlearn.losses import (
        ArcFaceLoss,
        MultiSimilarityLoss,
        ProxyAnchorLoss,
        TripletSemiHardLoss,
        triplet_semihard_loss,
    )
    from reprlearn.losses.cross_view import SymmetricInfoNCELoss

    names = ["cat", "dog", "cat", "dog"]
    embeddings = tf.math.l2_normalize(tf.random.stateless_normal([4, 6], seed=[0, 0]), axis=1)
    fix = r"integer class ids, not names; map the names to ids with ids = np.unique\(names, return_inverse=True\)"
    for loss in (TripletSemiHardLoss(), MultiSimilarityLoss(), ProxyAnchorLoss(),
                 ArcFaceLoss()):
        with pytest.raises(ValueError, match=fix + r".*Received: y_true of <U3 values, e.g. 'cat'"):
            loss(names, embeddings)
    with pytest.raises(ValueError, match=fix):
        SymmetricInfoNCELoss()(np.array(names), tf.stack([embeddings, embeddings], axis=1))
    with pytest.raises(ValueError, match=fix + ".*Received: labels"):
        triplet_semihard_loss(np.array(names), embeddings)
    # The fix works: the same names as ids.
    ids = np.unique(names, return_inverse=True)[1]
    assert np.isfinite(float(TripletSemiHardLoss()(ids, embeddings)))
