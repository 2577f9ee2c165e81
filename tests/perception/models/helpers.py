"""What tests of many folders share for a small detector: the micro config and a random batch.

Import from here (`from tests.perception.models.helpers import MICRO, micro_config`), not
from a test module: tests depend on helpers, never on other tests.
"""

from __future__ import annotations

from perception.config import parse_config
from perception.datasets.random_batch import random_batch
from perception.structures import Batch

# A micro detector for fast tests: 16 x 16 BEV cells of 3.2 m over +-25.6 m.
MICRO = {
    "data": {"sweeps": 1, "clip_frames": 2, "point_range": [-25.6, -25.6, -4.0, 25.6, 25.6, 2.4]},
    "augment": {"image": {"final_size": [176, 64]}},
    "model": {
        "camera": {"variant": "b0", "neck_channels": 16, "context_channels": 8, "out_channels": 16,
                   "depth_bins": [1.0, 26.0, 1.0], "bev_cell": 1.6, "bev_downsample": 2},
        "lidar": {"voxel_size": [0.4, 0.4, 0.4], "stem_channels": 8, "stage_channels": [8, 16, 16],
                  "stage_blocks": [0, 1, 0], "z_strides": [2, 2, 2], "out_channels": 16},
        "fuser_channels": 16,
        "decoder": {"channels": [16, 16], "layers": [1, 1], "strides": [1, 2],
                    "neck_channels": [16, 16], "upsample_strides": [1.0, 2.0]},
        "head": {"shared_channels": 16, "head_channels": 16, "min_radius": 1},
    },
}  # fmt: skip


def micro_config(*overrides: str):
    return parse_config(MICRO, list(overrides))


def synthetic_batch(config, batch_size: int = 2, seed: int = 0) -> Batch:
    return random_batch(config, batch_size=batch_size, seed=seed)
