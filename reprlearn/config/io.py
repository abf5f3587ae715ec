"""Config files in and out: YAML (with YAML 1.2 numbers), `--set section.key=value` overrides, type checks.

Every key is typed; an unknown key, a value of the wrong type or a value outside its allowed set
is a `ConfigError` that names the key and the value received. `--set` values are parsed as YAML
scalars and checked the same way. Numbers are read as YAML 1.2 reads them, so `3e-4` and `1e-4`
are floats (YAML 1.1, PyYAML's default, reads them as strings).

Example:
    cfg = load_config("configs/demo.yaml", overrides=["train.epochs=2", "train.learning_rate=3e-4"])
    cfg.train.epochs, cfg.train.learning_rate  # (2, 0.0003)
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import yaml

from reprlearn.config.losses import LOSS_TRAITS, SHARED_OPTIONS
from reprlearn.config.rules import check_config
from reprlearn.config.schema import Config, LossConfig
from reprlearn.errors import ConfigError
from reprlearn.ops.distances import ALIASES


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float syntax: `3e-4`, `1E5` and `.5` are floats."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\d+[eE][-+]?\d+$"),
    list("-+0123456789."))


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
    _resolve_loss_defaults(cfg, set((raw.get("loss") or {}).keys()))
    # "cosine" is accepted as the common name; the resolved config records the canonical one.
    cfg.loss.distance = ALIASES.get(cfg.loss.distance, cfg.loss.distance)
    check_config(cfg)
    return cfg


def _resolve_loss_defaults(cfg: Config, given: set[str]) -> None:
    """The keys the loss section leaves out take the loss's own defaults (a per-loss key given to a loss that does
    not take it is left for check_config to name)."""
    traits = LOSS_TRAITS.get(cfg.loss.name)
    if traits is None:
        return  # the unknown name is reported by check_config
    for key, value in traits.defaults.items():
        if key not in given:
            setattr(cfg.loss, key, value)
    defaults = LossConfig()
    for key in SHARED_OPTIONS:
        # A value the loss never reads would be recorded in config.yaml and change nothing; the default is let
        # through (every resolved config.yaml holds it).
        if key in given and key not in traits.reads and key not in traits.defaults \
                and getattr(cfg.loss, key) != getattr(defaults, key):
            reads = [f"loss.{name}" for name in (*traits.reads, *traits.defaults) if name != "distance"]
            raise ConfigError(f"config: {cfg.loss.name} does not read loss.{key}; the keys it reads are "
                              f"{reads or 'none of its own'} (and loss.distance). Remove loss.{key}. "
                              f"Received: loss.{key}={getattr(cfg.loss, key)!r}, loss.name={cfg.loss.name!r}")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Applies `section.key=value` strings (values parsed as YAML) to a raw config dict."""
    raw = {k: dict(v or {}) for k, v in (raw or {}).items()}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"config: an override must look like section.key=value. Received: {item!r}")
        path, text = item.split("=", 1)
        section, key = path.split(".", 1)
        try:
            value = yaml.load(text, Loader=ConfigLoader) if text != "" else None
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ConfigError(f"config: the value of {path} is not valid YAML ({problem}). Received: "
                              f"{path}={text!r}") from None
        raw.setdefault(section, {})[key] = value
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Reads a YAML config, applies overrides and validates the result."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        listing = f"the YAML files in it: {', '.join(found[:10])}" if found else "it holds no YAML file"
        raise ConfigError(f"config: {path} is a folder, not a config file ({listing}); name one file. "
                          f"Received: config={str(path)!r}")
    if not path.is_file():
        raise ConfigError(f"config: no such file. Received: config={str(path)!r}")
    try:
        raw = yaml.load(path.read_text(), Loader=ConfigLoader)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config: {path} is not valid YAML{line}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path} is not a text file. Received: config={str(path)!r}") from None
    if raw is None and not overrides:
        # An empty file would train every default (Fashion-MNIST, minutes) without a word: most likely a mistake.
        raise ConfigError(f"config: {path} is empty (or only comments); write the sections you mean (data:, "
                          "model:, loss:, train:), e.g. copy configs/demo.yaml. To train on every default on "
                          f"purpose, write `data: {{}}`. Received: config={str(path)!r}")
    raw = {} if raw is None else raw
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
