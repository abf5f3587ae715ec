"""Files a user takes away from a run: embeddings (.npz or .parquet) and identification results (.csv).

Each is written to a temporary file beside the target and renamed, so an interrupted write leaves no
half file under the target's name.

Example:
    write_embeddings(Path("out/embeddings.parquet"), run.embed(data), data, run)
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def write_embeddings(out: Path, embeddings: np.ndarray, data, run) -> None:
    """`out` .npz (embeddings, labels, names, class_names) or .parquet (one row per image, see below)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp" + out.suffix)
    if out.suffix == ".parquet":
        _write_parquet(tmp, embeddings, data, run)
    else:
        np.savez(tmp, embeddings=embeddings, labels=data.labels, names=np.asarray(data.names),
                 class_names=np.asarray(data.class_names))
    tmp.replace(out)


def _write_parquet(path: Path, embeddings: np.ndarray, data, run) -> None:
    """One row per image: `name`, `label`, `class_name`, `embedding` (a fixed-size float32 list); the run's
    metric and model fingerprint in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    class_names = list(data.class_names)
    table = pa.table({
        "name": pa.array([str(name) for name in data.names]),
        "label": pa.array(data.labels.astype("int64")),
        "class_name": pa.array([class_names[label] if 0 <= label < len(class_names) else str(label)
                                for label in data.labels.tolist()]),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()),
                                                       embeddings.shape[1]),
    }).replace_schema_metadata({"metric": run.metric, "model_fingerprint": run.model_fingerprint,
                                "run": str(run.path)})
    pq.write_table(table, path)


def write_identifications(out: Path, result, gallery, data) -> None:
    """One row per query: its class, the decision (a class name or unknown), and the top-k matches."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        k = result.distances.shape[1]
        writer.writerow(["query", "query_class", "decision", "accepted", "distance",
                         *[f"{field}_{i + 1}" for i in range(k) for field in ("id", "class", "distance")]])
        for i, query in enumerate(data.names):
            decision = gallery.class_name(result.labels[i])
            neighbours = [value for j in range(k) for value in (
                result.neighbour_ids[i, j], gallery.class_name(result.neighbour_labels[i, j]),
                f"{result.distances[i, j]:.6f}")]
            writer.writerow([query, data.class_names[data.labels[i]], decision, bool(result.accepted[i]),
                             f"{result.distances[i, 0]:.6f}", *neighbours])
    tmp.replace(out)
