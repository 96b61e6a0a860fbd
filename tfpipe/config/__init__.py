"""Experiment configuration: typed dataclasses (OmegaConf structured configs) loaded from a YAML file
plus dotted ``key=value`` overrides, with the config hashes and resume rules of a run.

Owns :mod:`~tfpipe.config.schema` (the dataclasses), :mod:`~tfpipe.config.tree` (placing overrides),
:mod:`~tfpipe.config.loading` (files, hashes, resume rules; re-exported here) and
:mod:`~tfpipe.config.reference` (the generator of ``docs/configuration.md``, run only by
``python -m tfpipe.config --reference``). May import :mod:`tfpipe.config.models` (each model's own
config class) and nothing that loads TensorFlow: ``--help`` and config errors stay instant.
"""

from tfpipe.config.loading import (
    PACKAGED_CONFIGS,
    changed_fields,
    config_from_dict,
    config_hash,
    config_path,
    config_to_dict,
    dump_config,
    flatten_tree,
    is_resume_mutable,
    load_config,
    load_saved_config,
    normalized_tree,
    resume_conflicts,
    yaml_error_line,
)
from tfpipe.config.models import LossConfig, ModelConfig
from tfpipe.config.schema import (
    PRECISIONS,
    REPRESENTATIONS,
    RESUME_MUTABLE,
    SESSION_KEYS,
    VAL_SPLITS,
    ConfigError,
    DataConfig,
    FinetuneConfig,
    OptimConfig,
    SourceConfig,
    TrackingConfig,
    TrainConfig,
    parse_duration,
)

__all__ = [
    "PACKAGED_CONFIGS", "PRECISIONS", "REPRESENTATIONS", "RESUME_MUTABLE", "SESSION_KEYS", "VAL_SPLITS",
    "ConfigError", "DataConfig", "FinetuneConfig", "LossConfig", "ModelConfig", "OptimConfig",
    "SourceConfig",
    "TrackingConfig", "TrainConfig", "changed_fields", "config_from_dict", "config_hash", "config_path",
    "config_to_dict", "dump_config", "flatten_tree", "is_resume_mutable", "load_config", "load_saved_config",
    "normalized_tree",
    "parse_duration", "resume_conflicts", "yaml_error_line",
]  # fmt: skip
