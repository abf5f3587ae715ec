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


def write_embeddings(out: Path, data, run, view: str = "query") -> tuple[int, list[str]]:
    """Embeds `data` with `run` (`view`'s tower of a two-tower run) into `out`: .npz (embeddings, labels, names,
    class_names) or .parquet (one row per image, see `embeddings_schema`).

    Returns:
        `(the embedding dimension, the names of the files that did not decode)`: those are left out, not written
        as rows.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp" + out.suffix)
    dim = int(run.tower(view).output_shape[-1])
    written = (_write_parquet if out.suffix == ".parquet" else _write_npz)(tmp, dim, data, run, view)
    tmp.replace(out)
    names = data.names or [str(i) for i in range(len(data))]
    return dim, [names[i] for i in np.setdiff1d(np.arange(len(data)), written)]


def _write_npz(path: Path, dim: int, data, run, view: str) -> np.ndarray:
    """The arrays as .npy files (the embeddings filled chunk by chunk through a memory map), then stored in
    the .npz (a zip) file by file, so neither step holds all the embeddings. Returns the items written."""
    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        arrays = Path(folder)
        embeddings = np.lib.format.open_memmap(arrays / "embeddings.npy", mode="w+", dtype=np.float32,
                                               shape=(len(data), dim))
        written = []
        for rows, part in run.embed_chunks(data, view):
            filled = sum(len(r) for r in written)
            embeddings[filled:filled + len(rows)] = part
            written.append(rows)
        written = np.concatenate(written) if written else np.zeros(0, np.int64)
        embeddings.flush()
        if len(written) < len(data):  # files that did not decode: the rows filled, copied to a shorter file
            kept = np.lib.format.open_memmap(arrays / "kept.npy", mode="w+", dtype=np.float32,
                                             shape=(len(written), dim))
            for start in range(0, len(written), 65_536):
                stop = min(start + 65_536, len(written))
                kept[start:stop] = embeddings[start:stop]
            kept.flush()
            del kept
            (arrays / "kept.npy").replace(arrays / "embeddings.npy")
        del embeddings
        np.save(arrays / "labels.npy", np.asarray(data.labels)[written])
        np.save(arrays / "names.npy", np.asarray(data.names)[written])
        np.save(arrays / "class_names.npy", np.asarray(data.class_names))
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name in ("embeddings", "labels", "names", "class_names"):
                archive.write(arrays / f"{name}.npy", f"{name}.npy")
    return written


def _write_parquet(path: Path, dim: int, data, run, view: str) -> np.ndarray:
    """One row per image (`embeddings_table`), one row group per chunk of embeddings. Returns the items written."""
    import pyarrow.parquet as pq

    schema = embeddings_schema(dim, run)
    labels = np.asarray(data.labels).astype("int64")
    written = []
    with pq.ParquetWriter(path, schema) as writer:
        for rows, part in run.embed_chunks(data, view):
            writer.write_table(embeddings_table(schema, [data.names[i] for i in rows], labels[rows],
                                                data.class_names, part))
            written.append(rows)
    return np.concatenate(written) if written else np.zeros(0, np.int64)


def embeddings_schema(dim: int, run, extra: dict[str, str] | None = None):
    """The Parquet schema of embeddings: `name`, `label`, `class_name`, `embedding` (a fixed-size float32 list);
    the run's metric and model fingerprint (and `extra`) in the schema metadata."""
    import pyarrow as pa

    return pa.schema([("name", pa.string()), ("label", pa.int64()), ("class_name", pa.string()),
                      ("embedding", pa.list_(pa.float32(), dim))],
                     metadata={"metric": run.metric, "model_fingerprint": run.model_fingerprint,
                               "run": str(run.path), **(extra or {})})


def embeddings_table(schema, names, labels: np.ndarray, class_names, embeddings: np.ndarray):
    """The rows of `embeddings [n, d]` as an Arrow table of `schema` (`embeddings_schema`)."""
    import pyarrow as pa

    class_names, dim = list(class_names), schema.field("embedding").type.list_size
    return pa.table({
        "name": pa.array([str(name) for name in names]),
        "label": pa.array(np.asarray(labels, np.int64)),
        "class_name": pa.array([class_names[label] if 0 <= label < len(class_names) else str(label)
                                for label in np.asarray(labels).tolist()]),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()), dim),
    }, schema=schema)


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
