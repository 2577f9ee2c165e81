"""The one name registry of the object generators: a config's `kind` picks its schema, its
training function and its loader, so the tools treat every generator alike.

    config = load_generator_config("configs/generative/hart_camera.yaml", ["train.seed=1"])
    latest = train_generator(config, "work_dirs/hart_camera")
    loaded = load_any_generator("work_dirs/hart_camera")
    out = loaded.sample(conditions, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ..config import ConfigError
from ..config.loader import apply_overrides, parse_config

__all__ = [
    "GENERATOR_KINDS",
    "LoadedGenerator",
    "generator_kind_of",
    "load_any_generator",
    "load_generator_config",
    "train_generator",
]


@dataclass(frozen=True)
class _Kind:
    """Where a generator kind's parts live, as "module:name" (imported on use)."""

    schema: str  # the config class
    train: str  # train(config, work_dir, *, resume, progress, log) -> Path
    load: str  # load(path) -> (model, config, ConditionRange)
    sample: str  # sample(model, conditions, *, generator, **settings) -> GeneratedSignal

    def attr(self, field: str) -> Any:
        module, name = getattr(self, field).split(":")
        return getattr(importlib.import_module(module), name)


GENERATOR_KINDS: dict[str, _Kind] = {
    "hart": _Kind(
        schema="perception.generative.config:HARTConfig",
        train="perception.generative.hart.train:train_hart",
        load="perception.generative.hart.train:load_generator",
        sample="perception.generative.hart.model:sample",
    ),
    # the latent diffusion transformer HART is measured against (same latent, ~same size)
    "ldm": _Kind(
        schema="perception.generative.hart.baseline:LatentDiffusionConfig",
        train="perception.generative.hart.baseline:train_latent_diffusion",
        load="perception.generative.hart.baseline:load_latent_diffusion",
        sample="perception.generative.hart.baseline:sample_latent_diffusion",
    ),
    # the class-conditional DiffAugment GAN (issue #26)
    "gan": _Kind(
        schema="perception.generative.gan.config:GANConfig",
        train="perception.generative.gan.train:train_gan",
        load="perception.generative.gan.train:load_gan",
        sample="perception.generative.gan.model:sample_gan",
    ),
}


def _kind(kind: str, source: str) -> _Kind:
    if kind not in GENERATOR_KINDS:
        raise ConfigError(
            f"{source}: kind: {kind!r} is not a generator (known: {sorted(GENERATOR_KINDS)})"
        )
    return GENERATOR_KINDS[kind]


def schema_of(kind: str, source: str = "<config>") -> type[BaseModel]:
    return _kind(kind, source).attr("schema")


def load_generator_config(path: str | Path, overrides: Sequence[str] = ()) -> BaseModel:
    """Reads a generator config (YAML data only), picks its schema by `kind` (default "hart")
    and validates it with the overrides applied; errors name the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    kind = apply_overrides(copy.deepcopy(raw), list(overrides)).get("kind", "hart")
    return parse_config(
        raw, list(overrides), source=str(path), schema=schema_of(str(kind), str(path))
    )


def generator_kind_of(path: str | Path) -> str:
    """The `kind` ("hart", "ldm", ...) of a generator work dir (its config.yaml), stage dir or
    checkpoint directory, read from its saved config. FileNotFoundError without one."""
    from ..checkpoint import find_latest

    path = Path(path)
    candidates = [path / "config.yaml", path.parent / "config.yaml"]
    latest = path if (path / "model.safetensors").is_file() else find_latest(path)
    if latest is not None:
        candidates.insert(0, latest / "config.yaml")
    for config_path in candidates:
        if config_path.is_file():
            raw = yaml.safe_load(config_path.read_text())
            kind = raw.get("kind") if isinstance(raw, dict) else None
            if not isinstance(kind, str):
                raise ValueError(f"{config_path}: kind: missing or not a string ({kind!r})")
            return kind
    raise FileNotFoundError(f"{path}: no generator config.yaml (not a generator work dir)")


def train_generator(config: BaseModel, work_dir: str | Path, **kwargs) -> Path:
    """Trains the generator `config` describes (its `kind` picks how)."""
    kind = _kind(config.kind, "config")
    return kind.attr("train")(config, work_dir, **kwargs)


@dataclass(frozen=True)
class LoadedGenerator:
    """A trained generator of any kind, ready to sample."""

    kind: str
    model: Any
    config: Any
    ranges: Any  # ConditionRange
    _sample: Callable

    def sample(self, conditions, **settings):
        """`settings` are the kind's sampling keywords (e.g. guidance, steps, generator)."""
        return self._sample(self.model, conditions, **settings)


def load_any_generator(path: str | Path) -> LoadedGenerator:
    """The trained generator of a work dir or checkpoint, whatever its kind."""
    name = generator_kind_of(path)
    kind = _kind(name, str(path))
    model, config, ranges = kind.attr("load")(path)
    return LoadedGenerator(name, model, config, ranges, kind.attr("sample"))
