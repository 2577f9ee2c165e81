"""The training engine: checkpoints, the training loop with its hooks (`hooks.py`: time
budget, LiDAR first, freezing, logging, evaluation, checkpointing) and what makes `torchrun`
training follow one process on the global batch (`distributed.py`).

Checkpoints are safetensors + JSON + YAML (never pickle), written atomically, with a
manifest that carries a format version and the sha256 of every file.
"""

from .checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    TrainingState,
    find_latest,
    load_checkpoint,
    load_partial_weights,
    load_weights,
    save_checkpoint,
)
from .distributed import (
    SyncBatchNorm,
    SyncSparseBatchNorm,
    convert_sync_batchnorm,
    global_batch,
    global_mean_normaliser,
)
from .hooks import (
    Distill,
    Freeze,
    Hook,
    JsonLog,
    LidarFirst,
    PeriodicCheckpoint,
    PeriodicEval,
    PeriodicLog,
    ProgressBar,
    TimeBudget,
    build_hooks,
)
from .trainer import (
    DistributedInfo,
    NonFiniteLossError,
    Trainer,
    cleanup_distributed,
    lr_factor,
    seed_everything,
    seed_step,
    setup_distributed,
)

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointError",
    "Distill",
    "DistributedInfo",
    "Freeze",
    "Hook",
    "JsonLog",
    "LidarFirst",
    "NonFiniteLossError",
    "PeriodicCheckpoint",
    "PeriodicEval",
    "PeriodicLog",
    "ProgressBar",
    "SyncBatchNorm",
    "SyncSparseBatchNorm",
    "TimeBudget",
    "Trainer",
    "TrainingState",
    "cleanup_distributed",
    "convert_sync_batchnorm",
    "find_latest",
    "build_hooks",
    "global_batch",
    "global_mean_normaliser",
    "load_checkpoint",
    "load_partial_weights",
    "load_weights",
    "lr_factor",
    "save_checkpoint",
    "seed_everything",
    "seed_step",
    "setup_distributed",
]
