"""The sweep and clip rules, now in `perception.datasets.sensors` (the one sensor-preprocessing
module the dataset and the node share); re-exported here for existing imports. New code imports
`perception.datasets.sensors`."""

from .sensors import (
    DEFAULT_MAX_CLIP_FRAME_AGE_S,
    DEFAULT_MAX_SWEEP_AGE_S,
    EGO_RADIUS_M,
    fresh_clip_length,
    merge_sweeps,
    sweep_reach_problem,
    within_age,
)

__all__ = [
    "DEFAULT_MAX_CLIP_FRAME_AGE_S",
    "DEFAULT_MAX_SWEEP_AGE_S",
    "EGO_RADIUS_M",
    "fresh_clip_length",
    "merge_sweeps",
    "sweep_reach_problem",
    "within_age",
]
