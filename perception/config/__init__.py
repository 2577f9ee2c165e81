"""Experiment configs: YAML data (never executed) validated into typed, frozen classes."""

from .loader import (
    ConfigError,
    add_override_option,
    apply_overrides,
    load_config,
    parse_config,
    save_config,
)
from .schema import (
    AugmentConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    ImageAugConfig,
    LidarAugConfig,
)

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "ImageAugConfig",
    "LidarAugConfig",
    "add_override_option",
    "apply_overrides",
    "load_config",
    "parse_config",
    "save_config",
]
