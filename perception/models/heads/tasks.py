"""Task groups of a CenterPoint-style head: which classes share a heatmap branch, and how each
group's detections are de-duplicated."""

from __future__ import annotations

import math
from dataclasses import dataclass

from perception.structures import CLASS_NAMES, VALID_ATTRIBUTES


@dataclass(frozen=True)
class CircleNMS:
    """CenterPoint's circle NMS: a lower-scored box whose BEV centre lies within `radius` (m)
    of a kept one is dropped."""

    radius: float


@dataclass(frozen=True)
class RotatedNMS:
    """Rotated-box BEV NMS (`perception.ops.nms_bev`) at `iou_threshold`."""

    iou_threshold: float


@dataclass(frozen=True)
class DetectionTask:
    """One group of classes that share a heatmap branch (one channel per class) and the
    regression branches; NMS runs across the group's classes together."""

    class_names: tuple[str, ...]
    nms: CircleNMS | RotatedNMS

    def __post_init__(self) -> None:
        unknown = [c for c in self.class_names if c not in CLASS_NAMES]
        if unknown or not self.class_names:
            raise ValueError(f"task classes must be non-empty and in CLASS_NAMES, got {unknown}")

    @property
    def labels(self) -> tuple[int, ...]:
        """Each class's index into CLASS_NAMES."""
        return tuple(CLASS_NAMES.index(c) for c in self.class_names)

    @property
    def has_attributes(self) -> bool:
        """Whether any class of the task has attributes (then the task gets an attribute
        branch)."""
        return any(VALID_ATTRIBUTES[c] for c in self.class_names)


# CenterPoint's nuScenes grouping. Its circle-NMS thresholds (4, 12, 10, 1, 0.85, 0.175) are
# compared with *squared* centre distances; here they are radii in m.
NUSCENES_TASKS: tuple[DetectionTask, ...] = tuple(
    DetectionTask(class_names=names, nms=CircleNMS(radius=math.sqrt(r2)))
    for names, r2 in (
        (("car",), 4.0),
        (("truck", "construction_vehicle"), 12.0),
        (("bus", "trailer"), 10.0),
        (("barrier",), 1.0),
        (("motorcycle", "bicycle"), 0.85),
        (("pedestrian", "traffic_cone"), 0.175),
    )
)
