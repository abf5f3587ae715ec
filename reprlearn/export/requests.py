"""Example TF Serving REST request bodies, one per signature, made from real images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from reprlearn.errors import DataError


def request_bodies(images: np.ndarray) -> dict[str, dict]:
    """`{"signature_name": ..., "instances": [...]}` bodies for every signature `write_saved_model` can write.

    Args:
        images: at least two `[H, W, C]` uint8 images; the first two make the examples.
    """
    if len(images) < 2:
        raise DataError(f"images must hold at least 2 images. Received: {len(images)} images")
    first, second = (np.asarray(image, np.uint8).tolist() for image in images[:2])
    embed = [{"images": first}, {"images": second}]
    pair = [{"images_a": first, "images_b": second}]
    return {
        "serving_default": {"signature_name": "serving_default", "instances": embed},
        "embed_uint8": {"signature_name": "embed_uint8", "instances": embed},
        "embed_head": {"signature_name": "embed_head", "instances": embed},
        "distance": {"signature_name": "distance", "instances": pair},
        "verify": {"signature_name": "verify", "instances": pair},
    }


def write_request_examples(directory: str | Path, images: np.ndarray) -> list[Path]:
    """Writes `request_bodies(images)` as `directory/<signature>.json`; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, body in request_bodies(images).items():
        path = directory / f"{name}.json"
        path.write_text(json.dumps(body, separators=(",", ":")) + "\n")
        paths.append(path)
    return paths
