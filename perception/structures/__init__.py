"""Typed structures with their frames stated once (docs/frames.md)."""

from .boxes import BOX_DIM, Boxes3D, wrap_angle
from .classes import ATTRIBUTE_NAMES, CAMERA_NAMES, CLASS_NAMES, DEFAULT_ATTRIBUTE, VALID_ATTRIBUTES
from .sample import POINT_CHANNELS, Batch, Detections, Sample

__all__ = [
    "ATTRIBUTE_NAMES",
    "BOX_DIM",
    "CAMERA_NAMES",
    "CLASS_NAMES",
    "DEFAULT_ATTRIBUTE",
    "POINT_CHANNELS",
    "VALID_ATTRIBUTES",
    "Batch",
    "Boxes3D",
    "Detections",
    "Sample",
    "wrap_angle",
]
