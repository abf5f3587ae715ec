"""Dataset loaders that work offline: digits, Fashion-MNIST IDX files, TFDS, image folders.

Example:
    splits = load_dataset("fashion_mnist")   # {"train": ImageSet, "test": ImageSet}
    splits = load_dataset("folder:/data/birds", decoding=Decoding((224, 224)))  # {"all": ImageSet}, streamed
"""

from __future__ import annotations

import gzip
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reprlearn.data.decode import DecodeSpec
from reprlearn.data.files import (SPLIT_NAMES, FileIndex, finish_index, describe_problems, image_format, index_csv,
                                  index_folder, probe_images)
from reprlearn.data.imageset import ImageSet, make_imageset
from reprlearn.errors import DataError, DatasetNotFoundError, ReprlearnWarning

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "~/.keras/datasets/fashion-mnist")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Decoding:
    """What a config says about turning files into pixels (`data.image_size`, `data.channels`, `data.resize`,
    `data.on_bad_image`); None leaves the size or channels to what the files show."""

    image_size: tuple[int, int] | None = None
    channels: int | None = None
    resize: str = "pad"
    on_bad_image: str = "skip"

    @classmethod
    def of(cls, data_cfg) -> "Decoding":
        return cls(tuple(data_cfg.image_size) if data_cfg.image_size else None, data_cfg.channels,
                   data_cfg.resize, data_cfg.on_bad_image)


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, OSError) as err:
        raise DataError(f"cannot read IDX file {str(path)!r}: {err or type(err).__name__} "
                         "(truncated or corrupt; re-install or re-copy it)") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"not an IDX file (bad magic number). Received: path={str(path)!r}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DataError(f"IDX file is truncated: header says {shape}, found {array.size} values. "
                         f"Received: path={str(path)!r}")
    return array.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(data_dir: str | None = None, decoding: Decoding = Decoding()) -> dict[str, ImageSet]:
    """Fashion-MNIST's official train (60,000) and test (10,000) splits, from local files only.

    With `data_dir`, only that folder is used: its four IDX files, or a TFDS copy prepared
    there (never downloading). Without it: /usr/share/datasets/fashion-mnist (Debian's
    `dataset-fashion-mnist`), then ~/.keras/datasets/fashion-mnist.

    Raises:
        DatasetNotFoundError: the data is not there; the message names what is missing and how to install it.
    """
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    folders = [Path(data_dir).expanduser()] if data_dir else [Path(d).expanduser() for d in FASHION_MNIST_DIRS]
    for folder in folders:
        files = {stem: _find_idx(folder, stem) for stem in stems}
        if all(files.values()):
            return {
                "train": make_imageset(read_idx(files["train-images-idx3-ubyte"]),
                                       read_idx(files["train-labels-idx1-ubyte"]),
                                       FASHION_MNIST_CLASSES, "fashion_mnist.train"),
                "test": make_imageset(read_idx(files["t10k-images-idx3-ubyte"]),
                                      read_idx(files["t10k-labels-idx1-ubyte"]),
                                      FASHION_MNIST_CLASSES, "fashion_mnist.test"),
            }
    if data_dir:  # that folder only: its IDX files were not all there, so a TFDS copy, or an error naming them
        try:
            return load_tfds("fashion_mnist", data_dir, decoding)
        except DatasetNotFoundError:
            pass
        missing = [stem for stem, path in files.items() if path is None]
        where = "does not exist" if not folders[0].is_dir() else f"lacks {', '.join(missing)} (.gz or plain)"
        raise DatasetNotFoundError(f"data.data_dir does not hold Fashion-MNIST: {folders[0]} {where}, and holds no "
                                   f"prepared TFDS copy. Received: data_dir={data_dir!r}")
    raise DatasetNotFoundError(
        "Fashion-MNIST was not found. Looked in: " + ", ".join(str(f) for f in folders)
        + ". Install it with 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or put the four "
        "IDX files in ~/.keras/datasets/fashion-mnist/. Received: data_dir=" + repr(data_dir))


def load_digits() -> dict[str, ImageSet]:
    """scikit-learn's bundled 8x8 digits (1,797 images), scaled to uint8 0-255; one split."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return {"all": make_imageset(images, bunch.target, [str(c) for c in range(10)], "digits")}


def load_tfds(name: str, data_dir: str | None, decoding: Decoding = Decoding()) -> dict[str, ImageSet]:
    """A TFDS dataset already prepared under `data_dir`, streamed; `download=False` always.

    Its records are read once, image bytes undecoded, and each encoded image is written as a file beside them
    (`<dataset folder>/reprlearn-files/<split>/`, kept for later runs): from then on the dataset is an index of
    files like a folder source (random access for P×K batches, which TFRecord files do not give), never an
    array of a whole split. The disk cost is the encoded images once more.

    Raises:
        DatasetNotFoundError: the dataset is not prepared there (TFDS would otherwise try the network).
    """
    import tensorflow_datasets as tfds

    if not data_dir:
        raise DatasetNotFoundError(f"tfds:{name} needs data.data_dir, the folder where it was prepared "
                                   f"(reprlearn never downloads). Received: data_dir={data_dir!r}")
    try:
        builder = tfds.builder(name, data_dir=str(Path(data_dir).expanduser()))
    except Exception as err:  # tfds raises its own DatasetNotFoundError subclasses
        raise DatasetNotFoundError(f"unknown TFDS dataset. Received: name='tfds:{name}' ({err})") from err
    if not builder.is_prepared():
        raise DatasetNotFoundError(
            f"tfds:{name} is not prepared in {data_dir}. Prepare it where the network is reachable "
            f"(tfds.builder('{name}', data_dir=...).download_and_prepare()) and copy the folder here. "
            f"Received: data_dir={data_dir!r}")
    features = builder.info.features
    image_key = next((k for k in ("image", "img") if k in features), None)
    if image_key is None or "label" not in features:
        raise DataError(f"tfds:{name} needs an image feature (image or img) and a label feature. Received: "
                        f"features {sorted(features.keys())}")
    class_names = list(features["label"].names)
    splits = sorted(builder.info.splits)
    named = [split for split in splits if split in SPLIT_NAMES]
    if "train" in named and "test" in named:
        splits = named
    root = Path(builder.data_dir) / "reprlearn-files"
    entries = []
    for split in splits:
        for relative, label in _tfds_files(builder, split, image_key, root):
            stat = os.stat(root / relative)
            entries.append((relative, stat.st_size, stat.st_mtime_ns, class_names[label],
                            split if len(splits) > 1 else None))
    return _streamed(finish_index(str(root), entries, class_names, 0, f"tfds:{name}"), decoding, f"tfds:{name}")


def _tfds_files(builder, split: str, image_key: str, root: Path) -> list[tuple[str, int]]:
    """`(relative path, label)` of every example of a split, writing the encoded images as files the first time
    (a `.complete` list marks a split written whole; an interrupted one is written again)."""
    import tensorflow_datasets as tfds

    folder = root / split
    listing = folder / ".complete"
    if not listing.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        dataset = builder.as_dataset(split=split, decoders={image_key: tfds.decode.SkipDecoding()})
        for i, example in enumerate(dataset.as_numpy_iterator()):
            encoded = example[image_key]
            kind = image_format(encoded[:32]) or "png"
            suffix = "jpg" if kind == "jpeg" else kind
            relative = f"{split}/{i:08d}.{suffix}"
            (root / relative).write_bytes(encoded)
            rows.append(f"{relative}\t{int(example['label'])}")
        listing.write_text("\n".join(rows) + "\n")
    return [(line.split("\t")[0], int(line.split("\t")[1])) for line in listing.read_text().splitlines() if line]


def read_image_file(path: Path) -> np.ndarray:
    """One image file as uint8 `[H, W]` (grayscale) or `[H, W, 3]` (colour), as the streamed pipelines see it:
    every format Pillow reads, EXIF orientation applied, alpha composited on black (`decode.pillow_pixels`).

    Raises:
        DataError: the file is not a readable image (corrupt, truncated).
    """
    from PIL import Image, UnidentifiedImageError

    from reprlearn.data.decode import pillow_pixels

    try:
        with Image.open(path) as im:
            im.load()
            pixels = pillow_pixels(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read image {str(path)!r}: {err} (corrupt or truncated?)") from None
    if pixels.shape[-1] in (2, 4):  # the image over a black background, as the pipelines composite it
        pixels = np.round(pixels[..., :-1] * (pixels[..., -1:] / 255.0)).astype(np.uint8)
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


def _streamed(index: FileIndex, decoding: Decoding, source: str) -> dict[str, ImageSet]:
    """The splits of an indexed file source as streamed ImageSets, with the decode spec the files need."""
    if index.problems:
        if decoding.on_bad_image == "error":
            raise DataError(f"{source}: {describe_problems(index)} (data.on_bad_image: error refuses them; "
                            "'skip' trains without them). Received: on_bad_image='error'")
        warnings.warn(f"{source}: {describe_problems(index)}", ReprlearnWarning, stacklevel=3)
    if index.dropped_classes:
        warnings.warn(f"{source}: classes with no readable image were dropped: {index.dropped_classes}",
                      ReprlearnWarning, stacklevel=3)
    sizes, channels = probe_images(index.files, decoding.image_size is None, decoding.channels is None)
    if decoding.image_size is None:
        if len(sizes) > 1:
            (first, first_name), (second, second_name) = sizes
            raise DataError(f"{source} holds images of different sizes ({first_name!r} is {first[0]}x{first[1]}, "
                            f"{second_name!r} is {second[0]}x{second[1]}): set data.image_size: [height, width] "
                            "(and data.resize: pad | crop | stretch). Received: image_size=None")
        if not sizes:
            raise DataError(f"{source}: no image header could be read to find the image size; set "
                            "data.image_size. Received: image_size=None")
    spec = DecodeSpec(decoding.image_size or sizes[0][0], decoding.channels or channels, decoding.resize)
    record = {"items": len(index), "classes": len(index.class_names), "fingerprint":
              index.files.fingerprint(index.labels), "skipped": [list(p) for p in index.problems],
              "ignored_files": index.ignored, "dropped_classes": index.dropped_classes}
    whole = ImageSet(None, index.labels, index.class_names, list(index.files.relative), index.files, spec)
    whole.source_record = record
    if index.splits is None:
        return {"all": whole}
    out = {}
    for name in SPLIT_NAMES:
        part = whole.subset(np.flatnonzero(index.splits == name))
        if len(part):
            part.source_record = record
            out[name] = part
    if "train" not in out or "test" not in out:
        raise DataError(f"{source}: a split column needs train and test rows. Received: splits {sorted(out)}")
    return out


def load_folder(root: str | Path, decoding: Decoding = Decoding()) -> dict[str, ImageSet]:
    """A folder-per-class image tree, `root/<class name>/**/<image file>`, streamed; one split, `all`.

    Nothing is decoded here: the files are indexed (`reprlearn.data.files.index_folder`) and decoded in
    the pipelines at `decoding.image_size` (required when the files differ in size).

    Raises:
        DatasetNotFoundError: `root` is not a folder.
        DataError: no class folders, fewer than 2 usable classes, sizes differ without data.image_size, or
            unusable files with `on_bad_image: error` (naming them).
    """
    return _streamed(index_folder(root), decoding, f"folder:{root}")


def load_csv(csv_file: str | Path, decoding: Decoding = Decoding()) -> dict[str, ImageSet]:
    """A CSV file list (`path,label[,split]`), streamed: `{"all"}`, or the splits its `split` column names."""
    return _streamed(index_csv(csv_file), decoding, f"csv:{csv_file}")


def load_spec(spec: str, data_dir: str | None = None, decoding: Decoding = Decoding()) -> ImageSet:
    """One split named on a command line: `NAME[:SPLIT]` (`fashion_mnist:test`, `digits`), `tfds:NAME[:SPLIT]`,
    or `folder:PATH` (every image of the tree). Without a split, a dataset's `test` split, or its only one.

    Items without names (every source but folders) are named `SPLIT:INDEX`.

    Raises:
        ValueError: an unknown dataset or split (naming the splits there are).
        DatasetNotFoundError: the data is not on this machine.
    """
    if spec.startswith(("folder:", "csv:")) or os.path.isdir(os.path.expanduser(spec)):
        name, split = spec, None
    else:
        prefix = "tfds:" if spec.startswith("tfds:") else ""
        name, _, split = spec[len(prefix):].partition(":")
        name, split = prefix + name, split or None
    sets = load_dataset(name, data_dir, decoding)
    split = split or ("test" if "test" in sets else next(iter(sets)))
    if split not in sets:
        raise DataError(f"{name} has the splits {sorted(sets)}. Received: data={spec!r}")
    chosen = sets[split]
    if chosen.names is None:
        chosen.names = [f"{split}:{i}" for i in range(len(chosen))]
    return chosen


def load_dataset(name: str, data_dir: str | None = None, decoding: Decoding = Decoding()) -> dict[str, ImageSet]:
    """Loads a dataset by name: `digits`, `fashion_mnist`, `tfds:NAME` (in memory), or the streamed
    `folder:PATH` (or a folder path) and `csv:FILE`, decoded as `decoding` says.

    Returns:
        Splits by name: `{"train", "test"}` for sets with official splits, `{"all"}` otherwise.

    Raises:
        ValueError: the name is unknown.
        DatasetNotFoundError: the data is not on this machine.
    """
    if name == "digits":
        return load_digits()
    if name == "fashion_mnist":
        return load_fashion_mnist(data_dir, decoding)
    if name.startswith("tfds:"):
        return load_tfds(name[len("tfds:"):], data_dir, decoding)
    if name.startswith("folder:"):
        return load_folder(name[len("folder:"):], decoding)
    if name.startswith("csv:"):
        return load_csv(name[len("csv:"):], decoding)
    if os.path.isdir(os.path.expanduser(name)):
        return load_folder(name, decoding)
    raise DataError("unknown dataset; use 'digits', 'fashion_mnist', 'tfds:NAME', 'folder:PATH' or 'csv:FILE'. "
                     f"Received: name={name!r}")
