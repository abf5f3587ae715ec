"""Files a user takes away from a run: embeddings (.npz or .parquet) and identification results (.csv).

Each is written to a temporary file beside the target and renamed, so an interrupted write leaves no
half file under the target's name. Embeddings are written as they are computed, chunk by chunk
(`Run.embed_chunks`), so a large set's embeddings are never all in memory.

Example:
    dim = write_embeddings(Path("out/embeddings.parquet"), data, run)
"""

from __future__ import annotations

import csv
import tempfile
import zipfile
from pathlib import Path

import numpy as np


def write_embeddings(out: Path, data, run, view: str = "query") -> int:
    """Embeds `data` with `run` (`view`'s tower of a two-tower run) into `out`: .npz (embeddings, labels, names,
    class_names) or .parquet (one row per image, see below). Returns the embedding dimension."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp" + out.suffix)
    dim = int(run.tower(view).output_shape[-1])
    if out.suffix == ".parquet":
        _write_parquet(tmp, dim, data, run, view)
    else:
        _write_npz(tmp, dim, data, run, view)
    tmp.replace(out)
    return dim


def _write_npz(path: Path, dim: int, data, run, view: str) -> None:
    """The arrays as .npy files (the embeddings filled chunk by chunk through a memory map), then stored in
    the .npz (a zip) file by file, so neither step holds all the embeddings."""
    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        arrays = Path(folder)
        embeddings = np.lib.format.open_memmap(arrays / "embeddings.npy", mode="w+", dtype=np.float32,
                                               shape=(len(data), dim))
        for rows, part in run.embed_chunks(data, view):
            embeddings[rows] = part
        embeddings.flush()
        del embeddings
        np.save(arrays / "labels.npy", np.asarray(data.labels))
        np.save(arrays / "names.npy", np.asarray(data.names))
        np.save(arrays / "class_names.npy", np.asarray(data.class_names))
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name in ("embeddings", "labels", "names", "class_names"):
                archive.write(arrays / f"{name}.npy", f"{name}.npy")


def _write_parquet(path: Path, dim: int, data, run, view: str) -> None:
    """One row per image: `name`, `label`, `class_name`, `embedding` (a fixed-size float32 list); the run's
    metric and model fingerprint in the schema metadata. One row group per chunk of embeddings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    class_names = list(data.class_names)
    schema = pa.schema([("name", pa.string()), ("label", pa.int64()), ("class_name", pa.string()),
                        ("embedding", pa.list_(pa.float32(), dim))],
                       metadata={"metric": run.metric, "model_fingerprint": run.model_fingerprint,
                                 "run": str(run.path)})
    labels = np.asarray(data.labels).astype("int64")
    with pq.ParquetWriter(path, schema) as writer:
        for rows, part in run.embed_chunks(data, view):
            writer.write_table(pa.table({
                "name": pa.array([str(data.names[i]) for i in rows]),
                "label": pa.array(labels[rows]),
                "class_name": pa.array([class_names[label] if 0 <= label < len(class_names) else str(label)
                                        for label in labels[rows].tolist()]),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1), pa.float32()), dim),
            }, schema=schema))


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
