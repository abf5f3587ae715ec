"""Typed run configuration: YAML in, validated dataclasses out.

`schema` holds the sections and each field's constraint, `rules` the checks across fields, `io`
the YAML files and `--set` overrides. Config code imports no model code.

Example:
    cfg = load_config("configs/demo.yaml", overrides=["train.epochs=2"])
    cfg.train.epochs  # 2
"""

from reprlearn.config.io import apply_overrides, config_from_dict, config_to_dict, load_config, save_config
from reprlearn.config.rules import check_config
from reprlearn.config.schema import (
                                     PRECISIONS,
                                     STRATEGIES,
                                     TUNING_OBJECTIVES,
                                     VERIFIERS,
                                     Config,
                                     DataConfig,
                                     EvalConfig,
                                     LossConfig,
                                     ModelConfig,
                                     SearchConfig,
                                     TrainConfig,
)
from reprlearn.errors import ConfigError

__all__ = ["PRECISIONS", "STRATEGIES", "TUNING_OBJECTIVES", "VERIFIERS", "Config", "ConfigError", "DataConfig",
           "EvalConfig", "LossConfig", "ModelConfig", "SearchConfig", "TrainConfig", "apply_overrides",
           "check_config", "config_from_dict", "config_to_dict", "load_config", "save_config"]
