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

# One 8-bit RGB colour a class, fixed so pictures compare across runs; the pictures
# (perception.visualization) and the node's RViz markers use it. The five vehicle classes get
# five different hues; every colour keeps a contrast ratio >= 4.5 on the BEV's dark background.
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "car": (119, 170, 221),  # light blue
    "truck": (238, 136, 102),  # orange
    "construction_vehicle": (68, 187, 153),  # mint
    "bus": (255, 170, 187),  # pink
    "trailer": (238, 221, 136),  # light yellow
    "barrier": (153, 221, 255),  # light cyan
    "motorcycle": (187, 204, 51),  # pear
    "bicycle": (170, 170, 0),  # olive
    "pedestrian": (170, 136, 255),  # violet
    "traffic_cone": (204, 121, 167),  # reddish purple
}

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
