"""The nuScenes vocabulary the synthetic world writes, and what each detection class looks like.

Sizes are (w, l, h) in metres as in nuScenes' `sample_annotation.size`; colours are RGB in 0..255;
LiDAR reflectivity is on nuScenes' intensity scale (0..255).

An object's visible body is built from one or more `Part`s, sub-boxes of the body box (the
annotation box shrunk by a small margin), so that its shape is not symmetric front to back where
the real thing is not: a car's cabin is set back behind a long hood, a truck's cab is lower than
its cargo box, a trailer has a drawbar at the front, a rider sits at the back of a cycle. A LiDAR
can then tell the heading. The annotation box is the box around the whole body whatever its parts.
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
    along l and v along w. The box is the part that carries the decal (see `Part`). `role` names a
    colour that each instance resolves (`layout._Builder.style`).
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


def _head_lamps(v0: float, v1: float) -> tuple[Decal, ...]:
    # Head lamps (front) and tail lamps (back) give the heading away, as on real vehicles.
    return (
        Decal(FRONT, 0.07, 0.24, v0, v1, "lamp_front"),
        Decal(FRONT, 0.76, 0.93, v0, v1, "lamp_front"),
    )


def _tail_lamps(v0: float, v1: float, inset: float = 0.07, size: float = 0.17) -> tuple[Decal, ...]:
    return (
        Decal(BACK, inset, inset + size, v0, v1, "lamp_back"),
        Decal(BACK, 1.0 - inset - size, 1.0 - inset, v0, v1, "lamp_back"),
    )


def _lamps(v0: float, v1: float) -> tuple[Decal, ...]:
    return _head_lamps(v0, v1) + _tail_lamps(v0, v1)


def _top(role: str) -> tuple[Decal, ...]:
    return (Decal(TOP, 0.0, 1.0, 0.0, 1.0, role),)


@dataclass(frozen=True)
class Part:
    """One box of an object's visible body, in the object's own frame as fractions of the body.

    The body box is the annotation box shrunk by the object's margin (standing on the ground).
    Along its length l the part spans x0..x1 (in [-0.5, 0.5], +x is the FRONT, the heading
    direction); across its width w a centred fraction `width` (in (0, 1]); up its height h
    z0..z1 (in [0, 1], 0 is the ground). `decals` is the part's look; their v runs up the part.
    """

    x0: float
    x1: float
    width: float
    z0: float
    z1: float
    decals: tuple[Decal, ...]

    def __post_init__(self) -> None:
        if not (-0.5 <= self.x0 < self.x1 <= 0.5 and 0.0 < self.width <= 1.0):
            raise ValueError(f"part outside the body along l or w: {self}")
        if not 0.0 <= self.z0 < self.z1 <= 1.0:
            raise ValueError(f"part outside the body along h: {self}")

    def rests_on(self, other: Part) -> bool:
        """Whether this part sits on top of `other` (above it, footprints overlapping): seen from
        above the lower part's top, the upper one is never hidden by it (the painter's order)."""
        return (
            self.z0 > 0.0
            and self.z0 >= other.z1 - 1e-9
            and self.x0 < other.x1
            and other.x0 < self.x1
        )


def whole_body(decals: tuple[Decal, ...]) -> Part:
    """The single part of an object that is one box: the whole body."""
    return Part(-0.5, 0.5, 1.0, 0.0, 1.0, decals)


def part_layers(parts: tuple[Part, ...]) -> tuple[int, ...]:
    """Painter's layer of each part within one object: 0 on the ground, 1 + the highest layer
    of the parts it rests on otherwise (drawn after them)."""
    layers = [0] * len(parts)
    for _ in parts:  # longest chain of supports is at most len(parts) long
        layers = [
            max([0] + [layers[j] + 1 for j, q in enumerate(parts) if p.rests_on(q)]) for p in parts
        ]
    return tuple(layers)


@dataclass(frozen=True)
class ClassSpec:
    """Appearance and statistics of one detection class.

    mean_wlh: nuScenes mean size (w, l, h) in metres; size_std: relative per-instance spread;
    reflectivity: LiDAR intensity at short range, head-on; palette: body colours (RGB);
    accents: secondary colours (trousers, rider, stripes). The look is either `decals` (the body
    is one box) or `parts` (the body is several boxes, each with its own decals);
    `riderless_parts`, for cycles, is the body of a parked cycle without its rider.
    """

    name: str
    mean_wlh: tuple[float, float, float]
    size_std: float
    reflectivity: float
    palette: tuple[RGB, ...]
    accents: tuple[RGB, ...]
    decals: tuple[Decal, ...] = ()
    parts: tuple[Part, ...] = ()
    riderless_parts: tuple[Part, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.decals) == bool(self.parts):
            raise ValueError(f"{self.name}: give either decals (one box) or parts")

    def body(self, *, with_rider: bool = True) -> tuple[Part, ...]:
        """The parts of one object's body (one part, the whole body, unless `parts` is given)."""
        if not with_rider and self.riderless_parts:
            return self.riderless_parts
        return self.parts or (whole_body(self.decals),)


def _rider(*, helmet: bool) -> Part:
    # A cycle's rider: the torso (jacket) and head above the machine, set back from its front.
    head = "helmet" if helmet else "skin"
    return Part(
        -0.3, 0.05, 0.9, 0.6, 1.0,
        bands((0.0, 0.72, "accent"), (0.72, 1.0, head)) + _top("helmet" if helmet else "hair"),
    )  # fmt: skip


# Bodies of the classes that are not one box: Part(x0, x1, width, z0, z1, decals), see `Part`.
_CAR_PARTS: tuple[Part, ...] = (
    # Lower body: sills and wheels, doors, bonnet and boot lid; lamps at both ends.
    Part(
        -0.5, 0.5, 1.0, 0.0, 0.55,
        bands((0.0, 0.4, "dark"), (0.4, 1.0, "body")) + _lamps(0.73, 0.93)
        + _top("body"),
    ),
    # Cabin, set back: a long bonnet in front, a short boot behind.
    Part(
        -0.35, 0.15, 0.9, 0.55, 1.0,
        bands((0.0, 0.73, "glass"), (0.73, 1.0, "body"))
        + (Decal(LEFT | RIGHT, 0.46, 0.54, 0.0, 0.73, "body"),)  # B pillars
        + _top("body"),
    ),
)  # fmt: skip

_TRUCK_PARTS: tuple[Part, ...] = (
    # Cab at the front, lower and a little narrower than the cargo box behind it.
    Part(
        0.22, 0.5, 0.95, 0.0, 0.8,
        bands((0.0, 0.2, "dark"), (0.2, 0.58, "body"), (0.58, 0.88, "glass"))
        + bands((0.88, 1.0, "body")) + _head_lamps(0.26, 0.34) + _top("body"),
    ),
    Part(
        -0.5, 0.18, 1.0, 0.0, 1.0,
        bands((0.0, 0.15, "dark"), (0.15, 1.0, "body")) + _tail_lamps(0.18, 0.24)
        + _top("body"),
    ),
)  # fmt: skip

_CONSTRUCTION_PARTS: tuple[Part, ...] = (
    # Low chassis (wheels or tracks), the cab on its back end, an arm reaching forward.
    Part(
        -0.5, 0.5, 1.0, 0.0, 0.4,
        bands((0.0, 0.6, "dark"), (0.6, 1.0, "body")) + _top("body"),
    ),
    Part(
        -0.5, -0.1, 0.7, 0.4, 1.0,
        bands((0.0, 0.12, "body"), (0.12, 0.8, "glass"), (0.8, 1.0, "body"))
        + _top("body"),
    ),
    Part(-0.1, 0.45, 0.18, 0.4, 0.7, bands((0.0, 1.0, "body")) + _top("body")),
)  # fmt: skip

_TRAILER_PARTS: tuple[Part, ...] = (
    # The box, lifted on its wheels at the back; a drawbar reaches forward to the hitch.
    Part(
        -0.5, 0.38, 1.0, 0.12, 1.0,
        bands((0.0, 0.06, "dark"), (0.06, 1.0, "body"))
        + _tail_lamps(0.14, 0.2, inset=0.05, size=0.13) + _top("body"),
    ),
    Part(-0.45, -0.15, 1.0, 0.0, 0.12, bands((0.0, 1.0, "dark")) + _top("dark")),
    Part(0.38, 0.5, 0.15, 0.1, 0.25, bands((0.0, 1.0, "dark")) + _top("dark")),
)  # fmt: skip

_MOTORCYCLE_PARTS: tuple[Part, ...] = (
    # The machine, narrower than the box; the rider sits towards the back.
    Part(
        -0.5, 0.5, 0.5, 0.0, 0.6,
        bands((0.0, 0.5, "dark"), (0.5, 1.0, "body"))
        + (Decal(FRONT, 0.25, 0.75, 0.75, 0.9, "lamp_front"),)
        + _tail_lamps(0.74, 0.84, inset=0.3, size=0.4) + _top("body"),
    ),
    _rider(helmet=True),
)  # fmt: skip

_MOTORCYCLE_RIDERLESS_PARTS: tuple[Part, ...] = (
    # Parked: the machine alone, its handlebar and screen standing up at the front.
    Part(
        -0.5, 0.5, 0.6, 0.0, 0.72,
        bands((0.0, 0.45, "dark"), (0.45, 1.0, "body"))
        + (Decal(FRONT, 0.25, 0.75, 0.7, 0.85, "lamp_front"),)
        + _tail_lamps(0.7, 0.8, inset=0.3, size=0.4) + _top("body"),
    ),
    Part(
        0.22, 0.42, 1.0, 0.72, 1.0,
        bands((0.0, 0.5, "body"), (0.5, 1.0, "dark")) + _top("dark"),
    ),
)  # fmt: skip

_BICYCLE_PARTS: tuple[Part, ...] = (
    Part(
        -0.5, 0.5, 0.5, 0.0, 0.6,
        bands((0.0, 0.7, "dark"), (0.7, 1.0, "body")) + _top("body"),
    ),
    _rider(helmet=False),
)  # fmt: skip

_BICYCLE_RIDERLESS_PARTS: tuple[Part, ...] = (
    # Parked: wheels and frame, the handlebar at the front above the saddle.
    Part(
        -0.5, 0.5, 0.4, 0.0, 0.75,
        bands((0.0, 0.6, "dark"), (0.6, 1.0, "body")) + _top("body"),
    ),
    Part(0.25, 0.4, 1.0, 0.75, 1.0, bands((0.0, 1.0, "dark")) + _top("dark")),
    Part(-0.22, -0.05, 0.35, 0.75, 0.88, bands((0.0, 1.0, "dark")) + _top("dark")),
)  # fmt: skip

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
            parts=_CAR_PARTS,
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
            parts=_TRUCK_PARTS,
        ),
        ClassSpec(
            "construction_vehicle",
            (2.85, 6.37, 3.19),
            0.15,
            40.0,
            ((226, 182, 32), (230, 132, 24), (200, 162, 60), (220, 220, 210)),
            ((40, 40, 40),),
            parts=_CONSTRUCTION_PARTS,
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
            parts=_TRAILER_PARTS,
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
            parts=_MOTORCYCLE_PARTS,
            riderless_parts=_MOTORCYCLE_RIDERLESS_PARTS,
        ),
        ClassSpec(
            "bicycle",
            (0.60, 1.70, 1.28),
            0.08,
            22.0,
            ((30, 30, 32), (120, 120, 124), (160, 36, 36), (40, 70, 150), (220, 220, 220)),
            _CLOTHES,
            parts=_BICYCLE_PARTS,
            riderless_parts=_BICYCLE_RIDERLESS_PARTS,
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
