"""Typed run configuration: YAML in, validated dataclasses out.

A config is five small sections. Every key is typed; an unknown key, a value of the
wrong type or a value outside its allowed set is a `ConfigError` that names the key
and the value received. `--set section.key=value` overrides are parsed as YAML
scalars and checked the same way.

Example:
    cfg = load_config("configs/demo.yaml", overrides=["train.epochs=2"])
    cfg.train.epochs  # 2
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from reprlearn.data.augment import AUGMENTATIONS
from reprlearn.data.protocols import PROTOCOLS
from reprlearn.distances import ALIASES, METRICS
from reprlearn.models.joint import check_joint_weights
from reprlearn.models.verifiers import VERIFIERS
from reprlearn.registry import IN_BATCH_LOSSES, LOSSES


class ConfigError(ValueError):
    """A config key is unknown, mistyped or out of range."""


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    protocol: str = "seen-classes"
    data_dir: typing.Optional[str] = None
    # unseen-classes only: the classes to train on; the rest are the test classes.
    # None means the lower half of the class ids (Fashion-MNIST: 0-4).
    train_classes: typing.Optional[list[int]] = None
    validation_fraction: float = 0.1
    # > 0: validate on this many whole training classes held out from training (class-disjoint, like the
    # unseen-classes test) instead of a stratified share of every class.
    validation_classes: int = 0
    # P×K training batches: none | light | strong (shifts, rotations, contrast; left-right flips only for data
    # whose classes survive a mirror, see reprlearn.data.augment). Never applied to validation or test images.
    augment: str = "none"
    # P×K training batches: classes (K images of each of P classes) | views (K augmented views of each of P
    # images, labelled by image: self-supervised, the training labels are not used; needs data.augment).
    positives: str = "classes"
    max_train: typing.Optional[int] = None
    max_test: typing.Optional[int] = None
    seed: int = 0


@dataclass
class ModelConfig:
    # embedding: a metric-learning tower; autoencoder / vae: trained without labels (tower picks dense or conv);
    # verifier: a pair model trained with binary cross-entropy on balanced pairs (loss.* unused), see model.verifier.
    kind: str = "embedding"
    tower: str = "conv"
    embedding_dim: int = 64
    l2_normalize: bool = True
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    filters: list[int] = field(default_factory=lambda: [32, 64])
    dense: int = 128
    batch_norm: bool = False
    dropout: float = 0.0
    backbone: str = "MobileNetV2"
    backbone_weights: typing.Optional[str] = None
    backbone_image_size: int = 96
    # None freezes the backbone; a layer name fine-tunes from that layer on.
    fine_tune_from: typing.Optional[str] = None
    # Transfer: start from a trained run's tower (RUN/model.keras): same-named, same-shaped layers are copied
    # (report.json lists them); with freeze they stay fixed and only the embedding head (embedding_dense) trains
    # (a verifier: the whole tower stays fixed and only the verifier's head trains).
    init_from: typing.Optional[str] = None
    freeze: bool = False
    # Without freeze: the copied layers train at this share of train.learning_rate (fine-tuning a pretrained
    # tower gently, e.g. 0.1), everything else at the full rate.
    init_learning_rate_factor: float = 1.0
    # verifier only: siamese_head (one shared tower, an MLP on [|a-b|, a*b], a sigmoid; frozen by model.freeze or
    # trained end to end) | two_channel (the images stacked on the channel axis into one network, a sigmoid).
    verifier: str = "siamese_head"
    verifier_hidden: int = 64  # the verifier head's hidden ReLU width
    # Joint embedding (embedding towers): the exported vector joins these tower layers' features (feature maps
    # power-normalised, sign(x)·|x|^joint_power, then average-pooled to joint_grid × joint_grid) with the head,
    # each part unit-length times its weight
    # (joint_weights: one per layer, then the head's; [] = all 1); joint_dim caps the size with a PCA fit
    # on training images. [] exports the head alone.
    joint_layers: list[str] = field(default_factory=list)
    joint_grid: int = 3
    joint_power: float = 0.5
    joint_weights: list[float] = field(default_factory=list)
    joint_dim: typing.Optional[int] = None
    # autoencoder / vae only.
    code_dim: int = 32
    decoder: str = "unpool"          # conv autoencoder: unpool | transpose | upsample
    linear: bool = False             # dense autoencoder without hidden layers or activations (the PCA check)
    likelihood: str = "bernoulli"    # vae: bernoulli | gaussian
    beta: float = 1.0                # vae: KL weight


@dataclass
class LossConfig:
    # contrastive: in-batch pairs of P×K batches; pair_contrastive: a Siamese pair model on balanced pairs;
    # triplet_semihard / triplet_hard / triplet_batch_all / lifted_struct: in-batch mining on P×K batches;
    # am_softmax: the tower trained through cosine class weights (margin m = loss.margin, scale loss.scale);
    # supervised_contrastive: SupCon, a softmax over -loss.scale x distance (NT-Xent with data.positives: views).
    name: str = "contrastive"  # one of reprlearn.registry.LOSSES
    margin: float = 0.5
    distance: str = "L2"       # L2 | squared-L2 | angular (alias: cosine)
    # Under a multi-replica strategy: mine the global batch (all replicas) rather than each replica's slice.
    cross_replica: bool = True
    # am_softmax: s in s·(cos − m·onehot(y)) (loss.margin is m); supervised_contrastive: 1 / temperature
    scale: float = 30.0
    # am_softmax only: > 0 adds JRD's joint representation similarity over `jrd_layers` with this weight α.
    jrd_weight: float = 0.0
    # Tower layer names, plus "logits" for the classifier's cosines; [] means the last pooled conv block
    # ("features"; an MLP: the layer under the head), the embedding and the logits.
    jrd_layers: list[str] = field(default_factory=list)
    # P×K losses: > 0 adds a dense decoder from the embedding back to the pixels (MSE on [0, 1]) with this
    # weight, so the embedding keeps what it needs to redraw the image, not only what separates the classes.
    reconstruction_weight: float = 0.0
    # triplet_hard only: softplus(D_ap - D_an) instead of the margin hinge.
    soft: bool = False


@dataclass
class TrainConfig:
    epochs: int = 5
    steps_per_epoch: int = 200
    classes_per_batch: int = 8
    examples_per_class: int = 16
    pair_batch_size: int = 128
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (decays to 0 over epochs × steps_per_epoch)
    jit_compile: bool = False
    batch_size: int = 128  # autoencoder / vae runs: uniformly drawn images per batch
    seed: int = 0
    # auto | one_device | mirrored | multi_worker (see reprlearn.strategies); batch sizes are global.
    strategy: str = "auto"
    mixed_precision: str = "none"  # none | mixed_float16 | mixed_bfloat16 (embeddings stay float32)
    # The weights a run exports: those of the last epoch, or of the epoch with the best validation MAP@R (a
    # verifier: ROC AUC on validation pairs) (the validation split: held-out training classes with
    # data.validation_classes; never the test split).
    keep: str = "last"  # last | best


@dataclass
class EvalConfig:
    verification_pairs: int = 20000
    projection: str = "tsne"
    projection_points: int = 2000
    projector_points: int = 2000
    grid_queries: int = 8
    grid_neighbours: int = 8


TUNING_OBJECTIVES = ("val_map_at_r", "val_precision_at_1")  # what RetrievalValidation logs every epoch
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PRECISIONS = ("none", "mixed_float16", "mixed_bfloat16")


@dataclass
class SearchConfig:
    """`reprlearn tune` only. Ranges are `[low, high]`, sampled log-uniformly; lists are choices.
    The search space is what the section lists: a hyperparameter left out (or `[]`) stays at the
    config's own value, and a search with nothing listed is an error."""
    margin: list[float] = field(default_factory=list)
    embedding_dim: list[int] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    loss: list[str] = field(default_factory=list)
    classes_per_batch: list[int] = field(default_factory=list)
    examples_per_class: list[int] = field(default_factory=list)
    # Open-set keys, each a list of choices: loss.jrd_weight (a classifier base loss), loss.reconstruction_weight,
    # model.joint_layers (each choice the layer names joined by "+"; "" is the head alone), data.augment.
    jrd_weight: list[float] = field(default_factory=list)
    reconstruction_weight: list[float] = field(default_factory=list)
    joint_layers: list[str] = field(default_factory=list)
    augment: list[str] = field(default_factory=list)
    objective: str = "val_map_at_r"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    search: SearchConfig = field(default_factory=SearchConfig)


# Allowed values for string keys, checked after typing.
CHOICES = {
    "data.protocol": PROTOCOLS,
    "data.augment": AUGMENTATIONS,
    "data.positives": ("classes", "views"),
    "model.kind": ("embedding", "autoencoder", "vae", "verifier"),
    "model.verifier": VERIFIERS,
    "train.lr_schedule": ("constant", "cosine"),
    "train.strategy": STRATEGIES,
    "train.mixed_precision": PRECISIONS,
    "train.keep": ("last", "best"),
    "search.objective": TUNING_OBJECTIVES,
    "model.tower": ("mlp", "conv", "backbone"),
    "model.decoder": ("unpool", "transpose", "upsample"),
    "model.likelihood": ("bernoulli", "gaussian"),
    "loss.name": tuple(LOSSES),
    "loss.distance": METRICS + tuple(ALIASES),
    "eval.projection": ("tsne", "pca"),
}
POSITIVE = {
    "model.embedding_dim", "model.dense", "model.joint_grid", "model.joint_dim", "model.backbone_image_size",
    "model.code_dim", "model.beta", "model.verifier_hidden",
    "train.batch_size", "loss.scale",
    "train.epochs", "train.steps_per_epoch", "train.classes_per_batch",
    "train.examples_per_class", "train.pair_batch_size", "train.learning_rate",
    "eval.verification_pairs", "eval.projection_points", "eval.projector_points",
    "eval.grid_queries", "eval.grid_neighbours", "data.max_train", "data.max_test",
}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value, tp):
    """Returns `value` checked against type `tp`, or raises ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config: {key} must be a list of {_type_name(inner)}. "
                              f"Received: {key}={value!r} ({type(value).__name__})")
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"config: {key} must be a bool. Received: {key}={value!r} ({type(value).__name__})")
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"config: {key} must be a {_type_name(tp)}. "
                          f"Received: {key}={value!r} ({type(value).__name__})")
    return value


def _check_ranges(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"config: {key} must be one of {list(allowed)}. Received: {key}={value!r}")
    for key in POSITIVE:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and value <= 0:
            raise ConfigError(f"config: {key} must be > 0. Received: {key}={value!r}")
    if not 0.0 <= cfg.data.validation_fraction < 1.0:
        raise ConfigError("config: data.validation_fraction must be in [0, 1). "
                          f"Received: data.validation_fraction={cfg.data.validation_fraction!r}")
    if cfg.data.validation_classes < 0:
        raise ConfigError("config: data.validation_classes must be >= 0. "
                          f"Received: data.validation_classes={cfg.data.validation_classes!r}")
    if cfg.model.freeze and not cfg.model.init_from:
        raise ConfigError("config: model.freeze keeps the layers copied by model.init_from fixed; set "
                          "model.init_from to a run folder. Received: model.freeze=True, model.init_from=None")
    if not 0.0 < cfg.model.init_learning_rate_factor <= 1.0 or (
            cfg.model.init_learning_rate_factor != 1.0 and (cfg.model.freeze or not cfg.model.init_from)):
        raise ConfigError("config: model.init_learning_rate_factor must be in (0, 1], and below 1 only with "
                          "model.init_from and without model.freeze (it slows the copied layers' fine-tuning). "
                          f"Received: model.init_learning_rate_factor={cfg.model.init_learning_rate_factor!r}, "
                          f"model.init_from={cfg.model.init_from!r}, model.freeze={cfg.model.freeze!r}")
    if cfg.model.joint_dim is not None and not cfg.model.joint_layers:
        raise ConfigError("config: model.joint_dim caps a joint embedding; name its layers in model.joint_layers "
                          f"(model.embedding_dim sets the head's size). Received: model.joint_dim={cfg.model.joint_dim}")
    if not 0.0 < cfg.model.joint_power <= 1.0:
        raise ConfigError(f"config: model.joint_power must be in (0, 1]. Received: model.joint_power="
                          f"{cfg.model.joint_power!r}")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"config: model.dropout must be in [0, 1). Received: model.dropout={cfg.model.dropout!r}")
    if cfg.train.examples_per_class < 2:
        raise ConfigError("config: train.examples_per_class must be >= 2 so every batch has positive pairs. "
                          f"Received: train.examples_per_class={cfg.train.examples_per_class!r}")
    if cfg.data.positives == "views":
        _check_views(cfg)
    if cfg.loss.margin < 0:
        raise ConfigError(f"config: loss.margin must be >= 0. Received: loss.margin={cfg.loss.margin!r}")
    spec = LOSSES[cfg.loss.name]
    if cfg.loss.distance not in spec.distances:
        raise ConfigError(f"config: {cfg.loss.name} accepts loss.distance in {list(spec.distances)}. "
                          f"Received: loss.distance={cfg.loss.distance!r}")
    _check_search(cfg.search)
    _check_verifier(cfg)
    if cfg.model.kind in ("autoencoder", "vae") and cfg.model.tower not in ("mlp", "conv"):
        raise ConfigError(f"config: an {cfg.model.kind} is built from an mlp or conv tower. "
                          f"Received: model.tower={cfg.model.tower!r}")
    try:
        check_joint_weights(cfg.model.joint_layers, cfg.model.joint_weights or None)
    except ValueError as error:
        raise ConfigError(f"config: {error}") from None
    if cfg.loss.jrd_weight < 0 or (cfg.loss.jrd_weight > 0 and not spec.classifier):
        classifiers = [name for name, s in LOSSES.items() if s.classifier]
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
    if cfg.loss.soft and not spec.soft:
        soft_losses = [name for name, s in LOSSES.items() if s.soft]
        raise ConfigError(f"config: loss.soft applies to {soft_losses} only. Received: loss.name={cfg.loss.name!r}")


def _check_views(cfg: Config) -> None:
    """Views of one image are positives only for an in-batch metric loss, and only augmentation makes them differ."""
    if cfg.data.augment == "none":
        raise ConfigError("config: data.positives: views makes positives from augmented views of one image; set "
                          "data.augment to light or strong. Received: data.augment='none'")
    if cfg.model.kind != "embedding" or cfg.loss.name not in IN_BATCH_LOSSES:
        raise ConfigError("config: data.positives: views trains an embedding with an in-batch loss from "
                          f"{list(IN_BATCH_LOSSES)}. "
                          f"Received: loss.name={cfg.loss.name!r}, model.kind={cfg.model.kind!r}")


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


def _check_search(search: SearchConfig) -> None:
    for key in ("margin", "learning_rate"):
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
    unknown = [name for name in search.loss if name not in IN_BATCH_LOSSES]
    if unknown or len(set(search.loss)) != len(search.loss):
        raise ConfigError(f"config: search.loss must list distinct in-batch losses from {list(IN_BATCH_LOSSES)}. "
                          f"Received: search.loss={search.loss!r}")


def config_from_dict(raw: dict | None) -> Config:
    """Builds a validated Config from nested dicts; missing keys take their defaults."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: the top level must be a mapping of sections. Received: {type(raw).__name__}")
    sections = {}
    known_sections = {f.name: f for f in dataclasses.fields(Config)}
    for section_name, values in raw.items():
        if section_name not in known_sections:
            raise ConfigError(f"config: unknown section '{section_name}'. Known: {sorted(known_sections)}")
        section_cls = known_sections[section_name].default_factory
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"config: section '{section_name}' must be a mapping. Received: {values!r}")
        hints = typing.get_type_hints(section_cls)
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"config: unknown key '{section_name}.{key}'. "
                                  f"Known keys of '{section_name}': {sorted(hints)}")
            kwargs[key] = _coerce(f"{section_name}.{key}", value, hints[key])
        sections[section_name] = section_cls(**kwargs)
    cfg = Config(**sections)
    # "cosine" is accepted as the common name; the resolved config records the canonical one.
    cfg.loss.distance = ALIASES.get(cfg.loss.distance, cfg.loss.distance)
    _check_ranges(cfg)
    return cfg


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Applies `section.key=value` strings (values parsed as YAML) to a raw config dict."""
    raw = {k: dict(v or {}) for k, v in (raw or {}).items()}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"config: an override must look like section.key=value. Received: {item!r}")
        path, text = item.split("=", 1)
        section, key = path.split(".", 1)
        raw.setdefault(section, {})[key] = yaml.safe_load(text) if text != "" else None
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Reads a YAML config, applies overrides and validates the result."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: no such file. Received: config={str(path)!r}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config: {path} is not valid YAML{line}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path} is not a text file. Received: config={str(path)!r}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path} must be a mapping of sections (data:, model:, ...). "
                          f"Received: a YAML {type(raw).__name__}")
    bad = [name for name, values in raw.items() if values is not None and not isinstance(values, dict)]
    if bad:
        raise ConfigError(f"config: section '{bad[0]}' of {path} must be a mapping. Received: {raw[bad[0]]!r}")
    return config_from_dict(apply_overrides(raw, overrides or []))


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path, command: str | None = None) -> None:
    """Writes the resolved config as YAML, headed by the command that produced it."""
    header = f"# {command}\n" if command else ""
    Path(path).write_text(header + yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
