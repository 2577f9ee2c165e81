"""The nuScenes vocabulary the synthetic world writes, and what each detection class looks like.

Sizes are (w, l, h) in metres as in nuScenes' `sample_annotation.size`; colours are RGB in 0..255;
LiDAR reflectivity is on nuScenes' intensity scale (0..255).
"""

from __future__ import annotations

from dataclasses import dataclass

from perception.structures.classes import CLASS_NAMES

# The 23 object categories of nuScenes v1.0 (name, description), in the devkit's documented order.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("animal", "All animals, e.g. cats, rats, dogs, deer, birds."),
    ("human.pedestrian.adult", "Adult subcategory."),
    ("human.pedestrian.child", "Child subcategory."),
    ("human.pedestrian.construction_worker", "Construction worker"),
    ("human.pedestrian.personal_mobility", "A small electric or self-propelled vehicle."),
    ("human.pedestrian.police_officer", "Police officer."),
    ("human.pedestrian.stroller", "Strollers."),
    ("human.pedestrian.wheelchair", "Wheelchairs."),
    ("movable_object.barrier", "Temporary road barrier placed in the scene."),
    ("movable_object.debris", "Movable object that is left on the driveable surface."),
    ("movable_object.pushable_pullable", "Objects that a pedestrian may push or pull."),
    ("movable_object.trafficcone", "All types of traffic cone."),
    ("static_object.bicycle_rack", "Area or device intended to park or secure the bicycles."),
    ("vehicle.bicycle", "Human or electric powered 2-wheeled vehicle."),
    ("vehicle.bus.bendy", "Bendy bus subcategory. Annotate each section of the bendy bus."),
    ("vehicle.bus.rigid", "Rigid bus subcategory."),
    ("vehicle.car", "Vehicle designed primarily for personal use, e.g. sedans, SUVs, vans."),
    ("vehicle.construction", "Vehicles primarily designed for construction."),
    ("vehicle.emergency.ambulance", "All types of ambulances."),
    ("vehicle.emergency.police", "All types of police vehicles."),
    ("vehicle.motorcycle", "Gasoline or electric powered 2-wheeled vehicle."),
    ("vehicle.trailer", "Any vehicle trailer, both for trucks, cars and bikes."),
    ("vehicle.truck", "Vehicles primarily designed to haul cargo."),
)

ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle, with a driver/rider in/on it, is currently stationary."),
    (
        "vehicle.parked",
        "Vehicle is stationary (usually for longer duration) with no immediate intent to move.",
    ),
    ("cycle.with_rider", "There is a rider on the bicycle or motorcycle."),
    ("cycle.without_rider", "There is NO rider on the bicycle or motorcycle."),
    ("pedestrian.sitting_lying_down", "The human is sitting or lying down."),
    ("pedestrian.standing", "The human is standing."),
    ("pedestrian.moving", "The human is moving."),
)

# (token, level, description); nuScenes' visibility tokens are the literal strings '1'..'4'.
VISIBILITIES: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)

DETECTION_CLASSES: tuple[str, ...] = CLASS_NAMES

RGB = tuple[int, int, int]

# Face bit masks of a box, in its own frame (x forward along l, y left along w, z up).
LEFT, BACK, RIGHT, FRONT, TOP = 1, 2, 4, 8, 16
SIDES = LEFT | BACK | RIGHT | FRONT


@dataclass(frozen=True)
class Decal:
    """A coloured rectangle on some faces of a box, in face coordinates.

    u runs along the face (0..1), v up the face (0..1 of the box height); on the top face u runs
    along l and v along w. `role` names a colour that each instance resolves (see `resolve_role`).
    """

    faces: int
    u0: float
    u1: float
    v0: float
    v1: float
    role: str


def bands(*spec: tuple[float, float, str], faces: int = SIDES) -> tuple[Decal, ...]:
    """Horizontal bands (v0, v1, role) around the sides of a box."""
    return tuple(Decal(faces, 0.0, 1.0, v0, v1, role) for v0, v1, role in spec)


def _lamps(v0: float, v1: float) -> tuple[Decal, ...]:
    # Head lamps (front) and tail lamps (back) give the heading away, as on real vehicles.
    return (
        Decal(FRONT, 0.07, 0.24, v0, v1, "lamp_front"),
        Decal(FRONT, 0.76, 0.93, v0, v1, "lamp_front"),
        Decal(BACK, 0.07, 0.24, v0, v1, "lamp_back"),
        Decal(BACK, 0.76, 0.93, v0, v1, "lamp_back"),
    )


@dataclass(frozen=True)
class ClassSpec:
    """Appearance and statistics of one detection class.

    mean_wlh: nuScenes mean size (w, l, h) in metres; size_std: relative per-instance spread;
    reflectivity: LiDAR intensity at short range, head-on; palette: body colours (RGB);
    accents: secondary colours (trousers, rider, stripes); decals: the look of the box.
    """

    name: str
    mean_wlh: tuple[float, float, float]
    size_std: float
    reflectivity: float
    palette: tuple[RGB, ...]
    accents: tuple[RGB, ...]
    decals: tuple[Decal, ...]


_CAR_PAINT: tuple[RGB, ...] = (
    (232, 232, 230),
    (172, 174, 177),
    (32, 32, 35),
    (104, 106, 110),
    (158, 28, 30),
    (34, 58, 128),
    (26, 36, 70),
    (190, 176, 142),
    (44, 92, 64),
)
_CLOTHES: tuple[RGB, ...] = (
    (25, 25, 28),
    (225, 225, 222),
    (120, 120, 125),
    (32, 42, 82),
    (170, 40, 40),
    (52, 96, 170),
    (60, 120, 70),
    (196, 178, 140),
    (110, 70, 45),
)
_TROUSERS: tuple[RGB, ...] = (
    (28, 28, 30),
    (34, 40, 72),
    (96, 96, 100),
    (180, 164, 130),
    (60, 80, 122),
)

CLASS_SPECS: dict[str, ClassSpec] = {
    spec.name: spec
    for spec in (
        ClassSpec(
            "car",
            (1.95, 4.62, 1.73),
            0.07,
            28.0,
            _CAR_PAINT,
            ((20, 20, 22),),
            bands((0.0, 0.22, "dark"), (0.22, 0.55, "body"), (0.55, 0.88, "glass"))
            + bands((0.88, 1.0, "body"))
            + _lamps(0.4, 0.52)
            + (Decal(TOP, 0.0, 1.0, 0.0, 1.0, "body"),),
        ),
        ClassSpec(
            "truck",
            (2.51, 6.93, 2.84),
            0.12,
            34.0,
            (
                (230, 230, 226),
                (196, 198, 194),
                (104, 106, 110),
                (40, 72, 140),
                (150, 32, 32),
                (206, 120, 34),
            ),
            ((60, 60, 64),),
            bands(
                (0.0, 0.18, "dark"), (0.18, 0.62, "body"), (0.62, 0.8, "glass"), (0.8, 1.0, "body")
            )
            + _lamps(0.22, 0.3)
            + (Decal(TOP, 0.0, 1.0, 0.0, 1.0, "body"),),
        ),
        ClassSpec(
            "construction_vehicle",
            (2.85, 6.37, 3.19),
            0.15,
            40.0,
            ((226, 182, 32), (230, 132, 24), (200, 162, 60), (220, 220, 210)),
            ((40, 40, 40),),
            bands(
                (0.0, 0.32, "dark"),
                (0.32, 0.68, "body"),
                (0.68, 0.86, "glass"),
                (0.86, 1.0, "body"),
            )
            + (Decal(TOP, 0.0, 1.0, 0.0, 1.0, "body"),),
        ),
        ClassSpec(
            "bus",
            (2.94, 10.5, 3.47),
            0.1,
            36.0,
            ((236, 236, 232), (180, 32, 36), (42, 120, 82), (36, 82, 160), (220, 180, 42)),
            ((240, 240, 240),),
            bands(
                (0.0, 0.12, "dark"),
                (0.12, 0.36, "body"),
                (0.36, 0.82, "glass"),
                (0.82, 1.0, "body"),
            )
            + _lamps(0.16, 0.24)
            + (Decal(TOP, 0.0, 1.0, 0.0, 1.0, "body"),),
        ),
        ClassSpec(
            "trailer",
            (2.90, 12.29, 3.87),
            0.12,
            32.0,
            ((226, 226, 222), (208, 208, 204), (122, 122, 126), (38, 70, 130), (160, 36, 36)),
            ((50, 50, 54),),
            bands((0.0, 0.22, "dark"), (0.22, 1.0, "body"))
            + (
                Decal(BACK, 0.05, 0.18, 0.24, 0.3, "lamp_back"),
                Decal(BACK, 0.82, 0.95, 0.24, 0.3, "lamp_back"),
                Decal(TOP, 0.0, 1.0, 0.0, 1.0, "body"),
            ),
        ),
        ClassSpec(
            "barrier",
            (2.53, 0.50, 0.98),
            0.1,
            90.0,
            ((222, 222, 216), (162, 162, 156), (230, 112, 32)),
            ((192, 40, 40), (230, 230, 230)),
            bands((0.0, 0.45, "body"), (0.45, 0.75, "accent"), (0.75, 1.0, "body"))
            + (Decal(TOP, 0.0, 1.0, 0.0, 1.0, "body"),),
        ),
        ClassSpec(
            "motorcycle",
            (0.77, 2.11, 1.47),
            0.08,
            30.0,
            ((28, 28, 30), (170, 30, 30), (40, 64, 150), (220, 220, 220), (110, 110, 114)),
            _CLOTHES,
            bands(
                (0.0, 0.3, "dark"),
                (0.3, 0.58, "body"),
                (0.58, 0.88, "accent"),
                (0.88, 1.0, "helmet"),
            )
            + (
                Decal(FRONT, 0.3, 0.7, 0.5, 0.58, "lamp_front"),
                Decal(TOP, 0.0, 1.0, 0.0, 1.0, "helmet"),
            ),
        ),
        ClassSpec(
            "bicycle",
            (0.60, 1.70, 1.28),
            0.08,
            22.0,
            ((30, 30, 32), (120, 120, 124), (160, 36, 36), (40, 70, 150), (220, 220, 220)),
            _CLOTHES,
            bands(
                (0.0, 0.42, "dark"), (0.42, 0.55, "body"), (0.55, 0.9, "accent"), (0.9, 1.0, "skin")
            )
            + (Decal(TOP, 0.0, 1.0, 0.0, 1.0, "accent"),),
        ),
        ClassSpec(
            "pedestrian",
            (0.67, 0.73, 1.77),
            0.08,
            18.0,
            _CLOTHES,
            _TROUSERS,
            bands(
                (0.0, 0.05, "dark"),
                (0.05, 0.48, "accent"),
                (0.48, 0.84, "body"),
                (0.84, 1.0, "skin"),
            )
            + (Decal(TOP, 0.0, 1.0, 0.0, 1.0, "hair"),),
        ),
        ClassSpec(
            "traffic_cone",
            (0.41, 0.41, 1.07),
            0.1,
            110.0,
            ((236, 102, 22), (242, 124, 32), (222, 72, 30)),
            ((240, 240, 240),),
            bands(
                (0.0, 0.07, "dark"),
                (0.07, 0.45, "body"),
                (0.45, 0.62, "accent"),
                (0.62, 1.0, "body"),
            )
            + (Decal(TOP, 0.0, 1.0, 0.0, 1.0, "body"),),
        ),
    )
}

# Fixed role colours (RGB); 'body' and 'accent' come from the instance.
ROLE_COLOURS: dict[str, RGB] = {
    "dark": (24, 24, 26),
    "glass": (48, 58, 70),
    "lamp_front": (250, 244, 214),
    "lamp_back": (205, 24, 22),
    "helmet": (36, 36, 40),
}
SKIN: tuple[RGB, ...] = ((236, 196, 164), (198, 150, 112), (140, 96, 66), (90, 60, 42))
HAIR: tuple[RGB, ...] = ((26, 22, 20), (70, 48, 30), (150, 120, 80), (180, 180, 180))

# Roles drawn without lighting (lamps glow).
EMISSIVE_ROLES = frozenset({"lamp_front", "lamp_back"})
