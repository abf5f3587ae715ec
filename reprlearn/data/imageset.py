"""The in-memory labelled image set every loader returns, and its input checks."""

from __future__ import annotations

import warnings

import numpy as np

from reprlearn.errors import DataError, ReprlearnWarning

# Raw-pixel baselines of streamed photos compare images shrunk to this side (see `flat_pixels`).
BASELINE_SIDE = 16


def shrunk_size(image_shape, side: int) -> tuple[int, int]:
    """`(height, width)` of an image of `image_shape` shrunk to at most `side` pixels a side, aspect kept."""
    height, width = int(image_shape[0]), int(image_shape[1])
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def take_rows(images, index: np.ndarray) -> np.ndarray:
    """`images[index]`, read in ascending order (a memory-mapped cache then reads its file forwards)."""
    return images[np.sort(index)][np.argsort(np.argsort(index, kind="stable"), kind="stable")]


class ImageSet:
    """A labelled image set, in memory or streamed from files: labels, class names, item names, and the pixels.

    In memory, `images` is `[N, H, W, C]` (uint8, or float in [0, 255]). Streamed, `files` lists the image files
    and `spec` how each is decoded (`reprlearn.data.decode`): pixels exist only for the batch at hand, so a set
    of 10⁷ files costs its paths and a few integers per item. A file set cached by `data.cache`
    (`reprlearn.data.cache`) has both: its files (what the run records) and their decoded pixels (what is
    read), in memory or memory-mapped from disk. Everything downstream reads pixels through
    `reprlearn.data.pipelines` (`batches_in_order`, the samplers) or `pixels` for a handful of items, and so
    works on both.

    `class_names[c]` names label `c`; labels index into it. `names[i]` names item i where the source has names
    (a folder's or CSV's file paths, relative to its root); None otherwise.
    """

    def __init__(self, images, labels, class_names: list[str], names: list[str] | None = None, files=None,
                 spec=None):
        if images is None and files is None:
            raise DataError("an ImageSet needs images in memory or files to stream. Received: images=None, "
                            "files=None")
        self._images, self.labels, self.class_names, self.names = images, labels, class_names, names
        self.files, self.spec = files, spec
        # A streamed source's index record (item count, classes, fingerprint, skipped files), for run.json.
        self.source_record: dict | None = None

    @property
    def streamed(self) -> bool:
        """The set comes from image files (a folder or a CSV): the run records their paths, not pixels."""
        return self.files is not None

    @property
    def decoded(self) -> bool:
        """The pixels are at hand (an array, or the `data.cache` of a file set): nothing is decoded when read."""
        return self._images is not None

    @property
    def images(self) -> np.ndarray:
        """The `[N, H, W, C]` array of an in-memory set (a streamed set has none: see `pixels`)."""
        if self._images is None:
            raise DataError("this image set streams its images from files and has no array of them; read them "
                            "with reprlearn.data.pipelines.batches_in_order, or ImageSet.pixels(index) for a few. "
                            f"Received: {len(self)} files under {self.files.root}")
        return self._images

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(H, W, C)` of every image the set yields."""
        if self._images is not None:
            return tuple(int(v) for v in self._images.shape[1:])
        return (*self.spec.image_size, self.spec.channels)

    def pixels(self, index) -> np.ndarray:
        """The images at `index` as float32 `[n, H, W, C]` in [0, 255] (decoded here for a streamed set)."""
        index = np.asarray(index, np.int64).reshape(-1)
        if self._images is not None:
            return np.asarray(take_rows(self._images, index), np.float32)
        from reprlearn.data.decode import decode_files

        return decode_files([self.files.path(i) for i in index], self.spec)

    def thumbnails(self, index, side: int = 48) -> np.ndarray:
        """`pixels(index)` as uint8 for display, shrunk for a streamed set to at most `side` pixels a side, decoded
        256 at a time (sprites and figures of thousands of photos without holding them at full size)."""
        index = np.asarray(index, np.int64).reshape(-1)
        if self.decoded:
            return np.clip(np.round(self.pixels(index)), 0, 255).astype(np.uint8)
        import tensorflow as tf

        size = shrunk_size(self.image_shape, side)
        parts = [tf.image.resize(self.pixels(index[start:start + 256]), size, method="area").numpy()
                 for start in range(0, len(index), 256)]
        small = np.concatenate(parts) if parts else np.zeros((0, *size, self.image_shape[2]), np.float32)
        return np.clip(np.round(small), 0, 255).astype(np.uint8)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> "ImageSet":
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        names = None if self.names is None else [self.names[i] for i in index.reshape(-1)]
        if self._images is not None and self.files is None:
            return ImageSet(self._images[index], self.labels[index], self.class_names, names)
        images = None if self._images is None else take_rows(self._images, index)
        part = ImageSet(images, self.labels[index], self.class_names, names, self.files.subset(index), self.spec)
        part.source_record = self.source_record
        return part

    @property
    def classes(self) -> list[int]:
        return sorted(int(c) for c in np.unique(self.labels))


def check_images(images, name: str = "images", strict: bool = False) -> np.ndarray:
    """Returns `images` as `[N, H, W, C]`, or raises DataError naming what is wrong.

    A `[N, H, W]` array gains a channel axis. Floats must be finite. Towers take pixels 0-255: float
    images whose maximum is at most 1 look scaled to [0, 1] and get a warning (a DataError with
    `strict=True`) saying how to pass them.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DataError(f"{name} must have shape [N, H, W] or [N, H, W, C]. Received: {name}.shape={images.shape}")
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise DataError(f"{name} must be numeric. Received: {name}.dtype={images.dtype}")
    if np.issubdtype(images.dtype, np.floating):
        bad = ~np.isfinite(images)
        if bad.any():
            first = int(np.argwhere(bad.reshape(len(images), -1).any(axis=1))[0, 0])
            raise DataError(f"{name} contains NaN or inf ({int(bad.sum())} values; first in example {first}). "
                             f"Received: {name}[{first}] with non-finite values")
        if images.size and 0.0 < float(images.max()) <= 1.0:
            message = (f"{name} look scaled to [0, 1] (maximum {float(images.max()):.3g}), but towers take pixels "
                       "0-255: multiply them by 255, or pass make_imageset(..., scale='0-1'). "
                       f"Received: {name}.dtype={images.dtype}")
            if strict:
                raise DataError(message)
            warnings.warn(message, ReprlearnWarning, stacklevel=3)
    return images


def check_labels(labels, n: int, name: str = "labels") -> np.ndarray:
    """Returns integer labels as int64 `[N]`; `[N, 1]` is accepted, anything else raises."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{name} must have shape [N] or [N, 1]. Received: {name}.shape={labels.shape}")
    if labels.shape[0] != n:
        raise DataError(f"{name} must have one label per image ({n}). Received: {name}.shape={labels.shape}")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise DataError(f"{name} must be integer class ids. Received: {name}.dtype={labels.dtype} "
                             "with non-integer values")
    elif not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{name} must be integer class ids. Received: {name}.dtype={labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"{name} must be >= 0. Received: min({name})={labels.min()}")
    return labels


def flat_pixels(images) -> np.ndarray:
    """Images as `[N, H·W·C]` float32 vectors in [0, 1]: the raw-pixel representation baselines rank.

    A streamed `ImageSet` gives its images shrunk to at most `BASELINE_SIDE` pixels a side (area-averaged),
    decoded in batches, so the baseline of 10⁵ photos costs megabytes, not the gigabytes of their full pixels.
    """
    if isinstance(images, ImageSet):
        if images.decoded:
            images = images.images
        else:
            import tensorflow as tf

            from reprlearn.data.pipelines import batches_in_order

            side = shrunk_size(images.image_shape, BASELINE_SIDE)
            parts = [tf.image.resize(batch, side, method="area").numpy().reshape(len(batch), -1) / 255.0
                     for batch, _ in batches_in_order(images)]
            return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 1), np.float32)
    images = np.asarray(images)
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


# The one class name of a source without labels (a folder without class folders, a CSV without a label column,
# arrays given labels=None): only label-free training (model.kind: self_supervised) takes it.
UNLABELLED = "(unlabelled)"


def is_unlabelled(imageset: "ImageSet") -> bool:
    """The set came without labels (its one class is `UNLABELLED`)."""
    return list(imageset.class_names) == [UNLABELLED]


def make_imageset(images, labels, class_names: list[str] | None = None, name: str = "dataset",
                  scale: str = "0-255", strict: bool = False) -> ImageSet:
    """Checks images and labels together and builds an ImageSet.

    Example:
        sets = {"all": make_imageset(images, labels, ["cat", "dog"])}         # pixels 0-255
        sets = {"all": make_imageset(images01, labels, scale="0-1")}          # floats in [0, 1], rescaled

    Args:
        images: `[N, H, W]` or `[N, H, W, C]`, integers or floats.
        labels: `[N]` or `[N, 1]` class ids 0..C-1, or None: images without labels (for label-free training).
        class_names: one name per class id (default: the ids as strings).
        name: what the messages call the dataset.
        scale: `"0-255"` (pixels as the towers take them) or `"0-1"` (floats, multiplied by 255 here).
        strict: refuse float images that look scaled to [0, 1] under `scale="0-255"` instead of warning.

    Raises:
        DataError: bad shapes, dtypes, NaN, a named class with no example, or an unknown scale.
    """
    if scale not in ("0-255", "0-1"):
        raise DataError(f"scale must be '0-255' or '0-1'. Received: scale={scale!r}")
    if scale == "0-1":
        images = check_images(np.asarray(images, np.float32) * 255.0, f"{name}.images")
    images = check_images(images, f"{name}.images", strict)
    if labels is None:
        labels, class_names = np.zeros(images.shape[0], np.int64), [UNLABELLED]
    labels = check_labels(labels, images.shape[0], f"{name}.labels")
    if class_names is None:
        class_names = [str(c) for c in range(int(labels.max()) + 1 if labels.size else 0)]
    counts = np.bincount(labels, minlength=len(class_names))
    if len(counts) > len(class_names):
        raise DataError(f"{name}.labels has label {len(counts) - 1} but only {len(class_names)} class names")
    empty = [class_names[c] for c in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"{name} has an empty class: no example of {empty}. Received: class_names={class_names}")
    return ImageSet(images, labels, list(class_names))
