"""A generated folder of photos, the way users have them: one sub-folder per class, every size, JPEG / PNG / GIF /
BMP, RGB with some grayscale, RGBA and palette files. Each class is a coloured shape on a textured background,
so a tower can learn the classes and raw pixels do poorly (shapes move and scale).

Example:
    files = make_photo_folder(tmp_path / "photos", classes=6, per_class=20, seed=0)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FORMATS = (("jpg", "JPEG"), ("png", "PNG"), ("jpg", "JPEG"), ("gif", "GIF"), ("bmp", "BMP"), ("png", "PNG"))


def photo(label: int, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One RGB picture of class `label`: a textured background and the class's shape and colour, placed and
    scaled at random."""
    height, width = size
    background = rng.integers(60, 200, 3)
    noise = rng.normal(0, 25, (height, width, 1))
    pixels = np.clip(background + noise + rng.normal(0, 10, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    side = int(min(height, width) * rng.uniform(0.4, 0.8))
    x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    colour = tuple(int(c) for c in np.array([(label * 67) % 256, (label * 151 + 80) % 256, (label * 29 + 160) % 256]))
    box = [x, y, x + side, y + side]
    shape = label % 3
    if shape == 0:
        draw.ellipse(box, fill=colour)
    elif shape == 1:
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x + side // 2, y), (x, y + side), (x + side, y + side)], fill=colour)
    return image


def make_photo_folder(root: Path, classes: int = 6, per_class: int = 20, seed: int = 0, sizes=(40, 160),
                      modes: bool = True, start: int = 0) -> list[Path]:
    """Writes `classes × per_class` photos under `root/class_XX/` (some in a nested sub-folder); returns the paths.

    With `modes`, every 7th file is grayscale, every 11th RGBA (PNG) and every 13th a palette PNG.
    """
    rng = np.random.default_rng(seed)
    paths = []
    for label in range(classes):
        folder = Path(root) / f"class_{label:02d}"
        for i in range(start, start + per_class):
            size = tuple(int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
            image = photo(label, rng, size)
            suffix, kind = FORMATS[i % len(FORMATS)]
            if modes and i % 7 == 3:
                image = image.convert("L")
            elif modes and i % 11 == 5:
                image, suffix, kind = image.convert("RGBA"), "png", "PNG"
            elif modes and i % 13 == 6:
                image, suffix, kind = image.convert("P"), "png", "PNG"
            target = (folder / "more" if i % 5 == 4 else folder) / f"img {i:05d}.{suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target, kind)
            paths.append(target)
    return paths
