"""Running a trained model on images: embeddings, pair match probabilities, and saving a model proven to reload.

Example:
    embeddings = embed(model, images)          # pixels 0-255 → float32 [N, d]
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from reprlearn.data.imageset import ImageSet
from reprlearn.errors import DataError

# Images an ImageSet is embedded in at a time: a backbone's activations for a batch are the peak memory of an
# evaluation, so this stays small (at 64 × 64 a MobileNetV3 holds about 1.7 MB of activations per image).
SET_BATCH = 128


def embed(model: keras.Model, images, batch_size: int = 512) -> np.ndarray:
    """Embeds images (pixels 0-255) with a model, as float32 `[N, d]`.

    `images`: an array, or an `ImageSet` (a streamed one is decoded batch by batch; a file that fails to
    decode gets a row of NaN, see `embed_set`).

    Calls the model batch by batch rather than `predict`, which under a multi-worker strategy is a
    collective step that every worker would have to join; this runs on the chief alone.
    """
    if isinstance(images, ImageSet):
        return embed_set(model, images, min(batch_size, SET_BATCH))[0]
    if len(images) == 0:
        return np.zeros((0, *model.output_shape[1:]), np.float32)
    return np.concatenate([keras.ops.convert_to_numpy(model(images[start:start + batch_size].astype(np.float32),
                                                            training=False)).astype(np.float32)
                           for start in range(0, len(images), batch_size)])


def embed_set(model: keras.Model, imageset: ImageSet, batch_size: int = SET_BATCH) -> tuple[np.ndarray, list[int]]:
    """`(embeddings float32 [N, d], failed)`: every item of a set embedded in order, streamed sets batch by batch;
    `failed` lists the items whose file did not decode (their rows are NaN)."""
    from reprlearn.data.pipelines import batches_in_order

    if imageset.decoded:
        return embed(model, imageset.images, batch_size), []
    out = np.full((len(imageset), *model.output_shape[1:]), np.nan, np.float32)
    done = np.zeros(len(imageset), bool)
    for images, items in batches_in_order(imageset, batch_size):
        out[items] = keras.ops.convert_to_numpy(model(images, training=False)).astype(np.float32)
        done[items] = True
    return out, np.flatnonzero(~done).tolist()


def match_probabilities(model: keras.Model, images_a: np.ndarray, images_b: np.ndarray,
                        batch_size: int = 512) -> np.ndarray:
    """A verifier's `[N]` float32 probabilities that `images_a[i]` and `images_b[i]` show the same class (as `embed`,
    batch by batch on this process alone)."""
    if len(images_a) != len(images_b):
        raise DataError(f"images_a and images_b must pair up one to one. Received: {len(images_a)} and "
                         f"{len(images_b)} images")
    if len(images_a) == 0:
        return np.zeros((0,), np.float32)
    return np.concatenate([
        keras.ops.convert_to_numpy(model([images_a[start:start + batch_size].astype(np.float32),
                                          images_b[start:start + batch_size].astype(np.float32)], training=False))
        .astype(np.float32).reshape(-1) for start in range(0, len(images_a), batch_size)])


def pair_probabilities(model: keras.Model, imageset: ImageSet, first, second, both_orders: bool = False,
                       batch_size: int = SET_BATCH) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
    """`(p(a, b) [n], p(b, a) [n] or None, failed)`: a verifier's match probabilities of the pairs
    `(first[i], second[i])` of a set's items, one batch of pairs decoded at a time; `failed` lists the pairs
    whose files did not decode (their probabilities are NaN). `both_orders` scores each decoded pair both ways."""
    from reprlearn.data.pipelines import pairs_in_order

    forward = np.full(len(first), np.nan, np.float32)
    backward = np.full(len(first), np.nan, np.float32) if both_orders else None
    for images_a, images_b, pairs in pairs_in_order(imageset, first, second, batch_size):
        forward[pairs] = match_probabilities(model, images_a, images_b, batch_size)
        if both_orders:
            backward[pairs] = match_probabilities(model, images_b, images_a, batch_size)
    return forward, backward, np.flatnonzero(np.isnan(forward)).tolist()


def decoded_part(model: keras.Model, part: ImageSet) -> tuple[ImageSet, np.ndarray, list[str]]:
    """`(the items that decoded, their embeddings, the names of the files that did not)`: a streamed file that
    fails at evaluation is left out of the scores and named, not scored as garbage."""
    embeddings, failed = embed_set(model, part)
    if not failed:
        return part, embeddings, []
    keep = np.setdiff1d(np.arange(len(part)), failed)
    return part.subset(keep), embeddings[keep], [part.names[i] for i in failed]


def inference_copy(model: keras.Model) -> keras.Model:
    """The same layers and weights as a new, uncompiled Functional model: no loss, metrics or optimizer."""
    # A single input stays a single tensor (not a one-element list), so `model(images)` matches its structure.
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    outputs = model.outputs[0] if len(model.outputs) == 1 else model.outputs
    return keras.Model(inputs, outputs, name=model.name)


# The images a saved model is proven to reload on: the first of the test split.
RELOAD_PROBE = 256


def save_and_check_reload(model: keras.Model, path: Path, images: ImageSet, outputs=embed) -> keras.Model:
    """Saves `model` uncompiled, proves the file reloads to identical `outputs(model, probe)` on the first
    `RELOAD_PROBE` of `images`, and returns the reload.

    The reloaded model lives outside any `tf.distribute` strategy, so the chief of a multi-worker run
    can evaluate it alone. The cross-process check (a fresh interpreter that imports only keras and
    reprlearn) is in the tests.
    """
    probe = images.pixels(np.arange(min(RELOAD_PROBE, len(images))))
    inference_copy(model).save(path)
    reloaded = keras.saving.load_model(path)
    reload_diff = float(np.max(np.abs(outputs(reloaded, probe) - outputs(model, probe))))
    if reload_diff != 0.0:
        raise RuntimeError(f"{path.name} reloads to different outputs (max abs diff {reload_diff})")
    return reloaded
