"""Gradient orientation histograms (`OrientationHistogram`, the `orientations` joint part) against a plain NumPy
loop, their edges, their config keys, and a joint model with them reloaded in a fresh process."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from reprlearn.config import ConfigError, config_from_dict
from reprlearn.layers import OrientationHistogram
from reprlearn.models import build_tower, joint_embedding_model


def loop_histograms(images, bins, cells, power):
    """One pixel at a time: central differences (0 on the border), the angle in [0, 2π) shared linearly between
    the two nearest bin centres 2πk/bins, weighted by the gradient's length, averaged per cell, then ^power."""
    n, h, w, _ = images.shape
    gray = images.astype(np.float64).mean(axis=-1)
    out = np.zeros((n, cells, cells, bins))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                gx = gray[i, y, x + 1] - gray[i, y, x - 1] if 0 < x < w - 1 else 0.0
                gy = gray[i, y + 1, x] - gray[i, y - 1, x] if 0 < y < h - 1 else 0.0
                length = math.hypot(gx, gy)
                position = (math.atan2(gy, gx) % (2 * math.pi)) / (2 * math.pi) * bins
                low = math.floor(position)
                share = position - low
                cell = (y * cells // h, x * cells // w)  # sizes divide here: plain cells
                out[i, cell[0], cell[1], low % bins] += length * (1 - share)
                out[i, cell[0], cell[1], (low + 1) % bins] += length * share
    out /= (h // cells) * (w // cells)
    return (out ** power).reshape(n, -1)


def test_orientation_histograms_equal_a_numpy_loop():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (3, 8, 8, 1)).astype(np.float32)
    colour = rng.integers(0, 256, (2, 6, 6, 3)).astype(np.float32)
    for images, bins, cells, power in ((gray, 8, 2, 0.5), (gray, 12, 4, 1.0), (colour, 5, 3, 0.5)):
        out = np.asarray(OrientationHistogram(bins, cells, power)(images))
        assert out.shape == (len(images), cells * cells * bins)
        np.testing.assert_allclose(out, loop_histograms(images, bins, cells, power), rtol=1e-5, atol=1e-5)


def test_orientation_histograms_of_hand_made_gradients():
    ramp = np.tile(np.arange(6, dtype=np.float32) * 10, (6, 1))           # brighter to the right: angle 0
    images = np.stack([ramp, ramp.T, ramp + ramp.T, np.full((6, 6), 7.0, np.float32)])[..., None]
    out = np.asarray(OrientationHistogram(bins=8, cells=1, power=1.0)(images))
    inner = 4 * 4 / 36  # the 4 × 4 inner pixels have a gradient; border pixels have 0 in one direction
    # Right: bin 0 gets 20 per pixel (central difference of a 10 ramp) on 6 rows × 4 columns.
    np.testing.assert_allclose(out[0], [20 * 24 / 36, 0, 0, 0, 0, 0, 0, 0], atol=1e-5)
    # Down (+y, the image's rows): angle π/2, bin 2 of 8.
    np.testing.assert_allclose(out[1], [0, 0, 20 * 24 / 36, 0, 0, 0, 0, 0], atol=1e-5)
    # Both: inner pixels at π/4 (bin 1, length 20√2); border rows and columns keep one direction only.
    expected = np.zeros(8)
    expected[1] = 20 * math.sqrt(2) * inner
    expected[0] = 20 * (2 * 4) / 36   # top and bottom rows, inner columns: only gx
    expected[2] = 20 * (2 * 4) / 36   # left and right columns, inner rows: only gy
    np.testing.assert_allclose(out[2], expected, atol=1e-4)
    assert not out[3].any()  # a flat image has no gradient anywhere
    # Between two centres (22.5° with 8 bins: half way from bin 0 to bin 1) the length is shared evenly.
    angle = math.pi / 8
    plane = (np.cos(angle) * np.arange(5)[None, :] + np.sin(angle) * np.arange(5)[:, None]) * 10
    per_pixel = np.asarray(OrientationHistogram(bins=8, cells=5, power=1.0)(plane[None, :, :, None].astype(np.float32)))
    centre = per_pixel.reshape(5, 5, 8)[2, 2]  # one pixel per cell; the centre pixel has both differences
    np.testing.assert_allclose(centre, [10, 10, 0, 0, 0, 0, 0, 0], atol=1e-4)  # length 20, half to each


def test_orientation_histograms_edges_nan_and_float16():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 8, 8, 1)).astype(np.float32)
    layer = OrientationHistogram(bins=6, cells=2)
    reference = np.asarray(layer(images))
    np.testing.assert_allclose(layer(images.astype(np.float16)), reference, rtol=1e-3, atol=1e-3)
    assert np.asarray(layer(images.astype(np.float16))).dtype == np.float32
    # The histograms are contrast-invariant up to scale: doubling the image scales them by sqrt(2).
    np.testing.assert_allclose(layer(2 * images), math.sqrt(2) * reference, rtol=1e-5)
    broken = images.copy()
    broken[0, 3, 3, 0] = np.nan
    out = np.asarray(layer(broken))
    assert np.isnan(out[0]).any() and np.isfinite(out[1]).all()  # NaN is not hidden as an empty histogram
    np.testing.assert_allclose(out[1], reference[1], rtol=1e-6)


def test_orientation_histograms_bad_arguments_are_named_and_config_round_trips():
    with pytest.raises(ValueError, match="Received: bins=0"):
        OrientationHistogram(bins=0)
    with pytest.raises(ValueError, match=r"Received: cells=1\.5"):
        OrientationHistogram(cells=1.5)
    with pytest.raises(ValueError, match="Received: power=0"):
        OrientationHistogram(power=0)
    clone = keras.layers.deserialize(keras.layers.serialize(OrientationHistogram(9, 3, 1.0)))
    assert (clone.bins, clone.cells, clone.power) == (9, 3, 1.0)
    with pytest.raises(ConfigError, match="model.orientation_bins"):
        config_from_dict({"model": {"orientation_bins": 0}})
    with pytest.raises(ConfigError, match="model.orientation_cells"):
        config_from_dict({"model": {"orientation_cells": -2}})


def tiny_tower():
    keras.utils.set_random_seed(0)
    cfg = config_from_dict({"model": {"tower": "conv", "filters": [4, 6], "dense": 8, "embedding_dim": 5}})
    return build_tower(cfg.model, (12, 12, 1))


def test_orientations_join_a_towers_layers_and_reload_in_a_fresh_process(tmp_path):
    tower = tiny_tower()
    images = np.random.default_rng(2).integers(0, 256, (4, 12, 12, 1)).astype(np.float32)
    joint = joint_embedding_model(tower, ["orientations", "pool2"], grid=2, weights=[2.0, 1.0, 0.0],
                                  orientation_bins=6, orientation_cells=3)
    assert joint.output_shape[-1] == 3 * 3 * 6 + 2 * 2 * 6
    pool2 = keras.Model(tower.input, tower.get_layer("pool2").output)(images)
    pooled = np.asarray(keras.layers.AdaptiveAveragePooling2D(2)(np.sqrt(np.asarray(pool2))))

    def unit(x):
        x = x.reshape(len(x), -1)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    expected = unit(np.hstack([2 * unit(loop_histograms(images, 6, 3, 0.5)), unit(pooled)]))
    np.testing.assert_allclose(joint(images), expected, atol=1e-5)
    alone = joint_embedding_model(tower, ["orientations"], weights=[1.0, 0.0])
    assert alone.output_shape[-1] == 4 * 4 * 12  # the defaults: 12 bins, 4 × 4 cells
    path = tmp_path / "joint.keras"
    joint.save(path)
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import numpy as np, keras, reprlearn
        model = keras.saving.load_model({str(path)!r})
        np.save({str(tmp_path / 'out.npy')!r}, np.asarray(model(np.load({str(tmp_path / 'images.npy')!r}))))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5)


def digits_orientation_run(tmp_path):
    from reprlearn.config import load_config
    from reprlearn.training import run_training

    cfg = load_config("configs/openset_digits.yaml", overrides=[
        "train.epochs=1", "train.steps_per_epoch=5", "model.joint_layers=[orientations, hidden1_relu]",
        "model.joint_weights=[1.0, 0.5, 0.0]", "model.orientation_bins=8", "model.orientation_cells=2"])
    out = tmp_path / "run"
    return run_training(cfg, out, verbose=0), out


@pytest.mark.slow
def test_a_joint_run_exports_its_head_as_embed_head_and_names_the_int8_limit(tmp_path):
    from reprlearn.errors import ExportError
    from reprlearn.export import export_run
    from reprlearn.runs import load_run

    _, out = digits_orientation_run(tmp_path)
    with pytest.raises(ExportError, match="orientation histograms.*--quantize none,dynamic,float16"):
        export_run(out, tmp_path / "serving", formats="tflite", quantize="int8", verbose=False)
    exported = export_run(out, tmp_path / "serving", formats="saved_model,onnx", verbose=False)
    assert "embed_head" in exported["signatures"]
    run = load_run(out)
    images = run.split("test").images[:16].astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        served = tf.saved_model.load({exported['saved_model']!r})
        images = tf.constant(np.load({str(tmp_path / 'images.npy')!r}))
        np.save({str(tmp_path / 'joint.npy')!r}, served.signatures["serving_default"](images=images)["embedding"])
        np.save({str(tmp_path / 'head.npy')!r}, served.signatures["embed_head"](images=images)["embedding"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "joint.npy"), run.embed(images), atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "head.npy"), np.asarray(run.head_model(images)), atol=1e-5)
