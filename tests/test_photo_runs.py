"""Autoencoder, VAE and verifier runs on image files: the pair reader, worker shards, streamed evaluation equal to
the same images in memory, and runs through the command line reloaded in a fresh process."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from reprlearn.config import config_from_dict
from reprlearn.data import ImageSet, splits_for
from reprlearn.data.loaders import Decoding, load_dataset
from reprlearn.data.pipelines import image_batches, pair_batches, pairs_in_order
from tests.photo_folder import make_photo_folder

ROOT = Path(__file__).resolve().parents[1]
EVAL = {"verification_pairs": 120, "grid_queries": 2, "grid_neighbours": 3}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photo_runs")
    make_photo_folder(root, classes=5, per_class=12, seed=3)
    return root


def _data(root) -> dict:
    return {"name": f"folder:{root}", "image_size": [32, 32], "protocol": "unseen-classes", "train_classes": [0, 1, 2],
            "validation_fraction": 0.25}


def _config(root, model: dict):
    return config_from_dict({"data": _data(root), "model": model, "eval": EVAL,
                             "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16, "pair_batch_size": 16}})


def _in_memory(part: ImageSet) -> ImageSet:
    """The same items decoded into an array: what a run on arrays would evaluate."""
    return ImageSet(part.pixels(np.arange(len(part))), part.labels, part.class_names, part.names)


def _both(cfg):
    """The config's splits streamed from the files, and the same splits as arrays."""
    streamed = splits_for(cfg.data)
    assert streamed.test.streamed and not streamed.test.decoded
    return streamed, dataclasses.replace(streamed, train=_in_memory(streamed.train), val=_in_memory(streamed.val),
                                         test=_in_memory(streamed.test))


def test_pairs_in_order_reads_each_pairs_pixels_and_leaves_out_pairs_of_a_broken_file(tmp_path):
    make_photo_folder(tmp_path / "p", classes=3, per_class=6, seed=5)
    files = load_dataset(f"folder:{tmp_path / 'p'}", decoding=Decoding((24, 24)))["all"]
    first, second = np.array([0, 3, 7, 7, 12, 17, 2]), np.array([1, 3, 9, 15, 0, 5, 8])
    batches = list(pairs_in_order(files, first, second, batch_size=3))
    assert [len(b[2]) for b in batches] == [3, 3, 1]
    a, b, pairs = (np.concatenate(parts) for parts in zip(*batches))
    assert np.array_equal(pairs, np.arange(7))
    np.testing.assert_array_equal(a, files.pixels(first))
    np.testing.assert_array_equal(b, files.pixels(second))
    memory = _in_memory(files)
    a_memory, b_memory, _ = (np.concatenate(parts) for parts in zip(*pairs_in_order(memory, first, second, 4)))
    np.testing.assert_array_equal(a_memory, a)
    np.testing.assert_array_equal(b_memory, b)
    Path(files.files.path(7)).write_bytes(b"\x89PNG\r\n\x1a\n broken")       # breaks after indexing
    kept = np.concatenate([batch[2] for batch in pairs_in_order(files, first, second, batch_size=3)])
    assert kept.tolist() == [0, 1, 4, 5, 6]                                    # the two pairs holding item 7 are out
    with pytest.raises(ValueError, match="pair up one to one. Received: 7 and 6"):
        list(pairs_in_order(files, first, second[:6]))


@pytest.mark.parametrize("where", ["files", "memory"])
def test_worker_shards_of_image_and_pair_batches_make_up_the_global_batch(photos, where):
    files = load_dataset(f"folder:{photos}", decoding=Decoding((24, 24)))["all"]
    source = files if where == "files" else _in_memory(files)
    whole = list(image_batches(source, 8, seed=3, start_step=5).take(2).as_numpy_iterator())
    shards = [list(image_batches(source, 8, seed=3, start_step=5, shard=(w, 2)).take(2).as_numpy_iterator())
              for w in (0, 1)]
    for step, (images, targets) in enumerate(whole):
        assert shards[0][step][0].shape[0] == 4
        np.testing.assert_array_equal(np.concatenate([shards[0][step][0], shards[1][step][0]]), images)
        np.testing.assert_array_equal(np.concatenate([shards[0][step][1], shards[1][step][1]]), targets)
    whole = list(pair_batches(source, source.labels, 8, seed=3).take(2).as_numpy_iterator())
    shards = [list(pair_batches(source, source.labels, 8, seed=3, shard=(w, 2)).take(2).as_numpy_iterator())
              for w in (0, 1)]
    for step, ((first, second), match) in enumerate(whole):
        (first_0, second_0), match_0 = shards[0][step]
        (first_1, second_1), match_1 = shards[1][step]
        assert first_0.shape[0] == 4 and match.sum() == 4
        np.testing.assert_array_equal(np.concatenate([first_0, first_1]), first)
        np.testing.assert_array_equal(np.concatenate([second_0, second_1]), second)
        np.testing.assert_array_equal(np.concatenate([match_0, match_1]), match)


@pytest.mark.parametrize("model", [{"kind": "autoencoder", "tower": "conv", "filters": [8], "code_dim": 6},
                                   {"kind": "vae", "tower": "conv", "filters": [8], "code_dim": 4}],
                         ids=lambda m: m["kind"])
def test_label_free_evaluation_of_files_equals_the_same_images_in_memory(photos, model):
    from reprlearn.training.autoencoder import build_autoencoder, evaluate_autoencoder

    cfg = _config(photos, model)
    streamed, memory = _both(cfg)
    keras.utils.set_random_seed(0)
    autoencoder = build_autoencoder(cfg, streamed.train.image_shape)
    from_files = evaluate_autoencoder(cfg, autoencoder, streamed)
    from_memory = evaluate_autoencoder(cfg, autoencoder, memory)
    np.testing.assert_allclose(from_files["codes"], from_memory["codes"], rtol=1e-6, atol=1e-6)
    for part in ("reconstruction", "likelihood"):
        for key, value in from_memory["metrics"].get(part, {}).items():
            assert from_files["metrics"][part][key] == pytest.approx(value, rel=1e-6), (part, key)
    for part in ("test", "pca"):
        assert from_files["metrics"][part]["map_at_r"] == pytest.approx(from_memory["metrics"][part]["map_at_r"])
    # By hand: the reconstruction MSE over every pixel of the test images, the PCA fit on the training images.
    test = memory.test.images.reshape(len(memory.test), -1) / 255.0
    reconstructed = keras.ops.convert_to_numpy(autoencoder(memory.test.images, training=False))
    assert from_files["metrics"]["reconstruction"]["mse"] == pytest.approx(
        float(np.mean((reconstructed.reshape(len(test), -1) - test) ** 2)), rel=1e-5)
    from sklearn.decomposition import PCA

    pca = PCA(cfg.model.code_dim, random_state=cfg.data.seed).fit(memory.train.images.reshape(len(memory.train), -1)
                                                                   / 255.0)
    assert from_files["metrics"]["reconstruction"]["pca_mse"] == pytest.approx(
        float(np.mean((pca.inverse_transform(pca.transform(test)) - test) ** 2)), rel=1e-4)
    if model["kind"] == "vae":
        elbo = autoencoder.log_likelihood(memory.test.images, k=1, seed=cfg.data.seed)   # one call, every image
        assert from_files["metrics"]["likelihood"]["elbo_nats_per_image"] == pytest.approx(float(np.mean(elbo)),
                                                                                          rel=1e-6)


def test_a_test_file_that_breaks_is_left_out_of_a_label_free_evaluation_and_named(tmp_path):
    from reprlearn.training.autoencoder import build_autoencoder, evaluate_autoencoder

    make_photo_folder(tmp_path / "p", classes=5, per_class=20, seed=3)
    cfg = _config(tmp_path / "p", {"kind": "autoencoder", "tower": "conv", "filters": [8], "code_dim": 6})
    splits = splits_for(cfg.data)
    broken = splits.test.names[1]
    Path(splits.test.files.path(1)).write_bytes(b"GIF89a broken")
    keras.utils.set_random_seed(0)
    evaluation = evaluate_autoencoder(cfg, build_autoencoder(cfg, splits.train.image_shape), splits)
    assert evaluation["metrics"]["skipped_files"] == [broken]
    assert len(evaluation["test"]) == len(splits.test) - 1 == evaluation["metrics"]["test"]["num_queries"]
    assert broken not in evaluation["test"].names and np.isfinite(evaluation["codes"]).all()


@pytest.mark.parametrize("verifier", ["siamese_head", "two_channel"])
def test_verifier_evaluation_of_files_equals_the_same_images_in_memory(photos, verifier):
    from reprlearn.training.verifier import build_compiled_verifier, evaluate_verifier

    cfg = _config(photos, {"kind": "verifier", "verifier": verifier, "tower": "conv", "filters": [8],
                           "embedding_dim": 8})
    streamed, memory = _both(cfg)
    keras.utils.set_random_seed(0)
    model = build_compiled_verifier(cfg, streamed.train.image_shape, {})
    from_files, from_memory = evaluate_verifier(cfg, model, streamed), evaluate_verifier(cfg, model, memory)
    assert set(from_files["metrics"]) == set(from_memory["metrics"])
    for name, pairs in from_memory["pairs"].items():
        np.testing.assert_allclose(from_files["pairs"][name]["distances"], pairs["distances"], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(from_files["pairs"][name]["match"], pairs["match"])
        for key in ("roc_auc", "eer", "threshold", "accuracy"):
            assert from_files["metrics"][name][key] == pytest.approx(from_memory["metrics"][name][key], abs=1e-6)
    # By hand: the first test pair's distance is 1 − p of its two images.
    from reprlearn.metrics import sample_pairs

    first, second, _ = sample_pairs(memory.test.labels, cfg.eval.verification_pairs, seed=cfg.data.seed)
    p = float(model([memory.test.images[first[:1]], memory.test.images[second[:1]]], training=False)[0, 0])
    assert from_files["pairs"]["verification"]["distances"][0] == pytest.approx(1.0 - p, abs=1e-6)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """An autoencoder, a VAE and a verifier trained on a generated folder (one with an empty file) by the CLI."""
    base = tmp_path_factory.mktemp("kinds_cli")
    make_photo_folder(base / "photos", classes=5, per_class=12, seed=6)
    (base / "photos" / "class_01" / "empty.png").write_bytes(b"")
    models = {"autoencoder": {"kind": "autoencoder", "tower": "conv", "filters": [8], "code_dim": 6},
              "vae": {"kind": "vae", "tower": "conv", "filters": [8], "code_dim": 4},
              "verifier": {"kind": "verifier", "tower": "conv", "filters": [8], "embedding_dim": 8}}
    for name, model in models.items():
        config = base / f"{name}.json"
        config.write_text(json.dumps({"data": _data(base / "photos"), "model": model, "eval": EVAL,
                                      "train": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 16,
                                                "pair_batch_size": 16}}))
        done = subprocess.run([sys.executable, "-m", "reprlearn.cli", "train", str(config), "--out", str(base / name)],
                              capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
    return base


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["autoencoder", "vae", "verifier"])
def test_a_run_of_each_kind_on_a_folder_records_files_and_reloads_in_a_fresh_process(cli_runs, kind):
    run = cli_runs / kind
    report = json.loads((run / "report.json").read_text())
    assert report["files"]["items"] == 60 and report["files"]["skipped_when_indexed"] == [["class_01/empty.png",
                                                                                          "zero bytes"]]
    assert "- `class_01/empty.png`: zero bytes" in (run / "report.md").read_text()
    with np.load(run / "evaluation.npz") as held:
        assert "test_keys" in held.files and "test_images" not in held.files   # paths, not pixels
    if kind == "verifier":
        assert 0.0 <= report["metrics"]["verification"]["roc_auc"] <= 1.0
        code = ("from reprlearn.runs import load_run\n"
                f"run = load_run({str(run)!r})\n"
                "test = run.split('test')\n"
                "a, b = run.read_image(test.files.path(0)), run.read_image(test.files.path(1))\n"
                "print(test.streamed, a.shape, 0.0 <= run.verify(a, b)['match_probability'] <= 1.0)\n")
        expected = ["True", "(32,", "32,", "3)", "True"]
    else:
        assert report["metrics"]["reconstruction"]["mse"] > 0 and "reconstructions.png" in report["figures"].values()
        code = ("from reprlearn.runs import load_run\n"
                f"run = load_run({str(run)!r})\n"
                "test = run.split('test')\n"
                "print(test.streamed, len(test), run.embed(test).shape)\n")
        n = report["data"]["n_test"]
        expected = ["True", str(n), f"({n},", f"{report['model']['code_dim']})"]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == expected, done.stderr[-2000:]


@pytest.mark.slow
def test_cli_verify_decodes_two_photos_of_other_sizes_as_the_run_was_trained(cli_runs):
    from PIL import Image

    photos = sorted((cli_runs / "photos" / "class_03").iterdir())
    sizes = {Image.open(path).size for path in photos[:4]}
    assert len(sizes) > 1 and (32, 32) not in sizes                       # the files differ from the run's size
    done = subprocess.run([sys.executable, "-m", "reprlearn.cli", "verify", str(cli_runs / "verifier"), str(photos[0]),
                           str(photos[1])], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0 and "match probability" in done.stdout, done.stderr[-2000:]
