"""`reprlearn export`: a run folder's model → SavedModel, TFLite and ONNX, each checked against Keras.

Layout under `--out DIR`:

    DIR/NAME/VERSION/             the SavedModel (what TF Serving polls)
    DIR/NAME/artifacts/VERSION/   model-<quantization>.tflite, model.onnx, parity.json, parity.md
                                  (a two-tower run: query-<quantization>.tflite and reference-<quantization>.tflite,
                                  query.onnx and reference.onnx; its SavedModel has embed_query and embed_reference)

Float formats must embed the test images as Keras does (max abs diff); quantized TFLite may lose at most
`MAX_SCORE_DROP` of the run's retrieval score: MAP@R, or for two towers Recall@1 of the test queries against their
references, each format's query tower against its own reference tower.

Everything is written to a staging folder beside DIR and moved into place only after every
parity gate passed: a failed export leaves DIR exactly as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from reprlearn.data.imageset import UNLABELLED
from reprlearn.errors import ExportError
from reprlearn.export.converters import QUANTIZATIONS, TFLiteEmbedder, convert_onnx, convert_tflite, onnx_embedder
from reprlearn.export.savedmodel import write_saved_model
from reprlearn.index import Gallery
from reprlearn.layers import OrientationHistogram
from reprlearn.layers.polar import WidthPooling
from reprlearn.metrics import retrieval_metrics
from reprlearn.metrics.cross_view import cross_view_metrics
from reprlearn.ops.distances import cross_distance
from reprlearn.runs import embed, load_run
from reprlearn.runs.record import QUERY_FILE, REFERENCE_FILE

FORMATS = ("saved_model", "tflite", "onnx")
# Largest allowed max-abs embedding difference (float32 formats) and drop of the run's retrieval score (quantized
# TFLite): MAP@R, or a two-tower run's Recall@1 (queries → references).
MAX_ABS_DIFF = 1e-4
MAX_SCORE_DROP = {"dynamic": 0.01, "float16": 0.01, "int8": 0.03}
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


@dataclass
class _Tower:
    """One tower to export and check: the files it becomes, its SavedModel signature, its Keras model, the test
    images every format must embed as Keras does, and its int8 calibration images."""
    prefix: str               # file names: model-*.tflite / model.onnx, or query-* / reference-*
    signature: str
    model: keras.Model
    images: np.ndarray
    representative: np.ndarray


@dataclass
class _Score:
    """What the quantized formats are gated on: the run's retrieval score of a set of embeddings (one per tower)."""
    name: str                 # map_at_r, or recall_at_1 (two towers: queries → references)
    title: str
    of: Callable[[list[np.ndarray]], float]


def _parity_row(name: str, paths: list[Path], embeddings: list[np.ndarray], reference: list[np.ndarray],
                score: _Score, keras_score: float) -> dict:
    value = score.of(embeddings)
    return {"format": name, "file": ", ".join(path.name for path in paths),
            "bytes": sum(_file_size(path) for path in paths),
            "max_abs_diff": max(float(np.max(np.abs(e[:len(r)] - r))) for e, r in zip(embeddings, reference)),
            score.name: float(value), f"{score.name}_drop": float(keras_score - value)}


def _gate(row: dict, score: str = "map_at_r") -> str | None:
    """The failure message of a parity row, or None if it passes."""
    quantization = row["format"].split("-", 1)[1] if row["format"].startswith("tflite-") else "none"
    if quantization in MAX_SCORE_DROP:
        if row[f"{score}_drop"] > MAX_SCORE_DROP[quantization]:
            return (f"{row['format']}: {score} drop {row[f'{score}_drop']:.4f} exceeds "
                    f"{MAX_SCORE_DROP[quantization]} ({score} {row[score]:.4f})")
    elif row["max_abs_diff"] > MAX_ABS_DIFF:
        return f"{row['format']}: max abs diff {row['max_abs_diff']:.2e} exceeds {MAX_ABS_DIFF:.0e}"
    return None


def _int8_fragile(towers: list[_Tower]) -> str | None:
    """The layer of the towers (nested models included) known not to survive 8-bit integer arithmetic, named as its
    config key, or None."""
    def layers(model):
        for layer in model.layers:
            yield layer
            if hasattr(layer, "layers"):
                yield from layers(layer)

    for tower in towers:
        for layer in layers(tower.model):
            if isinstance(layer, OrientationHistogram):
                return "gradient orientation histograms (model.joint_layers: orientations)"
            if isinstance(layer, WidthPooling) and layer.mode == "fourier":
                # Measured: the relative error at its output grows from 0.009 (its input) to 0.26 under int8.
                return "Fourier width pooling (model.circular_pooling: fourier: squares and a square root)"
    return None


def _quantization_hint(rows: list[dict], quantizations: list[str], fragile: str | None,
                       score: str = "map_at_r") -> str | None:
    """What to export instead when some TFLite quantizations fail the gate: the ones that passed, or, for a layer
    known to fail at int8 (`_int8_fragile`), the float formats (which it survives)."""
    failed = [q for q in quantizations if any(row["format"] == f"tflite-{q}" and _gate(row, score) for row in rows)]
    passed = [q for q in quantizations if q not in failed]
    if "int8" in failed and fragile:
        return (f"{fragile} does not survive 8-bit integer arithmetic; export the float formats with "
                "--quantize none,dynamic,float16")
    if failed and passed:
        return (f"TFLite {', '.join(failed)} failed where {', '.join(passed)} passed: export those with "
                f"--quantize {','.join(passed)}")
    return None


def _write_parity(rows: list[dict], score: _Score, keras_score: float, directory: Path, request: dict,
                  signatures: list[str]) -> None:
    (directory / "parity.json").write_text(json.dumps({f"keras_{score.name}": keras_score, "formats": rows,
                                                       "request": request, "signatures": signatures}, indent=2))
    lines = [f"Keras {score.title} on the run's test split (from the run folder's evaluation.npz): {keras_score:.4f}",
             "", f"| format | file | size (KiB) | max abs diff vs Keras | {score.title} | drop |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['format']} | {r['file']} | {r['bytes'] / 1024:.0f} | {r['max_abs_diff']:.2e} | "
              f"{r[score.name]:.4f} | {r[score.name + '_drop']:+.4f} |" for r in rows]
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
            **{key: value for key, value in parity.items() if key.startswith("keras_")},
            "formats": parity["formats"], "saved_model": str(saved_model) if saved_model.is_dir() else None,
            "artifacts": str(parity_file.parent), "unchanged": True}


# A run on streamed files checks its exports on this many test images (decoded once), not the whole split.
PARITY_FILES = 1024


def _check_head(served, head, images: np.ndarray) -> float:
    """Max abs difference between the loaded SavedModel's `embed_head` signature (`served`) and `head.keras`."""
    import tensorflow as tf

    return float(np.max(np.abs(served(images=tf.constant(images, tf.float32))["embedding"].numpy()
                               - embed(head, images))))


def _parity_rows(run, count: int) -> np.ndarray:
    """All `count` rows of an in-memory test split, or `PARITY_FILES` of a streamed one, drawn with `data.seed`."""
    if count <= PARITY_FILES:
        return np.arange(count)
    return np.sort(np.random.default_rng(run.config.data.seed).choice(count, PARITY_FILES, replace=False))


def parity_images(run) -> tuple[np.ndarray, np.ndarray]:
    """The test images every export format must embed as the Keras model does: the whole in-memory test split,
    or `PARITY_FILES` test files drawn with `data.seed` from a streamed one."""
    test = run.split("test")
    if test.decoded:
        return test.images, test.labels
    chosen = _parity_rows(run, len(test))
    return test.pixels(chosen), test.labels[chosen]


def _self_recall_score(keras_embeddings: np.ndarray, metric: str) -> _Score:
    """A run trained without labels is gated on self-Recall@1: the share of parity images whose embedding in the
    format is nearest to the Keras model's embedding of the same image (1.0 for the Keras model itself)."""
    def of(embeddings: list[np.ndarray]) -> float:
        distances = cross_distance(embeddings[0], keras_embeddings, metric).numpy()
        return float(np.mean(np.argmin(distances, axis=1) == np.arange(len(keras_embeddings))))

    return _Score("self_recall_at_1", "self-Recall@1", of)


def _towers_and_score(run) -> tuple[list[_Tower], _Score]:
    """What an export of `run` checks: its tower(s) on their parity images, and the score quantization is gated on
    (MAP@R of the test images; a two-tower run's Recall@1 of test queries against their distinct references)."""
    representative = run.evaluation["train_sample"]
    if run.kind != "two_tower":
        images, labels = parity_images(run)
        tower = keras.saving.load_model(run.path / "model.keras")
        towers = [_Tower("model", "serving_default", tower, images, representative)]
        if list(run.class_names) == [UNLABELLED]:  # no classes to rank by: each image must still find itself
            return towers, _self_recall_score(embed(tower, images), run.metric)
        return towers, _Score(
            "map_at_r", "MAP@R", lambda e: retrieval_metrics(e[0], labels, run.metric, compute_nmi=False)["map_at_r"])
    test = run.split("test")
    pairs = test if test.query.decoded and test.reference.decoded else test.subset(_parity_rows(run, len(test)))
    references = pairs.references()
    queries = pairs.query.pixels(np.arange(len(pairs)))
    towers = [_Tower("query", "serving_default", keras.saving.load_model(run.path / QUERY_FILE), queries,
                     representative),
              _Tower("reference", "embed_reference", keras.saving.load_model(run.path / REFERENCE_FILE),
                     references.pixels(np.arange(len(references))), run.evaluation["train_sample_reference"])]
    return towers, _Score("recall_at_1", "Recall@1", lambda e: cross_view_metrics(
        e[0], e[1], pairs.labels, references.labels, run.metric, map_at_r=False)["query_to_reference"]["recall_at_1"])


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
    threshold = run.verification_threshold if run.kind in ("pair", "two_tower") else None
    head = run.head_model
    generative_path = next((p for p in (run_dir / "vae.keras", run_dir / "autoencoder.keras") if p.is_file()), None)
    generative = keras.saving.load_model(generative_path) if generative_path else None
    towers, score = _towers_and_score(run)
    keras_embeddings = [embed(t.model, t.images) for t in towers]
    probes = [e[:PROBE_IMAGES] for e in keras_embeddings]
    keras_score = float(score.of(keras_embeddings))
    query = towers[0]

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".reprlearn-export-", dir=out.parent))
    try:
        saved_model = staging / "saved_model"
        signatures = write_saved_model(query.model, saved_model, metric, threshold, generative, enrolled,
                                       identify_k, run.config.data.resize, head,
                                       towers[1].model if len(towers) == 2 else None)
        artifacts = staging / "artifacts"
        artifacts.mkdir()
        rows, head_failure = [], None

        def check(row_name: str, paths: list[Path], embeddings: list[np.ndarray]) -> None:
            rows.append(_parity_row(row_name, paths, embeddings, probes, score, keras_score))
            if verbose:
                r = rows[-1]
                print(f"  {row_name:<16} {r['bytes'] / 1024:>8.0f} KiB  max|diff| {r['max_abs_diff']:.2e}  "
                      f"{score.title} {r[score.name]:.4f}", flush=True)

        if "saved_model" in formats:
            import tensorflow as tf
            loaded = tf.saved_model.load(str(saved_model))
            check("saved_model", [saved_model], [np.concatenate(
                [loaded.signatures[t.signature](images=tf.constant(t.images[i:i + 512], tf.float32))[
                    "embedding"].numpy() for i in range(0, len(t.images), 512)]) for t in towers])
            if head is not None:
                head_diff = _check_head(loaded.signatures["embed_head"], head, query.images[:PROBE_IMAGES])
                if head_diff > MAX_ABS_DIFF:
                    head_failure = f"embed_head: max|diff| {head_diff:.2e} from head.keras exceeds {MAX_ABS_DIFF}"
                if verbose:
                    print(f"  embed_head       max|diff| {head_diff:.2e} from head.keras", flush=True)
            if enrolled is not None:
                identify_row = _check_identify(saved_model, enrolled, keras_embeddings[0], query.images,
                                               identify_k)
                if verbose:
                    print(f"  identify         {identify_row['decisions_equal']} decisions equal Gallery.identify; "
                          f"{identify_row['ms_per_batch_of_16']:.2f} ms per 16 images against "
                          f"{identify_row['gallery_size']} items", flush=True)
        if "tflite" in formats:
            for quantization in quantizations:
                paths = [artifacts / f"{t.prefix}-{'float32' if quantization == 'none' else quantization}.tflite"
                         for t in towers]
                for path, t in zip(paths, towers):
                    path.write_bytes(convert_tflite(saved_model, quantization, t.representative, t.signature))
                check(f"tflite-{quantization}", paths,
                      [TFLiteEmbedder(path)(t.images) for path, t in zip(paths, towers)])
        if "onnx" in formats:
            paths = [artifacts / f"{t.prefix}.onnx" for t in towers]
            for path, t in zip(paths, towers):
                convert_onnx(saved_model, path, signature=t.signature)
            check("onnx", paths, [onnx_embedder(path)(t.images) for path, t in zip(paths, towers)])
        _write_parity(rows, score, keras_score, artifacts, request, signatures)
        failures = [message for message in (_gate(row, score.name) for row in rows) if message] + (
            [head_failure] if head_failure else [])
        if enrolled is not None:
            (artifacts / "identify.json").write_text(json.dumps(identify_row, indent=2))
            if identify_row["decisions_equal"] != identify_row["queries"]:
                failures.append(f"identify: {identify_row['queries'] - identify_row['decisions_equal']} of "
                                f"{identify_row['queries']} decisions differ from Gallery.identify")
        if failures:
            hint = _quantization_hint(rows, quantizations if "tflite" in formats else [], _int8_fragile(towers),
                                      score.name)
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
    return {"name": name, "version": version, "signatures": signatures, f"keras_{score.name}": keras_score,
            "formats": rows,
            "saved_model": str(targets[0]) if "saved_model" in formats else None, "artifacts": str(targets[1])}
