"""Streaming photos from disk: index cost, input-pipeline speed, training speed and whole-run memory.

Run: .venv/bin/python benchmarks/photos.py [--root /tmp/reprlearn-photos] [--sizes 10000 100000] [--repeats 3]

It writes its own synthetic photo folders (tests/photo_folder.py: coloured shapes on textured backgrounds,
40-200 px, JPEG / PNG / GIF / BMP, RGB with grayscale, RGBA and palette files; 100 classes) once, then prints:
1. index build time and index memory (the ImageSet, measured as the traced Python allocations) for each size;
2. the input pipeline alone (decode + resize, then also with light augmentation; exact P×K 8 × 16) in images/s
   at 96 × 96 and 224 × 224, beside `keras.utils.image_dataset_from_directory` with shuffle on the same files
   (which decodes and resizes only; target ≥ 0.8×);
3. training images/s of a MobileNetV3Small tower (random init, 96 × 96, 8 × 16 batches) streaming from the folder
   vs the same decoded images from memory (target ≥ 0.9×);
4. peak resident memory of a whole training run (train, evaluate, report) in a fresh process for each size
   (target: growth < 200 MB from 10⁴ to 10⁵ files);
5. two-view recipes: two-view batches of 128 images at 96 × 96 (the self-supervised input) with the `simclr` and
   `byol` recipes, in decoded images/s, beside the same pipeline with every op off (decode + resize alone;
   target ≥ 0.7×);
6. formats: the input pipeline (decode + resize to 96 × 96, P×K 8 × 16) on the same photos stored 100% as JPEG,
   100% as WebP (TensorFlow's decoder) and 100% as TIFF (Pillow inside the map), in images/s and as ratios to JPEG.
Ratios are medians of alternating A/B repeats (this machine's speed is bimodal).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from tests.photo_folder import make_photo_folder  # noqa: E402

CLASSES, P, K = 100, 8, 16


def ensure_folder(root: Path, size: int) -> Path:
    """A folder of `size` photos over CLASSES classes, written once (a marker file records it is complete)."""
    folder = root / f"photos-{size}"
    if not (folder / ".complete").is_file():
        make_photo_folder(folder, classes=CLASSES, per_class=size // CLASSES, seed=size, sizes=(40, 200))
        (folder / ".complete").write_text("done")
    return folder


def index_cost(folder: Path) -> tuple[float, float]:
    """(seconds, MB of Python allocations held by the index) for indexing `folder`."""
    from reprlearn.data.loaders import Decoding, load_dataset

    tracemalloc.start()
    started = time.perf_counter()
    imageset = load_dataset(f"folder:{folder}", decoding=Decoding((96, 96)))["all"]
    seconds = time.perf_counter() - started
    held = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    assert len(imageset) > 0
    return seconds, held


def rate(dataset, images: int) -> float:
    iterator = iter(dataset)
    next(iterator)
    started, seen = time.perf_counter(), 0
    while seen < images:
        batch = next(iterator)
        seen += int(batch[0].shape[0])
    return seen / (time.perf_counter() - started)


def pipelines(folder: Path, side: int, repeats: int, images: int, augment: str) -> tuple[list[float], list[float]]:
    import keras

    from reprlearn.data.loaders import Decoding, load_dataset
    from reprlearn.data.pipelines import pk_batches

    imageset = load_dataset(f"folder:{folder}", decoding=Decoding((side, side), 3, "stretch"))["all"]
    ours = pk_batches(imageset, imageset.labels, P, K, seed=0, augment=augment)
    theirs = keras.utils.image_dataset_from_directory(str(folder), image_size=(side, side), batch_size=P * K,
                                                       shuffle=True, seed=0, verbose=False).repeat()
    a, b = [], []
    for _ in range(repeats):
        a.append(rate(ours, images))
        b.append(rate(theirs, images))
    return a, b


# Every op of a recipe off: the two-view pipeline decodes, resizes and copies, nothing more.
NO_OPS = {"crop_scale": [1.0, 1.0], "flip_probability": 0.0, "jitter_probability": 0.0, "grey_probability": 0.0,
          "blur_probability": 0.0, "solarize_probability": 0.0}


def recipes(folder: Path, repeats: int, images: int) -> dict[str, list[float]]:
    """Decoded images/s of two-view batches (128 images, 96 × 96) with each recipe and with no op, alternating."""
    from reprlearn.data.loaders import Decoding, load_dataset
    from reprlearn.data.pipelines import two_view_batches

    imageset = load_dataset(f"folder:{folder}", decoding=Decoding((96, 96), 3, "stretch"))["all"]
    datasets = {"decode + resize alone": two_view_batches(imageset, P * K, seed=0, recipe="simclr", flips=True,
                                                          options=NO_OPS),
                "simclr": two_view_batches(imageset, P * K, seed=0, recipe="simclr", flips=True),
                "byol": two_view_batches(imageset, P * K, seed=0, recipe="byol", flips=True)}
    rates = {name: [] for name in datasets}
    for _ in range(repeats):
        for name, dataset in datasets.items():
            rates[name].append(rate(dataset, images))
    return rates


def format_folder(root: Path, source: Path, fmt: str, limit: int) -> Path:
    """The first `limit` photos of `source` (a P×K-friendly share of every class) re-encoded as `fmt`, once."""
    from PIL import Image

    folder = root / f"{source.name}-{fmt.lower()}-{limit}"
    if (folder / ".complete").is_file():
        return folder
    per_class = max(K, limit // CLASSES)
    suffix = {"JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tiff"}[fmt]
    for class_folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (folder / class_folder.name).mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(sorted(f for f in class_folder.rglob("*") if f.is_file())[:per_class]):
            with Image.open(path) as image:
                image.convert("RGB").save(folder / class_folder.name / f"{i:05d}{suffix}", fmt,
                                          **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    (folder / ".complete").write_text("done")
    return folder


def formats(root: Path, source: Path, repeats: int, images: int, limit: int) -> dict[str, list[float]]:
    """images/s of the P×K pipeline (decode + resize to 96 × 96) on the same photos as JPEG, WebP and TIFF,
    alternating the formats within each repeat."""
    from reprlearn.data.loaders import Decoding, load_dataset
    from reprlearn.data.pipelines import pk_batches

    datasets = {}
    for fmt in ("JPEG", "WEBP", "TIFF"):
        imageset = load_dataset(f"folder:{format_folder(root, source, fmt, limit)}",
                                decoding=Decoding((96, 96), 3, "stretch"))["all"]
        datasets[fmt] = pk_batches(imageset, imageset.labels, P, K, seed=0)
    rates = {fmt: [] for fmt in datasets}
    for _ in range(repeats):
        for fmt, dataset in datasets.items():
            rates[fmt].append(rate(dataset, images))
    return rates


def training(folder: Path, repeats: int, steps: int) -> tuple[list[float], list[float]]:
    import keras

    from reprlearn.data.loaders import Decoding, load_dataset
    from reprlearn.data.pipelines import batches_in_order, pk_batches
    from reprlearn.losses import InBatchContrastiveLoss
    from reprlearn.models.towers import backbone_tower

    imageset = load_dataset(f"folder:{folder}", decoding=Decoding((96, 96), 3, "stretch"))["all"]
    memory = np.concatenate([images for images, _ in batches_in_order(imageset)]).astype(np.uint8)
    streamed = pk_batches(imageset, imageset.labels, P, K, seed=0)
    in_memory = pk_batches(memory, imageset.labels, P, K, seed=0)
    keras.utils.set_random_seed(0)
    tower = backbone_tower((96, 96, 3), "MobileNetV3Small", None, None, embedding_dim=64)
    tower.compile(keras.optimizers.Adam(1e-3), InBatchContrastiveLoss(margin=0.5))
    tower.fit(in_memory, steps_per_epoch=5, epochs=1, verbose=0)  # trace and warm up
    a, b = [], []
    for _ in range(repeats):
        for out, dataset in ((a, streamed), (b, in_memory)):
            started = time.perf_counter()
            tower.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
            out.append(steps * P * K / (time.perf_counter() - started))
    return a, b


RUN = """
import json, resource, sys
from reprlearn.config import config_from_dict
from reprlearn.training import run_training
cfg = config_from_dict(json.loads(sys.argv[1]))
run_training(cfg, sys.argv[2], verbose=0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def whole_run_peak_mb(folder: Path, out: Path) -> float:
    """Peak RSS (MB) of a fresh process that trains, evaluates and reports a small backbone run on `folder`."""
    cfg = {"data": {"name": f"folder:{folder}", "image_size": [64, 64], "protocol": "unseen-classes",
                    "validation_classes": 4, "max_test": None},
           "model": {"tower": "backbone", "backbone": "MobileNetV3Small", "backbone_weights": "none",
                     "embedding_dim": 32},
           "train": {"epochs": 1, "steps_per_epoch": 20, "classes_per_batch": P, "examples_per_class": K},
           "eval": {"verification_pairs": 2000, "projection": "pca", "projection_points": 500,
                    "projector_points": 500}}
    done = subprocess.run([sys.executable, "-c", RUN, json.dumps(cfg), str(out)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return int(done.stdout.split()[-1]) / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "reprlearn-photos"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=4000, help="images per pipeline measurement")
    parser.add_argument("--steps", type=int, default=30, help="training steps per measurement")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["index", "pipeline", "training", "memory", "formats", "recipes"])
    parser.add_argument("--format-photos", type=int, default=3200, help="photos per folder in the formats table")
    args = parser.parse_args()
    root = Path(args.root)
    folders = {}
    for size in args.sizes:
        started = time.perf_counter()
        folders[size] = ensure_folder(root, size)
        print(f"folder of {size:,} photos: {folders[size]} ({time.perf_counter() - started:.0f} s to make or find)",
              flush=True)
    small = folders[min(args.sizes)]
    print(f"\nmachine: {os.cpu_count()} cores; medians of {args.repeats} alternating repeats\n")
    if "index" not in args.skip:
        print("| files | index build | index memory |\n|---|---|---|")
        for size, folder in folders.items():
            seconds, held = index_cost(folder)
            print(f"| {size:,} | {seconds:.1f} s | {held:.1f} MB |", flush=True)
    if "pipeline" not in args.skip:
        print("\n| input pipeline, P×K 8×16 (Keras: decode + resize, shuffled, no P×K, no augmentation) | reprlearn "
              "images/s | Keras image_dataset_from_directory images/s | ratio |\n|---|---|---|---|")
        for side in (96, 224):
            for augment in ("none", "light"):
                ours, keras_rate = pipelines(small, side, args.repeats, args.images, augment)
                ratios = [a / b for a, b in zip(ours, keras_rate)]
                print(f"| {side} × {side}, decode + resize{' + light augmentation' if augment == 'light' else ''} | "
                      f"{statistics.median(ours):,.0f} | {statistics.median(keras_rate):,.0f} | "
                      f"{statistics.median(ratios):.2f}× |", flush=True)
    if "training" not in args.skip:
        streamed, memory = training(small, args.repeats, args.steps)
        ratios = [a / b for a, b in zip(streamed, memory)]
        print("\n| MobileNetV3Small training, 96 × 96, 8 × 16 | images/s |\n|---|---|\n"
              f"| streamed from the folder | {statistics.median(streamed):.0f} |\n"
              f"| the same decoded images from memory | {statistics.median(memory):.0f} |\n"
              f"| ratio | {statistics.median(ratios):.2f}× |", flush=True)
    if "recipes" not in args.skip:
        rates = recipes(small, args.repeats, args.images)
        print("\n| two views of 128 images a batch, 96 × 96 | decoded images/s | ratio to decode + resize alone |\n"
              "|---|---|---|")
        for name, values in rates.items():
            ratio = statistics.median(a / b for a, b in zip(values, rates["decode + resize alone"]))
            print(f"| {name} | {statistics.median(values):,.0f} | {ratio:.2f}× |", flush=True)
    if "formats" not in args.skip:
        rates = formats(root, small, args.repeats, args.images, args.format_photos)
        print(f"\n| the same {args.format_photos:,} photos, 96 × 96, P×K 8×16 | images/s | ratio to JPEG |\n"
              "|---|---|---|")
        for fmt, values in rates.items():
            ratio = statistics.median(a / b for a, b in zip(values, rates["JPEG"]))
            print(f"| 100% {fmt} | {statistics.median(values):,.0f} | {ratio:.2f}× |", flush=True)
    if "memory" not in args.skip:
        print("\n| whole run (train, evaluate, report), fresh process | peak RSS |\n|---|---|")
        peaks = {}
        with tempfile.TemporaryDirectory() as scratch:
            for size, folder in folders.items():
                peaks[size] = whole_run_peak_mb(folder, Path(scratch) / f"run-{size}")
                print(f"| {size:,} files | {peaks[size]:,.0f} MB |", flush=True)
        if len(peaks) > 1:
            low, high = min(peaks), max(peaks)
            print(f"| growth {low:,} → {high:,} | {peaks[high] - peaks[low]:+,.0f} MB |")


if __name__ == "__main__":
    main()
