"""Shared pieces of the node tests: a micro detector checkpoint on the tiny world and a bag of one
of its scenes."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from perception.config import parse_config
from perception.models.builder import build_model
from tests.perception.evaluation.test_inference import micro_raw

SCENE = "scene-0103"  # mini_val, 4 keyframes in the tiny world


def node_raw(root: Path, **data) -> dict:
    """The micro detector's config on the world at `root`, with `data` overrides."""
    raw = micro_raw(root)
    raw["data"] = {**raw["data"], "sweeps": 3, **data}
    return raw


def save_micro_checkpoint(raw: dict, base: Path) -> tuple[Path, Path]:
    """A seeded random micro model saved with `save_checkpoint`; returns (config, work dir)."""
    from perception.engine import save_checkpoint

    base.mkdir(parents=True, exist_ok=True)
    config_path = base / "micro.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    torch.manual_seed(0)
    config = parse_config(raw)
    save_checkpoint(base / "work", step=1, model=build_model(config), config=config)
    return config_path, base / "work"
