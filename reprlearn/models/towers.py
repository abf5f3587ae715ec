"""Embedding towers: Functional models from images (pixels 0-255) to an embedding.

Every tower starts from raw pixel values, so the training preprocessing travels inside
the model (and inside every export), and ends in `Dense(embedding_dim)` with optional
L2 normalisation.

Example:
    tower = conv_tower((28, 28, 1), filters=[32, 64], dense=128, embedding_dim=64)
"""

from __future__ import annotations

from pathlib import Path

import keras

from reprlearn.errors import ConfigError
from reprlearn.layers.channels import RepeatChannels

# Backbones whose input conventions are known: (keras.applications class, pixel scale, offset).
BACKBONES = {
    "MobileNetV2": ("MobileNetV2", 1 / 127.5, -1.0),
    "ResNet50V2": ("ResNet50V2", 1 / 127.5, -1.0),
    "EfficientNetB0": ("EfficientNetB0", 1.0, 0.0),  # rescales internally
}


def _check_shape(input_shape) -> tuple:
    shape = tuple(input_shape)
    if len(shape) != 3 or any(s is None or int(s) < 1 for s in shape):
        raise ConfigError(f"input_shape must be (height, width, channels). Received: input_shape={input_shape}")
    return shape


def _check_embedding_dim(embedding_dim) -> int:
    if int(embedding_dim) < 1:
        raise ConfigError(f"embedding_dim must be >= 1. Received: embedding_dim={embedding_dim}")
    return int(embedding_dim)


HEAD_LAYER = "embedding_dense"  # the head's Dense layer: what `initialise_from(freeze=True)` leaves trainable


def _embedding_head(x, embedding_dim: int, l2_normalize: bool):
    # float32 whatever the dtype policy: under mixed precision the embedding (and the loss) stay float32.
    x = keras.layers.Dense(embedding_dim, name=HEAD_LAYER, dtype="float32")(x)
    if l2_normalize:
        x = keras.layers.UnitNormalization(name="l2_normalize", dtype="float32")(x)
    return x


def mlp_tower(input_shape, hidden=(256, 128), embedding_dim: int = 64, l2_normalize: bool = True,
              batch_norm: bool = False, dropout: float = 0.0, name: str = "mlp_tower") -> keras.Model:
    """An MLP tower: rescale to [0, 1], flatten, `hidden` ReLU layers, embedding head.

    Args:
        input_shape: `(H, W, C)`.
        hidden: widths of the hidden layers.
        embedding_dim: output size.
        l2_normalize: unit-length embeddings.
        batch_norm: BatchNorm after each hidden Dense.
        dropout: dropout rate after each hidden layer.

    Returns:
        A Functional `keras.Model`.
    """
    inputs = keras.Input(_check_shape(input_shape), name="images")
    x = keras.layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    x = keras.layers.Flatten(name="pixels")(x)
    for block, width in enumerate(hidden, start=1):
        x = keras.layers.Dense(int(width), use_bias=not batch_norm, name=f"hidden{block}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"hidden{block}_bn")(x)
        x = keras.layers.ReLU(name=f"hidden{block}_relu")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"hidden{block}_dropout")(x)
    return keras.Model(inputs, _embedding_head(x, _check_embedding_dim(embedding_dim), l2_normalize), name=name)


def conv_tower(input_shape, filters=(32, 64), dense: int = 128, embedding_dim: int = 64,
               l2_normalize: bool = True, batch_norm: bool = False, dropout: float = 0.0,
               name: str = "conv_tower") -> keras.Model:
    """A CNN tower: per width a 3×3 conv (+BatchNorm) + ReLU + 2×2 max-pool, then Dense, embedding head.

    With the defaults this is conv32-pool-conv64-pool-fc128-emb64. Layers are named by block
    (`conv1`, `pool1`, …, `features` (the flattened last pool), `fc`, `embedding_dense`), so configs can
    name them (`model.joint_layers`, `loss.jrd_layers`).

    Args:
        input_shape: `(H, W, C)`; H and W must survive `len(filters)` halvings.
        filters: conv widths, one block each (the depth is `len(filters)`).
        dense: width of the fully connected layer before the head (0 for none).
        embedding_dim, l2_normalize, batch_norm, dropout: as in `mlp_tower`.

    Returns:
        A Functional `keras.Model`.
    """
    shape = _check_shape(input_shape)
    if min(shape[:2]) < 2 ** len(filters):
        raise ConfigError(f"input_shape {shape} is too small for {len(filters)} 2x2 poolings. "
                         f"Received: filters={list(filters)}")
    inputs = keras.Input(shape, name="images")
    x = keras.layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    for block, width in enumerate(filters, start=1):
        x = keras.layers.Conv2D(int(width), 3, padding="same", use_bias=not batch_norm, name=f"conv{block}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"conv{block}_bn")(x)
        x = keras.layers.ReLU(name=f"conv{block}_relu")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{block}")(x)
    x = keras.layers.Flatten(name="features")(x)
    if dense:
        x = keras.layers.Dense(int(dense), activation="relu", name="fc")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="fc_dropout")(x)
    return keras.Model(inputs, _embedding_head(x, _check_embedding_dim(embedding_dim), l2_normalize), name=name)


def backbone_tower(input_shape, backbone: str = "MobileNetV2", weights: str | None = None,
                   image_size: int = 96, fine_tune_from: str | None = None, embedding_dim: int = 64,
                   l2_normalize: bool = True, name: str = "backbone_tower") -> keras.Model:
    """A `keras.applications` backbone (global-average pooled) under an embedding head.

    Grayscale inputs are repeated to three channels; images are resized to `image_size`
    and scaled the way the backbone was trained.

    Args:
        input_shape: `(H, W, C)`, C of 1 or 3.
        backbone: one of `BACKBONES`.
        weights: None (random init) or the path of a local weights file for the backbone
            without its top (`*.h5` / `*.weights.h5`). Nothing is downloaded.
        image_size: side the images are resized to (>= 32).
        fine_tune_from: None freezes the whole backbone (run in inference mode); a layer
            name makes that layer and all after it trainable.
        embedding_dim, l2_normalize: as in `mlp_tower`.

    Raises:
        ValueError: unknown backbone or layer name, missing weights file, bad channels.
    """
    shape = _check_shape(input_shape)
    if backbone not in BACKBONES:
        raise ConfigError(f"backbone must be one of {sorted(BACKBONES)}. Received: backbone={backbone!r}")
    if shape[2] not in (1, 3):
        raise ConfigError(f"backbone towers take 1 or 3 channels. Received: input_shape={shape}")
    if weights is not None and not Path(weights).is_file():
        raise ConfigError(f"backbone weights file not found (nothing is downloaded). Received: weights={weights!r}")
    if int(image_size) < 32:
        raise ConfigError(f"image_size must be >= 32. Received: image_size={image_size}")
    class_name, scale, offset = BACKBONES[backbone]
    base = getattr(keras.applications, class_name)(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3), pooling="avg")
    if weights is not None:
        base.load_weights(weights)
    layer_names = [layer.name for layer in base.layers]
    if fine_tune_from is None:
        base.trainable = False
    elif fine_tune_from not in layer_names:
        raise ConfigError(f"fine_tune_from is not a layer of {backbone}. Received: fine_tune_from={fine_tune_from!r}")
    else:
        start = layer_names.index(fine_tune_from)
        for layer in base.layers[:start]:
            layer.trainable = False

    inputs = keras.Input(shape, name="images")
    x = RepeatChannels(3)(inputs) if shape[2] == 1 else inputs
    x = keras.layers.Resizing(image_size, image_size)(x)
    x = keras.layers.Rescaling(scale, offset=offset)(x)
    x = base(x, training=False) if fine_tune_from is None else base(x)
    return keras.Model(inputs, _embedding_head(x, _check_embedding_dim(embedding_dim), l2_normalize), name=name)


def build_tower(model_cfg, input_shape, name: str = "tower") -> keras.Model:
    """Builds the tower a `ModelConfig` describes for images of `input_shape`."""
    common = dict(embedding_dim=model_cfg.embedding_dim, l2_normalize=model_cfg.l2_normalize, name=name)
    if model_cfg.tower == "mlp":
        return mlp_tower(input_shape, hidden=model_cfg.hidden, batch_norm=model_cfg.batch_norm,
                         dropout=model_cfg.dropout, **common)
    if model_cfg.tower == "conv":
        return conv_tower(input_shape, filters=model_cfg.filters, dense=model_cfg.dense,
                          batch_norm=model_cfg.batch_norm, dropout=model_cfg.dropout, **common)
    if model_cfg.tower == "backbone":
        return backbone_tower(input_shape, backbone=model_cfg.backbone, weights=model_cfg.backbone_weights,
                              image_size=model_cfg.backbone_image_size, fine_tune_from=model_cfg.fine_tune_from,
                              **common)
    raise ConfigError(f"unknown tower. Received: model.tower={model_cfg.tower!r}")


def initialise_from(tower: keras.Model, source: keras.Model, freeze: bool = False) -> list[str]:
    """Copies the weights of `source`'s layers into `tower`'s layers of the same name and weight shapes.

    Args:
        tower: a freshly built tower.
        source: a trained model (e.g. another run's `model.keras`; a joint embedding's layers are the tower's).
        freeze: keep the copied layers fixed during training, except the embedding head (`embedding_dense`),
            which trains: the frozen-features-plus-adaptation-layer transfer.

    Returns:
        The names of the copied layers.

    Raises:
        ValueError: no layer matches by name and shapes (the message lists both models' layers).
    """
    by_name = {layer.name: layer for layer in source.layers}
    copied = []
    for layer in tower.layers:
        match = by_name.get(layer.name)
        if not layer.weights or match is None:
            continue
        weights = match.get_weights()
        if [w.shape for w in weights] != [tuple(v.shape) for v in layer.weights]:
            continue
        layer.set_weights(weights)
        copied.append(layer.name)
        if freeze and layer.name != HEAD_LAYER:
            layer.trainable = False
    if not copied:
        raise ConfigError(f"model.init_from: no layer of the source model matches the tower by name and weight shapes. "
                         f"Source layers: {[layer.name for layer in source.layers if layer.weights]}; tower layers: "
                         f"{[layer.name for layer in tower.layers if layer.weights]}. Received: source={source.name!r}")
    return copied
