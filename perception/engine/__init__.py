"""The training engine: checkpoints now; the trainer joins later.

Checkpoints are safetensors + JSON + YAML (never pickle), written atomically, with a
manifest that carries a format version and the sha256 of every file.
"""

from .checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    TrainingState,
    find_latest,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointError",
    "TrainingState",
    "find_latest",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
]
