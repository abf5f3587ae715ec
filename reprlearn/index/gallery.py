"""A gallery of enrolled embeddings: search, classify, identify with "unknown", calibrate, save and load.

Exact search (the default) uses `reprlearn.index.search`, the kernel `retrieval_metrics` ranks
with, so a gallery and the metrics agree on neighbours, distances and ties (lower index first).
`backend="faiss-flat"` searches with faiss' exact flat index and `"faiss-hnsw"` with its
approximate HNSW graph, for galleries too large to scan (`pip install reprlearn[faiss]`).
`backend="milvus"` keeps the items in a Milvus collection instead of the process: Milvus Lite in a
local `.db` file, or a Milvus server shared by many processes (`pip install reprlearn[milvus]`; see
`reprlearn.index.milvus`). Every backend answers `search`, `classify`, `identify` and `calibrate` alike.

Labels are non-negative class ids (a run's `class_names` name them); `UNKNOWN` (-1) is what
`identify` answers for a query farther than the threshold from every enrolled item.

Example:
    gallery = Gallery(metric="angular")
    gallery.add(embeddings, labels)
    threshold = gallery.calibrate(val_embeddings, val_labels, far=1e-2)   # impostors: classes not enrolled
    result = gallery.identify(probe_embeddings)                           # result.labels: class id or UNKNOWN
    gallery.save("runs/demo/gallery")
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from reprlearn.errors import GalleryError
from reprlearn.index.search import HNSW_EF_SEARCH, engine_distances, search_chunks, search_reference, unit_rows
from reprlearn.ops.distances import canonical_metric

UNKNOWN = -1
BACKENDS = ("exact", "faiss-flat", "faiss-hnsw", "milvus")
DEFAULT_COLLECTION = "reprlearn_gallery"
VOTES = ("majority", "distance")
_VOTE_EPSILON = 1e-12  # distance votes weigh 1 / (d + ε): an exact match outvotes everything
EMBEDDINGS_FILE, META_FILE = "gallery.npz", "gallery.json"
FORMAT_VERSION = 1


class Identification(NamedTuple):
    """`identify`'s answer per query: the decided label (or UNKNOWN), whether it was accepted, and the top k."""
    labels: np.ndarray         # [Q] the nearest item's label where accepted, else UNKNOWN
    accepted: np.ndarray       # [Q] bool: the nearest distance is within the threshold
    distances: np.ndarray      # [Q, k] nearest first
    neighbour_labels: np.ndarray  # [Q, k]
    neighbour_ids: np.ndarray     # [Q, k]


def _as_embeddings(values, name: str, dim: int | None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    if array.ndim != 2:
        raise GalleryError(f"{name} must be [N, d]. Received: {name}.shape={array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise GalleryError(f"{name} must have the gallery's dimension {dim}. Received: {name}.shape={array.shape}")
    if not np.all(np.isfinite(array)):
        raise GalleryError(f"{name} contain NaN or inf. Received: {int((~np.isfinite(array)).sum())} non-finite values")
    return array


def impostor_threshold(impostor_distances, far: float) -> float:
    """The largest distance threshold (accept distance ≤ threshold) at which at most `far` of the impostors'
    distances are accepted: just below the (⌊far·m⌋ + 1)-th smallest of m."""
    nearest = np.sort(np.asarray(impostor_distances, np.float32).reshape(-1))
    allowed = int(math.floor(far * len(nearest)))  # impostors that may be accepted; < m, as far < 1
    return float(np.nextafter(nearest[allowed], np.float32(-np.inf)))


def split_class_threshold(vectors, labels, metric: str, far: float, seed: int, references=None,
                          reference_labels=None) -> float:
    """A rejection threshold for a false-accept rate `far` from one labelled set: half of its classes (drawn
    with `seed`) enrolled, the other half impostors (see `Gallery.calibrate`).

    `references`, `reference_labels` (two towers): the gallery view of the same classes, enrolled in place of
    `vectors`' own rows; the impostors are still `vectors` (queries) of the other half.

    Raises:
        GalleryError: fewer than two classes.
    """
    labels = np.asarray(labels)
    if references is None:
        references, reference_labels = vectors, labels
    reference_labels = np.asarray(reference_labels)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise GalleryError(f"calibrating a rejection threshold needs two classes. Received: {len(classes)} class")
    enrolled = np.random.default_rng(seed).permutation(classes)[:(len(classes) + 1) // 2]
    known = np.isin(reference_labels, enrolled)
    gallery = Gallery(metric)
    gallery.add(np.asarray(references)[known], reference_labels[known])
    impostors = ~np.isin(labels, enrolled)
    return gallery.calibrate(np.asarray(vectors)[impostors], labels[impostors], far)


class Gallery:
    """Enrolled embeddings with labels and ids, searched exactly, with faiss, or by Milvus.

    Args:
        metric: `"L2"` (default, as `retrieval_metrics`), `"squared-L2"` or `"angular"` (alias `"cosine"`).
        backend: `"exact"`, `"faiss-flat"`, `"faiss-hnsw"` or `"milvus"`.
        model_fingerprint: what embedded the items (a run's model fingerprint); `load` can require it.
        threshold: the rejection distance `identify` uses when given none (set by `calibrate`).
        class_names: names of the class ids (`class_names[label]`), kept with the gallery for display.
        uri: (milvus) a Milvus Lite file ending in `.db` or a server address such as `http://host:19530`.
        collection: (milvus) the collection; an existing one is opened, and refused if its metric or
            enrolling model differs from the one given.
        index: (milvus) `"FLAT"` (exact), `"HNSW"`, `"IVF_FLAT"` or `"IVF_SQ8"`, used when the collection is made.

    For `"milvus"` the items live in the collection, not in `embeddings`, `labels` and `ids` (None).

    **One numbering.** The indices `search` returns are the same on every backend: each item's 0-based position
    among the items the gallery holds now, in enrolment order (`add` appends). `remove` closes the gap: the items
    enrolled after a removed one move down by one, as rows of an array do. Item ids never change: keep an id, not
    an index, to name an item across removals (`neighbours` and `identify` return ids).
    """

    def __init__(self, metric: str = "L2", backend: str = "exact", model_fingerprint: str | None = None,
                 threshold: float | None = None, class_names: Sequence[str] | None = None,
                 uri: str | None = None, collection: str = DEFAULT_COLLECTION, index: str = "FLAT"):
        try:
            self.metric = canonical_metric(metric)
        except ValueError as err:
            raise GalleryError(str(err)) from None
        if backend not in BACKENDS:
            raise GalleryError(f"backend must be one of {list(BACKENDS)}. Received: backend={backend!r}")
        self.backend, self.model_fingerprint, self.threshold = backend, model_fingerprint, threshold
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self.embeddings = np.zeros((0, 0), np.float32)
        self.labels = np.zeros(0, np.int64)
        self.ids = np.zeros(0, dtype=str)
        self._faiss_index = self._search_reference = None
        self._milvus, self._milvus_dim = None, None
        if backend == "milvus":
            self._open_milvus(uri, collection, index)

    def _open_milvus(self, uri, collection, index) -> None:
        from reprlearn.index.milvus import MilvusCollection, resolve_uri

        self.embeddings = self.labels = self.ids = None
        self._milvus = MilvusCollection(resolve_uri(uri), collection, self.metric, index)
        if not self._milvus.exists:
            return
        stored = self._milvus.meta()
        where = self.location
        if stored is None:
            raise GalleryError(f"{where} is not a reprlearn gallery (it has no {self._milvus.name!r} facts); "
                               f"choose another collection. Received: collection={collection!r}")
        if stored["metric"] != self.metric:
            raise GalleryError(f"{where} ranks with metric {stored['metric']!r}, not {self.metric!r}. "
                               f"Received: metric={self.metric!r}")
        if self.model_fingerprint is not None and stored.get("model_fingerprint") != self.model_fingerprint:
            raise GalleryError(f"{where} was enrolled by another model (fingerprint "
                               f"{stored.get('model_fingerprint')}), not this one ({self.model_fingerprint}). "
                               f"Received: model_fingerprint={self.model_fingerprint!r}")
        self.model_fingerprint = stored.get("model_fingerprint")
        self.threshold = stored.get("threshold") if self.threshold is None else self.threshold
        self.class_names = stored.get("class_names") if self.class_names is None else self.class_names
        self._milvus_dim = stored["dim"]

    def close(self) -> None:
        """Lets go of a Milvus gallery's connection (a Milvus Lite file is then free for another process to
        open); nothing to do for the other backends."""
        if self._milvus:
            self._milvus.close()

    def _facts(self) -> dict:
        """What a Milvus collection stores about its gallery."""
        return {"format_version": FORMAT_VERSION, "metric": self.metric, "dim": self.dim,
                "threshold": self.threshold, "model_fingerprint": self.model_fingerprint,
                "class_names": self.class_names}

    def __len__(self) -> int:
        return self._milvus.count() if self._milvus else len(self.labels)

    def class_name(self, label: int) -> str:
        """The name of a class id (its number where the gallery has no names); "unknown" for UNKNOWN."""
        if label == UNKNOWN:
            return "unknown"
        return self.class_names[label] if self.class_names and label < len(self.class_names) else str(label)

    @property
    def location(self) -> str:
        """Where the items live: "this process", or a Milvus collection and its uri."""
        return f"collection {self._milvus.name!r} at {self._milvus.uri!r}" if self._milvus else "this process"

    @property
    def dim(self) -> int | None:
        if self._milvus:
            return self._milvus_dim
        return self.embeddings.shape[1] if len(self) else None

    def add(self, embeddings, labels, ids: Sequence[str] | None = None) -> None:
        """Enrols `[N, d]` embeddings with class ids `[N]` and optional unique string ids (default: running numbers)."""
        embeddings = _as_embeddings(embeddings, "embeddings", self.dim)
        labels = np.asarray(labels)
        if labels.shape != (len(embeddings),) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
            raise GalleryError(f"labels must be [N] non-negative class ids with N = {len(embeddings)}. "
                               f"Received: labels of shape {labels.shape} and dtype {labels.dtype}")
        if ids is None:
            start = len(self)
            ids = [str(i) for i in range(start, start + len(embeddings))]
        ids = np.asarray([str(i) for i in ids])
        if ids.shape != (len(embeddings),):
            raise GalleryError(f"ids must list one id per embedding ({len(embeddings)}). Received: {len(ids)} ids")
        unique, counts = np.unique(ids, return_counts=True)
        enrolled = self._milvus.rows_of(ids.tolist()) if self._milvus else np.intersect1d(ids, self.ids).tolist()
        clashes = sorted(set(unique[counts > 1].tolist()) | set(enrolled))
        if clashes:
            raise GalleryError(f"ids must be unique in the gallery. Received: repeated ids {clashes[:5]}")
        if self._milvus:
            self._add_to_milvus(embeddings, labels.astype(np.int64), ids)
            return
        self.embeddings = embeddings if not len(self) else np.concatenate([self.embeddings, embeddings])
        self.labels = np.concatenate([self.labels, labels.astype(np.int64)])
        self.ids = np.concatenate([self.ids, ids]) if len(self.ids) else ids
        self._faiss_index = self._search_reference = None

    def _add_to_milvus(self, embeddings: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> None:
        from reprlearn.index.milvus import MAX_ID_LENGTH

        too_long = [item for item in ids.tolist() if len(item.encode()) > MAX_ID_LENGTH]
        if too_long:
            raise GalleryError(f"ids of a Milvus gallery are at most {MAX_ID_LENGTH} bytes. Received: an id of "
                               f"{len(too_long[0].encode())} bytes ({too_long[0][:40]!r}...)")
        if not self._milvus.exists:
            self._milvus_dim = int(embeddings.shape[1])
            self._milvus.create(self._milvus_dim, self._facts())
        self._milvus.insert(embeddings, labels, ids)

    def bulk_target(self, dim: int) -> dict:
        """For a bulk load by other processes (`reprlearn.cluster.embed.index_files`): creates this Milvus gallery's
        empty collection for `dim`-dimensional items and returns how to open it (`uri`, `name`, `metric`, `index`:
        `MilvusCollection`'s arguments). They insert item i as row i; `finish_bulk` records the rows."""
        if not self._milvus:
            raise GalleryError(f"a bulk load from other processes needs backend='milvus'. Received: "
                               f"backend={self.backend!r}")
        if not self._milvus.exists:
            self._milvus_dim = int(dim)
            self._milvus.create(self._milvus_dim, self._facts())
        return {"uri": self._milvus.uri, "name": self._milvus.name, "metric": self.metric,
                "index": self._milvus.index}

    def finish_bulk(self, items: int, missing: Sequence[int]) -> None:
        """Records a bulk load of rows `[0, items)`, of which `missing` were not inserted (files that did not
        decode): positions then count the inserted ones, as `add` would have numbered them."""
        self._milvus.finish_rows(items, missing)

    def remove(self, ids: Sequence[str]) -> None:
        """Removes the items with these ids; an id the gallery lacks is an error and nothing is removed."""
        ids = [str(i) for i in ids]
        rows = self._milvus.rows_of(ids) if self._milvus else None
        missing = [i for i in ids if i not in rows] if self._milvus else np.setdiff1d(ids, self.ids).tolist()
        if missing:
            raise GalleryError(f"the gallery has no item with id {missing[0]!r}. Received: ids={ids[:5]}")
        if self._milvus:
            self._milvus.delete(sorted(rows.values()))
            return
        keep = ~np.isin(self.ids, ids)
        self.embeddings, self.labels, self.ids = self.embeddings[keep], self.labels[keep], self.ids[keep]
        self._faiss_index = self._search_reference = None

    # ---- search ----

    def _checked_queries(self, queries, k) -> tuple[np.ndarray, int]:
        """The queries as `[Q, d]` float32 and the gallery's size, once k is checked against it."""
        size = len(self)
        if not size:
            raise GalleryError("the gallery is empty: add embeddings before searching. Received: 0 items")
        queries = _as_embeddings(queries, "queries", self.dim)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= size:
            raise GalleryError(f"k must be an int in [1, {size}] (the gallery's size). Received: k={k!r}")
        return queries, size

    def _milvus_search(self, queries, k):
        """`(distances, rows, labels, ids)` from the collection, each query's k ordered as the other backends order
        them: by distance, ties by position."""
        queries, size = self._checked_queries(queries, k)
        distances, rows, labels, ids = self._milvus.search(queries, int(k), size)
        order = np.lexsort((rows, distances), axis=-1)   # rows rise with position
        return tuple(np.take_along_axis(values, order, axis=1) for values in (distances, rows, labels, ids))

    def search(self, queries, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """`(distances [Q, k], indices [Q, k])` of each query's k nearest items, nearest first (ties: lower index).
        The indices are positions in enrolment order among the items held now, alike on every backend (see the
        class doc)."""
        if self._milvus:
            distances, rows, _, _ = self._milvus_search(queries, k)
            return distances, self._milvus.positions(rows)
        queries, size = self._checked_queries(queries, k)
        if self.backend != "exact":
            return self._faiss_search(queries, int(k))
        distances, indices = [], []
        if self._search_reference is None:  # the items as tensors, kept until the gallery changes
            self._search_reference = search_reference(self.embeddings, self.metric)
        for _, chunk_distances, chunk_indices in search_chunks(self._search_reference, int(k), self.metric,
                                                               queries=queries):
            distances.append(chunk_distances)
            indices.append(chunk_indices)
        return (np.concatenate(distances), np.concatenate(indices)) if distances else (
            np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))

    def neighbours(self, queries, k: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(distances [Q, k], labels [Q, k], ids [Q, k])` of each query's k nearest items, on every backend."""
        if self._milvus:
            distances, _, labels, ids = self._milvus_search(queries, k)
            return distances, labels, ids
        distances, indices = self.search(queries, k)
        return distances, self.labels[indices], self.ids[indices]

    def classify(self, queries, k: int = 1, vote: str = "majority") -> np.ndarray:
        """The class id of each query by its k nearest items: `"majority"` (ties: the nearest such class) or
        `"distance"` (votes weighted by 1 / (distance + 1e-12))."""
        if vote not in VOTES:
            raise GalleryError(f"vote must be one of {list(VOTES)}. Received: vote={vote!r}")
        distances, neighbour_labels, _ = self.neighbours(queries, k)
        decided = np.empty(len(distances), np.int64)
        for row, (labels, dists) in enumerate(zip(neighbour_labels, distances)):
            weights = np.ones_like(dists) if vote == "majority" else 1.0 / (dists + _VOTE_EPSILON)
            totals: dict[int, float] = {}
            for label, weight in zip(labels.tolist(), weights.tolist()):
                totals[label] = totals.get(label, 0.0) + weight
            best = max(totals.values())
            decided[row] = next(label for label in labels.tolist() if totals[label] == best)  # nearest among ties
        return decided

    def identify(self, queries, threshold: float | None = None, k: int = 1) -> Identification:
        """Open-set identification: the nearest item's label if it lies within `threshold`, else UNKNOWN.

        Args:
            queries: `[Q, d]`.
            threshold: the largest accepted distance; default: the one `calibrate` set.
            k: how many nearest items to return beside the decision.
        """
        threshold = self.threshold if threshold is None else threshold
        if threshold is None or not math.isfinite(float(threshold)):
            raise GalleryError("identify needs a finite threshold: pass threshold= or call calibrate first. "
                               f"Received: threshold={threshold!r}")
        distances, neighbour_labels, neighbour_ids = self.neighbours(queries, k)
        accepted = distances[:, 0] <= threshold
        labels = np.where(accepted, neighbour_labels[:, 0], UNKNOWN)
        return Identification(labels, accepted, distances, neighbour_labels, neighbour_ids)

    def enrolled(self, labels) -> np.ndarray:
        """`[N]` bool: whether the gallery holds at least one item of each of these class ids."""
        labels = np.asarray(labels).reshape(-1)
        present = list(self._milvus.enrolled(labels.tolist())) if self._milvus else self.labels
        return np.isin(labels, present)

    def calibrate(self, queries, labels, far: float = 1e-3) -> float:
        """Sets and returns the rejection threshold for a false-accept rate `far`.

        Queries whose class is not enrolled are impostors: the threshold is the largest distance at
        which at most `far` of their nearest-item distances are accepted. Use validation data from the
        training side, never the test split.
        """
        if not 0.0 < far < 1.0:
            raise GalleryError(f"far must be in (0, 1). Received: far={far!r}")
        labels = np.asarray(labels)
        impostor = ~self.enrolled(labels)
        if not impostor.any():
            raise GalleryError("calibrate needs impostor queries (classes that are not enrolled). "
                               f"Received: {len(labels)} queries, all of enrolled classes")
        self.threshold = impostor_threshold(self.neighbours(np.asarray(queries)[impostor], 1)[0][:, 0], far)
        return self.threshold

    # ---- faiss ----

    def _faiss_search(self, queries, k):
        try:
            import faiss
        except ImportError:
            raise GalleryError(f"backend={self.backend!r} needs faiss: pip install 'reprlearn[faiss]'. "
                               "Received: faiss is not installed") from None
        reference, queries = self.embeddings, queries
        if self.metric == "angular":
            reference, queries = unit_rows(reference), unit_rows(queries)
        if self._faiss_index is None:
            dim = reference.shape[1]
            if self.backend == "faiss-flat":
                index = faiss.IndexFlatIP(dim) if self.metric == "angular" else faiss.IndexFlatL2(dim)
            else:
                index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT if self.metric == "angular"
                                            else faiss.METRIC_L2)
            index.add(np.ascontiguousarray(reference))
            self._faiss_index = index
        if self.backend == "faiss-hnsw":
            self._faiss_index.hnsw.efSearch = max(HNSW_EF_SEARCH, 2 * k)
        scores, indices = self._faiss_index.search(np.ascontiguousarray(queries), k)
        return engine_distances(scores, self.metric), indices.astype(np.int64)

    # ---- files ----

    def save(self, directory: str | Path) -> Path:
        """Writes `gallery.npz` (embeddings, labels, ids) and `gallery.json` (metric, threshold, ...); no pickle.

        A Milvus gallery writes its facts (threshold, class names, ...) to its collection and only the
        connection (uri, collection, metric) to `gallery.json`; a Lite file inside the folder is named
        relative to it, so the folder can move.
        """
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        if self._milvus:
            if self._milvus.exists:
                self._milvus.write_meta(self._facts())
            uri = self._milvus.uri
            if self._milvus.lite and Path(uri).resolve().is_relative_to(folder.resolve()):
                uri = os.path.relpath(Path(uri).resolve(), folder.resolve())
            meta = {"format_version": FORMAT_VERSION, "backend": "milvus", "metric": self.metric, "uri": uri,
                    "collection": self._milvus.name, "index": self._milvus.index}
            (folder / META_FILE).write_text(json.dumps(meta, indent=2))
            return folder
        np.savez(folder / EMBEDDINGS_FILE, embeddings=self.embeddings, labels=self.labels, ids=self.ids)
        meta = {"format_version": FORMAT_VERSION, "metric": self.metric, "backend": self.backend, "size": len(self),
                "dim": self.dim, "threshold": self.threshold, "model_fingerprint": self.model_fingerprint,
                "class_names": self.class_names}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, directory: str | Path, model_fingerprint: str | None = None) -> Gallery:
        """Reads a saved gallery (or opens a Milvus gallery's collection); with `model_fingerprint`, refuses one
        enrolled by another model.

        Raises:
            GalleryError: a missing or corrupt folder, an unreachable or missing collection, or a gallery of
                another model.
        """
        folder = Path(directory)
        try:
            meta = json.loads((folder / META_FILE).read_text())
            milvus = meta.get("backend") == "milvus"
            if milvus:
                connection = (meta["metric"], meta["uri"], meta["collection"], meta.get("index", "FLAT"))
            else:
                with np.load(folder / EMBEDDINGS_FILE, allow_pickle=False) as arrays:
                    embeddings, labels, ids = arrays["embeddings"], arrays["labels"], arrays["ids"]
                gallery = cls(meta["metric"], meta["backend"], meta.get("model_fingerprint"), meta.get("threshold"),
                              meta.get("class_names"))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise GalleryError(f"{folder} holds no readable gallery ({type(err).__name__}: {err}). "
                               f"Received: gallery={str(folder)!r}") from None
        if milvus:
            gallery = cls._open_saved_milvus(folder, *connection)
        elif len(labels) != meta.get("size") or embeddings.shape[0] != len(labels) or len(ids) != len(labels):
            raise GalleryError(f"{folder} is corrupt: {META_FILE} lists {meta.get('size')} items, {EMBEDDINGS_FILE} "
                               f"holds {embeddings.shape[0]} embeddings, {len(labels)} labels, {len(ids)} ids. "
                               f"Received: gallery={str(folder)!r}")
        if model_fingerprint is not None and gallery.model_fingerprint != model_fingerprint:
            raise GalleryError(f"{folder} was enrolled by another model (fingerprint {gallery.model_fingerprint}), "
                               f"not this one ({model_fingerprint}); enrol it again with this run. "
                               f"Received: gallery={str(folder)!r}")
        if not milvus and len(labels):
            gallery.add(embeddings, labels, ids.tolist())
        return gallery

    @classmethod
    def _open_saved_milvus(cls, folder: Path, metric: str, uri: str, collection: str, index: str) -> Gallery:
        from reprlearn.index.milvus import resolve_uri

        gallery = cls(metric, "milvus", uri=resolve_uri(uri, folder), collection=collection, index=index)
        if not gallery._milvus.exists:
            raise GalleryError(f"{folder} names collection {collection!r} at {gallery._milvus.uri!r}, which does "
                               f"not exist (dropped, or the Lite file moved). Received: gallery={str(folder)!r}")
        return gallery
