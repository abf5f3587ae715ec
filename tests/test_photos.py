"""Streamed photos: folder and CSV indexes, bad files, decoding and resizing, P×K from disk, backbones, a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from reprlearn.data.decode import DecodeSpec, decode_contents
from reprlearn.data.files import index_folder
from reprlearn.data.loaders import Decoding, load_dataset
from reprlearn.data.pipelines import batches_in_order, pair_batches, pk_batches, view_batches
from reprlearn.errors import ConfigError, DataError
from tests.photo_folder import make_photo_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    make_photo_folder(root, classes=5, per_class=12, seed=1)
    return root


def _load(root, size=(48, 48), **kwargs):
    return load_dataset(f"folder:{root}", decoding=Decoding(size, **kwargs))["all"]


def test_folder_index_lists_every_image_below_its_class_and_ignores_other_files(photos, tmp_path):
    index = index_folder(photos)
    assert len(index) == 60 and index.class_names == [f"class_{c:02d}" for c in range(5)]
    assert np.bincount(index.labels).tolist() == [12] * 5
    assert any("/more/" in name for name in index.files.relative)       # nested folders are found
    assert not index.problems and index.ignored == 0


def test_bad_files_are_skipped_listed_or_refused(photos, tmp_path):
    root = tmp_path / "bad"
    make_photo_folder(root, classes=3, per_class=4, seed=2)
    (root / "class_00" / "empty.jpg").write_bytes(b"")
    good = next((root / "class_01").glob("*.jpg")).read_bytes()
    (root / "class_01" / "cut.jpg").write_bytes(good[: len(good) // 2])
    (root / "class_02" / "garbage.png").write_bytes(b"this is not a png at all" * 10)
    Image.new("RGB", (20, 20)).save(root / "class_02" / "photo.webp", "WEBP")   # read (Pillow)
    Image.new("RGB", (1, 1)).save(root / "class_02" / "pixel.gif", "GIF")       # too small: skipped
    (root / "class_02" / "notes.txt").write_text("ignored")
    (root / "class_02" / ".hidden.jpg").write_bytes(good)
    (root / "class_03").mkdir()
    (root / "class_03" / "only.jpg").write_bytes(b"")   # a class with no readable image is dropped

    with pytest.warns(UserWarning, match=r"5 unusable image files were skipped: class_00/empty.jpg: zero bytes"):
        imageset = load_dataset(f"folder:{root}", decoding=Decoding((32, 32)))["all"]
    assert len(imageset) == 13 and imageset.class_names == ["class_00", "class_01", "class_02"]
    assert "class_02/photo.webp" in imageset.names
    record = imageset.source_record
    reasons = dict(record["skipped"])
    assert reasons["class_00/empty.jpg"] == "zero bytes"
    assert reasons["class_01/cut.jpg"].startswith("truncated")
    assert reasons["class_02/garbage.png"].startswith("not an image")
    assert reasons["class_02/pixel.gif"] == ("too small (1x1 pixels; images under 4 pixels a side are skipped, not "
                                             "upscaled)")
    assert record["ignored_files"] == 2 and record["dropped_classes"] == ["class_03"]
    with pytest.raises(DataError, match=r"5 unusable image files.*class_00/empty.jpg.*on_bad_image: error refuses"):
        load_dataset(f"folder:{root}", decoding=Decoding((32, 32), on_bad_image="error"))


def test_a_folder_with_no_readable_image_is_an_error_and_one_class_trains_nothing(tmp_path):
    (tmp_path / "only" / "c0").mkdir(parents=True)
    (tmp_path / "only" / "c0" / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no readable image"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_dataset(f"folder:{tmp_path / 'only'}", decoding=Decoding((32, 32)))
    from reprlearn.config import Config
    from reprlearn.training import run_training

    make_photo_folder(tmp_path / "one", classes=1, per_class=6)
    cfg = Config()
    cfg.data.name, cfg.data.image_size = f"folder:{tmp_path / 'one'}", [32, 32]
    with pytest.raises((DataError, ConfigError), match=r"holds 1 usable class \['class_00'\]"):
        run_training(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_mixed_sizes_need_image_size_and_the_error_names_two(photos):
    with pytest.raises(DataError, match=r"different sizes \('class_00/img 00000.jpg' is \d+x\d+, '.*' is \d+x\d+\)"
                                        r": set data.image_size"):
        load_dataset(f"folder:{photos}")


def test_channels_default_to_three_when_any_file_has_colour(tmp_path):
    for label in range(2):
        (tmp_path / f"c{label}").mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * i + label, np.uint8)).save(tmp_path / f"c{label}" / f"{i}.png")
    gray = load_dataset(f"folder:{tmp_path}")["all"]
    assert gray.image_shape == (8, 8, 1)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "c0" / "colour.png")
    assert load_dataset(f"folder:{tmp_path}")["all"].image_shape == (8, 8, 3)


def _decode(image: Image.Image, spec, tmp_path, name="x.png"):
    path = tmp_path / name
    image.save(path)
    return decode_contents(tf.io.read_file(str(path)), spec).numpy()


def test_pad_letterboxes_with_the_aspect_ratio_kept(tmp_path):
    image = Image.fromarray(np.full((20, 40, 3), 200, np.uint8))             # 20 high, 40 wide
    out = _decode(image, DecodeSpec((40, 40), 3, "pad"), tmp_path)
    # scale min(40/20, 40/40) = 1: 20 × 40 centred, 10 black rows above and below.
    assert np.all(out[:10] == 0) and np.all(out[30:] == 0) and np.allclose(out[10:30], 200)


def test_crop_takes_the_centre_after_scaling_the_short_side(tmp_path):
    pixels = np.zeros((10, 30, 3), np.uint8)
    pixels[:, 10:20] = 255                                                   # the centre third is white
    out = _decode(Image.fromarray(pixels), DecodeSpec((10, 10), 3, "crop"), tmp_path)
    assert np.allclose(out, 255)
    random = [decode_contents(tf.io.read_file(str(tmp_path / "x.png")), DecodeSpec((10, 10), 3, "crop"),
                              tf.constant([s, 1], tf.int64)).numpy().mean() for s in range(12)]
    assert len(set(random)) > 3                                               # random windows move


def test_stretch_matches_pil_box_when_shrinking_and_bilinear_when_enlarging(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    shrunk = _decode(image, DecodeSpec((20, 30), 3, "stretch"), tmp_path)
    reference = np.asarray(image.resize((30, 20), Image.BOX), np.float32)
    assert np.abs(shrunk - reference).max() <= 1.0                           # exact 3× box average, PIL rounds
    enlarged = _decode(Image.fromarray(pixels[:4, :4]), DecodeSpec((8, 8), 3, "stretch"), tmp_path)
    expected = tf.image.resize(pixels[:4, :4].astype(np.float32), (8, 8), method="bilinear").numpy()
    assert np.allclose(enlarged, expected)


def test_rgba_is_composited_on_black_and_gray_repeated(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 128
    out = _decode(Image.fromarray(rgba, "RGBA"), DecodeSpec((4, 4), 3, "stretch"), tmp_path)
    assert np.allclose(out, 200 * 128 / 255, atol=1e-3)
    gray = _decode(Image.fromarray(np.full((4, 4), 90, np.uint8)), DecodeSpec((4, 4), 3, "stretch"), tmp_path, "g.png")
    assert np.allclose(gray, 90)
    luma = _decode(Image.fromarray(np.full((4, 4, 3), [255, 0, 0], np.uint8)), DecodeSpec((4, 4), 1, "stretch"),
                   tmp_path, "r.png")
    assert np.allclose(luma, 0.2989 * 255, atol=0.6)


def test_pk_batches_from_disk_are_exact_resumable_and_equal_to_memory(photos, tmp_path):
    streamed = _load(photos)
    in_memory = np.concatenate([images for images, _ in batches_in_order(streamed)])
    assert in_memory.shape == (60, 48, 48, 3)
    # One class with fewer items than K: sampled with replacement, still K of it in a batch.
    keep = np.flatnonzero((streamed.labels != 4) | (np.arange(60) % 12 < 3))
    part, labels = streamed.subset(keep), streamed.labels[keep]
    disk = list(pk_batches(part, labels, 3, 6, seed=5).take(12).as_numpy_iterator())
    memory = list(pk_batches(in_memory[keep], labels, 3, 6, seed=5).take(12).as_numpy_iterator())
    for (images, batch_labels), (images_m, labels_m) in zip(disk, memory):
        assert images.shape == (18, 48, 48, 3)
        assert sorted(np.unique(batch_labels, return_counts=True)[1].tolist()) == [6, 6, 6]
        assert np.array_equal(batch_labels, labels_m) and np.allclose(images, images_m)
    resumed = list(pk_batches(part, labels, 3, 6, seed=5, start_step=7).take(2).as_numpy_iterator())
    assert all(np.allclose(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(resumed, disk[7:9]))


def test_a_file_broken_after_indexing_is_replaced_in_its_batch_and_logged(tmp_path):
    make_photo_folder(tmp_path / "p", classes=3, per_class=5, seed=3, modes=False)
    streamed = _load(tmp_path / "p", (32, 32))
    for name in streamed.files.relative[:5]:                                  # every file of class 0, but one
        if name != streamed.files.relative[4]:
            Path(streamed.files.path(list(streamed.files.relative).index(name))).write_bytes(b"\xff\xd8\xff broken")
    log = tmp_path / "skipped.log"
    for images, labels in pk_batches(streamed, streamed.labels, 3, 4, seed=0, bad_image_log=str(log)).take(
            4).as_numpy_iterator():
        assert images.shape == (12, 32, 32, 3) and np.bincount(labels).tolist() == [4, 4, 4]
        assert images[labels == 0].std(axis=(1, 2, 3)).min() > 1                # no blank stand-ins
    logged = set(log.read_text().split())
    assert logged and all("class_00" in line for line in log.read_text().splitlines() if line)
    views = next(iter(view_batches(streamed, 4, 2, augment="light", bad_image_log=str(log))))
    assert views[0].shape == (8, 32, 32, 3)
    (first, second), match = next(iter(pair_batches(streamed, streamed.labels, 6)))
    assert first.shape == second.shape == (6, 32, 32, 3) and match.shape == (6,)
    ordered = [items for _, items in batches_in_order(streamed, 8)]
    assert len(np.concatenate(ordered)) == 15 - 4                            # the broken files are left out


def test_csv_lists_with_and_without_split(photos, tmp_path):
    index = index_folder(photos)
    rows = ["path,label,split"] + [f"{os.path.relpath(index.files.path(i), tmp_path)},{index.class_names[y]},"
                                   f"{('train', 'validation', 'test')[i % 3]}" for i, y in enumerate(index.labels)]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    sets = load_dataset(f"csv:{tmp_path / 'list.csv'}", decoding=Decoding((32, 32)))
    assert sorted(sets) == ["test", "train", "validation"] and sum(map(len, sets.values())) == 60
    plain = tmp_path / "plain.csv"
    plain.write_text("path,label\n" + "\n".join(line.rsplit(",", 1)[0] for line in rows[1:]) + "\n")
    assert len(load_dataset(f"csv:{plain}", decoding=Decoding((32, 32)))["all"]) == 60
    (tmp_path / "bad.csv").write_text("path,label,split\nnowhere.jpg,a,train\n")
    with pytest.raises(DataError, match="lists 1 files that do not exist"):
        load_dataset(f"csv:{tmp_path / 'bad.csv'}", decoding=Decoding((32, 32)))
    (tmp_path / "bad2.csv").write_text(rows[0] + "\n" + rows[1].rsplit(",", 1)[0] + ",holdout\n")
    with pytest.raises(DataError, match="split 'holdout'"):
        load_dataset(f"csv:{tmp_path / 'bad2.csv'}", decoding=Decoding((32, 32)))


def test_backbone_preprocessing_is_the_applications_own():
    import keras

    from reprlearn.models.towers import preprocessing_layer

    images = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype(np.float32)
    for name, module in (("ResNet50", keras.applications.resnet50), ("MobileNetV2", keras.applications.mobilenet_v2),
                         ("DenseNet121", keras.applications.densenet)):
        expected = keras.ops.convert_to_numpy(module.preprocess_input(images.copy()))
        assert np.allclose(keras.ops.convert_to_numpy(preprocessing_layer(name)(images)), expected, atol=1e-4)
    with pytest.raises(ConfigError, match="Received: model.backbone='ResNet51'"):
        preprocessing_layer("ResNet51")


def test_gem_pooling_against_numpy():
    from reprlearn.layers import GeneralizedMeanPooling

    x = np.random.default_rng(1).normal(size=(2, 3, 4, 5)).astype(np.float32)
    expected = np.mean(np.maximum(x, 1e-6) ** 3, axis=(1, 2)) ** (1 / 3)
    assert np.allclose(GeneralizedMeanPooling()(x).numpy(), expected, rtol=1e-5)
    layer = GeneralizedMeanPooling(initial_p=1.0)
    assert np.allclose(layer(x).numpy(), np.mean(np.maximum(x, 1e-6), axis=(1, 2)), rtol=1e-5)
    with pytest.raises(ValueError, match="Received: initial_p=0"):
        GeneralizedMeanPooling(initial_p=0)


def test_backbone_weights_from_a_file_and_random_frozen_backbones_refused(tmp_path):
    import keras

    from reprlearn.config import Config
    from reprlearn.config.rules import check_config
    from reprlearn.models.towers import BACKBONE_NAME, backbone_tower

    first = backbone_tower((32, 32, 3), "MobileNetV3Small", None, None, pooling="gem", embedding_dim=8)
    path = tmp_path / "backbone.weights.h5"
    first.get_layer(BACKBONE_NAME).save_weights(path)
    second = backbone_tower((32, 32, 3), "MobileNetV3Small", str(path), None, embedding_dim=8)
    assert all(np.array_equal(a, b) for a, b in zip(first.get_layer(BACKBONE_NAME).get_weights(),
                                                    second.get_layer(BACKBONE_NAME).get_weights()))
    assert not second.get_layer(BACKBONE_NAME).trainable                      # pretrained: frozen by default
    assert first.get_layer(BACKBONE_NAME).trainable                           # random: trains whole
    bn = backbone_tower((32, 32, 3), "MobileNetV3Small", None, None, freeze_batchnorm=True, embedding_dim=8)
    assert not any(layer.trainable for layer in bn.get_layer(BACKBONE_NAME).layers
                   if isinstance(layer, keras.layers.BatchNormalization))
    cfg = Config()
    cfg.model.tower, cfg.model.fine_tune_from = "backbone", "expanded_conv_project"
    with pytest.raises(ConfigError, match="random weights.*model.fine_tune_from='expanded_conv_project'"):
        check_config(cfg)


def test_imagenet_without_network_fails_quickly_naming_the_file(tmp_path):
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9"}
    code = ("from reprlearn.models.towers import backbone_tower\n"
            "backbone_tower((96, 96, 3), 'MobileNetV3Small', 'imagenet', None)\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and time.monotonic() - started < 60
    assert "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5" in done.stderr
    assert str(tmp_path / "keras" / "models") in done.stderr


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    """A backbone run (random MobileNetV3Small) on a generated folder, through the command line."""
    base = tmp_path_factory.mktemp("photo_run")
    make_photo_folder(base / "photos", classes=6, per_class=16, seed=4)
    (base / "photos" / "class_02" / "empty.jpg").write_bytes(b"")            # skipped, and named in the report
    config = base / "photos.yaml"
    config.write_text(f"""data:
  name: folder:{base / 'photos'}
  image_size: [48, 48]
  resize: crop
  augment: light
  protocol: unseen-classes
  train_classes: [0, 1, 2]
  validation_fraction: 0.25
model:
  tower: backbone
  backbone: MobileNetV3Small
  backbone_weights: none
  pooling: gem
  embedding_dim: 16
train:
  epochs: 2
  steps_per_epoch: 4
  classes_per_batch: 3
  examples_per_class: 6
eval:
  verification_pairs: 200
  projection: pca
""")
    done = subprocess.run([sys.executable, "-m", "reprlearn.cli", "train", str(config), "--out", str(base / "run")],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return base


@pytest.mark.slow
def test_a_backbone_run_on_a_folder_records_its_files_and_reloads_in_a_fresh_process(photo_run):
    run = photo_run / "run"
    record = json.loads((run / "run.json").read_text())["data"]
    assert record["image_shape"] == [48, 48, 3] and record["files"]["items"] == 96
    n_test = record["splits"]["test"]["n"]
    assert n_test == 3 * round(0.2 * 16)                                      # classes 3-5, 20 % of each
    with np.load(run / "evaluation.npz") as held:
        assert "test_keys" in held.files and "test_images" not in held.files   # paths, not pixels
        assert held["test_keys"].shape == (n_test,)
    report = json.loads((run / "report.json").read_text())
    assert report["files"]["skipped_when_indexed"] == [["class_02/empty.jpg", "zero bytes"]]
    assert report["files"]["items"] == 96
    assert "- `class_02/empty.jpg`: zero bytes" in (run / "report.md").read_text()
    code = ("from reprlearn.runs import load_run\n"
            f"run = load_run({str(run)!r})\n"
            "test = run.split('test')\n"
            "print(test.streamed, len(test), run.embed(test).shape)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["True", str(n_test), f"({n_test},", "16)"], done.stderr[-2000:]


@pytest.mark.slow
def test_cli_index_and_identify_a_folder_and_a_changed_file_is_named(photo_run, tmp_path):
    run, photos = photo_run / "run", photo_run / "photos"
    cli = [sys.executable, "-m", "reprlearn.cli"]
    done = subprocess.run(cli + ["index", str(run), "--data", f"folder:{photos}", "--out", str(tmp_path / "g.npz")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Enrolled 96 items of 6 classes" in done.stdout, done.stderr[-2000:]
    done = subprocess.run(cli + ["identify", str(run), "--gallery", str(tmp_path / "g.npz"), "--data",
                                 f"folder:{photos}", "--out", str(tmp_path / "ids.csv")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "of 96 queries identified" in done.stdout, done.stderr[-2000:]
    with np.load(run / "evaluation.npz") as held:
        victim = photos / str(held["test_keys"][0])
    before = victim.stat()
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    try:
        done = subprocess.run(cli + ["embed", str(run), "--data", f"folder:{photos}", "--out",
                                     str(tmp_path / "e.npz")], capture_output=True, text=True, timeout=300)
    finally:  # the run is shared with the module's other tests
        os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert done.returncode == 2 and "1 test files" in done.stderr and victim.name in done.stderr


@pytest.mark.slow
def test_frozen_epochs_train_the_head_first_then_the_backbone_from_a_weights_file(tmp_path, tiny_sets):
    import keras

    from reprlearn.config import config_from_dict
    from reprlearn.models.towers import BACKBONE_NAME, backbone_tower
    from reprlearn.runs import load_run
    from reprlearn.training import run_training

    start = backbone_tower((32, 32, 3), "MobileNetV3Small", None, None, embedding_dim=8).get_layer(BACKBONE_NAME)
    weights = tmp_path / "start.weights.h5"
    start.save_weights(weights)

    def config(frozen_epochs, epochs):
        return config_from_dict({
            "data": {"name": "arrays", "validation_fraction": 0.25},
            "model": {"tower": "backbone", "backbone": "MobileNetV3Small", "backbone_weights": str(weights),
                      "backbone_image_size": 32, "embedding_dim": 8, "fine_tune_from": "all"},
            "train": {"epochs": epochs, "steps_per_epoch": 2, "classes_per_batch": 2, "examples_per_class": 4,
                      "frozen_epochs": frozen_epochs},
            "eval": {"verification_pairs": 100, "projection": "pca"}})

    def backbone_change(run_dir):
        trained = load_run(run_dir).model.get_layer(BACKBONE_NAME)
        return max(float(np.abs(a - b).max()) for a, b in zip(trained.get_weights(), start.get_weights()))

    run_training(config(1, 2), tmp_path / "joined", sets=tiny_sets, verbose=0)
    assert backbone_change(tmp_path / "joined") > 0                        # the backbone trained in epoch 2
    cfg = config(0, 1)  # pretrained and no model.fine_tune_from: the backbone stays frozen
    cfg.model.fine_tune_from = None
    run_training(cfg, tmp_path / "head_only", sets=tiny_sets, verbose=0)
    assert backbone_change(tmp_path / "head_only") == 0                    # frozen: only the head trains
    keras.backend.clear_session()


def test_cache_in_memory_and_on_disk_gives_the_same_batches_as_decoding(photos, tmp_path):
    from reprlearn.data.cache import cache_decoded

    streamed = _load(photos)
    in_memory, failed = cache_decoded(streamed, "memory")
    on_disk, _ = cache_decoded(streamed, str(tmp_path / "cache"))
    again, _ = cache_decoded(streamed, str(tmp_path / "cache"))               # the file is reused
    assert not failed and in_memory.decoded and in_memory.streamed and isinstance(on_disk.images, np.memmap)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2 and np.array_equal(again.images, on_disk.images)
    batches = [list(pk_batches(s, s.labels, 3, 4, seed=2).take(3).as_numpy_iterator())
               for s in (streamed, in_memory, on_disk)]
    for reference, memory, disk in zip(*batches):
        assert np.abs(reference[0] - memory[0]).max() <= 0.5 and np.array_equal(memory[0], disk[0])
        assert np.array_equal(reference[1], memory[1]) and np.array_equal(memory[1], disk[1])


def test_augment_image_shifts_mirrors_and_scales_contrast_within_the_light_ranges():
    from reprlearn.data.augment import LEVELS, augment_image

    image = np.zeros((40, 50, 3), np.float32)
    image[10:30, 10:20] = 200.0                                              # a bright block, left of centre
    light = LEVELS["light"]
    moved = set()
    for draw in range(40):
        out = augment_image(tf.constant(image), tf.constant([draw, 3], tf.int64), "light", True).numpy()
        assert out.shape == image.shape and out.min() >= 0 and out.max() <= 255
        rows, cols = np.nonzero(out[..., 0] > out[..., 0].mean())
        top, left = rows.min(), cols.min()
        mirrored = left > 25                                                 # the block is now right of centre
        left = 50 - 10 - left if mirrored else left                          # the block is 10 wide
        assert abs(top - 10) <= round(light.shift * 40) and abs(left - 10) <= round(light.shift * 50)
        moved.add((top, left, mirrored))
    assert len(moved) > 10 and {m for *_, m in moved} == {True, False}
    assert np.array_equal(augment_image(tf.constant(image), tf.constant([1, 3], tf.int64), "none", True), image)


RSS_RUN = """
import json, resource, sys
from reprlearn.config import config_from_dict
from reprlearn.training import run_training
run_training(config_from_dict(json.loads(sys.argv[1])), sys.argv[2], verbose=0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.slow
def test_a_run_on_three_times_more_files_holds_no_more_memory(tmp_path):
    side = 128
    runs = {}
    for files in (2000, 6000):  # both large enough that every evaluation batch is full
        make_photo_folder(tmp_path / f"photos{files}", classes=10, per_class=files // 10, seed=6, modes=False)
        cfg = {"data": {"name": f"folder:{tmp_path / f'photos{files}'}", "image_size": [side, side]},
               "model": {"tower": "conv", "filters": [4, 4, 4, 4], "dense": 16, "embedding_dim": 8},
               "train": {"epochs": 1, "steps_per_epoch": 3, "classes_per_batch": 4, "examples_per_class": 4},
               "eval": {"verification_pairs": 200, "projection": "pca", "projection_points": 200,
                        "projector_points": 200}}
        done = subprocess.run([sys.executable, "-c", RSS_RUN, json.dumps(cfg), str(tmp_path / f"run{files}")],
                              capture_output=True, text=True, timeout=900, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[files] = int(done.stdout.split()[-1])
    copy_growth = 4000 * side * side * 3 * 4                                    # 4,000 more float32 images: 786 MB
    growth = runs[6000] - runs[2000]
    assert growth < 200 * 2**20 < copy_growth / 3, f"peak RSS grew by {growth / 2**20:.0f} MB for 4,000 more files"


def test_a_tfds_dataset_streams_from_its_records_written_once_as_files(tmp_path):
    import tensorflow_datasets as tfds

    class TinyShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=["ellipse", "square", "triangle"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 8), "test": self._generate_examples(1, 4)}

        def _generate_examples(self, seed, per_class):
            from tests.photo_folder import photo

            rng = np.random.default_rng(seed)
            for i in range(3 * per_class):
                size = tuple(int(v) for v in rng.integers(30, 60, 2))
                yield i, {"image": np.asarray(photo(i % 3, rng, size)), "label": i % 3}

    TinyShapes(data_dir=str(tmp_path)).download_and_prepare()
    sets = load_dataset("tfds:tiny_shapes", str(tmp_path), Decoding((32, 32)))
    assert sorted(sets) == ["test", "train"] and (len(sets["train"]), len(sets["test"])) == (24, 12)
    assert sets["train"].streamed and not sets["train"].decoded
    assert sets["train"].class_names == ["ellipse", "square", "triangle"]
    assert np.bincount(sets["train"].labels).tolist() == [8, 8, 8]
    images, labels = next(iter(pk_batches(sets["train"], sets["train"].labels, 3, 4, seed=0)))
    assert images.shape == (12, 32, 32, 3) and np.bincount(labels.numpy()).tolist() == [4, 4, 4]
    again = load_dataset("tfds:tiny_shapes", str(tmp_path), Decoding((32, 32)))   # the files are reused
    assert again["train"].files.fingerprint(again["train"].labels) == sets["train"].files.fingerprint(
        sets["train"].labels)


@pytest.mark.slow
def test_a_backbone_tower_serves_identify_on_jpeg_bytes_like_the_gallery(tmp_path):
    from reprlearn.export.savedmodel import write_saved_model
    from reprlearn.index import Gallery
    from reprlearn.models.towers import backbone_tower
    from reprlearn.runs import embed

    make_photo_folder(tmp_path / "photos", classes=4, per_class=6, seed=8, modes=False)
    photos = _load(tmp_path / "photos", (48, 48))
    tower = backbone_tower((48, 48, 3), "MobileNetV3Small", None, None, embedding_dim=16)
    enrolled = np.arange(len(photos)) % 2 == 0
    gallery = Gallery("L2")
    gallery.add(embed(tower, photos.subset(np.flatnonzero(enrolled))), photos.labels[enrolled])
    queries = photos.subset(np.flatnonzero(~enrolled))
    query_embeddings = embed(tower, queries)
    nearest = gallery.search(query_embeddings, 2)[0]
    gallery.threshold = float(np.median(nearest[:, 0]))
    want = gallery.identify(query_embeddings)
    write_saved_model(tower, tmp_path / "served", "L2", gallery=gallery, identify_k=2, resize="pad")
    code = ("import sys, json, numpy as np, tensorflow as tf\n"
            "sys.modules['reprlearn'] = None\n"
            f"m = tf.saved_model.load({str(tmp_path / 'served')!r})\n"
            f"files = [tf.io.read_file(p) for p in {queries.files.paths()!r}]\n"
            "out = m.signatures['identify_encoded'](image_bytes=tf.stack(files))\n"
            "print(json.dumps({'label': out['label'].numpy().tolist(), "
            "'distance': out['distances'].numpy()[:, 0].tolist()}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout.splitlines()[-1])
    clear = np.abs(nearest[:, 0] - gallery.threshold) > 1e-4                   # decisions not on the threshold
    clear &= (nearest[:, 1] - nearest[:, 0]) > 1e-4                             # nor between two near items
    assert clear.sum() >= 4
    assert np.array_equal(np.array(served["label"])[clear], want.labels[clear])
    assert np.allclose(served["distance"], want.distances[:, 0], atol=1e-4)


def test_unicode_and_spaces_in_paths_index_and_decode(tmp_path):
    root = tmp_path / "fotos del año"
    for label, name in enumerate(("café crème", "日本 語")):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((10, 12, 3), 60 * label + 10 * i, np.uint8)).save(root / name / f"ü {i}.png")
    imageset = load_dataset(f"folder:{root}")["all"]
    assert imageset.class_names == ["café crème", "日本 語"] and imageset.image_shape == (10, 12, 3)
    pixels = np.concatenate([images for images, _ in batches_in_order(imageset)])
    assert pixels.shape == (6, 10, 12, 3) and pixels[4, 0, 0, 0] == 70


@pytest.mark.slow
def test_transfer_runs_on_a_folder_run(photo_run):
    from reprlearn.evaluation.transfer import transfer_study
    from reprlearn.runs import load_run

    run = load_run(photo_run / "run")
    study = transfer_study(run, shots=(1,), draws=1, steps=3)
    assert study["target_classes"] == [3, 4, 5] and "1" in study["shots"]          # the classes it never trained on
    assert set(study["thresholds"]) == {"frozen k-NN", "raw pixels k-NN (L2)", "raw pixels k-NN (cosine)"}


@pytest.mark.slow
def test_an_interrupted_folder_run_resumes_to_the_uninterrupted_model(tmp_path):
    """A run streamed from a folder, stopped after its first epoch, resumes from the same batch with the same
    optimizer state; its weights are those of the run that was never stopped."""
    import keras

    from reprlearn.config import config_from_dict
    from reprlearn.training import run_training

    make_photo_folder(tmp_path / "photos", classes=5, per_class=12, seed=7)

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    cfg = config_from_dict({
        "data": {"name": f"folder:{tmp_path / 'photos'}", "image_size": [32, 32], "validation_fraction": 0.25,
                 "augment": "light"},
        "model": {"tower": "conv", "filters": [8], "dense": 16, "embedding_dim": 8},
        "train": {"epochs": 3, "steps_per_epoch": 4, "classes_per_batch": 3, "examples_per_class": 4},
        "eval": {"verification_pairs": 100, "projection": "pca", "projection_points": 20, "projector_points": 10,
                 "grid_queries": 2, "grid_neighbours": 2}})
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "a", verbose=0, callbacks=[StopAfterFirstEpoch()])
    assert json.loads((tmp_path / "a/checkpoints/state.json").read_text())["epochs_done"] == 1
    resumed = run_training(cfg, tmp_path / "a", verbose=0)
    assert resumed["train"]["resumed_from_epoch"] == 1 and resumed["train"]["epochs_this_session"] == 2
    run_training(cfg, tmp_path / "b", verbose=0)
    a = keras.saving.load_model(tmp_path / "a/model.keras").get_weights()
    b = keras.saving.load_model(tmp_path / "b/model.keras").get_weights()
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)
