"""Export: SavedModel signatures loadable without reprlearn, TFLite and ONNX parity, atomic and safe on failure."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from reprlearn.cli import main
from reprlearn.config import config_from_dict
from reprlearn.export import ExportError, TFLiteEmbedder, export_run
from reprlearn.export import run as export_module
from reprlearn.export.requests import request_bodies
from reprlearn.training import run_training

TINY = {"data": {"name": "digits", "max_test": 300},
        "model": {"tower": "conv", "filters": [4], "dense": 16, "embedding_dim": 8},
        "train": {"epochs": 1, "steps_per_epoch": 3, "classes_per_batch": 4, "examples_per_class": 4},
        "eval": {"verification_pairs": 200, "projection": "pca", "projection_points": 50, "projector_points": 20,
                 "grid_queries": 2, "grid_neighbours": 3}}


def _listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")) if directory.exists() else []


@pytest.fixture(scope="module")
def run_dir(digits_run):
    """The shared trained digits run (conftest.py): export gates a trained embedding, not a few steps' noise."""
    return digits_run


@pytest.fixture(scope="module")
def pair_run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pair_run") / "digits_pairs"
    raw = {**TINY, "model": {"tower": "mlp", "hidden": [16], "embedding_dim": 8},
           "loss": {"name": "pair_contrastive", "margin": 1.0}, "train": {**TINY["train"], "pair_batch_size": 16}}
    run_training(config_from_dict(raw), out, verbose=0)
    return out


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("serving")
    return out, export_run(run_dir, out, verbose=False)


@pytest.mark.slow
def test_every_format_is_written_and_matches_keras(exported):
    out, result = exported
    assert result["version"] == 1 and (out / "digits_run" / "1" / "saved_model.pb").is_file()
    artifacts = out / "digits_run" / "artifacts" / "1"
    assert sorted(p.name for p in artifacts.iterdir()) == sorted(
        ["model-float32.tflite", "model-dynamic.tflite", "model-float16.tflite", "model-int8.tflite", "model.onnx",
         "parity.json", "parity.md"])
    rows = {row["format"]: row for row in json.loads((artifacts / "parity.json").read_text())["formats"]}
    assert set(rows) == {"saved_model", "tflite-none", "tflite-dynamic", "tflite-float16", "tflite-int8", "onnx"}
    for name in ("saved_model", "tflite-none", "onnx"):
        assert rows[name]["max_abs_diff"] <= 1e-4, name
    assert rows["tflite-int8"]["map_at_r_drop"] <= 0.03 and rows["tflite-float16"]["map_at_r_drop"] <= 0.01
    assert rows["tflite-int8"]["bytes"] < rows["tflite-none"]["bytes"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".reprlearn-export-")]  # staging cleaned


@pytest.mark.slow
def test_int8_model_is_quantized_but_called_with_float_images(exported, run_dir):
    out, _ = exported
    embedder = TFLiteEmbedder(out / "digits_run" / "artifacts" / "1" / "model-int8.tflite")
    assert embedder.input["dtype"] == np.uint8 and embedder.output["dtype"] == np.int8
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1)).astype(np.float32)
    embeddings = embedder(images)
    assert embeddings.dtype == np.float32 and embeddings.shape == (3, 16)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=0.05)  # the tower L2-normalises


@pytest.mark.slow
def test_saved_model_loads_without_reprlearn(exported):
    out, _ = exported
    script = ("import sys; sys.modules['reprlearn'] = None\n"
              "import numpy as np, tensorflow as tf\n"
              f"m = tf.saved_model.load({str(out / 'digits_run' / '1')!r})\n"
              "print(sorted(m.signatures))\n"
              "f = m.signatures['serving_default']\n"
              "print(sorted(f.structured_input_signature[1]), sorted(f.structured_outputs))\n"
              "e = f(images=tf.zeros([2, 8, 8, 1]))['embedding'].numpy()\n"
              "u = m.signatures['embed_uint8'](images=tf.zeros([2, 8, 8, 1], tf.uint8))['embedding'].numpy()\n"
              "print(e.shape, float(np.abs(e - u).max()))\n"
              # A client sends PNG files of any size; the graph decodes and resizes them as the run's data.
              "pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)\n"
              "files = tf.stack([tf.io.encode_png(p) for p in pixels])\n"
              "b = m.signatures['embed_encoded'](image_bytes=files)['embedding'].numpy()\n"
              "p = f(images=tf.constant(pixels, tf.float32))['embedding'].numpy()\n"
              "big = tf.io.encode_png(tf.image.resize(pixels[0], (16, 16), method='nearest'))\n"
              "s = m.signatures['embed_encoded'](image_bytes=tf.stack([big]))['embedding'].numpy()\n"
              "print(float(np.abs(b - p).max()) < 1e-5, float(np.abs(s[0] - p[0]).max()) < 1e-4)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["['embed_encoded', 'embed_uint8', 'serving_default']",
                                        "['images'] ['embedding']", "(2, 16) 0.0", "True True"]
    cli = Path(sys.executable).parent / "saved_model_cli"
    shown = subprocess.run([str(cli), "show", "--all", "--dir", str(out / "digits_run" / "1")],
                           capture_output=True, text=True, check=True).stdout
    assert "signature_def['serving_default']" in shown and "outputs['embedding']" in shown


def test_pair_run_adds_distance_and_verify(pair_run_dir, tmp_path):
    result = export_run(pair_run_dir, tmp_path, formats="saved_model", verbose=False)
    assert result["signatures"] == ["serving_default", "embed_uint8", "embed_encoded", "distance", "verify"]
    loaded = tf.saved_model.load(result["saved_model"])
    a = tf.random.uniform([4, 8, 8, 1], 0, 16)
    verify = loaded.signatures["verify"](images_a=a, images_b=a)
    assert sorted(verify) == ["distance", "match"] and verify["match"].dtype == tf.bool
    assert np.allclose(verify["distance"].numpy(), 0.0, atol=1e-3) and verify["match"].numpy().all()
    threshold = json.loads((pair_run_dir / "report.json").read_text())["metrics"]["verification"]["threshold"]
    b = tf.random.uniform([4, 8, 8, 1], 0, 16)
    pair = loaded.signatures["verify"](images_a=a, images_b=b)
    np.testing.assert_array_equal(pair["match"].numpy(), pair["distance"].numpy() <= threshold)
    # The example REST bodies name exactly each signature's inputs (embed_head: joint-embedding runs only).
    for name, body in request_bodies(np.zeros((2, 8, 8, 1), np.uint8)).items():
        if name == "embed_head":
            assert sorted(body["instances"][0]) == ["images"]
            continue
        assert sorted(body["instances"][0]) == sorted(loaded.signatures[name].structured_input_signature[1]), name
    # The same export again writes nothing and names the version that holds it; a new one takes the next number.
    again = export_run(pair_run_dir, tmp_path, formats="saved_model", verbose=False)
    assert again["version"] == 1 and again["unchanged"] and again["signatures"] == result["signatures"]
    assert sorted(p.name for p in (tmp_path / "digits_pairs").iterdir()) == ["1", "artifacts"]
    assert export_run(pair_run_dir, tmp_path, formats="saved_model", verbose=False, new_version=True)["version"] == 2


def test_failures_leave_the_output_folder_unchanged(run_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "serving"
    (out / "digits_run" / "1").mkdir(parents=True)
    (out / "digits_run" / "1" / "keep.txt").write_text("an existing version")
    before = _listing(tmp_path)
    with pytest.raises(ValueError, match="version=1"):
        export_run(run_dir, out, formats="saved_model", version=1, verbose=False)
    with pytest.raises(ValueError, match="format='saved_model,coreml'"):
        export_run(run_dir, out, formats="saved_model,coreml", verbose=False)
    with pytest.raises(ValueError, match="run_dir="):
        export_run(tmp_path / "no_such_run", out, verbose=False)
    monkeypatch.setattr(export_module, "MAX_ABS_DIFF", -1.0)  # every float32 format now fails its gate
    with pytest.raises(ExportError, match="saved_model: max abs diff"):
        export_run(run_dir, out, formats="saved_model", verbose=False)
    assert main(["export", str(run_dir), "--out", str(out), "--format", "saved_model"]) == 2
    assert "parity gate failed" in capsys.readouterr().err
    assert _listing(tmp_path) == before


def test_a_failed_quantization_names_the_ones_that_passed():
    def row(quantization, drop):   # a parity row of a TFLite file whose MAP@R fell by `drop`
        return {"format": f"tflite-{quantization}", "map_at_r_drop": drop, "map_at_r": 0.5 - drop, "max_abs_diff": 0.0}

    rows = [row("none", 0.0), row("dynamic", 0.002), row("float16", 0.011), row("int8", 0.02)]
    quantizations = ["none", "dynamic", "float16", "int8"]
    assert export_module._quantization_hint(rows, quantizations, fragile=None) == (
        "TFLite float16 failed where none, dynamic, int8 passed: export those with --quantize none,dynamic,int8")
    rows[-1] = row("int8", 0.031)   # over int8's 0.03
    assert "--quantize none,dynamic" in export_module._quantization_hint(rows, quantizations, None)
    # A layer known to fail at int8: it is named, and the float formats offered, whichever were asked for.
    hint = export_module._quantization_hint(rows[-1:], ["int8"], "Fourier width pooling")
    assert hint.startswith("Fourier width pooling does not survive") and "--quantize none,dynamic,float16" in hint
    assert export_module._quantization_hint(rows[-1:], ["int8"], None) is None   # nothing passed to name
    assert export_module._quantization_hint(rows[:2], ["none", "dynamic"], "x") is None   # nothing failed


def test_the_layers_known_to_fail_at_int8_are_found_inside_nested_towers():
    import keras

    from reprlearn.layers import OrientationHistogram
    from reprlearn.layers.polar import WidthPooling

    def tower(layer):
        inputs = keras.Input((8, 16, 1))
        inner = keras.Model(inputs, layer(inputs), name="body")
        outer_in = keras.Input((8, 16, 1))
        return export_module._Tower("reference", "embed_reference", keras.Model(outer_in, inner(outer_in)),
                                    None, None)

    assert "circular_pooling: fourier" in export_module._int8_fragile([tower(WidthPooling("fourier"))])
    assert export_module._int8_fragile([tower(WidthPooling("avg"))]) is None
    assert "orientations" in export_module._int8_fragile([tower(OrientationHistogram())])


@pytest.mark.parametrize("kind", ["autoencoder", "vae"])
def test_autoencoder_runs_export_generative_signatures(kind, tmp_path):
    import keras
    raw = {**TINY, "model": {"kind": kind, "tower": "conv", "filters": [4], "code_dim": 3},
           "train": {"epochs": 1, "steps_per_epoch": 3, "batch_size": 32}}
    run_dir = tmp_path / "run"
    run_training(config_from_dict(raw), run_dir, verbose=0)
    result = export_run(run_dir, tmp_path / "serving", formats="saved_model", verbose=False)
    # Parity is scored with the run's own metric (cosine for codes), so it equals the run report's figure.
    report = json.loads((run_dir / "report.json").read_text())
    assert result["keras_map_at_r"] == pytest.approx(report["metrics"]["test"]["map_at_r"], abs=1e-6)
    loaded = tf.saved_model.load(result["saved_model"])
    x = tf.random.uniform([4, 8, 8, 1], 0, 255)
    reconstruction = loaded.signatures["reconstruct"](images=x)["reconstruction"].numpy()
    encoded = loaded.signatures["encode"](images=x)
    if kind == "autoencoder":
        keras_model = keras.saving.load_model(run_dir / "autoencoder.keras")
        np.testing.assert_allclose(reconstruction, keras_model.predict(x.numpy(), verbose=0), atol=1e-5)
        decoded = loaded.signatures["decode"](**{k: v for k, v in encoded.items()})["reconstruction"].numpy()
        np.testing.assert_allclose(decoded, reconstruction, atol=1e-5)  # code + argmax indices → same image
    else:
        assert sorted(encoded) == ["logvar", "mean"] and encoded["mean"].shape == (4, 3)
        samples = loaded.signatures["sample"](num_samples=tf.constant(5), seed=tf.constant(1))["images"]
        assert samples.shape == (5, 8, 8, 1)
        scores = loaded.signatures["log_likelihood"](images=x, k=tf.constant(20))["log_likelihood"].numpy()
        assert scores.shape == (4,) and np.all(np.isfinite(scores))
        vae = keras.saving.load_model(run_dir / "vae.keras")
        np.testing.assert_allclose(scores, vae.log_likelihood(x.numpy(), k=20, seed=0), rtol=1e-4)


@pytest.mark.slow
def test_a_joint_embedding_run_exports_to_every_format_and_serves_without_reprlearn(tmp_path):
    # Joint embeddings add SignedPower (a reprlearn layer) and adaptive pooling: each format must carry them.
    raw = {**TINY, "model": {**TINY["model"], "filters": [4, 6], "joint_layers": ["pool1", "pool2"], "joint_grid": 2}}
    run_training(config_from_dict(raw), tmp_path / "joint", verbose=0)
    result = export_run(tmp_path / "joint", tmp_path / "serving", verbose=False)
    rows = {row["format"]: row for row in
            json.loads((tmp_path / "serving/joint/artifacts/1/parity.json").read_text())["formats"]}
    for name in ("saved_model", "tflite-none", "onnx"):
        assert rows[name]["max_abs_diff"] <= 1e-4, name
    script = ("import sys; sys.modules['reprlearn'] = None\n"
              "import numpy as np, tensorflow as tf\n"
              f"m = tf.saved_model.load({str(tmp_path / 'serving/joint/1')!r})\n"
              "e = m.signatures['serving_default'](images=tf.fill([2, 8, 8, 1], 100.0))['embedding'].numpy()\n"
              "print(e.shape, round(float(np.linalg.norm(e[0])), 4))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"(2, {4 * 4 + 4 * 6 + 8}) 1.0" and result["version"] == 1
