"""The training engine's checkpoints: saving and resuming (`save_checkpoint`,
`load_checkpoint`, `load_partial_weights`), implemented in `perception.checkpoint`.

Checkpoint reading and writing live below the engine, so that inference (test, node, export)
reads weights without importing the training loop; this module re-exports the names the
engine's callers have always imported from here. New code imports `perception.checkpoint`.
"""

from __future__ import annotations

from ..checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    CHECKPOINT_KIND,
    CHECKPOINTS_DIRNAME,
    CONFIG_FILE,
    LATEST_NAME,
    MANIFEST_NAME,
    MODEL_FILE,
    TRAINING_STATE_FILE,
    CheckpointError,
    CheckpointNotFoundError,
    TrainingState,
    find_latest,
    load_checkpoint,
    load_partial_weights,
    load_weights,
    read_config,
    read_training_state,
    resolve_checkpoint,
    save_checkpoint,
)

__all__ = [
    "CHECKPOINTS_DIRNAME",
    "CHECKPOINT_FORMAT_VERSION",
    "CHECKPOINT_KIND",
    "CONFIG_FILE",
    "LATEST_NAME",
    "MANIFEST_NAME",
    "MODEL_FILE",
    "TRAINING_STATE_FILE",
    "CheckpointError",
    "CheckpointNotFoundError",
    "TrainingState",
    "find_latest",
    "load_checkpoint",
    "load_partial_weights",
    "load_weights",
    "read_config",
    "read_training_state",
    "resolve_checkpoint",
    "save_checkpoint",
]
