"""A detector from a checkpoint, in one call: the one way test, node and export load a model.

    model, info = load_model("work_dirs/bevfusion_tiny")          # the checkpoint's config
    model, info = load_model(checkpoint, config, device="cuda")   # a config of the caller's

The checkpoint is read with `perception.checkpoint` (the training engine is not imported);
the model is built with `perception.models.builder.build_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import (
    TRAINING_STATE_FILE,
    load_weights,
    read_config,
    read_training_state,
    resolve_checkpoint,
)
from ..config.schema import ExperimentConfig
from .builder import build_model
from .detector import BEVFusion


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a loaded model's weights came from."""

    path: Path  # the checkpoint directory (absolute)
    step: int | None  # the training step, when the checkpoint records it
    config: ExperimentConfig  # the config the model was built from
    saved_config: ExperimentConfig  # the checkpoint's own config.yaml, as trained


def load_model(
    checkpoint: str | Path,
    config: ExperimentConfig | None = None,
    *,
    device: torch.device | str = "cpu",
) -> tuple[BEVFusion, CheckpointInfo]:
    """Builds a detector and loads a checkpoint's weights into it; returns it in eval mode
    on `device`, with where it came from.

    Args:
        checkpoint: a checkpoint directory or a work dir (its latest checkpoint;
            `perception.checkpoint.resolve_checkpoint`).
        config: the model to build; default the checkpoint's own ``config.yaml``. Its model
            must fit the weights (keys and shapes).

    Raises:
        CheckpointNotFoundError: (a `CheckpointError` and a `FileNotFoundError`) when the path
            names no checkpoint.
        CheckpointError: a corrupt checkpoint, or weights that do not fit the model.
    """
    directory = resolve_checkpoint(checkpoint)
    if config is None:
        config = read_config(directory)
    model = build_model(config)
    saved_config = load_weights(directory, model)
    step = None
    if (directory / TRAINING_STATE_FILE).is_file():  # absent from weights-only directories
        step = read_training_state(directory)["step"]
    info = CheckpointInfo(
        path=directory.resolve(), step=step, config=config, saved_config=saved_config
    )
    return model.to(device).eval(), info
