"""Experiment configs: YAML data (never executed) validated into typed, frozen classes."""

from .loader import ConfigError, apply_overrides, load_config, parse_config, save_config
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
    "apply_overrides",
    "load_config",
    "parse_config",
    "save_config",
]
