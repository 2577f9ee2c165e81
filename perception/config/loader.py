"""Reads YAML with `safe_load`, applies typed `--set key.path=value` overrides, validates.

Errors name the file and the dotted key path, e.g.
``configs/x.yaml: data.sweeps: Input should be greater than 0 (got 0)``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ..cli import add_override_option  # noqa: F401 (re-exported; the tools use perception.cli)
from .schema import ExperimentConfig


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names where."""


Schema = TypeVar("Schema", bound=BaseModel)


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = []
    for err in error.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{source}: {path}: {message}{shown}")
    return "\n".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Returns a copy of `raw` with each `a.b.c=value` applied; `value` is parsed as YAML
    (so `3` is an int, `[1, 2]` a list, `true` a bool), then typed by validation."""
    result = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key.path=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from exc
        node = result
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {item!r}: {where} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def parse_config(
    raw: dict[str, Any] | None,
    overrides: list[str] = (),
    source: str = "<config>",
    *,
    schema: type[Schema] = ExperimentConfig,
) -> Schema:
    """Validates a mapping (as read from YAML) plus overrides into `schema` (a detector's
    `ExperimentConfig` by default; the generators have their own)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    merged = apply_overrides(raw, list(overrides))
    try:
        return schema.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def load_config(
    path: str | Path, overrides: list[str] = (), *, schema: type[Schema] = ExperimentConfig
) -> Schema:
    """Reads a YAML config file (data only: `yaml.safe_load`) and validates it into `schema`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, overrides, source=str(path), schema=schema)


def save_config(config: BaseModel, path: str | Path) -> Path:
    """Writes the fully resolved config as YAML (every default spelled out)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config.model_dump(mode="json")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
