"""Matched pairs of two views (a query and its reference: a street photo and the overhead image of the place, a
sketch and the product photo), as two aligned image sets, and their sources.

- A CSV with a header naming `query,reference` (paths, relative to the CSV's folder), optionally `label` (a place
  or class id: pairs of one label are never each other's negatives, and every reference of a query's label is a
  true match) and `split` (`train`, `validation`, `test`).
- A folder holding `query/` and `reference/`, whose files match by name stem (`query/x.jpg` ↔ `reference/x.png`).
- Arrays (`make_pairset`), for tests and the Python API.

Without a label, each distinct reference file is its own place, so several queries of one reference (one-to-many)
share it. A pair whose file is missing or unusable is left out and listed, never half-kept. Nothing is decoded
here: each view streams from its files at its own size and channels (`reprlearn.data.decode`).

Example:
    splits = load_pair_splits("csv:pairs.csv", Decoding((32, 128)), Decoding((64, 64)), validation_fraction=0.1)
    splits.train.query.files.path(0), splits.train.reference.files.path(0), splits.train.labels[0]
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reprlearn.data.cache import cache_decoded
from reprlearn.data.decode import DecodeSpec
from reprlearn.data.files import (
    SPLIT_NAMES,
    SUPPORTED_SUFFIXES,
    UNSUPPORTED_SUFFIXES,
    FileTable,
    check_file,
    probe_images,
    read_csv_rows,
)
from reprlearn.data.imageset import ImageSet, check_images
from reprlearn.errors import DataError, DatasetNotFoundError, ReprlearnWarning

VIEWS = ("query", "reference")


@dataclass
class PairSet:
    """Matched pairs: row i of `query` and row i of `reference` are pair i; `labels[i]` its place (or class).

    `reference_keys[i]` says which distinct reference row i holds (one-to-many pairs repeat a reference): the
    evaluation gallery holds each distinct reference once (`references`).
    """

    query: ImageSet
    reference: ImageSet
    reference_keys: np.ndarray
    labelled: bool = False   # the labels came from the source (a label column), not from the references

    @property
    def labels(self) -> np.ndarray:
        return self.query.labels

    def __len__(self) -> int:
        return len(self.query)

    def subset(self, index) -> "PairSet":
        index = np.asarray(index, np.int64)
        return PairSet(self.query.subset(index), self.reference.subset(index), self.reference_keys[index],
                       self.labelled)

    def _first_rows(self) -> np.ndarray:
        return np.sort(np.unique(self.reference_keys, return_index=True)[1])

    def references(self) -> ImageSet:
        """Each distinct reference once (its first row), labelled by place: what queries search."""
        return self.reference.subset(self._first_rows())

    def reference_rows(self) -> np.ndarray:
        """`[N]`: the row of `references()` that holds pair i's reference."""
        firsts = self._first_rows()
        order = np.argsort(self.reference_keys[firsts])
        return order[np.searchsorted(self.reference_keys[firsts][order], self.reference_keys)]

    @property
    def streamed(self) -> bool:
        return self.query.streamed


@dataclass
class PairSplits:
    """The pairs each split holds (places never cross splits), and what the source left out."""

    train: PairSet
    val: PairSet
    test: PairSet
    skipped: list = field(default_factory=list)   # [relative path, why] of every pair left out
    source: str = "arrays"


def make_pairset(queries, references, labels=None) -> PairSet:
    """Pairs from arrays: `queries[i]` matches `references[i]`.

    Example:
        pairs = make_pairset(np.zeros((10, 32, 128, 3)), np.zeros((10, 64, 64, 3)))

    Args:
        queries: `[N, H, W, C]` images of the query view (0-255).
        references: `[N, H', W', C']` images of the reference view, row i matching query i.
        labels: `[N]` integer place or class ids (pairs of one id are never negatives); None: pair i is place i.

    Returns:
        A `PairSet` (each reference row distinct).
    """
    queries = check_images(queries, "queries")
    references = check_images(references, "references")
    if len(queries) != len(references):
        raise DataError(f"queries and references must pair up row by row. Received: {len(queries)} queries and "
                        f"{len(references)} references")
    labelled = labels is not None
    if labelled:
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu":
            raise DataError("labels must be integer place or class ids; map names to ids with "
                            f"np.unique(names, return_inverse=True)[1]. Received: labels of dtype {labels.dtype}")
        if labels.shape != (len(queries),):
            raise DataError(f"labels must be [N] with N = {len(queries)}. Received: labels.shape={labels.shape}")
        labels = labels.astype(np.int64)
    else:
        labels = np.arange(len(queries), dtype=np.int64)
    names = [str(v) for v in np.unique(labels)]
    return PairSet(ImageSet(queries, labels, names), ImageSet(references, labels.copy(), names),
                   np.arange(len(queries), dtype=np.int64), labelled)


def _entry(root: str, path: str, why: dict) -> tuple | None:
    """`(relative path, size, mtime)` of a usable file, or None with the reason in `why[path]`."""
    full = path if "://" in path else os.path.join(root, path)
    if "://" in path:
        return full, 1, 0
    try:
        stat = os.stat(full)
    except OSError:
        why[path] = "missing"
        return None
    problem = check_file(full, stat.st_size)
    if problem:
        why[path] = problem
        return None
    return os.path.relpath(full, root), stat.st_size, stat.st_mtime_ns


def _pair_rows(csv_file: str) -> tuple[str, list, list, bool]:
    """Reads a pair CSV: `(root, kept rows (query entry, reference entry, label, split), skipped, labelled)`."""
    csv_path = Path(csv_file).expanduser()
    if not csv_path.is_file():
        raise DatasetNotFoundError(f"pair CSV not found. Received: path={str(csv_file)!r}")
    rows, columns = read_csv_rows(csv_path, ("query", "reference"), "a pair CSV needs a header naming the columns "
                                  "query,reference (and optionally label, split)")
    labelled, has_split = "label" in columns, "split" in columns
    root = str(csv_path.parent.resolve())
    kept, skipped, why = [], [], {}
    for line, row in enumerate(rows, start=2):
        split = row.get("split") if has_split else None
        if has_split and split not in SPLIT_NAMES:
            raise DataError(f"{csv_path}: line {line} has split {split!r}; use one of {list(SPLIT_NAMES)}. "
                            f"Received: split={split!r}")
        query, reference = _entry(root, row["query"], why), _entry(root, row["reference"], why)
        if query is None or reference is None:
            bad = row["query"] if query is None else row["reference"]
            skipped.append([f"line {line}: {bad}", why[bad]])
            continue
        kept.append((query, reference, row.get("label") if labelled else None, split))
    return root, kept, skipped, labelled


def _folder_rows(folder: str) -> tuple[str, list, list, bool]:
    """`folder/query/*` and `folder/reference/*` matched by name stem, as `_pair_rows` returns them."""
    root = Path(folder).expanduser()
    if not all((root / view).is_dir() for view in VIEWS):
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise DatasetNotFoundError(f"a pair folder holds query/ and reference/ folders whose files match by name "
                                   f"stem. Received: folder={folder!r} with folders {found}")
    suffixes = SUPPORTED_SUFFIXES + UNSUPPORTED_SUFFIXES
    stems = {view: {p.stem: p for p in sorted((root / view).rglob("*"))
                    if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")} for view in VIEWS}
    kept, skipped, why = [], [], {}
    for view, other in (("query", "reference"), ("reference", "query")):
        for stem in sorted(set(stems[view]) - set(stems[other])):
            skipped.append([str(stems[view][stem].relative_to(root)), f"no {other} file named {stem}.*"])
    for stem in sorted(set(stems["query"]) & set(stems["reference"])):
        paths = [str(stems[view][stem].relative_to(root)) for view in VIEWS]
        entries = [_entry(str(root.resolve()), path, why) for path in paths]
        if None in entries:
            bad = paths[entries.index(None)]
            skipped.append([bad, why[bad]])
            continue
        kept.append((entries[0], entries[1], None, None))
    return str(root.resolve()), kept, skipped, False


def _spec(table: FileTable, size, channels, resize: str, view: str, source: str) -> DecodeSpec:
    sizes, found_channels = probe_images(table, size is None, channels is None)
    if size is None:
        if len(sizes) != 1:
            detail = (f"{sizes[0][1]!r} is {sizes[0][0][0]}x{sizes[0][0][1]} and {sizes[1][1]!r} is "
                      f"{sizes[1][0][0]}x{sizes[1][0][1]}" if len(sizes) == 2 else "no header could be read")
            key = "data.image_size" if view == "query" else "data.reference_size"
            raise DataError(f"{source}: the {view} images need one size ({detail}); set {key}: [height, width]. "
                            f"Received: {key}=None")
        size = sizes[0][0]
    return DecodeSpec(tuple(size), channels or found_channels, resize)


def _check_not_swapped(tables: dict, specs: dict, source: str) -> None:
    """Refuses a CSV whose query files have the reference view's shape and the other way round (columns swapped),
    read from the first pair's headers."""
    from PIL import Image

    def shape(view):
        try:
            with Image.open(tables[view].path(0)) as image:
                return image.height, image.width
        except Exception:
            return None

    query_size, reference_size = specs["query"].image_size, specs["reference"].image_size
    if query_size == reference_size or (query_size[0] == query_size[1]) == (reference_size[0] == reference_size[1]):
        return  # the sizes do not tell the views apart
    found = shape("query"), shape("reference")
    aspect = [None if s is None else s[0] == s[1] for s in found]
    expected = [query_size[0] == query_size[1], reference_size[0] == reference_size[1]]
    if None not in aspect and aspect == expected[::-1]:
        raise DataError(f"{source}: the query and reference columns look swapped: the query files are "
                        f"{found[0][0]}x{found[0][1]} like the reference view ({reference_size[0]}x"
                        f"{reference_size[1]}), the reference files {found[1][0]}x{found[1][1]} like the query view "
                        f"({query_size[0]}x{query_size[1]}). Swap the CSV's query and reference headers, or the "
                        "sizes in data.image_size and data.reference_size. Received: columns query,reference")


def load_pairs(spec: str, query_decoding, reference_decoding) -> tuple[dict[str, PairSet], list, bool]:
    """A pair source (`csv:FILE` or `folder:DIR`) as `({split or "all": PairSet}, skipped pairs, labelled)`.

    Args:
        spec: `csv:FILE` (columns query,reference[,label][,split]) or `folder:DIR` (query/ and reference/).
        query_decoding, reference_decoding: each view's `reprlearn.data.loaders.Decoding` (size, channels, resize,
            on_bad_image).

    Raises:
        DatasetNotFoundError: no such CSV or folder.
        DataError: missing columns (the ones found named), an unknown split, swapped columns, no usable pair, or
            unusable pairs with `on_bad_image: error`.
    """
    kind, _, location = spec.partition(":")
    if kind not in ("csv", "folder") or not location:
        raise DataError(f"two towers read matched pairs from csv:FILE (columns query,reference[,label][,split]) or "
                        f"folder:DIR (query/ and reference/ matched by name stem). Received: data.name={spec!r}")
    root, kept, skipped, labelled = (_pair_rows if kind == "csv" else _folder_rows)(location)
    if skipped:
        if query_decoding.on_bad_image == "error":
            raise DataError(f"{spec}: {len(skipped)} pairs have a missing or unusable file, e.g. {skipped[0][0]} "
                            f"({skipped[0][1]}) (data.on_bad_image: error refuses them; 'skip' leaves them out). "
                            "Received: on_bad_image='error'")
        shown = "; ".join(f"{path} ({why})" for path, why in skipped[:5])
        warnings.warn(f"{spec}: {len(skipped)} pairs left out: {shown}"
                      f"{f' and {len(skipped) - 5} more' if len(skipped) > 5 else ''}", ReprlearnWarning, stacklevel=2)
    if not kept:
        raise DataError(f"{spec} has no usable pair ({len(skipped)} left out). Received: data.name={spec!r}")
    tables = {view: FileTable(root, np.array([row[v][0] for row in kept], dtype=object),
                              np.array([row[v][1] for row in kept], np.int64),
                              np.array([row[v][2] for row in kept], np.int64)) for v, view in enumerate(VIEWS)}
    reference_names, reference_keys = np.unique(tables["reference"].relative.astype(str), return_inverse=True)
    if labelled:
        names, labels = np.unique(np.array([row[2] for row in kept], dtype=str), return_inverse=True)
    else:  # each distinct reference file is a place
        names, labels = reference_names, reference_keys
    names, labels = [str(n) for n in names], labels.astype(np.int64)
    decodings = {"query": query_decoding, "reference": reference_decoding}
    specs = {view: _spec(tables[view], decodings[view].image_size, decodings[view].channels, decodings[view].resize,
                         view, spec) for view in VIEWS}
    _check_not_swapped(tables, specs, spec)
    whole = PairSet(*(ImageSet(None, labels, names, list(tables[view].relative), tables[view], specs[view])
                      for view in VIEWS), reference_keys.astype(np.int64), labelled)
    splits = np.array([row[3] for row in kept], dtype=object)
    if kept[0][3] is None:
        return {"all": whole}, skipped, labelled
    parts = {name: whole.subset(np.flatnonzero(splits == name)) for name in SPLIT_NAMES}
    return {name: part for name, part in parts.items() if len(part)}, skipped, labelled


def split_by_place(pairs: PairSet, fraction: float, seed: int) -> tuple[PairSet, PairSet]:
    """`(rest, part)`: `part` holds round(fraction × places) whole places (every pair of each), drawn at random."""
    places = np.unique(pairs.labels)
    chosen = np.random.default_rng(seed).permutation(places)[:int(round(fraction * len(places)))]
    inside = np.isin(pairs.labels, chosen)
    return pairs.subset(np.flatnonzero(~inside)), pairs.subset(np.flatnonzero(inside))


TEST_FRACTION = 0.2  # a source without a split column: this share of the places is the test split


def pair_splits(parts: dict[str, PairSet], validation_fraction: float, seed: int, skipped=(),
                source: str = "arrays") -> PairSplits:
    """Train, validation and test pairs, places never shared between splits: the source's own `train`,
    `validation`, `test` parts, else `TEST_FRACTION` of the places for testing, then `validation_fraction` of the
    rest's places for validation (the validation pairs pick the kept epoch, never the test pairs)."""
    if "all" in parts:
        train, test = split_by_place(parts["all"], TEST_FRACTION, seed)
    else:
        train, test = parts["train"], parts.get("test")
        if test is None:
            raise DataError(f"{source}: a split column needs train and test rows. Received: splits {sorted(parts)}")
    val = parts.get("validation")
    if val is None:
        train, val = split_by_place(train, validation_fraction, seed + 1)
    for name, part in (("train", train), ("test", test)):
        if len(np.unique(part.labels)) < 2:
            raise DataError(f"{source}: the {name} split needs pairs of two places at least (every other place is "
                            f"a negative). Received: {len(part)} {name} pairs of {len(np.unique(part.labels))} "
                            "places")
    return PairSplits(train, val, test, list(skipped), source)


def _cap(pairs: PairSet, limit: int | None, seed: int) -> PairSet:
    """At most `limit` pairs, whole places drawn at random (quick runs: `data.max_train`, `data.max_test`)."""
    if limit is None or len(pairs) <= limit:
        return pairs
    order = np.random.default_rng(seed).permutation(np.unique(pairs.labels))
    counts = np.array([np.count_nonzero(pairs.labels == place) for place in order])
    keep = order[:max(2, int(np.searchsorted(np.cumsum(counts), limit, side="right")))]
    return pairs.subset(np.flatnonzero(np.isin(pairs.labels, keep)))


def pair_splits_for(data_cfg, sets=None) -> PairSplits:
    """The pair splits a config's `data` section describes (each view decoded by its own keys: `data.image_size`
    and `data.channels` for queries, `data.reference_size` and `data.reference_channels` for references, each
    None to take the files' own), or those of `sets`: a `PairSet` or `{"train", "test"[, "validation"]}` or
    `{"all"}` of them."""
    from reprlearn.data.loaders import Decoding

    if sets is None:
        query = Decoding.of(data_cfg)
        reference = Decoding(tuple(data_cfg.reference_size) if data_cfg.reference_size else None,
                             data_cfg.reference_channels, data_cfg.resize, data_cfg.on_bad_image)
        parts, skipped = load_pairs(data_cfg.name, query, reference)[:2]
        source = data_cfg.name
    else:
        parts = {"all": sets} if isinstance(sets, PairSet) else dict(sets)
        wrong = [name for name, part in parts.items() if not isinstance(part, PairSet)]
        if wrong:
            kind = type(parts[wrong[0]]).__name__
            raise DataError(f"two towers train on matched pairs: pass make_pairset(queries, references, labels) (or "
                            f"a dict of them by split). Received: {wrong[0]!r} of type {kind}")
        skipped, source = [], "arrays"
    splits = pair_splits(parts, data_cfg.validation_fraction, data_cfg.seed, skipped, source)
    splits.train = _cap(splits.train, data_cfg.max_train, data_cfg.seed)
    splits.test = _cap(splits.test, data_cfg.max_test, data_cfg.seed)
    # data.cache: the training and validation pairs decoded once (the test pairs are read once anyway).
    splits.train, train_failed = cached_pairs(splits.train, data_cfg.cache)
    splits.val, val_failed = cached_pairs(splits.val, data_cfg.cache)
    splits.skipped += train_failed + val_failed
    return splits


def cached_pairs(pairs: PairSet, cache: str | None) -> tuple[PairSet, list]:
    """`(the pairs with both views decoded once (data.cache: memory or a folder), [[file, why]] of the pairs left
    out because a file failed to decode)`; unchanged for `cache` of None / "none" or pairs in memory."""
    if cache in (None, "none") or not pairs.streamed or not len(pairs):
        return pairs, []
    query, query_failed = cache_decoded(pairs.query, cache)
    reference, reference_failed = cache_decoded(pairs.reference, cache)
    if not query_failed and not reference_failed:
        return PairSet(query, reference, pairs.reference_keys, pairs.labelled), []
    bad_queries, bad_references = set(query_failed), set(reference_failed)
    keep = [i for i in range(len(pairs))
            if pairs.query.names[i] not in bad_queries and pairs.reference.names[i] not in bad_references]
    left_out = [[name, "failed to decode when cached"] for name in sorted(bad_queries | bad_references)]
    return cached_pairs(pairs.subset(np.array(keep, np.int64)), cache)[0], left_out
