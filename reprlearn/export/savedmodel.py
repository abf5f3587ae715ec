"""SavedModel for TF Serving: named signatures, preprocessing baked in, no reprlearn needed to load it.

Signatures (every input and output is named):
- `serving_default`: `images` (float32, raw 0-255 pixels) → `embedding`;
- `embed_uint8`: the same for uint8 images;
- pair runs add `distance` (`images_a`, `images_b` → `distance`) and `verify`
  (→ `distance`, `match`: distance <= the threshold calibrated in the run report).
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from reprlearn.distances import paired_distance


def _image_spec(tower: keras.Model, name: str, dtype=tf.float32) -> tf.TensorSpec:
    return tf.TensorSpec([None, *tower.input_shape[1:]], dtype, name=name)


def write_saved_model(tower: keras.Model, path: Path, metric: str = "L2", threshold: float | None = None) -> list[str]:
    """Writes `tower` as a SavedModel at `path`; returns the signature names.

    Args:
        tower: the embedding model (raw pixels in, embedding out).
        path: the version folder to write (must not exist).
        metric: the distance of the `distance` and `verify` signatures.
        threshold: the calibrated match threshold; None leaves out `distance` and `verify`.
    """
    archive = keras.export.ExportArchive()
    archive.track(tower)

    def embed(images):
        return {"embedding": tower(tf.cast(images, tf.float32), training=False)}

    archive.add_endpoint("serving_default", embed, input_signature=[_image_spec(tower, "images")])
    archive.add_endpoint("embed_uint8", embed, input_signature=[_image_spec(tower, "images", tf.uint8)])
    if threshold is not None:
        pair_spec = [_image_spec(tower, "images_a"), _image_spec(tower, "images_b")]

        def distance(images_a, images_b):
            return {"distance": paired_distance(embed(images_a)["embedding"], embed(images_b)["embedding"], metric)}

        def verify(images_a, images_b):
            d = distance(images_a, images_b)["distance"]
            return {"distance": d, "match": d <= tf.constant(threshold, tf.float32)}

        archive.add_endpoint("distance", distance, input_signature=pair_spec)
        archive.add_endpoint("verify", verify, input_signature=pair_spec)
    archive.write_out(str(path), verbose=False)
    return ["serving_default", "embed_uint8"] + (["distance", "verify"] if threshold is not None else [])
