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
from reprlearn.layers.channels import Luma
from reprlearn.metrics.cross_view import cross_view_metrics
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
