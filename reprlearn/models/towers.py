"""Embedding towers: Functional models from images (pixels 0-255) to an embedding.

Every tower starts from raw pixel values, so the training preprocessing travels inside
the model (and inside every export), and ends in `Dense(embedding_dim)` with optional
L2 normalisation.

Example:
    tower = conv_tower((28, 28, 1), filters=[32, 64], dense=128, embedding_dim=64)
"""

from __future__ import annotations

import os
import re
import socket
import types
from pathlib import Path

import keras
import numpy as np

from reprlearn.errors import ConfigError
from reprlearn.layers.channels import RepeatChannels
from reprlearn.layers.polar import CircularPadding2D, WidthPooling
from reprlearn.layers.pooling import GeneralizedMeanPooling, PixelAffine

POOLINGS = ("avg", "max", "gem")
RANDOM_BACKBONE_BN_MOMENTUM = 0.9

BACKBONE_NAME = "backbone"  # the keras.applications model nested in a backbone tower
# Seconds a weights download may wait for the network before the build fails with the file's name.
DOWNLOAD_TIMEOUT_SECONDS = 10


def backbone_names() -> list[str]:
    """Every `keras.applications` model class name (ResNet50, EfficientNetV2B0, MobileNetV3Small, ...)."""
    return sorted(name for name in dir(keras.applications) if name[:1].isupper())


def _application(name: str):
    """`(model function, its module's preprocess_input)` for a `keras.applications` class name."""
    application = getattr(keras.applications, name, None) if name in backbone_names() else None
    # The public module of the same name as the one defining the class (keras.applications.mobilenet_v3, ...).
    module = getattr(keras.applications, getattr(application, "__module__", "").rsplit(".", 1)[-1], None)
    if isinstance(module, types.ModuleType) and hasattr(module, "preprocess_input"):
        return application, module.preprocess_input
    raise ConfigError(f"model.backbone must be a keras.applications model: {', '.join(backbone_names())}. "
                      f"Received: model.backbone={name!r}")


def preprocessing_layer(name: str) -> PixelAffine:
    """The backbone's own `preprocess_input` as a `PixelAffine` layer (probed: every such function is affine per
    pixel, a scale, a mean/std normalisation, a channel reorder, or the identity when the model rescales inside)."""
    _, preprocess = _application(name)

    def apply(x):
        return np.asarray(keras.ops.convert_to_numpy(preprocess(np.array(x, np.float32))), np.float64).reshape(-1, 3)

    offset = apply(np.zeros((1, 1, 1, 3)))[0]
    matrix = np.stack([apply(np.eye(3)[c].reshape(1, 1, 1, 3) * 100.0)[0] - offset for c in range(3)], axis=1) / 100.0
    probe = np.random.default_rng(0).uniform(0, 255, (1, 4, 4, 3))
    if not np.allclose(apply(probe), probe.reshape(-1, 3) @ matrix.T + offset, atol=1e-3):
        raise ConfigError(f"{name}'s preprocess_input is not a per-pixel affine map, which reprlearn cannot carry "
                          f"inside the tower. Received: model.backbone={name!r}")
    return PixelAffine(matrix, offset, name="preprocess")


def _keras_cache_folder() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _build_application(name: str, weights: str | None, image_size: tuple[int, int]) -> keras.Model:
    """The application without its top at `image_size`, from ImageNet (downloaded once by Keras, with a timeout),
    a weights file, or random weights."""
    application, _ = _application(name)
    shape = (*image_size, 3)
    if weights == "imagenet":
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)
        try:
            return application(include_top=False, weights="imagenet", input_shape=shape, pooling=None,
                               name=BACKBONE_NAME)
        except Exception as error:  # Keras raises a bare Exception for a failed download
            url = re.search(r"https?://\S+?(?=[:\s]|$)", str(error))
            if "fetch failure" not in str(error) and url is None:
                raise
            file_name = url.group(0).rsplit("/", 1)[-1] if url else "the weights file"
            raise ConfigError(f"model.backbone_weights: imagenet needs {file_name}, which is not in Keras's cache "
                              f"({_keras_cache_folder()}) and could not be downloaded ({error}). Copy it there "
                              f"from a machine with network{f' ({url.group(0)})' if url else ''}, or set "
                              "model.backbone_weights to a local file. Received: model.backbone_weights='imagenet'"
                              ) from None
        finally:
            socket.setdefaulttimeout(previous)
    base = application(include_top=False, weights=None, input_shape=shape, pooling=None, name=BACKBONE_NAME)
    if weights not in (None, "none"):
        if not Path(weights).is_file():
            raise ConfigError(f"model.backbone_weights must be imagenet, none or a weights file that exists. "
                              f"Received: model.backbone_weights={weights!r}")
        base.load_weights(weights)
    return base


def set_backbone_trainable(base: keras.Model, fine_tune_from: str | None, freeze_batchnorm: bool) -> None:
    """Which backbone layers train: `all` (or None with random weights: decided by the caller) every layer, a
    layer name that one and all after it, `"frozen"` none; with `freeze_batchnorm` the BatchNorm layers never
    (they then run in inference mode, keeping their statistics)."""
    names = [layer.name for layer in base.layers]
    if fine_tune_from not in ("all", "frozen") and fine_tune_from not in names:
        raise ConfigError(f"model.fine_tune_from is not a layer of the backbone (its layers: {names[1]} … "
                          f"{names[-1]}). Received: model.fine_tune_from={fine_tune_from!r}")
    base.trainable = True
    start = {"all": 0, "frozen": len(names)}.get(fine_tune_from) if fine_tune_from in ("all", "frozen") else (
        names.index(fine_tune_from))
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start and not (freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization))
    if start >= len(names):
        base.trainable = False


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
               circular: str | None = None, name: str = "conv_tower") -> keras.Model:
    """A CNN tower: per width a 3×3 conv (+BatchNorm) + ReLU + 2×2 max-pool, then Dense, embedding head.

    With the defaults this is conv32-pool-conv64-pool-fc128-emb64. Layers are named by block
    (`conv1`, `pool1`, …, `features` (the flattened last pool), `fc`, `embedding_dense`), so configs can
    name them (`model.joint_layers`, `loss.jrd_layers`).

    Args:
        input_shape: `(H, W, C)`; H and W must survive `len(filters)` halvings.
        filters: conv widths, one block each (the depth is `len(filters)`).
        dense: width of the fully connected layer before the head (0 for none).
        embedding_dim, l2_normalize, batch_norm, dropout: as in `mlp_tower`.
        circular: for panoramas, None or a `WidthPooling` mode (`avg`, `max`, `fourier`): each conv wraps round the
            width (`CircularPadding2D`) and `features` pools the last block over the whole width that way, so a
            circular shift of the input by a multiple of 2^len(filters) columns gives the same embedding.

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
        if circular:
            x = CircularPadding2D(1, name=f"conv{block}_wrap")(x)
        x = keras.layers.Conv2D(int(width), 3, padding="valid" if circular else "same", use_bias=not batch_norm,
                                name=f"conv{block}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"conv{block}_bn")(x)
        x = keras.layers.ReLU(name=f"conv{block}_relu")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{block}")(x)
    if circular:
        x = WidthPooling(circular, name="width_pool")(x)
    x = keras.layers.Flatten(name="features")(x)
    if dense:
        x = keras.layers.Dense(int(dense), activation="relu", name="fc")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="fc_dropout")(x)
    return keras.Model(inputs, _embedding_head(x, _check_embedding_dim(embedding_dim), l2_normalize), name=name)


def backbone_tower(input_shape, backbone: str = "MobileNetV2", weights: str | None = None,
                   image_size: int | None = 96, fine_tune_from: str | None = None, embedding_dim: int = 64,
                   l2_normalize: bool = True, pooling: str = "avg", freeze_batchnorm: bool = False,
                   frozen: bool = False, name: str = "backbone_tower") -> keras.Model:
    """A `keras.applications` backbone, pooled (avg, max or GeM), under an embedding head.

    The backbone's own preprocessing is the tower's first layer, so the tower takes pixels 0-255 like
    every other. Grayscale inputs are repeated to three channels.

    Example:
        tower = backbone_tower((224, 224, 3), "EfficientNetV2B0", weights="imagenet", image_size=None)

    Args:
        input_shape: `(H, W, C)`, C of 1 or 3.
        backbone: a `keras.applications` class name (`backbone_names()`).
        weights: `"imagenet"` (Keras downloads and caches the file on first use; without network a ConfigError
            names the file and the cache folder), None / `"none"` (random), or a weights file for the backbone
            without its top.
        image_size: the side images are resized to inside the tower (in-memory arrays), or None to take them at
            `input_shape` (streamed sources decode to their final size).
        fine_tune_from: None freezes a pretrained backbone and trains a random one whole; `"all"` trains every
            layer; a layer name that layer and all after it.
        embedding_dim, l2_normalize: as in `mlp_tower`.
        pooling: `avg`, `max` or `gem` (`GeneralizedMeanPooling`, exponent learnt).
        freeze_batchnorm: the backbone's BatchNorm layers keep their statistics (inference mode).
        frozen: build with the whole backbone frozen (the head-only epochs of `train.frozen_epochs`).

    Raises:
        ConfigError: unknown backbone, pooling or layer name, missing weights, bad channels, or imagenet weights
            that are neither cached nor downloadable.
    """
    shape = _check_shape(input_shape)
    if shape[2] not in (1, 3):
        raise ConfigError(f"backbone towers take 1 or 3 channels. Received: input_shape={shape}")
    if pooling not in POOLINGS:
        raise ConfigError(f"model.pooling must be one of {list(POOLINGS)}. Received: model.pooling={pooling!r}")
    size = (int(image_size), int(image_size)) if image_size else shape[:2]
    if min(size) < 32:
        raise ConfigError(f"backbone images must be at least 32 pixels a side. Received: image size {size}")
    base = _build_application(backbone, weights, size)
    pretrained = weights not in (None, "none")
    if not pretrained:
        # keras.applications' BatchNorm momentum (0.99-0.999) suits long ImageNet runs; a random backbone's moving
        # statistics would still describe its random start after hundreds of steps, and inference (validation,
        # evaluation, export) would see vanishing activations. At 0.9 they follow the data within tens of steps.
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = min(layer.momentum, RANDOM_BACKBONE_BN_MOMENTUM)
    if frozen:
        mode = "frozen"
    else:
        mode = fine_tune_from or ("frozen" if pretrained else "all")
    set_backbone_trainable(base, mode, freeze_batchnorm)

    inputs = keras.Input(shape, name="images")
    x = RepeatChannels(3)(inputs) if shape[2] == 1 else inputs
    if image_size:
        x = keras.layers.Resizing(*size, name="resize")(x)
    x = preprocessing_layer(backbone)(x)
    x = base(x, training=False) if mode == "frozen" else base(x)
    x = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D,
         "gem": GeneralizedMeanPooling}[pooling](name="pool")(x)
    return keras.Model(inputs, _embedding_head(x, _check_embedding_dim(embedding_dim), l2_normalize), name=name)


def build_tower(model_cfg, input_shape, name: str = "tower", streamed: bool = False,
                frozen: bool = False, kind: str | None = None, circular: str | None = None) -> keras.Model:
    """Builds the tower a `ModelConfig` describes for images of `input_shape`.

    `streamed`: the images come decoded at their final size (a backbone does not resize them); `frozen`: a
    backbone starts wholly frozen (`train.frozen_epochs`); `kind`: mlp, conv or backbone instead of
    `model_cfg.tower` (a two-tower run's reference tower); `circular`: a conv tower for panoramas, pooled over
    the width by that `WidthPooling` mode."""
    common = dict(embedding_dim=model_cfg.embedding_dim, l2_normalize=model_cfg.l2_normalize, name=name)
    kind = kind or model_cfg.tower
    if circular and kind != "conv":
        raise ConfigError(f"model.circular wraps conv towers round the panorama's width. Received: tower={kind!r}")
    if kind == "mlp":
        return mlp_tower(input_shape, hidden=model_cfg.hidden, batch_norm=model_cfg.batch_norm,
                         dropout=model_cfg.dropout, **common)
    if kind == "conv":
        return conv_tower(input_shape, filters=model_cfg.filters, dense=model_cfg.dense,
                          batch_norm=model_cfg.batch_norm, dropout=model_cfg.dropout, circular=circular, **common)
    if kind == "backbone":
        return backbone_tower(input_shape, backbone=model_cfg.backbone, weights=model_cfg.backbone_weights,
                              image_size=None if streamed else model_cfg.backbone_image_size,
                              fine_tune_from=model_cfg.fine_tune_from, pooling=model_cfg.pooling,
                              freeze_batchnorm=model_cfg.freeze_batchnorm, frozen=frozen, **common)
    raise ConfigError(f"unknown tower. Received: model.tower={kind!r}")


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
