"""Detection heads on the BEV map: CenterPoint-style centre heatmaps with box regression."""

from .centerpoint import (
    CenterPointHead,
    DecodeConfig,
    LossWeights,
    TaskHead,
    TaskOutput,
    undo_lidar_aug,
)
from .losses import attribute_loss, gaussian_focal_loss, weighted_l1_loss
from .targets import (
    NUM_REGRESSION,
    REGRESSION_CHANNELS,
    TargetConfig,
    TaskTargets,
    build_targets,
    decode_boxes,
    direction_targets,
    draw_gaussian,
    encode_boxes,
    gaussian_2d,
    gaussian_radius,
    heading_from_axis,
)
from .tasks import NUSCENES_TASKS, CircleNMS, DetectionTask, RotatedNMS

__all__ = [
    "NUM_REGRESSION",
    "NUSCENES_TASKS",
    "REGRESSION_CHANNELS",
    "CenterPointHead",
    "CircleNMS",
    "DecodeConfig",
    "DetectionTask",
    "LossWeights",
    "RotatedNMS",
    "TargetConfig",
    "TaskHead",
    "TaskOutput",
    "TaskTargets",
    "attribute_loss",
    "build_targets",
    "decode_boxes",
    "direction_targets",
    "draw_gaussian",
    "encode_boxes",
    "gaussian_2d",
    "gaussian_radius",
    "gaussian_focal_loss",
    "heading_from_axis",
    "undo_lidar_aug",
    "weighted_l1_loss",
]
