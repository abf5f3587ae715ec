"""The config rules that span several fields, and the per-field marks of `reprlearn.config.schema` applied.

Example:
    check_config(Config())                      # passes: the defaults are valid
    check_joint_weights(["block_1"], [1, 0.5])  # [1.0, 0.5]: one weight per joint layer and the head
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from reprlearn.config.losses import (
    IN_BATCH_LOSSES,
    LOSS_OPTIONS,
    LOSS_TRAITS,
    MEMORY_LOSSES,
    PK_LOSSES,
    TWO_TOWER_LOSSES,
)
from reprlearn.config.schema import Config, SearchConfig
from reprlearn.config.self_supervised import method_settings
from reprlearn.data.augment import AUGMENTATIONS
from reprlearn.data.recipes import RECIPES, recipe_views
from reprlearn.errors import ConfigError


def _check_field_marks(cfg: Config) -> None:
    """Every `choice` field holds one of its options and every `positive` field a value > 0."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for key in dataclasses.fields(values):
            value, name = getattr(values, key.name), f"{section.name}.{key.name}"
            allowed = key.metadata.get("choices")
            if allowed is not None and value not in allowed:
                raise ConfigError(f"config: {name} must be one of {list(allowed)}. Received: {name}={value!r}")
            if key.metadata.get("positive") and value is not None and value <= 0:
                raise ConfigError(f"config: {name} must be > 0. Received: {name}={value!r}")


def _check_backbone(cfg: Config) -> None:
    """A frozen backbone must have learnt something: random weights are never frozen, wholly or in part."""
    model, frozen_epochs = cfg.model, cfg.train.frozen_epochs
    if frozen_epochs < 0 or (frozen_epochs and frozen_epochs >= cfg.train.epochs):
        raise ConfigError(f"config: train.frozen_epochs must be in [0, train.epochs) (the head trains alone that "
                          f"many epochs, then the backbone joins). Received: train.frozen_epochs={frozen_epochs!r}, "
                          f"train.epochs={cfg.train.epochs!r}")
    if frozen_epochs and (model.tower != "backbone" or model.kind != "embedding"):
        raise ConfigError("config: train.frozen_epochs trains an embedding head over a frozen backbone; set "
                          f"model.tower: backbone. Received: model.tower={model.tower!r}, model.kind={model.kind!r}, "
                          f"train.frozen_epochs={frozen_epochs}")
    random = model.backbone_weights in (None, "none")
    if model.tower == "backbone" and random and (frozen_epochs or model.fine_tune_from not in (None, "all")):
        raise ConfigError("config: a backbone with random weights (model.backbone_weights: none) would be frozen, "
                          "wholly or below model.fine_tune_from, and a frozen random network computes nothing "
                          "useful: start from model.backbone_weights: imagenet or a weights file, or train it all "
                          f"(model.fine_tune_from: all, train.frozen_epochs: 0). Received: model.backbone_weights="
                          f"{model.backbone_weights!r}, model.fine_tune_from={model.fine_tune_from!r}, "
                          f"train.frozen_epochs={frozen_epochs}")


def check_config(cfg: Config) -> None:
    """Raises ConfigError, naming the keys and values, for the first rule `cfg` breaks."""
    _check_field_marks(cfg)
    if not 0.0 <= cfg.data.validation_fraction < 1.0:
        raise ConfigError("config: data.validation_fraction must be in [0, 1). "
                          f"Received: data.validation_fraction={cfg.data.validation_fraction!r}")
    if cfg.data.validation_classes < 0 or cfg.data.validation_classes == 1:
        raise ConfigError("config: data.validation_classes must be 0 (a share of every class) or >= 2 (a "
                          "validation split of one class has no negative pairs). "
                          f"Received: data.validation_classes={cfg.data.validation_classes!r}")
    size = cfg.data.image_size
    if size is not None and (len(size) != 2 or any(int(v) < 1 for v in size)):
        raise ConfigError(f"config: data.image_size must be [height, width], both >= 1 (or null: the files' own "
                          f"size). Received: data.image_size={size!r}")
    _check_backbone(cfg)
    if cfg.model.freeze and not cfg.model.init_from:
        raise ConfigError("config: model.freeze keeps the layers copied by model.init_from fixed; set "
                          "model.init_from to a run folder. Received: model.freeze=True, model.init_from=None")
    pretrained_backbone = cfg.model.tower == "backbone" and cfg.model.backbone_weights not in (None, "none")
    if not 0.0 < cfg.model.init_learning_rate_factor <= 1.0 or (
            cfg.model.init_learning_rate_factor != 1.0 and not pretrained_backbone
            and (cfg.model.freeze or not cfg.model.init_from)):
        raise ConfigError("config: model.init_learning_rate_factor must be in (0, 1], and below 1 only with "
                          "model.init_from and without model.freeze, or for a pretrained backbone (it slows the "
                          "pretrained layers' fine-tuning). "
                          f"Received: model.init_learning_rate_factor={cfg.model.init_learning_rate_factor!r}, "
                          f"model.init_from={cfg.model.init_from!r}, model.freeze={cfg.model.freeze!r}")
    if cfg.model.joint_dim is not None and not cfg.model.joint_layers:
        raise ConfigError("config: model.joint_dim caps a joint embedding; name its layers in model.joint_layers "
                          "(model.embedding_dim sets the head's size). "
                          f"Received: model.joint_dim={cfg.model.joint_dim}")
    if not 0.0 < cfg.model.joint_power <= 1.0:
        raise ConfigError(f"config: model.joint_power must be in (0, 1]. Received: model.joint_power="
                          f"{cfg.model.joint_power!r}")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"config: model.dropout must be in [0, 1). Received: model.dropout={cfg.model.dropout!r}")
    if cfg.eval.verification_pairs < 2:
        raise ConfigError("config: eval.verification_pairs must be >= 2 (half of them matching pairs, half not). "
                          f"Received: eval.verification_pairs={cfg.eval.verification_pairs!r}")
    if cfg.train.examples_per_class < 2:
        raise ConfigError("config: train.examples_per_class must be >= 2 so every batch has positive pairs. "
                          f"Received: train.examples_per_class={cfg.train.examples_per_class!r}")
    if cfg.data.positives == "views":
        _check_views(cfg)
    if not (math.isfinite(cfg.loss.margin) and cfg.loss.margin >= 0):
        raise ConfigError(f"config: loss.margin must be a finite number >= 0. "
                          f"Received: loss.margin={cfg.loss.margin!r}")
    if not math.isfinite(cfg.loss.scale):
        raise ConfigError(f"config: loss.scale must be a finite number > 0. Received: loss.scale={cfg.loss.scale!r}")
    spec = LOSS_TRAITS[cfg.loss.name]
    if cfg.loss.distance not in spec.distances:
        raise ConfigError(f"config: {cfg.loss.name} accepts loss.distance in {list(spec.distances)}. "
                          f"Received: loss.distance={cfg.loss.distance!r}")
    _check_search(cfg.search, cfg.model.kind == "two_tower")
    _check_self_supervised(cfg)
    _check_verifier(cfg)
    _check_two_tower(cfg)
    if cfg.model.kind in ("autoencoder", "vae") and cfg.model.tower not in ("mlp", "conv"):
        raise ConfigError(f"config: an {cfg.model.kind} is built from an mlp or conv tower. "
                          f"Received: model.tower={cfg.model.tower!r}")
    try:
        check_joint_weights(cfg.model.joint_layers, cfg.model.joint_weights or None)
    except ConfigError as error:
        raise ConfigError(f"config: {error}") from None
    if cfg.loss.jrd_weight < 0 or (cfg.loss.jrd_weight > 0 and not spec.classifier):
        classifiers = [name for name, s in LOSS_TRAITS.items() if s.classifier]
        raise ConfigError(f"config: loss.jrd_weight must be >= 0, and > 0 only with {classifiers}. "
                          f"Received: loss.jrd_weight={cfg.loss.jrd_weight!r}, loss.name={cfg.loss.name!r}")
    if cfg.loss.reconstruction_weight < 0 or (cfg.loss.reconstruction_weight > 0 and spec.batch != "pk"):
        raise ConfigError("config: loss.reconstruction_weight must be >= 0, and > 0 only with a loss trained on "
                          f"P×K batches. Received: loss.reconstruction_weight={cfg.loss.reconstruction_weight!r}, "
                          f"loss.name={cfg.loss.name!r}")
    if cfg.loss.jrd_layers and (len(cfg.loss.jrd_layers) < 2 or len(set(cfg.loss.jrd_layers)) != len(
            cfg.loss.jrd_layers)):
        raise ConfigError("config: loss.jrd_layers must name at least two distinct layers (JRD is joint), or []. "
                          f"Received: loss.jrd_layers={cfg.loss.jrd_layers!r}")
    _check_loss_options(cfg)
    if cfg.loss.soft and not spec.soft:
        soft_losses = [name for name, s in LOSS_TRAITS.items() if s.soft]
        raise ConfigError(f"config: loss.soft applies to {soft_losses} only. Received: loss.name={cfg.loss.name!r}")


def _check_self_supervised(cfg: Config) -> None:
    """Two views need a two-view recipe; the SSL keys only with model.kind: self_supervised, in their ranges."""
    model, data = cfg.model, cfg.data
    if data.augment_options and data.augment not in RECIPES:
        raise ConfigError(f"config: data.augment_options sets the ops of a recipe, one of {list(RECIPES)}. "
                          f"Received: data.augment={data.augment!r}, data.augment_options={data.augment_options!r}")
    if data.augment in RECIPES:
        try:
            recipe_views(data.augment, (224, 224, 3), data.augment_options)
        except ConfigError as error:
            raise ConfigError(f"config: {error}") from None
    defaults = type(model)()
    ssl_keys = {f"model.{key}": getattr(model, key)
                for key in ("method", "projector", "predictor", "temperature", "momentum")
                if getattr(model, key) != getattr(defaults, key)}
    if model.kind != "self_supervised":
        _check_memory(cfg)
        if ssl_keys:
            raise ConfigError(f"config: {sorted(ssl_keys)} apply to model.kind: self_supervised. Received: "
                              f"{ssl_keys}, model.kind={model.kind!r}")
        return
    if cfg.train.memory_warmup:
        raise ConfigError(f"config: train.memory_warmup delays an embedding run's cross-batch memory; a "
                          f"self-supervised memory starts at once. Received: train.memory_warmup="
                          f"{cfg.train.memory_warmup}")
    if data.augment not in RECIPES:
        raise ConfigError(f"config: self-supervised training compares two augmented views of each image; set "
                          f"data.augment to one of {list(RECIPES)}. Received: data.augment={data.augment!r}")
    if cfg.train.batch_size < 2:
        raise ConfigError(f"config: a self-supervised batch needs at least 2 images (batch statistics and negatives). "
                          f"Received: train.batch_size={cfg.train.batch_size}")
    if cfg.train.memory_size is not None and cfg.train.memory_size < 0:
        raise ConfigError(f"config: train.memory_size must be >= 0. Received: "
                          f"train.memory_size={cfg.train.memory_size}")
    for key in ("projector", "predictor"):
        widths = getattr(model, key)
        if widths is not None and any(int(w) < 1 for w in widths):
            raise ConfigError(f"config: model.{key} lists layer widths >= 1. Received: model.{key}={widths!r}")
    try:
        method_settings(model.method, model.projector, model.predictor, cfg.train.memory_size, model.momentum)
    except ConfigError as error:
        raise ConfigError(f"config: {error}") from None


def _check_memory(cfg: Config) -> None:
    """A cross-batch memory on an embedding run: a pair loss on P×K batches, one loss term, a whole batch held."""
    train = cfg.train
    if train.memory_size is None:
        if train.memory_warmup:
            raise ConfigError(f"config: train.memory_warmup delays a cross-batch memory; set train.memory_size. "
                              f"Received: train.memory_warmup={train.memory_warmup}")
        return
    batch = train.classes_per_batch * train.examples_per_class
    if cfg.model.kind != "embedding" or cfg.loss.name not in MEMORY_LOSSES:
        raise ConfigError(f"config: train.memory_size keeps a cross-batch memory for an embedding run with one of "
                          f"{list(MEMORY_LOSSES)} (or negatives for model.kind: self_supervised). Received: "
                          f"train.memory_size={train.memory_size}, model.kind={cfg.model.kind!r}, "
                          f"loss.name={cfg.loss.name!r}")
    if cfg.loss.reconstruction_weight > 0 or cfg.model.joint_layers:
        raise ConfigError("config: train.memory_size scores the embedding alone; it does not combine with "
                          "loss.reconstruction_weight or model.joint_layers. Received: train.memory_size="
                          f"{train.memory_size}")
    if train.memory_size < batch:
        raise ConfigError(f"config: train.memory_size must hold a whole batch ({train.classes_per_batch} × "
                          f"{train.examples_per_class} = {batch}). Received: train.memory_size={train.memory_size}")
    if train.memory_warmup < 0:
        raise ConfigError(f"config: train.memory_warmup must be >= 0. Received: train.memory_warmup="
                          f"{train.memory_warmup}")


def _check_loss_options(cfg: Config) -> None:
    """The pair miner only with a pair loss, and each loss's values in their ranges (the key and value named)."""
    loss, spec = cfg.loss, LOSS_TRAITS[cfg.loss.name]
    if loss.miner != "none" and not spec.pairs:
        pair_losses = [name for name, s in LOSS_TRAITS.items() if s.pairs]
        raise ConfigError(f"config: loss.miner chooses the pairs a pair loss scores; {loss.name} takes no pairs "
                          f"(pair losses: {pair_losses}). Received: loss.miner={loss.miner!r}, "
                          f"loss.name={loss.name!r}")
    if not (math.isfinite(loss.epsilon) and loss.epsilon >= 0):
        raise ConfigError(f"config: loss.epsilon must be a finite number >= 0. Received: loss.epsilon={loss.epsilon!r}")
    limits = {"circle": (1.0, "[0, 1)"), "arcface": (math.pi / 2, "[0, π/2) radians")}
    if loss.name in limits and not loss.margin < limits[loss.name][0]:
        raise ConfigError(f"config: {loss.name} takes loss.margin in {limits[loss.name][1]}. "
                          f"Received: loss.margin={loss.margin!r}")
    for key in LOSS_OPTIONS:
        value = getattr(loss, key)
        if value is not None and key not in spec.defaults:
            takers = [name for name, s in LOSS_TRAITS.items() if key in s.defaults]
            raise ConfigError(f"config: loss.{key} applies to {takers} only. Received: loss.{key}={value!r}, "
                              f"loss.name={loss.name!r}")
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"config: loss.{key} must be a finite number. Received: loss.{key}={value!r}")


def _check_views(cfg: Config) -> None:
    """Views of one image are positives only for an in-batch metric loss, and only augmentation makes them differ."""
    if cfg.data.augment == "none":
        raise ConfigError("config: data.positives: views makes positives from augmented views of one image; set "
                          "data.augment to light or strong. Received: data.augment='none'")
    if cfg.model.kind != "embedding" or cfg.loss.name not in IN_BATCH_LOSSES:
        raise ConfigError("config: data.positives: views trains an embedding with an in-batch loss from "
                          f"{list(IN_BATCH_LOSSES)}. "
                          f"Received: loss.name={cfg.loss.name!r}, model.kind={cfg.model.kind!r}")


def _size_pair(value, key: str) -> None:
    if value is not None and (len(value) != 2 or any(int(v) < 1 for v in value)):
        raise ConfigError(f"config: {key} must be [height, width], both >= 1, or null. Received: {key}={value!r}")


def _check_two_tower(cfg: Config) -> None:
    """Two towers: a loss that trains them, two-tower keys only with them, and views one shared tower can take."""
    model, data = cfg.model, cfg.data
    _size_pair(data.reference_size, "data.reference_size")
    _size_pair(model.polar_size, "model.polar_size")
    if model.kind != "two_tower":
        # Each two-tower key against its value when left unset.
        unset = {"model.share": "none", "model.reference_tower": None, "model.polar_size": None,
                 "model.circular": False, "data.reference_size": None, "data.reference_channels": None}
        given = [f"{key}={value!r}" for key, default in unset.items()
                 if (value := getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1])) != default]
        if given or LOSS_TRAITS[cfg.loss.name].batch == "views":
            what = given[0] if given else f"loss.name={cfg.loss.name!r}"
            raise ConfigError(f"config: {what} applies to two towers on matched pairs; set model.kind: two_tower. "
                              f"Received: {what}, model.kind={model.kind!r}")
    if cfg.loss.learn_temperature and cfg.loss.name != "info_nce":
        raise ConfigError(f"config: loss.learn_temperature learns InfoNCE's τ; set loss.name: info_nce. "
                          f"Received: loss.learn_temperature=True, loss.name={cfg.loss.name!r}")
    if model.kind != "two_tower":
        return
    if cfg.loss.name not in TWO_TOWER_LOSSES:
        raise ConfigError(f"config: two towers train with {list(TWO_TOWER_LOSSES)}. "
                          f"Received: loss.name={cfg.loss.name!r}, model.kind='two_tower'")
    unsupported = {"model.joint_layers": model.joint_layers, "loss.jrd_weight": cfg.loss.jrd_weight,
                   "loss.reconstruction_weight": cfg.loss.reconstruction_weight, "model.init_from": model.init_from,
                   "data.augment": data.augment != "none", "data.positives": data.positives != "classes",
                   "train.frozen_epochs": cfg.train.frozen_epochs}
    for key, value in unsupported.items():
        if value:
            raise ConfigError(f"config: {key} is not available for two towers (yet). "
                              f"Received: {key}={value!r}, model.kind='two_tower'")
    reference_kind = model.reference_tower or model.tower
    panoramas = [("model.tower", model.tower)] + ([("model.reference_tower", reference_kind)]
                                                   if model.polar_size else [])
    for key, kind in panoramas:
        if model.circular and kind != "conv":
            raise ConfigError(f"config: model.circular wraps conv towers round the panorama's width; {key} is "
                              f"{kind!r}. Received: model.circular=True, {key}={kind!r}")
    if model.share != "none" and reference_kind != model.tower:
        raise ConfigError(f"config: model.share: {model.share} shares weights between towers of one kind. Received: "
                          f"model.tower={model.tower!r}, model.reference_tower={reference_kind!r}")
    reference = model.polar_size or data.reference_size
    if model.share == "all" and reference is not None and data.image_size is not None and (
            list(reference) != list(data.image_size)):
        raise ConfigError(f"config: model.share: all runs both views through one tower, so they need one size: the "
                          f"query is {list(data.image_size)} and the reference {list(reference)}. Use model.share: "
                          f"none or head, or make the sizes equal (model.polar_size). Received: model.share='all'")
    channels = (data.channels, data.reference_channels)
    if model.share == "all" and None not in channels and channels[0] != channels[1]:
        raise ConfigError(f"config: model.share: all needs one channel count for both views. Received: "
                          f"data.channels={channels[0]}, data.reference_channels={channels[1]}")


def _check_verifier(cfg: Config) -> None:
    if cfg.model.kind != "verifier":
        return
    if cfg.model.verifier == "two_channel" and cfg.model.tower == "backbone":
        raise ConfigError("config: a two_channel verifier stacks two images on the channel axis, which a pretrained "
                          "backbone cannot take; use an mlp or conv tower. Received: model.tower='backbone'")
    embedding_only = {"model.joint_layers": cfg.model.joint_layers, "loss.jrd_weight": cfg.loss.jrd_weight,
                      "loss.reconstruction_weight": cfg.loss.reconstruction_weight}
    for key, value in embedding_only.items():
        if value:
            raise ConfigError(f"config: {key} applies to embedding runs; a verifier trains with binary "
                              f"cross-entropy on pairs. Received: {key}={value!r}, model.kind='verifier'")


def _check_search(search: SearchConfig, two_tower: bool) -> None:
    for key in ("margin", "learning_rate", "alpha", "gamma", "temperature"):
        value = getattr(search, key)
        if value and not (len(value) == 2 and 0 < value[0] < value[1]):
            raise ConfigError(f"config: search.{key} must be a range [low, high] with 0 < low < high, or []. "
                              f"Received: search.{key}={value!r}")
    for key, lowest in (("embedding_dim", 1), ("classes_per_batch", 1), ("examples_per_class", 2)):
        value = getattr(search, key)
        if any(v < lowest for v in value) or len(set(value)) != len(value):
            raise ConfigError(f"config: search.{key} must list distinct values >= {lowest}. "
                              f"Received: search.{key}={value!r}")
    for key in ("jrd_weight", "reconstruction_weight"):
        value = getattr(search, key)
        if any(v < 0 for v in value) or len(set(value)) != len(value):
            raise ConfigError(f"config: search.{key} must list distinct choices >= 0, or []. "
                              f"Received: search.{key}={value!r}")
    if any(v not in AUGMENTATIONS for v in search.augment) or len(set(search.augment)) != len(search.augment):
        raise ConfigError(f"config: search.augment must list distinct choices from {list(AUGMENTATIONS)}. "
                          f"Received: search.augment={search.augment!r}")
    if len(set(search.joint_layers)) != len(search.joint_layers):
        raise ConfigError("config: search.joint_layers must list distinct choices (layer names joined by '+'). "
                          f"Received: search.joint_layers={search.joint_layers!r}")
    losses, batches = (TWO_TOWER_LOSSES, "matched pairs") if two_tower else (PK_LOSSES, "P×K batches")
    unknown = [name for name in search.loss if name not in losses]
    if unknown or len(set(search.loss)) != len(search.loss):
        raise ConfigError(f"config: search.loss must list distinct losses trained on {batches} from "
                          f"{list(losses)}. "
                          f"Received: search.loss={search.loss!r}")
    if two_tower:
        one_tower = [key for key in ("classes_per_batch", "examples_per_class", "jrd_weight",
                                     "reconstruction_weight", "joint_layers", "augment") if getattr(search, key)]
        if one_tower:
            raise ConfigError(f"config: a two-tower search varies margin, embedding_dim, learning_rate, loss, alpha, "
                              f"gamma and temperature; search.{one_tower[0]} is a one-tower key. "
                              f"Received: search.{one_tower[0]}={getattr(search, one_tower[0])!r}")


def check_joint_weights(layers: Sequence[str], weights: Sequence[float] | None) -> list[float]:
    """One weight >= 0 per layer and one for the head, not all 0 (default: all 1)."""
    if weights is None:
        return [1.0] * (len(layers) + 1)
    weights = [float(w) for w in weights]
    if len(weights) != len(layers) + 1 or min(weights) < 0 or max(weights) == 0:
        raise ConfigError(f"model.joint_weights needs one weight >= 0 per joint layer and one for the head "
                         f"({len(layers) + 1}), not all 0. Received: model.joint_weights={weights}")
    return weights
