"""Joint embeddings: a tower's head output beside features of its inner layers, as one vector.

A head trained to separate the training classes throws away what it did not need for them;
inner layers keep more, and that is what unseen classes need (docs/protocols.md, "Open-set").
`"orientations"` among the layers adds gradient orientation histograms of the input image
(`OrientationHistogram`: no weights, nothing learnt, `orientation_cells` a side) as one more part.
Each part is power-normalised and average-pooled to a `grid × grid` map (feature maps only; the
signed square root keeps a few strong activations from dominating the pooled cells), flattened, L2-normalised
and scaled by its weight; the parts are concatenated and L2-normalised again, so cosine and L2
rankings of the joint vector agree. `project_joint_embedding` caps its size with a PCA fit on
training images only, folded into a Dense layer so the model exports like any tower.

Example:
    joint = joint_embedding_model(tower, ["pool1", "pool2"], grid=2, power=0.5, weights=[1.0, 1.0, 0.0])
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from reprlearn.config.rules import check_joint_weights
from reprlearn.errors import ConfigError
from reprlearn.layers import OrientationHistogram, SignedPower

HEAD = "embedding"  # the name the tower's own output goes by in `weights` and messages
ORIENTATIONS = "orientations"  # the part computed from the input image, not a tower layer


def check_tower_layers(tower: keras.Model, layers: Sequence[str], key: str = "model.joint_layers",
                       also: Sequence[str] = ()) -> None:
    """A name in `layers` that is neither a tower layer nor in `also` is an error naming `key` and listing the
    tower's layers."""
    names = [layer.name for layer in tower.layers]
    missing = [name for name in layers if name not in names and name not in also]
    if missing:
        extra = f" (and {list(also)})" if also else ""
        raise ConfigError(f"{key} names layers the tower lacks: {missing}; the tower's layers are {names}{extra}. "
                         f"Received: {key}={list(layers)}")


def _part(x, grid: int, power: float, weight: float, name: str):
    if len(x.shape) == 4:
        if power != 1.0:
            x = SignedPower(power, name=f"joint_power_{name}")(x)
        x = keras.layers.AdaptiveAveragePooling2D(grid, name=f"joint_pool_{name}")(x)
    if len(x.shape) > 2:
        x = keras.layers.Flatten(name=f"joint_flat_{name}")(x)
    x = keras.layers.UnitNormalization(name=f"joint_unit_{name}", dtype="float32")(x)
    return keras.layers.Rescaling(float(weight), name=f"joint_weight_{name}", dtype="float32")(x)


def joint_embedding_model(tower: keras.Model, layers: Sequence[str], grid: int = 3, power: float = 0.5,
                          weights: Sequence[float] | None = None, name: str = "tower", orientation_bins: int = 12,
                          orientation_cells: int = 4) -> keras.Model:
    """The tower with its output replaced by the joint vector of `layers` and the head (shares its weights).

    Args:
        tower: a Functional embedding tower.
        layers: names of tower layers to join, in order; `"orientations"` is the input's gradient orientation
            histograms.
        grid: feature maps are average-pooled to `grid × grid` cells first.
        power: feature maps are power-normalised (`sign(x)·|x|^power`) before pooling; 1 leaves them.
        weights: one per layer, then one for the head; 0 leaves a part out. Default: all 1.
        orientation_bins: orientation sectors of the `"orientations"` part.
        orientation_cells: its cells a side (its own grid; it is pooled before `power`, as histograms are).

    Returns:
        A Functional model from the tower's input to the unit-length joint embedding.
    """
    check_tower_layers(tower, layers, also=[ORIENTATIONS])
    weights = check_joint_weights(layers, weights)

    def source(layer_name: str):
        if layer_name == ORIENTATIONS and layer_name not in {layer.name for layer in tower.layers}:
            return OrientationHistogram(orientation_bins, orientation_cells, power, name=ORIENTATIONS)(tower.input)
        return tower.get_layer(layer_name).output

    sources = [(layer_name, source(layer_name)) for layer_name in layers] + [(HEAD, tower.output)]
    parts = [_part(x, grid, power, w, part_name) for (part_name, x), w in zip(sources, weights) if w > 0]
    joint = keras.layers.Concatenate(name="joint", dtype="float32")(parts) if len(parts) > 1 else parts[0]
    return keras.Model(tower.input, keras.layers.UnitNormalization(name="joint_l2_normalize", dtype="float32")(joint),
                       name=name)


def project_joint_embedding(model: keras.Model, features: np.ndarray, dim: int) -> keras.Model:
    """`model` followed by a PCA to `dim` components fit on `features` (its outputs on training images),
    then L2 normalisation; unchanged when its output already has at most `dim` components."""
    width = int(model.output_shape[-1])
    if width <= dim:
        return model
    from sklearn.decomposition import PCA

    pca = PCA(dim, random_state=0).fit(features)
    projection = keras.layers.Dense(dim, name="joint_pca", dtype="float32")
    projected = keras.layers.UnitNormalization(name="joint_pca_l2_normalize", dtype="float32")(
        projection(model.output))
    projection.set_weights([pca.components_.T.astype(np.float32),
                            (-pca.mean_ @ pca.components_.T).astype(np.float32)])
    return keras.Model(model.input, projected, name=model.name)
