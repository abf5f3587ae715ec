"""`reprlearn export`: a run folder's model → SavedModel, TFLite and ONNX, each checked against Keras.

Layout under `--out DIR`:

    DIR/NAME/VERSION/             the SavedModel (what TF Serving polls)
    DIR/NAME/artifacts/VERSION/   model-<quantization>.tflite, model.onnx, parity.json, parity.md

Everything is written to a staging folder beside DIR and moved into place only after every
parity gate passed: a failed export leaves DIR exactly as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from reprlearn.errors import ExportError
from reprlearn.export.converters import QUANTIZATIONS, TFLiteEmbedder, convert_onnx, convert_tflite, onnx_embedder
from reprlearn.export.savedmodel import write_saved_model
from reprlearn.index import Gallery
from reprlearn.layers import OrientationHistogram
from reprlearn.metrics import retrieval_metrics
from reprlearn.runs import embed, load_run

FORMATS = ("saved_model", "tflite", "onnx")
# Largest allowed max-abs embedding difference (float32 formats) and MAP@R drop (quantized TFLite).
MAX_ABS_DIFF = 1e-4
MAX_MAP_DROP = {"dynamic": 0.01, "float16": 0.01, "int8": 0.03}
PROBE_IMAGES = 1000


def _parse_list(value: str | list[str], allowed: tuple[str, ...], argument: str) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [item.strip() for item in items if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise ExportError(f"{argument} must be a comma-separated subset of {list(allowed)}. "
                         f"Received: {argument}={','.join(items) or value!r}")
    return items


def next_version(model_dir: Path) -> int:
    """1 + the largest numeric version folder in `model_dir` (1 if there is none)."""
    if not model_dir.is_dir():
        return 1
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _file_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _parity_row(name: str, path: Path, embeddings: np.ndarray, probe_reference: np.ndarray, labels: np.ndarray,
                metric: str, keras_map: float) -> dict:
    map_at_r = retrieval_metrics(embeddings, labels, metric, compute_nmi=False)["map_at_r"]
    return {"format": name, "file": path.name, "bytes": _file_size(path),
            "max_abs_diff": float(np.max(np.abs(embeddings[:len(probe_reference)] - probe_reference))),
            "map_at_r": float(map_at_r), "map_at_r_drop": float(keras_map - map_at_r)}


def _gate(row: dict) -> str | None:
    """The failure message of a parity row, or None if it passes."""
    quantization = row["format"].split("-", 1)[1] if row["format"].startswith("tflite-") else "none"
    if quantization in MAX_MAP_DROP:
        if row["map_at_r_drop"] > MAX_MAP_DROP[quantization]:
            return (f"{row['format']}: MAP@R drop {row['map_at_r_drop']:.4f} exceeds "
                    f"{MAX_MAP_DROP[quantization]} (MAP@R {row['map_at_r']:.4f})")
    elif row["max_abs_diff"] > MAX_ABS_DIFF:
        return f"{row['format']}: max abs diff {row['max_abs_diff']:.2e} exceeds {MAX_ABS_DIFF:.0e}"
    return None


def _quantization_hint(rows: list[dict], quantizations: list[str], has_orientations: bool) -> str | None:
    """What to export instead when some TFLite quantizations fail the gate: the ones that passed, or, for
    orientation histograms failing at int8, the float formats (which they survive)."""
    failed = [q for q in quantizations if any(row["format"] == f"tflite-{q}" and _gate(row) for row in rows)]
    passed = [q for q in quantizations if q not in failed]
    if "int8" in failed and has_orientations:
        return ("gradient orientation histograms (model.joint_layers: orientations) do not survive 8-bit integer "
                "arithmetic; export the float formats with --quantize none,dynamic,float16")
    if failed and passed:
        return (f"TFLite {', '.join(failed)} failed where {', '.join(passed)} passed: export those with "
                f"--quantize {','.join(passed)}")
    return None


def _write_parity(rows: list[dict], keras_map: float, directory: Path, request: dict, signatures: list[str]) -> None:
    (directory / "parity.json").write_text(json.dumps({"keras_map_at_r": keras_map, "formats": rows,
                                                       "request": request, "signatures": signatures}, indent=2))
    lines = [f"Keras MAP@R on the run's test split (from the run folder's evaluation.npz): {keras_map:.4f}", "",
             "| format | file | size (KiB) | max abs diff vs Keras | MAP@R | drop |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['format']} | {r['file']} | {r['bytes'] / 1024:.0f} | {r['max_abs_diff']:.2e} | "
              f"{r['map_at_r']:.4f} | {r['map_at_r_drop']:+.4f} |" for r in rows]
    (directory / "parity.md").write_text("\n".join(lines) + "\n")


def _check_identify(saved_model: Path, gallery: Gallery, embeddings: np.ndarray, images: np.ndarray,
                    k: int) -> dict:
    """The served `identify` against `Gallery.identify` on the same images, and its latency for 16 images."""
    import tensorflow as tf

    identify = tf.saved_model.load(str(saved_model)).signatures["identify"]
    want = gallery.identify(embeddings, k=min(k, len(gallery)))
    got = [identify(images=tf.constant(images[i:i + 512], tf.float32)) for i in range(0, len(images), 512)]
    labels = np.concatenate([g["label"].numpy() for g in got])
    neighbours = np.concatenate([g["labels"].numpy() for g in got])
    batch = tf.constant(images[:16], tf.float32)
    identify(images=batch)  # warm-up
    started, repeats = time.perf_counter(), 20
    for _ in range(repeats):
        identify(images=batch)
    return {"queries": len(labels), "decisions_equal": int(np.sum(labels == want.labels)),
            "neighbours_equal": bool(np.array_equal(neighbours, want.neighbour_labels)),
            "gallery_size": len(gallery), "threshold": gallery.threshold,
            "ms_per_batch_of_16": (time.perf_counter() - started) / repeats * 1000}


def _same_export(model_dir: Path, request: dict) -> dict | None:
    """The latest version under `model_dir` if it was exported with `request` (same model fingerprint, formats,
    quantizations, gallery and k), as `export_run` returns it; else None."""
    latest = next_version(model_dir) - 1
    parity_file = model_dir / "artifacts" / str(latest) / "parity.json"
    if latest < 1 or not parity_file.is_file():
        return None
    parity = json.loads(parity_file.read_text())
    if parity.get("request") != request:
        return None
    saved_model = model_dir / str(latest)
    return {"name": model_dir.name, "version": latest, "signatures": parity["signatures"],
            "keras_map_at_r": parity["keras_map_at_r"],
            "formats": parity["formats"], "saved_model": str(saved_model) if saved_model.is_dir() else None,
            "artifacts": str(parity_file.parent), "unchanged": True}


# A run on streamed files checks its exports on this many test images (decoded once), not the whole split.
PARITY_FILES = 1024


def _check_head(served, head, images: np.ndarray) -> float:
    """Max abs difference between the loaded SavedModel's `embed_head` signature (`served`) and `head.keras`."""
    import tensorflow as tf

    return float(np.max(np.abs(served(images=tf.constant(images, tf.float32))["embedding"].numpy()
                               - embed(head, images))))


def parity_images(run) -> tuple[np.ndarray, np.ndarray]:
    """The test images every export format must embed as the Keras model does: the whole in-memory test split,
    or `PARITY_FILES` test files drawn with `data.seed` from a streamed one."""
    test = run.split("test")
    if test.decoded:
        return test.images, test.labels
    chosen = np.sort(np.random.default_rng(run.config.data.seed).choice(len(test), min(PARITY_FILES, len(test)),
                                                                        replace=False))
    return test.pixels(chosen), test.labels[chosen]


def export_run(run_dir: str | Path, out: str | Path, formats="saved_model,tflite,onnx",
               quantize="none,dynamic,float16,int8", name: str | None = None, version: int | None = None,
               force: bool = False, verbose: bool = True, gallery: str | Path | None = None,
               identify_k: int = 5, new_version: bool = False) -> dict:
    """Exports a finished run and checks every artefact against the Keras model.

    Args:
        run_dir: a finished run folder. Its record fixes the ranking metric and its evaluation.npz the
            test images every format is checked on and the TFLite calibration images: nothing is
            re-derived from the dataset name, so runs on your own arrays export the same way.
        out: the model base folder TF Serving serves from.
        formats: subset of `FORMATS`, as a list or comma-separated.
        quantize: TFLite variants, subset of `QUANTIZATIONS`.
        name: the model name (default: the run folder's name).
        version: the version number (default: the next free one).
        force: replace an existing version.
        gallery: a gallery folder enrolled by this run (`reprlearn index`): the SavedModel gains an
            `identify` signature holding it, checked against `Gallery.identify` on the test images.
        identify_k: matches per image from `identify`.
        new_version: write a new version even when the latest one was exported from the same model with the
            same request (by default that export is returned as it is, and nothing is written).

    Returns:
        The parity report (also written as parity.json/parity.md beside the exports).

    Raises:
        ValueError: a bad argument or run folder. ExportError: a failed parity gate. Either way `out` is unchanged.
    """
    run_dir, out = Path(run_dir), Path(out)
    formats = _parse_list(formats, FORMATS, "format")
    quantizations = _parse_list(quantize, QUANTIZATIONS, "quantize")
    if out.exists() and not out.is_dir():
        raise ExportError(f"out must be a folder (the model base folder), not a file. Received: out={str(out)!r}")
    run = load_run(run_dir)
    if run.kind == "verifier":
        raise ExportError(f"a verifier run scores pairs and has no embedding; export takes embedding, pair and "
                         f"autoencoder runs. Received: run_dir={str(run_dir)!r} (kind 'verifier')")
    name = name or run_dir.resolve().name
    request = {"model_fingerprint": run.model_fingerprint, "formats": formats, "quantize": quantizations,
               "gallery": str(Path(gallery).resolve()) if gallery is not None else None, "identify_k": identify_k}
    if version is None and not new_version and not force:
        previous = _same_export(out / name, request)
        if previous is not None:
            if verbose:
                print(f"{out / name} version {previous['version']} already holds this export of {run_dir} "
                      "(same model and request); nothing written (--new-version writes another)")
            return previous
    version = next_version(out / name) if version is None else int(version)
    if version < 1:
        raise ExportError(f"version must be a positive integer. Received: version={version}")
    targets = [out / name / str(version), out / name / "artifacts" / str(version)]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise ExportError(f"version {version} of {name!r} already exists ({existing[0]}); pass --force to replace it. "
                         f"Received: version={version}")

    enrolled = None
    if gallery is not None:
        if "saved_model" not in formats:
            raise ExportError(f"gallery needs the saved_model format (identify is a SavedModel signature). "
                             f"Received: format={','.join(formats)}")
        enrolled = Gallery.load(gallery, model_fingerprint=run.model_fingerprint)
        if enrolled.backend == "milvus":
            raise ExportError("a Milvus gallery is searched by Milvus, not inside the model: export without a "
                              "gallery and let the server search Milvus with the `embed` signature's vectors "
                              f"(docs/serving.md). Received: gallery={str(gallery)!r} (backend 'milvus')")
        if enrolled.threshold is None or not len(enrolled):
            raise ExportError(f"the gallery needs items and a rejection threshold (`reprlearn index` sets one). "
                             f"Received: gallery={str(gallery)!r}")
    metric = run.metric
    # The verify signature ships the threshold calibrated on validation pairs (never on test pairs).
    threshold = run.verification_threshold if run.kind == "pair" else None
    tower = keras.saving.load_model(run_dir / "model.keras")
    head = run.head_model
    generative_path = next((p for p in (run_dir / "vae.keras", run_dir / "autoencoder.keras") if p.is_file()), None)
    generative = keras.saving.load_model(generative_path) if generative_path else None
    test_images, test_labels = parity_images(run)
    keras_embeddings = embed(tower, test_images)
    probe = keras_embeddings[:PROBE_IMAGES]
    keras_map = float(retrieval_metrics(keras_embeddings, test_labels, metric, compute_nmi=False)["map_at_r"])
    representative = run.evaluation["train_sample"]

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".reprlearn-export-", dir=out.parent))
    try:
        saved_model = staging / "saved_model"
        signatures = write_saved_model(tower, saved_model, metric, threshold, generative, enrolled, identify_k,
                                       run.config.data.resize, head)
        artifacts = staging / "artifacts"
        artifacts.mkdir()
        rows, head_failure = [], None

        def check(row_name: str, path: Path, embeddings: np.ndarray) -> None:
            rows.append(_parity_row(row_name, path, embeddings, probe, test_labels, metric, keras_map))
            if verbose:
                r = rows[-1]
                print(f"  {row_name:<16} {r['bytes'] / 1024:>8.0f} KiB  max|diff| {r['max_abs_diff']:.2e}  "
                      f"MAP@R {r['map_at_r']:.4f}", flush=True)

        if "saved_model" in formats:
            import tensorflow as tf
            loaded = tf.saved_model.load(str(saved_model))
            serve = loaded.signatures["serving_default"]
            check("saved_model", saved_model, np.concatenate(
                [serve(images=tf.constant(test_images[i:i + 512], tf.float32))["embedding"].numpy()
                 for i in range(0, len(test_images), 512)]))
            if head is not None:
                head_diff = _check_head(loaded.signatures["embed_head"], head, test_images[:PROBE_IMAGES])
                if head_diff > MAX_ABS_DIFF:
                    head_failure = f"embed_head: max|diff| {head_diff:.2e} from head.keras exceeds {MAX_ABS_DIFF}"
                if verbose:
                    print(f"  embed_head       max|diff| {head_diff:.2e} from head.keras", flush=True)
            if enrolled is not None:
                identify_row = _check_identify(saved_model, enrolled, keras_embeddings, test_images, identify_k)
                if verbose:
                    print(f"  identify         {identify_row['decisions_equal']} decisions equal Gallery.identify; "
                          f"{identify_row['ms_per_batch_of_16']:.2f} ms per 16 images against "
                          f"{identify_row['gallery_size']} items", flush=True)
        if "tflite" in formats:
            for quantization in quantizations:
                path = artifacts / f"model-{'float32' if quantization == 'none' else quantization}.tflite"
                path.write_bytes(convert_tflite(saved_model, quantization, representative))
                check(f"tflite-{quantization}", path, TFLiteEmbedder(path)(test_images))
        if "onnx" in formats:
            path = artifacts / "model.onnx"
            convert_onnx(saved_model, path)
            check("onnx", path, onnx_embedder(path)(test_images))
        _write_parity(rows, keras_map, artifacts, request, signatures)
        failures = [message for message in map(_gate, rows) if message] + ([head_failure] if head_failure else [])
        if enrolled is not None:
            (artifacts / "identify.json").write_text(json.dumps(identify_row, indent=2))
            if identify_row["decisions_equal"] != identify_row["queries"]:
                failures.append(f"identify: {identify_row['queries'] - identify_row['decisions_equal']} of "
                                f"{identify_row['queries']} decisions differ from Gallery.identify")
        if failures:
            hint = _quantization_hint(rows, quantizations if "tflite" in formats else [],
                                      any(isinstance(layer, OrientationHistogram) for layer in tower.layers))
            failures += [hint] if hint else []
            raise ExportError("parity gate failed: " + "; ".join(failures))

        # Every gate passed: move into place, the SavedModel last, as one rename each.
        for target in targets:
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(artifacts, targets[1])
        if "saved_model" in formats:
            os.replace(saved_model, targets[0])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"name": name, "version": version, "signatures": signatures, "keras_map_at_r": keras_map, "formats": rows,
            "saved_model": str(targets[0]) if "saved_model" in formats else None, "artifacts": str(targets[1])}
