"""Embedding and enrolling image files on a Ray cluster: shards of files through a pool of actors, one model each.

The driver (this process) indexes the files and cuts them into shards of consecutive items; Ray Data streams the
shards through an actor pool (back-pressure, a lost actor's shard tried again elsewhere). Each actor loads the run's
tower once, decodes its shard's files as the run decodes them (`ImageSet`, `embed_set`) and writes the result
itself, so the driver never holds an embedding:

- `embed_files`: a Parquet shard `part-NNNNN.parquet` per shard in the output folder (the columns of `reprlearn
  embed`'s .parquet file), written to a hidden temporary name and renamed, so a shard under its name is complete.
  `_reprlearn_embed.json` records the job (run, data and shard size) and, at the end, `complete: true`. Started
  again after an interruption, the job embeds only the shards not there.
- `index_files`: the actors insert into a Milvus collection, item i as row i; the driver then records the rows
  and the gallery's facts as `reprlearn index` does. `_reprlearn_index.json` in the gallery folder lists finished
  shards until the gallery is saved, so an interrupted enrolment continues.

A file that does not decode is left out and listed, as in one process; a file an actor's node cannot see (the
data path not mounted there) stops the job, naming the file and the node.

Example:
    summary = embed_files("runs/demo", load_spec("folder:/data/photos", decoding=run.decoding), Path("out/emb"))
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from reprlearn.cluster.engine import Progress, check_count, connect
from reprlearn.errors import ClusterError, ConfigError, RunFolderError

EMBED_MANIFEST = "_reprlearn_embed.json"
INDEX_MANIFEST = "_reprlearn_index.json"
# Items per shard: at most SHARD_FILES, and small enough that each actor gets SHARDS_PER_ACTOR shards (a lost
# actor repeats little; the pool stays busy to the end).
SHARD_FILES = 10_000
SHARDS_PER_ACTOR = 4
# How many failed files the summary names.
NAMED_FAILURES = 5


def shard_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def shard_size(items: int, actors: int) -> int:
    return max(1, min(SHARD_FILES, math.ceil(items / (actors * SHARDS_PER_ACTOR))))


class _ShardWorker:
    """One actor of the pool: the run's tower, loaded once; `__call__` embeds a batch of shards and writes them
    (a Parquet file each, or rows of a Milvus collection)."""

    def __init__(self, run_dir: str, view: str, files: dict, batch: int, sink: dict):
        from reprlearn.runs import load_run

        self.run = load_run(run_dir)
        self.view, self.files, self.batch, self.sink = view, files, batch, sink
        self.node = _node_name()
        if sink["kind"] == "parquet":
            from reprlearn.runs.files import embeddings_schema

            dim = int(self.run.tower(view).output_shape[-1])
            self.schema = embeddings_schema(dim, self.run, {"view": view})
        else:
            from reprlearn.index.milvus import MilvusCollection

            self.collection = MilvusCollection(sink["uri"], sink["name"], sink["metric"], sink["index"])

    def __call__(self, batch: dict) -> dict:
        done = {"shard": [], "written": [], "failed": []}
        for shard, start, names, labels in zip(batch["shard"], batch["start"], batch["names"], batch["labels"]):
            names, labels = [str(name) for name in names], np.asarray(labels, np.int64)
            embeddings, failed = self._embed(names, labels)
            keep = np.setdiff1d(np.arange(len(names)), failed)
            if self.sink["kind"] == "parquet":
                self._write_parquet(int(shard), [names[i] for i in keep], labels[keep], embeddings[keep],
                                    [names[i] for i in failed])
            else:
                self.collection.delete_range(int(start), int(start) + len(names))  # a shard begun before
                self.collection.insert_rows(int(start) + keep, embeddings[keep], labels[keep],
                                            np.asarray([names[i] for i in keep]))
            done["shard"].append(int(shard))
            done["written"].append(len(keep))
            done["failed"].append(json.dumps([names[i] for i in failed]))
        return {key: np.asarray(values) for key, values in done.items()}

    def _embed(self, names: list[str], labels: np.ndarray) -> tuple[np.ndarray, list[int]]:
        from reprlearn.data import ImageSet
        from reprlearn.data.decode import DecodeSpec
        from reprlearn.data.files import FileTable

        root = self.files["root"]
        for name in names:  # every file the index found must be here: else this node does not see the data
            path = name if "://" in name else os.path.join(root, name)
            if "://" not in path and not os.path.exists(path):
                raise ClusterError(f"node {self.node} cannot read {path} (the data must be at the same path on every "
                                   f"node: a shared mount or an object store URI). Received: data under {root}")
        table = FileTable(root, np.asarray(names, dtype=object), np.zeros(len(names), np.int64),
                          np.zeros(len(names), np.int64))
        spec = DecodeSpec(tuple(self.files["image_size"]), self.files["channels"], self.files["resize"])
        images = ImageSet(None, labels, self.files["class_names"], names, table, spec)
        return self.run.embed_set(images, self.batch, self.view)

    def _write_parquet(self, shard: int, names, labels, embeddings, failed) -> None:
        import pyarrow.parquet as pq

        from reprlearn.runs.files import embeddings_table

        folder = Path(self.sink["out"])
        schema = self.schema.with_metadata({**self.schema.metadata, b"failed": json.dumps(failed).encode()})
        tmp = folder / f".{shard_name(shard)}.{os.getpid()}.tmp"   # hidden: readers of the folder skip it
        pq.write_table(embeddings_table(schema, names, labels, self.files["class_names"], embeddings), tmp)
        tmp.replace(folder / shard_name(shard))


def _node_name() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # outside a Ray worker
        import socket

        return socket.gethostname()


def _file_facts(data) -> dict:
    """What an actor needs to decode the set's files: its root, class names and decoding."""
    if not getattr(data, "streamed", False):
        raise ConfigError("--engine ray embeds image files (--data folder:PATH or csv:FILE); an in-memory dataset "
                          f"embeds in one process. Received: a dataset of {len(data)} images in memory")
    spec = data.spec
    return {"root": data.files.root, "class_names": [str(name) for name in data.class_names],
            "image_size": [int(v) for v in spec.image_size], "channels": int(spec.channels), "resize": spec.resize}


def _job_facts(run, data, view: str) -> dict:
    record = data.source_record or {}
    return {"run": str(run.path), "model_fingerprint": run.model_fingerprint, "view": view,
            "items": len(data), "data_fingerprint": record.get("fingerprint") or data.files.fingerprint(data.labels)}


def _read_manifest(path: Path, facts: dict, what: str) -> dict | None:
    """The manifest at `path` if it records this job (same run, view and data); RunFolderError if another."""
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    different = [key for key in facts if stored.get(key) != facts[key]]
    if different:
        given = ", ".join(f"{key}={facts[key]!r}" for key in different)
        raise RunFolderError(f"{path.parent} holds {what} of another job ({', '.join(different)} differ): choose "
                             f"another --out, or delete it. Received: {given}")
    return stored


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    tmp.replace(path)


def _shard_rows(data, size: int, shards: list[int]) -> list[dict]:
    names, labels = list(data.names), np.asarray(data.labels, np.int64)
    return [{"shard": k, "start": k * size, "names": names[k * size:(k + 1) * size],
             "labels": labels[k * size:(k + 1) * size]} for k in shards]


def _pool(ray, actors: int | None) -> tuple[int, dict]:
    """`(actors, Ray resources per actor)`: one GPU each where the cluster has GPUs (default: one actor per GPU),
    else one CPU each (default: one actor per node, its TensorFlow using the node's cores)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return actors or gpus, {"num_gpus": 1, "num_cpus": 1}
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return actors or max(1, nodes), {"num_cpus": 1}


def _actors_phrase(count: int) -> str:
    """The pool's size in words: 1 actor, 2 actors."""
    return f"{count} actor{'' if count == 1 else 's'}"


def _run_shards(ray, rows: list[dict], worker_args: tuple, actors: int, resources: dict, progress: Progress,
                on_done) -> list[str]:
    """Streams the shard rows through the actor pool; `on_done(shard, written, failed names)` as each finishes.
    Returns the names of the files that did not decode."""
    failed = []
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, len(rows))).map_batches(
        _ShardWorker, fn_constructor_args=worker_args, batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors), **resources)
    try:
        for done in dataset.iter_rows():
            names = json.loads(done["failed"])
            failed += names
            on_done(int(done["shard"]), int(done["written"]), names)
            progress.advance(int(done["written"]) + len(names))
    except Exception as err:
        raise _cluster_error(err) from None
    progress.finish()
    return failed


def _cluster_error(err: Exception) -> Exception:
    """A job's failure as the error the user can act on: a reprlearn error raised in an actor, or one line."""
    from reprlearn.errors import ReprlearnError

    seen = err
    while seen is not None:
        for candidate in (seen, getattr(seen, "cause", None)):
            if isinstance(candidate, ReprlearnError):
                return candidate
        text = str(seen)
        if "ClusterError: " in text:  # raised in an actor, passed on as text by Ray
            return ClusterError(text.split("ClusterError: ", 1)[1].splitlines()[0])
        seen = seen.__cause__ or seen.__context__
    return ClusterError(f"the Ray job failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}. "
                        "Received: the error above")


def embed_files(run_dir, data, out: Path, view: str = "query", address: str | None = None,
                actors: int | None = None, batch: int = 128, stream=None) -> dict:
    """Embeds a streamed image set on a Ray cluster into Parquet shards in the folder `out`.

    Args:
        run_dir: a finished run folder (on storage every node reads).
        data: a streamed `ImageSet` decoded as the run's `view` tower takes it
            (`load_spec(..., decoding=run.decoding_for(view))`).
        out: the output folder (every node writes to it).
        view: a two-tower run's tower (`"query"` or `"reference"`).
        address: a Ray cluster (`host:port`); None: `RAY_ADDRESS`, else a local cluster.
        actors: the pool's size (default: one per GPU, else one per node).
        batch: images per model call.
        stream: where progress goes (default stderr).

    Returns:
        `{"items", "written", "failed" (file names), "shards", "resumed" (shards found done), "dim"}`.
    """
    from reprlearn.runs import load_run

    check_count("--actors", actors)
    check_count("--batch", batch)
    files = _file_facts(data)
    run = load_run(run_dir)
    dim = int(run.tower(view).output_shape[-1])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ray = connect(address)
    actors, resources = _pool(ray, actors)
    facts = _job_facts(run, data, view)
    manifest = _read_manifest(out / EMBED_MANIFEST, facts, "embeddings")
    if manifest is None:
        manifest = {**facts, "shard_size": shard_size(len(data), actors), "complete": False}
        _write_json(out / EMBED_MANIFEST, manifest)
    size = manifest["shard_size"]
    count = math.ceil(len(data) / size)
    for stale in out.glob(".part-*.tmp"):  # shards an interrupted job was writing
        stale.unlink(missing_ok=True)
    finished = [k for k in range(count) if (out / shard_name(k)).is_file()]
    failed = [name for k in finished for name in _shard_failures(out / shard_name(k))]
    pending = [k for k in range(count) if k not in set(finished)]
    progress = Progress(len(data), f"embedding on Ray ({_actors_phrase(actors)})", stream,
                        done=sum(min(size, len(data) - k * size) for k in finished))
    if pending:
        failed += _run_shards(ray, _shard_rows(data, size, pending),
                              (str(run.path), view, files, batch, {"kind": "parquet", "out": str(out.resolve())}),
                              actors, resources, progress, lambda *_: None)
    _write_json(out / EMBED_MANIFEST, {**manifest, "complete": True, "failed": failed})
    return {"items": len(data), "written": len(data) - len(failed), "failed": failed, "shards": count,
            "resumed": len(finished), "dim": dim}


def _shard_failures(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return json.loads((pq.read_schema(path).metadata or {}).get(b"failed", b"[]"))


def index_files(run, data, out: Path, uri: str, collection: str, index: str = "FLAT", far: float = 1e-3,
                address: str | None = None, actors: int | None = None, batch: int = 128, stream=None):
    """Enrols a streamed image set (a two-tower run's references) into a Milvus gallery on a Ray cluster: the
    actors insert into the collection at `uri` (a Milvus server: Milvus Lite serves a file to one process), the
    driver records the rows, the rejection threshold (fit on the run's validation split, as `reprlearn index`)
    and saves the gallery folder `out`.

    Returns:
        `(the Gallery, the names of the files that did not decode)`.
    """
    from reprlearn.index import Gallery, GalleryError

    check_count("--actors", actors)
    check_count("--batch", batch)
    if "://" not in uri:
        raise ClusterError("--engine ray inserts from many processes, and Milvus Lite serves a .db file to one: "
                           f"serve it (`milvus-lite server --data-dir {uri}`) or use a Milvus server, and pass "
                           f"--uri http://HOST:PORT. Received: --uri={uri!r}")
    files = _file_facts(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    facts = {**_job_facts(run, data, "reference"), "uri": uri, "collection": collection}
    manifest = _read_manifest(out / INDEX_MANIFEST, facts, "an enrolment")
    gallery = Gallery(run.metric, "milvus", run.model_fingerprint, class_names=data.class_names, uri=uri,
                      collection=collection, index=index)
    if manifest is None and len(gallery):
        raise GalleryError(f"{gallery.location} already holds {len(gallery)} items: add to it (`reprlearn index "
                           f"--add`), or choose another collection. Received: collection={collection!r}")
    ray = connect(address)
    actors, resources = _pool(ray, actors)
    if manifest is None:
        manifest = {**facts, "shard_size": shard_size(len(data), actors), "finished": {}}
        _write_json(out / INDEX_MANIFEST, manifest)
    target = gallery.bulk_target(int(run.tower("reference").output_shape[-1]))
    size, finished = manifest["shard_size"], manifest["finished"]
    count = math.ceil(len(data) / size)
    pending = [k for k in range(count) if str(k) not in finished]

    def record(shard: int, written: int, failed: list[str]) -> None:
        finished[str(shard)] = failed
        _write_json(out / INDEX_MANIFEST, manifest)

    progress = Progress(len(data), f"enrolling on Ray ({_actors_phrase(actors)})", stream,
                        done=sum(min(size, len(data) - int(k) * size) for k in finished))
    if pending:
        _run_shards(ray, _shard_rows(data, size, pending),
                    (str(run.path), "reference", files, batch, {"kind": "milvus", **target}),
                    actors, resources, progress, record)
    failed = [name for k in sorted(finished, key=int) for name in finished[k]]
    position = {name: i for i, name in enumerate(data.names)}
    gallery.finish_bulk(len(data), sorted(position[name] for name in failed))
    gallery.threshold = run.rejection_threshold(far)
    gallery.save(out)
    (out / INDEX_MANIFEST).unlink()
    return gallery, failed
