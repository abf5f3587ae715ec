"""TensorBoard embedding projector files: vectors, label metadata and a sprite image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image


def make_sprite(images: np.ndarray) -> np.ndarray:
    """Tiles `[N, H, W, C]` uint8 images into one square uint8 image (row-major, blank padding)."""
    n, h, w = images.shape[:3]
    side = int(np.ceil(np.sqrt(n)))
    channels = images.shape[3]
    sprite = np.zeros((side * h, side * w, channels), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, side)
        sprite[r * h:(r + 1) * h, c * w:(c + 1) * w] = images[i]
    return sprite[..., 0] if channels == 1 else sprite


def write_projector(log_dir: Path, embeddings: np.ndarray, labels: np.ndarray, class_names: list[str],
                    images: np.ndarray) -> None:
    """Writes an embedding checkpoint, `metadata.tsv`, `sprite.png` and `projector_config.pbtxt`."""
    from tensorboard.plugins import projector

    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "metadata.tsv", "w") as f:
        f.write("label\tclass\n")
        for y in labels:
            f.write(f"{int(y)}\t{class_names[int(y)]}\n")
    Image.fromarray(make_sprite(np.clip(images, 0, 255).astype(np.uint8))).save(log_dir / "sprite.png")
    checkpoint = tf.train.Checkpoint(embedding=tf.Variable(embeddings, name="embedding"))
    checkpoint.save(str(log_dir / "embedding.ckpt"))
    config = projector.ProjectorConfig()
    entry = config.embeddings.add()
    entry.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    entry.metadata_path = "metadata.tsv"
    entry.sprite.image_path = "sprite.png"
    entry.sprite.single_image_dim.extend([int(images.shape[2]), int(images.shape[1])])
    projector.visualize_embeddings(str(log_dir), config)
