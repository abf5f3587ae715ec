"""`data.cache`: decode a file set once and read its pixels from then on (memory, or a memory-mapped file).

- `none`: every batch decodes its files (the default; memory does not grow with the dataset);
- `memory`: the decoded, resized images as one uint8 array in RAM (N·H·W·C bytes);
- a folder path: the same array in `DIR/<key>.npy`, memory-mapped, keyed by the files' fingerprint and the
  decode spec, so a second run (or a resumed one) on the same files reuses it and a changed file makes a new one.

The cached set keeps its files, so the run still records paths, sizes and mtimes, never pixels. A file that
fails to decode while caching is left out of the set (and named by the caller's report).

Example:
    train = cache_decoded(splits.train, "/scratch/cache")
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from reprlearn.data.imageset import ImageSet


def cache_key(imageset: ImageSet) -> str:
    spec = imageset.spec
    text = f"{imageset.files.fingerprint(imageset.labels)} {spec.image_size} {spec.channels} {spec.resize}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_decoded(imageset: ImageSet, cache: str | None) -> tuple[ImageSet, list[str]]:
    """`(the set with its pixels decoded once, the names of the files that failed to decode)`; a set that is not
    streamed from files, or `cache` of None / "none", comes back unchanged."""
    if not imageset.streamed or imageset.decoded or cache in (None, "none") or not len(imageset):
        return imageset, []
    from reprlearn.data.pipelines import batches_in_order

    shape = (len(imageset), *imageset.image_shape)
    if cache == "memory":
        pixels, done = np.zeros(shape, np.uint8), np.zeros(len(imageset), bool)
        for images, items in batches_in_order(imageset):
            pixels[items], done[items] = np.clip(np.round(images), 0, 255), True
    else:
        folder = Path(cache).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        path, decoded_path = folder / f"{cache_key(imageset)}.npy", folder / f"{cache_key(imageset)}.decoded.npy"
        if not (path.is_file() and decoded_path.is_file()):
            partial = folder / f".{path.name}.{os.getpid()}.partial"
            pixels = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
            done = np.zeros(len(imageset), bool)
            for images, items in batches_in_order(imageset):
                pixels[items], done[items] = np.clip(np.round(images), 0, 255), True
            pixels.flush()
            del pixels
            np.save(decoded_path, done)
            os.replace(partial, path)   # whole or not at all: an interrupted cache is rebuilt, never half read
        pixels, done = np.load(path, mmap_mode="r"), np.load(decoded_path)
    failed = [imageset.names[i] for i in np.flatnonzero(~done)] if imageset.names else []
    keep = np.flatnonzero(done)
    files = imageset.files.subset(keep)
    cached = ImageSet(pixels if len(keep) == len(imageset) else pixels[keep], imageset.labels[keep],
                      imageset.class_names, [imageset.names[i] for i in keep] if imageset.names else None, files,
                      imageset.spec)
    cached.source_record = imageset.source_record
    return cached, failed
