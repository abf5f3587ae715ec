"""Image files as an index: folders of class folders and CSV lists become a table of (path, label, split).

Indexing reads each file's first and last bytes, never its pixels: it finds the format (JPEG, PNG, GIF, BMP,
WebP, TIFF), and refuses zero-byte, truncated, unsupported (HEIC, AVIF, …), tiny and non-image files before
training, so a bad file costs one list entry, not a run. A file that breaks only when decoded mid-epoch is
skipped inside the pipelines (`reprlearn.data.pipelines`).

A source of PARALLEL_FILES or more files has its stat and checks done by one process per core (the listing itself,
a directory read, stays in this thread); `parallel_files` hands them to another engine (Ray tasks). The index is
the same row for row, in the same order.

Example:
    table = index_folder("/data/birds")            # FileIndex: files, labels, class names, problems
    table.files.path(0), table.labels[0], table.problems[:3]
"""

from __future__ import annotations

import csv
import hashlib
import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reprlearn.data.imageset import UNLABELLED
from reprlearn.errors import DataError, DatasetNotFoundError

# What the pipelines read: TensorFlow's decoders (JPEG, PNG, GIF, BMP), and Pillow for WebP and TIFF.
SUPPORTED_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
# Images reprlearn does not read: refused by name rather than ignored as "not an image".
UNSUPPORTED_SUFFIXES = (".heic", ".heif", ".avif", ".jp2", ".ico", ".ppm", ".pgm")
# An image with a side shorter than this is skipped and listed (a 1 × 1 tracking pixel is not a photo; upscaling it
# to the run's size would train on a flat colour). Read from the header: PNG, GIF and BMP from the bytes every
# file's check reads anyway; JPEG, WebP and TIFF through Pillow's header parser for files up to
# SMALL_FILE_BYTES (a larger file holds more than a few pixels, unless its metadata is large).
MIN_IMAGE_SIDE = 4
SMALL_FILE_BYTES = 16_384
SPLIT_NAMES = ("train", "validation", "test")
# How many problem files a warning names before it says "and N more".
NAMED_PROBLEMS = 5


def _join(root: str, name: str) -> str:
    return name if "://" in name else os.path.join(root, name)


@dataclass
class FileTable:
    """Image files under a root: relative paths, and the byte size and mtime each had when indexed."""

    root: str
    relative: np.ndarray          # object array of str
    sizes: np.ndarray             # int64
    mtimes: np.ndarray            # int64 nanoseconds

    def path(self, i: int) -> str:
        return _join(self.root, self.relative[i])

    def paths(self) -> list[str]:
        return [_join(self.root, name) for name in self.relative]

    def subset(self, index) -> "FileTable":
        return FileTable(self.root, self.relative[index], self.sizes[index], self.mtimes[index])

    def fingerprint(self, labels: np.ndarray) -> str:
        """A SHA-256 prefix of every (path, size, mtime, label): a file added, removed, edited or relabelled
        changes it."""
        digest = hashlib.sha256()
        for name, size, mtime, label in zip(self.relative, self.sizes, self.mtimes, labels):
            digest.update(f"{name}\0{size}\0{mtime}\0{label}\n".encode())
        return digest.hexdigest()[:16]

    def changed(self) -> list[str]:
        """The files whose size or mtime differs from the index now (or that are gone)."""
        out = []
        for name, size, mtime in zip(self.relative, self.sizes, self.mtimes):
            if "://" in name:  # a remote file: not checked
                continue
            try:
                stat = os.stat(os.path.join(self.root, name))
            except OSError:
                out.append(name)
                continue
            if stat.st_size != size or stat.st_mtime_ns != mtime:
                out.append(name)
        return out


@dataclass
class FileIndex:
    """What indexing found: the usable files, their labels and splits, and every file left out and why."""

    files: FileTable
    labels: np.ndarray                      # int64
    class_names: list[str]
    splits: np.ndarray | None               # object array of "train" / "validation" / "test", or None
    problems: list[tuple[str, str]] = field(default_factory=list)   # (relative path, why it was left out)
    ignored: int = 0                         # hidden and non-image files, not counted as problems
    dropped_classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def image_format(head: bytes) -> str | None:
    """The format named by a file's first bytes: jpeg, png, gif, bmp, webp, tiff, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def check_file(path: str, size: int) -> str | None:
    """Why an image file cannot be used (zero bytes, unsupported, not an image, truncated), or None.

    Reads 32 bytes at each end: a JPEG must end with its end-of-image marker (within its last 32 bytes,
    which allows the padding some cameras add), a PNG with its IEND chunk, a GIF with its trailer; a BMP
    must be as long as its header says.
    """
    if size == 0:
        return "zero bytes"
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            f.seek(max(0, size - 32))
            tail = f.read(32)
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    kind = image_format(head)
    if kind is None:
        return "not an image (unknown format)"
    side = _pixel_size(path, kind, head, size)
    if side is not None and min(side) < MIN_IMAGE_SIDE:
        return (f"too small ({side[1]}x{side[0]} pixels; images under {MIN_IMAGE_SIDE} pixels a side are skipped, "
                "not upscaled)")
    if kind == "jpeg" and b"\xff\xd9" not in tail:
        return "truncated (no JPEG end marker)"
    if kind == "png" and b"IEND" not in tail[-12:]:
        return "truncated (no PNG IEND chunk)"
    if kind == "gif" and not tail.rstrip(b"\x00").endswith(b"\x3b"):
        return "truncated (no GIF trailer)"
    if kind == "bmp" and len(head) >= 6 and int.from_bytes(head[2:6], "little") > size:
        return "truncated (shorter than its BMP header says)"
    return None


def _pixel_size(path: str, kind: str, head: bytes, size: int) -> tuple[int, int] | None:
    """`(height, width)` from an image's header where it is cheap to read (see `MIN_IMAGE_SIDE`), else None."""
    if kind == "png" and len(head) >= 24:
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    if kind == "gif" and len(head) >= 10:
        return int.from_bytes(head[8:10], "little"), int.from_bytes(head[6:8], "little")
    if kind == "bmp" and len(head) >= 26:
        return abs(int.from_bytes(head[22:26], "little", signed=True)), int.from_bytes(head[18:22], "little",
                                                                                        signed=True)
    if size > SMALL_FILE_BYTES:
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except Exception:  # an unreadable header: decoding says what is wrong with the file
        return None


def _is_candidate(name: str) -> bool:
    """Files indexing looks at: images and image-like suffixes, never hidden files."""
    return not name.startswith(".") and name.lower().endswith(SUPPORTED_SUFFIXES + UNSUPPORTED_SUFFIXES)


def finish_index(root: str, entries: list[tuple[str, int, int, str, str | None]], class_names: list[str],
                 ignored: int, source: str, checked: list[str | None] | None = None) -> FileIndex:
    """Checks every (relative path, size, mtime, class, split) entry (unless `checked` says why each cannot be used,
    or None), drops bad files and empty classes."""
    keep, problems = [], []
    for entry, problem in zip(entries, _checked(root, entries) if checked is None else checked):
        if problem:
            problems.append((entry[0], problem))
        else:
            keep.append(entry)
    present = sorted({entry[3] for entry in keep}, key=class_names.index)
    dropped = [name for name in class_names if name not in present]
    if not present:  # (training needs two classes: run_training refuses fewer, naming the splits)
        raise DataError(f"{source} has no readable image ({len(problems)} files were unusable{_first(problems)}). "
                        f"Received: classes={class_names}")
    label_of = {name: i for i, name in enumerate(present)}
    table = FileTable(root, np.array([e[0] for e in keep], dtype=object), np.array([e[1] for e in keep], np.int64),
                      np.array([e[2] for e in keep], np.int64))
    splits = np.array([e[4] for e in keep], dtype=object) if keep and keep[0][4] is not None else None
    return FileIndex(table, np.array([label_of[e[3]] for e in keep], np.int64), present, splits, problems,
                     ignored, dropped)


# ---- in parallel: the listing, stat and checks of a large source spread over processes or a cluster's tasks ----

# Sources of at least this many files are indexed in parallel (a process pool starts in well under a second; below
# this the one thread is about as fast).
PARALLEL_FILES = 20_000
# Files per task of the parallel checks.
CHECK_CHUNK = 4_096
_MAPPER: ContextVar = ContextVar("reprlearn_file_mapper", default=None)


@contextmanager
def parallel_files(mapper):
    """Within the block, indexing runs its per-folder listings and per-chunk checks through `mapper(function,
    arguments)` (a list of results in the arguments' order, e.g. `reprlearn.cluster.files.ray_map`), whatever the
    source's size; `parallel_files(None)` runs them in this thread."""
    token = _MAPPER.set(mapper or _serial)
    try:
        yield
    finally:
        _MAPPER.reset(token)


def _serial(function, arguments: list) -> list:
    return [function(*argument) for argument in arguments]


def _local_processes(function, arguments: list) -> list:
    """`function(*argument)` for each argument on a pool of processes, one per core, results in order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork: a child runs os and file calls only, and starts at once (a spawned one would import TensorFlow)
    with ProcessPoolExecutor(max_workers=os.cpu_count(), mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(function, *zip(*arguments)))


def _mapper(count: int):
    chosen = _MAPPER.get()
    if chosen is not None:
        return chosen
    parallel = count >= PARALLEL_FILES and (os.cpu_count() or 1) > 1 and hasattr(os, "fork")
    return _local_processes if parallel else _serial


def _check_chunk(root: str, names: list[str], sizes: list[int]) -> list[str | None]:
    return [None if "://" in name else check_file(os.path.join(root, name), size) for name, size in zip(names, sizes)]


def _checked(root: str, entries: list) -> list[str | None]:
    """Why each entry cannot be used (or None), in order; chunks of CHECK_CHUNK files through the mapper."""
    chunks = [(root, [e[0] for e in entries[i:i + CHECK_CHUNK]], [e[1] for e in entries[i:i + CHECK_CHUNK]])
              for i in range(0, len(entries), CHECK_CHUNK)]
    return [problem for part in _mapper(len(entries))(_check_chunk, chunks) for problem in part]


def _stat_and_check(root: str, names: list[str]) -> list[tuple[int, int, str | None]]:
    """`(size, mtime ns, why it cannot be used or None)` of each file."""
    out = []
    for name in names:
        stat = os.stat(os.path.join(root, name))
        out.append((stat.st_size, stat.st_mtime_ns, check_file(os.path.join(root, name), stat.st_size)))
    return out


def _listed(root: str, class_dirs: list[str]) -> tuple[list[tuple[str, str]], int]:
    """`([(relative path, class)], ignored)`: every candidate image below each class folder, recursively, in sorted
    order (names only: the stat is part of the parallel checks)."""
    listed, ignored = [], 0
    for class_name in class_dirs:
        for folder, subfolders, names in os.walk(os.path.join(root, class_name)):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            relative = os.path.relpath(folder, root)
            for name in sorted(names):
                if _is_candidate(name):
                    listed.append((os.path.join(relative, name), class_name))
                else:
                    ignored += 1
    return listed, ignored


def _first(problems: list[tuple[str, str]]) -> str:
    if not problems:
        return ""
    named = "; ".join(f"{name}: {why}" for name, why in problems[:NAMED_PROBLEMS])
    more = f"; and {len(problems) - NAMED_PROBLEMS} more" if len(problems) > NAMED_PROBLEMS else ""
    return f": {named}{more}"


def describe_problems(index: FileIndex) -> str:
    """One line: how many files were left out and the first few with why."""
    return f"{len(index.problems)} unusable image files were skipped{_first(index.problems)}"


def index_folder(root: str | Path) -> FileIndex:
    """A folder of class folders (`root/<class>/**/<image>`): every image below a class folder, recursively. A
    folder with images and no class folder is a source without labels (its one class `UNLABELLED`).

    Hidden files and folders, and files that are not images by their suffix, are ignored (counted).

    Raises:
        DatasetNotFoundError: `root` is not a folder.
        DataError: no class folders, or fewer than 2 classes with a readable image.
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DatasetNotFoundError(f"image folder not found. Received: path={str(root)!r}")
    class_dirs = sorted(entry.name for entry in os.scandir(root_path)
                        if entry.is_dir() and not entry.name.startswith("."))
    if not class_dirs:
        # Images with no class folder: a source without labels (label-free training takes it; the others refuse).
        names = sorted(entry.name for entry in os.scandir(root_path) if entry.is_file()
                       and not entry.name.startswith("."))
        listed = [(name, UNLABELLED) for name in names if _is_candidate(name)]
        if not listed:
            raise DataError(f"image folder has no class sub-folders and no images. Received: path={str(root)!r}")
        ignored, class_dirs = len(names) - len(listed), [UNLABELLED]
    else:
        listed, ignored = _listed(str(root_path), class_dirs)
    chunks = [(str(root_path), [name for name, _ in listed[i:i + CHECK_CHUNK]])
              for i in range(0, len(listed), CHECK_CHUNK)]
    facts = [fact for part in _mapper(len(listed))(_stat_and_check, chunks) for fact in part]
    entries = [(name, size, mtime, class_name, None) for (name, class_name), (size, mtime, _) in zip(listed, facts)]
    return finish_index(str(root_path), entries, class_dirs, ignored, f"folder:{root}",
                        checked=[problem for _, _, problem in facts])


def read_csv_rows(csv_path: Path, required: tuple[str, ...], needs: str) -> tuple[list[dict], list[str]]:
    """`(rows as dicts of stripped cells, the header's columns)`; DataError saying what the CSV `needs` and naming
    the columns found when one of `required` is missing."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if any(column not in columns for column in required):
            raise DataError(f"{needs}. Received: columns={columns} in {str(csv_path)!r}")
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader], columns


def index_csv(csv_file: str | Path) -> FileIndex:
    """A CSV of `path,label[,split]` rows (a header line naming those columns; without `label`, images without
    labels for label-free training); relative paths resolve against the CSV's folder. `split` is `train`,
    `validation` or `test`. Any path TensorFlow's file system reads works (`gs://…` where it is configured); such
    paths are checked when decoded, not when indexed.

    Raises:
        DatasetNotFoundError: the CSV is not there.
        DataError: missing columns, an unknown split name, a listed file that does not exist.
    """
    csv_path = Path(csv_file).expanduser()
    if not csv_path.is_file():
        raise DatasetNotFoundError(f"CSV file list not found. Received: path={str(csv_file)!r}")
    rows, columns = read_csv_rows(csv_path, ("path",),
                                  "a CSV file list needs a header with the columns path,label (and optionally split)")
    has_split, has_label = "split" in columns, "label" in columns  # without labels: for label-free training
    rows = rows if has_label else [{**row, "label": UNLABELLED} for row in rows]
    root = str(csv_path.parent.resolve())
    entries, missing, class_names = [], [], []
    for line, row in enumerate(rows, start=2):
        path, label, split = row["path"], row["label"], row.get("split") if has_split else None
        if has_split and split not in SPLIT_NAMES:
            raise DataError(f"{csv_path}: line {line} has split {split!r}; use one of {list(SPLIT_NAMES)}. "
                            f"Received: split={split!r}")
        full = path if "://" in path else os.path.join(root, path)
        if "://" in path:
            entries.append((full, 1, 0, label, split))   # remote: checked when decoded
        else:
            try:
                stat = os.stat(full)
            except OSError:
                missing.append(path)
                continue
            entries.append((os.path.relpath(full, root), stat.st_size, stat.st_mtime_ns, label, split))
        if label not in class_names:
            class_names.append(label)
    if missing:
        raise DataError(f"{csv_path} lists {len(missing)} files that do not exist, e.g. {missing[:3]}. "
                        f"Received: path={str(csv_file)!r}")
    class_names = sorted(class_names)
    return finish_index(root, entries, class_names, 0, f"csv:{csv_file}")


def probe_images(files: FileTable, need_size: bool, need_channels: bool) -> tuple[list, int]:
    """Reads image headers (not pixels) to find what the config left open: `(two different sizes found, or one
    size, or [])` and the channel count (3 as soon as one file has colour, else 1). Stops early when it can."""
    from PIL import Image

    sizes, channels = [], 1
    for i in range(len(files.relative)):
        if not need_size and not (need_channels and channels == 1):
            break
        try:
            with Image.open(files.path(i)) as image:
                size, mode = (image.height, image.width), image.mode
        except Exception:  # an unreadable header: the pipeline's skip handles the file
            continue
        if mode not in ("L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "F"):
            channels = 3
        if need_size and (not sizes or size != sizes[0][0]):
            sizes.append((size, files.relative[i]))
            if len(sizes) == 2:
                need_size = False
    return sizes, channels
