"""Scoring and reporting two towers: the cross-view protocol on the test pairs, beside raw pixels and a shared tower.

Queries are the test pairs' query images; the gallery is each distinct test reference once. Recall@1, @5, @10 and
@1% (and MAP@R where the pairs carry labels) in both directions (`reprlearn.metrics.cross_view`). Raw pixels:
both views resized to `RAW_SIDE` × `RAW_SIDE` (grey when either view is), scored under L2 and cosine.

Example:
    scores = score_towers(query_tower, reference_tower, splits.test, "L2")
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from reprlearn.data.pairs import PairSet
from reprlearn.errors import DataError
from reprlearn.layers.channels import Luma
from reprlearn.evaluation.scoring import evaluation_folder, validation_threshold
from reprlearn.metrics.cross_view import cross_view_metrics
from reprlearn.ops.distances import paired_distance
from reprlearn.runs.inference import embed_set

RAW_SIDE = 32
DIRECTIONS = ("query_to_reference", "reference_to_query")
ROWS = ("recall_at_1", "recall_at_5", "recall_at_10", "recall_at_1pct", "map_at_r")


def score_towers(query_tower: keras.Model, reference_tower: keras.Model, pairs: PairSet, metric: str) -> dict:
    """The cross-view metrics of two towers on `pairs` (queries against the distinct references), both directions;
    files that fail to decode are left out and named under `skipped_files`."""
    references = pairs.references()
    query_embeddings, query_failed = embed_set(query_tower, pairs.query)
    reference_embeddings, reference_failed = embed_set(reference_tower, references)
    keep_q = np.setdiff1d(np.arange(len(pairs)), query_failed)
    keep_r = np.setdiff1d(np.arange(len(references)), reference_failed)
    scores = cross_view_metrics(query_embeddings[keep_q], reference_embeddings[keep_r], pairs.labels[keep_q],
                                references.labels[keep_r], metric, map_at_r=True)
    failed = [pairs.query.names[i] for i in query_failed if pairs.query.names] + [
        references.names[i] for i in reference_failed if references.names]
    return {**scores, **({"skipped_files": failed} if failed else {})}


def _pair_distances(query_tower: keras.Model, reference_tower: keras.Model, pairs: PairSet, metric: str,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`(distances, match)`: every query against its own reference (a match) and against the reference of another
    place drawn with `seed` (not a match); queries or references whose file failed to decode are left out."""
    references = pairs.references()
    queries, _ = embed_set(query_tower, pairs.query)
    gallery, _ = embed_set(reference_tower, references)
    own = pairs.reference_rows()
    rng = np.random.default_rng(seed)
    other = rng.integers(0, len(references), len(pairs))
    for _ in range(20):  # redraw the draws that hit the query's own place
        same = references.labels[other] == pairs.labels
        if not same.any():
            break
        other[same] = rng.integers(0, len(references), int(same.sum()))
    first, second = np.concatenate([queries, queries[~same]]), np.concatenate([gallery[own], gallery[other[~same]]])
    match = np.concatenate([np.ones(len(pairs), bool), np.zeros(int((~same).sum()), bool)])
    distances = paired_distance(first, second, metric).numpy()
    usable = np.isfinite(distances)
    return distances[usable], match[usable]


def verification_scores(query_tower: keras.Model, reference_tower: keras.Model, val: PairSet, test: PairSet,
                        metric: str, seed: int) -> dict:
    """Query–reference verification (same place or not): the accuracy-maximising threshold fit on validation pairs
    (each query with its own reference, and with another place's), and the accuracy it gives on test pairs."""
    threshold, record = validation_threshold(*_pair_distances(query_tower, reference_tower, val, metric, seed))
    if threshold is None:
        return {"threshold": None, **record}
    distances, match = _pair_distances(query_tower, reference_tower, test, metric, seed)
    return {"threshold": threshold, **record, "test_pairs": int(match.size),
            "test_accuracy": float(np.mean((distances <= threshold) == match))}


def raw_pixel_model(image_shape, gray: bool, name: str) -> keras.Model:
    """Images of `image_shape` → their pixels resized to RAW_SIDE × RAW_SIDE (grey with `gray`), flattened."""
    inputs = keras.Input(tuple(int(v) for v in image_shape), name="images")
    x = keras.layers.Resizing(RAW_SIDE, RAW_SIDE, name="resize")(inputs)
    if gray and int(image_shape[-1]) == 3:
        x = Luma(name="luma")(x)
    return keras.Model(inputs, keras.layers.Flatten(name="pixels")(x), name=name)


def score_raw_pixels(pairs: PairSet) -> dict:
    """The cross-view metrics of raw pixels, under L2 and cosine: `{"L2": ..., "angular": ...}`."""
    gray = min(pairs.query.image_shape[-1], pairs.reference.image_shape[-1]) == 1
    query = raw_pixel_model(pairs.query.image_shape, gray, "raw_query")
    reference = raw_pixel_model(pairs.reference.image_shape, gray, "raw_reference")
    return {metric: score_towers(query, reference, pairs, metric) for metric in ("L2", "angular")}


def evaluate_pairs(run, parts: dict[str, PairSet], spec: str) -> tuple[dict, Path]:
    """Re-scores a two-tower run on other matched pairs (a source's `test` rows, or all of a source without
    splits), beside raw pixels, and the query–reference decisions at the run's threshold; writes
    `RUN/evaluations/<spec>/report.json` and `report.md`.

    Returns:
        `(report, folder)`.
    """
    pairs = parts.get("test", parts.get("all"))
    if pairs is None:
        raise DataError(f"{spec}: evaluate scores a source's test rows (or every row of a source without a split "
                        f"column). Received: splits {sorted(parts)}")
    if len(np.unique(pairs.labels)) < 2:
        raise DataError(f"{spec}: scoring retrieval needs pairs of two places at least. Received: {len(pairs)} "
                        "pairs of 1 place")
    query, reference = run.tower("query"), run.tower("reference")
    raw = score_raw_pixels(pairs)
    metrics = {"test": score_towers(query, reference, pairs, run.metric), "baseline_raw": raw["L2"],
               "baseline_raw_cosine": raw["angular"]}
    threshold = run.verification_threshold
    if threshold is not None:
        distances, match = _pair_distances(query, reference, pairs, run.metric, run.config.data.seed)
        metrics["verification"] = {"threshold": threshold, "pairs": int(match.size),
                                   "accuracy": float(np.mean((distances <= threshold) == match))}
    report = {"run": str(run.path), "data": spec, "n": len(pairs), "places": int(len(np.unique(pairs.labels))),
              "metric": run.metric, "model_fingerprint": run.model_fingerprint, "metrics": metrics}
    folder = evaluation_folder(run, spec)
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=float))
    lines = [f"# {run.path.name} on {spec}", "", f"{len(pairs)} pairs of {report['places']} places, {run.metric} "
             "distance.", ""] + _table(metrics)
    if "verification" in metrics:
        v = metrics["verification"]
        lines += [f"Query–reference decisions at the run's threshold {v['threshold']:.4f} (fit on its validation "
                  f"pairs): accuracy {v['accuracy']:.4f} on {v['pairs']} pairs (each query with its own reference "
                  "and with another place's)."]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return report, folder


def _table(metrics: dict) -> list[str]:
    columns = [("two towers", metrics["test"])]
    if "shared_tower" in metrics:
        columns.append(("one shared tower", metrics["shared_tower"]))
    columns += [("raw pixels, L2", metrics["baseline_raw"]), ("raw pixels, cosine", metrics["baseline_raw_cosine"])]
    lines = []
    for direction in DIRECTIONS:
        first = columns[0][1][direction]
        lines += [f"### {direction.replace('_', ' ')} ({first['queries']} queries, {first['references']} "
                  f"candidates; Recall@1% is Recall@{first['k_at_1pct']})", "",
                  "| metric | " + " | ".join(name for name, _ in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        lines += [f"| {row} | " + " | ".join(f"{part[direction][row]:.4f}" for _, part in columns) + " |"
                  for row in ROWS]
        lines.append("")
    return lines


def write_cross_view_report(report: dict, out: Path) -> None:
    """report.json and a readable report.md (the tables, the training, the files left out)."""
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    d, t, m = report["data"], report["train"], report["metrics"]
    polar = report["model"]["polar_size"]
    lines = [f"# reprlearn two-tower run: {d['name']}", "",
             f"{d['n_train']} training pairs ({d['n_val']} for validation), {d['n_test']} test pairs; query images "
             f"{d['image_shape']}, reference images {d['reference_shape']}; model.share: "
             f"{report['model']['share']}{f', polar transform to {polar}' if polar else ''}.",
             "", "## Cross-view retrieval on the test pairs", ""] + _table(m)
    if "shared_tower" not in m and "shared_tower_note" in m:
        lines += [m["shared_tower_note"], ""]
    lines += ["## Training", "", f"{t['epochs']} epochs of {t['steps_per_epoch']} steps, {t['batch_size']} pairs a "
              f"step, {t['seconds']:.1f} s; kept: epoch {report['kept']['epoch']} ({report['kept']['keep']}).", ""]
    skipped = report.get("files", {}).get("skipped_pairs", [])
    if skipped:
        lines += ["## Pairs left out", ""] + [f"- `{path}`: {why}" for path, why in skipped[:20]]
        lines += [f"- … and {len(skipped) - 20} more (report.json lists them all)"] if len(skipped) > 20 else []
    (out / "report.md").write_text("\n".join(lines) + "\n")
