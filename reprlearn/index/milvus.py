"""A gallery's items in a Milvus collection: Milvus Lite in a local `.db` file, or a Milvus server by URI.

`Gallery(backend="milvus")` keeps its vectors here instead of in the process. One collection holds one
gallery: an int64 primary key `row`, the `vector`, the class id `label` and the item's string id `item_id`; the
gallery's own facts (metric, dimension, enrolling model's fingerprint, threshold, class names) are a JSON
collection property, so any process that opens the collection reads the same ones.

**Rows are enrolment numbers.** The first item enrolled is row 0, the next 1, and so on; the property also keeps
`next_row` and the sorted `removed_rows`. An item's position among the items held now (what `Gallery.search`
returns on every backend) is its row minus the removed rows below it. Removals are recorded before rows are
deleted and inserts before `next_row` moves on, and `insert` first repairs what an interrupted one left. A
collection made before this numbering (auto-assigned keys) answers `neighbours` and `identify`, not `search`.

Metrics map onto Milvus' as follows (s is what Milvus returns):

| reprlearn | Milvus | distance |
|---|---|---|
| `L2` | `L2` (squared) | √max(s, 0) |
| `squared-L2` | `L2` | max(s, 0) |
| `angular` | `COSINE` (vectors sent as unit rows) | max(1 − s, 0) |
"""

from __future__ import annotations

import fcntl
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reprlearn.errors import GalleryError
from reprlearn.index.search import HNSW_EF_SEARCH, engine_distances, unit_rows

META_PROPERTY = "reprlearn.gallery"
MILVUS_METRICS = {"L2": "L2", "squared-L2": "L2", "angular": "COSINE"}
# Build parameters of each index type; searches widen HNSW's beam (HNSW_EF_SEARCH) and IVF's probes.
INDEXES = {"FLAT": {}, "HNSW": {"M": 32, "efConstruction": 200}, "IVF_FLAT": {"nlist": 1024},
           "IVF_SQ8": {"nlist": 1024}}
IVF_NPROBE = 32
MAX_ID_LENGTH = 512
MAX_K = 16_384            # Milvus' largest top-k
INSERT_ROWS = 10_000      # rows per insert request (well under gRPC's 64 MB message limit at d ≤ 1,024)
QUERY_ROWS = 1_000        # query vectors per search request
# Milvus Lite's FLAT search broadcasts queries against items ([Q, N, d] float32): requests to it are cut so
# that this array stays under LITE_FLAT_BYTES.
LITE_FLAT_BYTES = 1 << 28
LITE_LOAD_ATTEMPTS = 60
LOOKUP_IDS = 50_000       # ids per `item_id in [...]` filter: Milvus Lite scans the collection for each


def _client_error(err: Exception, uri: str, doing: str) -> GalleryError:
    return GalleryError(f"Milvus at {uri!r} failed while {doing}: {getattr(err, 'message', None) or err}. "
                        f"Received: uri={uri!r}")


def _quoted(ids: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(str(i)) for i in ids) + "]"


def _lite_file_in_use(uri: str) -> bool:
    """Whether another process holds a Milvus Lite file (its engine keeps an advisory lock on `URI/LOCK`)."""
    lock = Path(uri) / "LOCK"
    if "://" in uri or not lock.is_file():
        return False
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def resolve_uri(uri: str, base: Path | None = None) -> str:
    """A Milvus URI as the client takes it: a server's `http(s)://` or `tcp://` address as given, or a Milvus
    Lite file (it must end in `.db`) made absolute, against `base` when relative."""
    if not isinstance(uri, str) or not uri:
        raise GalleryError(f"uri must be a Milvus Lite file ending in .db or a server address such as "
                           f"http://localhost:19530. Received: uri={uri!r}")
    if "://" in uri:
        return uri
    if not uri.endswith(".db"):
        raise GalleryError(f"a Milvus Lite uri is a local file ending in .db (or give a server address such as "
                           f"http://localhost:19530). Received: uri={uri!r}")
    path = Path(uri).expanduser()
    return str(path if path.is_absolute() or base is None else base / path)


class MilvusCollection:
    """One gallery's collection: create, insert, delete, look up ids and search, with errors as GalleryError.

    Args:
        uri: a Milvus Lite file (`gallery.db`; its folder is created) or a server (`http://host:19530`).
        name: the collection.
        metric: the gallery's metric (`"L2"`, `"squared-L2"` or `"angular"`).
        index: `"FLAT"` (exact), `"HNSW"`, `"IVF_FLAT"` or `"IVF_SQ8"`; used when the collection is created.
        timeout: seconds to wait for a server before failing.
    """

    def __init__(self, uri: str, name: str, metric: str, index: str = "FLAT", timeout: float = 10.0):
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise GalleryError("backend='milvus' needs pymilvus and milvus-lite: pip install 'reprlearn[milvus]'. "
                               "Received: pymilvus is not installed") from None
        if index not in INDEXES:
            raise GalleryError(f"index must be one of {list(INDEXES)}. Received: index={index!r}")
        if not isinstance(name, str) or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise GalleryError(f"collection must be a name of letters, digits and underscores that does not "
                               f"start with a digit. Received: collection={name!r}")
        self.uri, self.name, self.metric, self.index = uri, name, metric, index
        self.lite = "://" not in uri  # a Milvus Lite file served in this process, not a server
        if self.lite:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client = MilvusClient(uri=uri, timeout=timeout)
            self.exists = self.client.has_collection(name)
        except Exception as err:  # pymilvus raises MilvusException, grpc and OS errors alike
            if _lite_file_in_use(uri):
                raise GalleryError(f"the Milvus Lite file {uri!r} is open in another process, and Milvus Lite "
                                   f"serves a file to one process at a time: close that one (Gallery.close), or "
                                   f"serve the file (`milvus-lite server --data-dir {uri}`) and connect to its "
                                   f"address. Received: uri={uri!r}") from None
            raise _client_error(err, uri, "connecting") from None
        if self.exists:  # a collection is searched once loaded; loading a loaded one costs nothing
            self.index = self._call("reading the index", "describe_index", name, "vector").get("index_type", index)
            self._call("loading the collection", "load_collection", name)

    def _call(self, doing: str, method: str, *args, **kwargs):
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except Exception as err:
            raise _client_error(err, self.uri, doing) from None

    def meta(self) -> dict | None:
        """The gallery's facts stored with the collection, or None for a collection reprlearn did not make."""
        properties = self._call("reading the collection", "describe_collection", self.name).get("properties", {})
        return json.loads(properties[META_PROPERTY]) if META_PROPERTY in properties else None

    def write_meta(self, meta: dict) -> None:
        """Stores the gallery's facts; the row numbering the collection keeps (`next_row`, `removed_rows`) stays."""
        stored = self.meta() or {}
        kept = {key: stored[key] for key in ("next_row", "removed_rows") if key in stored}
        self._call("writing the gallery's facts", "alter_collection_properties", self.name,
                   properties={META_PROPERTY: json.dumps({**meta, **kept})})

    def _write_rows(self, next_row: int, removed: Sequence[int]) -> None:
        stored = self.meta() or {}
        self._call("recording the rows", "alter_collection_properties", self.name, properties={
            META_PROPERTY: json.dumps({**stored, "next_row": int(next_row),
                                       "removed_rows": sorted(int(r) for r in removed)})})

    @property
    def numbered(self) -> bool:
        """The rows are enrolment numbers (a collection made by this version); see the module doc."""
        return self.exists and "next_row" in (self.meta() or {})

    def _rows(self) -> tuple[int, list[int]]:
        stored = self.meta() or {}
        return int(stored.get("next_row", 0)), list(stored.get("removed_rows", []))

    def _repair(self) -> tuple[int, list[int]]:
        """`(next_row, removed_rows)` after finishing what an interrupted insert or removal left: rows recorded as
        removed but still there are deleted again; rows inserted past `next_row` move it on."""
        next_row, removed = self._rows()
        if self.count() == next_row - len(removed):
            return next_row, removed
        self._delete_rows(removed)
        beyond = self._call("repairing the rows", "query", self.name, filter=f"row >= {next_row}",
                            output_fields=["row"])
        if beyond:
            next_row = max(int(row["row"]) for row in beyond) + 1
            self._write_rows(next_row, removed)
        return next_row, removed

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """Each row's position among the items held now, in enrolment order (0-based), as `Gallery.search` gives
        it on every backend."""
        if not self.numbered:
            raise GalleryError(f"collection {self.name!r} was made by an earlier reprlearn whose row keys are not "
                               "enrolment positions: `neighbours` and `identify` answer with ids and labels, or "
                               "enrol it again to search by position. Received: Gallery.search on it")
        removed = np.asarray(self._rows()[1], np.int64)
        return rows - np.searchsorted(removed, rows, side="left")

    def create(self, dim: int, meta: dict) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("label", DataType.INT64)
        schema.add_field("item_id", DataType.VARCHAR, max_length=MAX_ID_LENGTH)
        indexes = self.client.prepare_index_params()
        indexes.add_index("vector", index_type=self.index, metric_type=MILVUS_METRICS[self.metric],
                          params=INDEXES[self.index])
        indexes.add_index("item_id", index_type="INVERTED")
        self._call("creating the collection", "create_collection", self.name, schema=schema,
                   properties={META_PROPERTY: json.dumps({**meta, "next_row": 0, "removed_rows": []})})
        # sync=False: pymilvus' wait for an index build asks for a timestamp that Milvus Lite does not serve
        self._call("creating the index", "create_index", self.name, indexes, sync=False)
        self._call("loading the collection", "load_collection", self.name)
        self.exists = True

    def count(self) -> int:
        if not self.exists:
            return 0
        rows = self._call("counting items", "query", self.name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def insert(self, vectors: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> None:
        numbered = self.numbered
        next_row, removed = self._repair() if numbered else (0, [])
        self.insert_rows(np.arange(next_row, next_row + len(vectors)) if numbered else None, vectors, labels, ids)
        if numbered:
            self._write_rows(next_row + len(vectors), removed)

    def insert_rows(self, rows: np.ndarray | None, vectors: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> None:
        """Inserts items under the given row keys (None: an earlier reprlearn's auto keys) and flushes; the rows
        recorded in the facts are the caller's to move (`insert`, or `finish_rows` after a bulk load)."""
        if self.metric == "angular":
            vectors = unit_rows(vectors)
        for start in range(0, len(vectors), INSERT_ROWS):
            end = start + INSERT_ROWS
            items = [{"vector": vector, "label": int(label), "item_id": str(item)}
                     for vector, label, item in zip(vectors[start:end], labels[start:end], ids[start:end])]
            if rows is not None:
                for row, item in zip(rows[start:end].tolist(), items):
                    item["row"] = int(row)
            self._call("inserting items", "insert", self.name, items)
        # Sealed segments are what Milvus indexes; rows left in the growing one are scanned unindexed.
        self._call("flushing", "flush", self.name)
        if self.lite:
            self._index_lite_segments()

    def delete_range(self, start: int, stop: int) -> None:
        """Deletes the rows in `[start, stop)` (a bulk load's shard, inserted again after an interruption)."""
        self._call("removing items", "delete", self.name, filter=f"row >= {int(start)} and row < {int(stop)}")

    def finish_rows(self, next_row: int, missing: Sequence[int]) -> None:
        """After a bulk load of rows `[0, next_row)`: records them, the `missing` ones as removed."""
        self._write_rows(next_row, missing)

    def _index_lite_segments(self) -> None:
        """Indexes the segments a flush just sealed, before the next search (Milvus Lite only; a server
        indexes by itself).

        Milvus Lite indexes new segments in a background thread and until then scans them by brute force,
        with all of [Q, N, d] in memory; loading again builds their indexes now. A load that meets an index
        file the background thread is still writing fails ("File is too small"), and is tried again.
        """
        quiet = logging.getLogger("milvus_lite")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # the engine logs each such failed attempt as an error
        try:
            for attempt in range(LITE_LOAD_ATTEMPTS):
                self._call("indexing", "release_collection", self.name)
                try:
                    self._call("indexing", "load_collection", self.name)
                    return
                except GalleryError:
                    if attempt == LITE_LOAD_ATTEMPTS - 1:
                        raise
                    time.sleep(0.5)
        finally:
            quiet.setLevel(level)

    def rows_of(self, ids: Sequence[str]) -> dict[str, int]:
        """`{item id: row key}` of those ids the collection holds."""
        found = {}
        if not self.exists:
            return found
        for start in range(0, len(ids), LOOKUP_IDS):
            chunk = ids[start:start + LOOKUP_IDS]
            for row in self._call("looking up ids", "query", self.name, filter=f"item_id in {_quoted(chunk)}",
                                  output_fields=["row", "item_id"]):
                found[row["item_id"]] = int(row["row"])
        return found

    def delete(self, rows: Sequence[int]) -> None:
        """Removes rows; the removal is recorded first, so an interrupted one is finished by the next insert."""
        if self.numbered:
            next_row, removed = self._repair()
            self._write_rows(next_row, set(removed) | {int(row) for row in rows})
        self._delete_rows(rows)

    def _delete_rows(self, rows: Sequence[int]) -> None:
        rows = [int(row) for row in rows]
        for start in range(0, len(rows), LOOKUP_IDS):
            self._call("removing items", "delete", self.name, ids=rows[start:start + LOOKUP_IDS])

    def enrolled(self, labels: Sequence[int]) -> set[int]:
        """Those of these class ids that have at least one item in the collection."""
        present = set()
        for label in sorted({int(label) for label in labels}):
            if self._call("looking up classes", "query", self.name, filter=f"label == {label}",
                          output_fields=["label"], limit=1):
                present.add(label)
        return present

    def search(self, queries: np.ndarray, k: int, size: int):
        """`(distances [Q, k], row keys [Q, k], labels [Q, k], item ids [Q, k])`, nearest first, in its metric;
        `size`: the items in the collection (it sizes Milvus Lite's FLAT requests)."""
        if k > MAX_K:
            raise GalleryError(f"k must be at most {MAX_K} for a Milvus gallery. Received: k={k}")
        if self.metric == "angular":
            queries = unit_rows(queries)
        params = {"metric_type": MILVUS_METRICS[self.metric],
                  "params": {"ef": max(HNSW_EF_SEARCH, 2 * k)} if self.index == "HNSW"
                  else {"nprobe": IVF_NPROBE} if self.index.startswith("IVF") else {}}
        scores = np.zeros((len(queries), k), np.float32)
        rows, labels = np.full((len(queries), k), -1, np.int64), np.full((len(queries), k), -1, np.int64)
        ids = np.full((len(queries), k), "", dtype=object)
        per_request = QUERY_ROWS
        if self.index == "FLAT" and self.lite:
            per_request = max(1, min(QUERY_ROWS, LITE_FLAT_BYTES // (4 * size * queries.shape[1])))
        for start in range(0, len(queries), per_request):
            found = self._call("searching", "search", self.name, data=queries[start:start + per_request], limit=k,
                               output_fields=["label", "item_id"], search_params=params)
            for offset, hits in enumerate(found):
                if len(hits) < k:  # an approximate index can come back short; say so rather than pad
                    raise GalleryError(f"Milvus returned {len(hits)} of the {k} neighbours asked for (index "
                                       f"{self.index}). Received: k={k}")
                row = start + offset
                scores[row] = [hit["distance"] for hit in hits]
                rows[row] = [hit["row"] for hit in hits]
                labels[row] = [hit["entity"]["label"] for hit in hits]
                ids[row] = [hit["entity"]["item_id"] for hit in hits]
        return engine_distances(scores, self.metric), rows, labels, ids.astype(str)

    def close(self) -> None:
        """Closes the connection; a Milvus Lite file is released for other processes to open."""
        self.client.close()
        if self.lite:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

    def drop(self) -> None:
        if self.exists:
            self._call("dropping the collection", "drop_collection", self.name)
            self.exists = False
