"""The training engine: checkpoints and the training loop.

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
from .trainer import (
    DistributedInfo,
    NonFiniteLossError,
    Trainer,
    cleanup_distributed,
    lr_factor,
    seed_everything,
    setup_distributed,
)

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointError",
    "DistributedInfo",
    "NonFiniteLossError",
    "Trainer",
    "TrainingState",
    "cleanup_distributed",
    "find_latest",
    "load_checkpoint",
    "load_weights",
    "lr_factor",
    "save_checkpoint",
    "seed_everything",
    "setup_distributed",
]
