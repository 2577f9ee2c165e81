"""The nuScenes detection classes and attributes, in the order the project uses everywhere."""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)

ATTRIBUTE_NAMES: tuple[str, ...] = (
    "vehicle.moving",
    "vehicle.parked",
    "vehicle.stopped",
    "pedestrian.moving",
    "pedestrian.standing",
    "pedestrian.sitting_lying_down",
    "cycle.with_rider",
    "cycle.without_rider",
)

# The attribute a detection gets when the model predicts none (barriers and cones have none;
# nuScenes' evaluation ignores the attribute for them).
DEFAULT_ATTRIBUTE: dict[str, str] = {
    "car": "vehicle.parked",
    "truck": "vehicle.parked",
    "construction_vehicle": "vehicle.parked",
    "bus": "vehicle.moving",
    "trailer": "vehicle.parked",
    "barrier": "",
    "motorcycle": "cycle.without_rider",
    "bicycle": "cycle.without_rider",
    "pedestrian": "pedestrian.moving",
    "traffic_cone": "",
}

# Attributes that are valid for each class (nuScenes' own rule).
VALID_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    **{c: ATTRIBUTE_NAMES[0:3] for c in ("car", "truck", "construction_vehicle", "bus", "trailer")},
    **{c: ATTRIBUTE_NAMES[6:8] for c in ("motorcycle", "bicycle")},
    "pedestrian": ATTRIBUTE_NAMES[3:6],
    "barrier": (),
    "traffic_cone": (),
}

CAMERA_NAMES: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
