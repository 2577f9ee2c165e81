"""One scene's world: road, ego trajectory, annotated objects and their motion, static clutter.

Frames and units: global frame (x east, y north, z up, metres, ground plane z = 0); road
coordinates (s, d) as in `road.py`; times in seconds from the scene start. Boxes follow
nuScenes: centre, size (w, l, h), yaw of the l axis; a box stands on the ground (bottom z = 0).

Cross-section of the road (|d| in metres, mirrored on both sides of the centreline):
    0 .. 7      two traffic lanes per direction (3.5 m each)
    7 .. 8.5    bike lane
    8.5 .. 11.5 parking strip (parked vehicles, construction zones)
    11.5 .. 15.5 sidewalk (kerb strip with trees/poles at ~12.1, pedestrians, street furniture)
    >= 16.5     buildings, walls
Traffic drives on the right in Boston and on the left in Singapore, as in nuScenes.

An annotated object's visible body is one or more boxes (its class's `catalog.Part`s, e.g. a
car's lower body and its set-back cabin), all inside its annotation box; the sensors see those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from perception.datasets.synth.catalog import (
    CLASS_SPECS,
    EMISSIVE_ROLES,
    HAIR,
    ROLE_COLOURS,
    SIDES,
    SKIN,
    TOP,
    Decal,
    Part,
    bands,
    part_layers,
)
from perception.datasets.synth.road import Road, Tracks, make_road

LANE_WIDTH = 3.5
BIKE_LANE_D = 7.75
KERB_D = 11.5
KERB_STRIP_D = 12.1
SIDEWALK_OUTER_D = 15.5
BUILDING_MIN_D = 16.5
RELEVANT_RANGE = 80.0  # objects farther than this from the ego at every keyframe are not created
CLUTTER_RANGE = 140.0  # clutter and ground are built this far behind/ahead of the ego's path

# A style is a tuple of resolved decals: (faces, u0, u1, v0, v1, rgb float32 [3], emissive).
StyledDecal = tuple[int, float, float, float, float, np.ndarray, bool]
Style = tuple[StyledDecal, ...]


@dataclass(frozen=True)
class Prisms:
    """N yaw-only boxes at one instant, global frame: what the LiDAR and cameras see.

    centre [N,3] m, wlh [N,3] m, yaw [N] rad, style [N] index into `SceneLayout.styles`,
    reflectivity [N] LiDAR intensity scale, object [N] index into the annotated objects or -1
    (an object with several parts has several prisms, consecutive, all with its index),
    layer [N] painter's order among one object's prisms (a part resting on another is drawn
    after it, see `catalog.part_layers`; 0 for single boxes).
    """

    centre: np.ndarray
    wlh: np.ndarray
    yaw: np.ndarray
    style: np.ndarray
    reflectivity: np.ndarray
    object: np.ndarray
    layer: np.ndarray

    @staticmethod
    def concat(parts: list[Prisms]) -> Prisms:
        return Prisms(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in Prisms.__dataclass_fields__)
        )


@dataclass(frozen=True)
class GroundRaster:
    """Top-down picture of the ground: pixel (row, col) covers global
    (x0 + col * resolution, y0 + row * resolution). bgr [H,W,3] uint8, intensity [H,W] uint8."""

    x0: float
    y0: float
    resolution: float
    bgr: np.ndarray
    intensity: np.ndarray


@dataclass(frozen=True)
class Objects:
    """The annotated objects of a scene (one per nuScenes instance).

    category: nuScenes category names; detection: detection class names; kind: how it behaves
    ('lane', 'parked', 'stopped', 'walking', 'standing', 'sitting', 'parked_cycle', 'riding',
    'static'); wlh [N,3] annotation size (m); margin [N] how much the visible body is smaller
    than the annotation box on each side (m); tracks: motion; reflectivity [N] as in Prisms.

    The bodies' P parts, object-major: part_object [P] the object's index (non-decreasing),
    part_extent [P,5] (x0, x1, width, z0, z1) as in `catalog.Part`, part_style [P] index into
    `SceneLayout.styles`, part_layer [P] painter's layer (`catalog.part_layers`).
    """

    category: list[str]
    detection: list[str]
    kind: list[str]
    wlh: np.ndarray
    margin: np.ndarray
    tracks: Tracks
    reflectivity: np.ndarray
    part_object: np.ndarray
    part_extent: np.ndarray
    part_style: np.ndarray
    part_layer: np.ndarray

    def __len__(self) -> int:
        return len(self.category)

    def subset(self, keep: np.ndarray) -> Objects:
        """The objects where keep [N] bool is True, in their order, with their parts."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (len(self),):
            raise ValueError(f"keep must have shape ({len(self)},); got {keep.shape}")
        index = np.flatnonzero(keep)
        part_keep = keep[self.part_object]  # [P]
        new_index = np.cumsum(keep) - 1  # [N] old object index -> new one (where kept)
        t = self.tracks
        return Objects(
            category=[self.category[i] for i in index],
            detection=[self.detection[i] for i in index],
            kind=[self.kind[i] for i in index],
            wlh=self.wlh[index],
            margin=self.margin[index],
            tracks=Tracks(t.s0[index], t.v[index], t.a[index], t.d[index], t.yaw_offset[index]),
            reflectivity=self.reflectivity[index],
            part_object=new_index[self.part_object[part_keep]],
            part_extent=self.part_extent[part_keep],
            part_style=self.part_style[part_keep],
            part_layer=self.part_layer[part_keep],
        )

    def boxes(self, road: Road, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Annotation boxes at time t: (centre [N,3], yaw [N], velocity [N,2]), global frame."""
        xy, yaw, velocity = self.tracks.state(road, t)
        centre = np.concatenate([xy, self.wlh[:, 2:3] / 2.0], axis=1)
        return centre, yaw, velocity

    def prisms(self, road: Road, t: float) -> Prisms:
        """The visible bodies at time t, one prism per part, object-major.

        An object's body box is its annotation box shrunk by `margin` (but on the ground); each
        part is its share of that box, with the object's yaw (a one-part body is the box).
        """
        xy, yaw, _ = self.tracks.state(road, t)
        body = self.wlh - np.stack([2 * self.margin, 2 * self.margin, self.margin], axis=1)
        o = self.part_object
        x0, x1, width, z0, z1 = self.part_extent.T  # [P] each
        w, l, h = body[o].T  # [P] each
        wlh = np.stack([w * width, l * (x1 - x0), h * (z1 - z0)], axis=1)
        forward = l * (x0 + x1) / 2.0  # part centre ahead of the body centre, along the heading
        c, s = np.cos(yaw[o]), np.sin(yaw[o])
        centre = np.stack(
            [xy[o, 0] + c * forward, xy[o, 1] + s * forward, h * (z0 + z1) / 2.0], axis=1
        )
        return Prisms(
            centre, wlh, yaw[o], self.part_style, self.reflectivity[o], o, self.part_layer
        )


@dataclass(frozen=True)
class SceneLayout:
    """Everything static or scripted about one scene (global frame)."""

    road: Road
    drive_side: int  # +1: traffic keeps right (forward lanes at d < 0); -1: keeps left
    ego: Tracks  # one track: the ego vehicle's rear axle, on the ground
    objects: Objects
    clutter: Prisms
    styles: list[Style]
    ground: GroundRaster
    sun: np.ndarray  # [3] unit vector towards the sun, global frame
    exposure: float
    sky_top: np.ndarray  # [3] BGR
    sky_horizon: np.ndarray  # [3] BGR
    description: str


@dataclass
class _Builder:
    """Accumulates objects, clutter and styles while a layout is generated."""

    rng: np.random.Generator
    road: Road
    drive_side: int
    ego: Tracks
    key_times: np.ndarray
    styles: list[Style] = field(default_factory=list)
    obj: dict[str, list] = field(
        default_factory=lambda: {
            k: []
            for k in (
                "category detection kind wlh margin s0 v a d yaw_offset parts styles reflectivity"
            ).split()
        }
    )
    clutter: dict[str, list] = field(
        default_factory=lambda: {k: [] for k in "s d z wlh yaw_offset style reflectivity".split()}
    )
    slots: dict[tuple[int, str], list[tuple[float, float]]] = field(default_factory=dict)

    # ---- placement helpers -------------------------------------------------------------------
    def free(self, side: int, strip: str, lo: float, hi: float) -> bool:
        """Reserve [lo, hi] (arc length) in a static strip if nothing is there yet."""
        taken = self.slots.setdefault((side, strip), [])
        if any(lo < b and a < hi for a, b in taken):
            return False
        taken.append((lo, hi))
        return True

    def ego_s(self, t: np.ndarray) -> np.ndarray:
        return self.ego.s0 + self.ego.v * t + 0.5 * self.ego.a * t * t

    def near_ego(self, s0: float, v: float, a: float, d: float, radius: float) -> bool:
        """Whether a track comes within `radius` of the ego (xy) at some keyframe."""
        t = self.key_times
        s = s0 + v * t + 0.5 * a * t * t
        xy, _ = self.road.point(s, np.full_like(s, d))
        exy, _ = self.road.point(self.ego_s(t), np.full_like(t, self.ego.d[0]))
        return bool(np.min(np.linalg.norm(xy - exy, axis=1)) <= radius)

    def style(self, decals: tuple[Decal, ...], instance: dict[str, np.ndarray]) -> int:
        """Resolve decals to colours: the instance's own roles ('body', 'accent', 'skin',
        'hair': RGB [3] float32), else the fixed `ROLE_COLOURS`. Returns the new style's index."""
        resolved = []
        for dec in decals:
            rgb = instance.get(dec.role)
            if rgb is None:
                rgb = np.array(ROLE_COLOURS[dec.role], dtype=np.float32)
            resolved.append(
                (dec.faces, dec.u0, dec.u1, dec.v0, dec.v1, rgb, dec.role in EMISSIVE_ROLES)
            )
        self.styles.append(tuple(resolved))
        return len(self.styles) - 1

    def jitter(self, rgb: tuple[int, int, int], amount: float = 0.12) -> np.ndarray:
        scale = 1.0 + self.rng.uniform(-amount, amount)
        return np.clip(np.array(rgb, np.float32) * scale + self.rng.normal(0, 6, 3), 0, 255).astype(
            np.float32
        )

    def size(self, detection: str) -> np.ndarray:
        spec = CLASS_SPECS[detection]
        common = self.rng.normal(0.0, spec.size_std)
        own = self.rng.normal(0.0, spec.size_std / 2.0, 3)
        return np.array(spec.mean_wlh) * np.clip(1.0 + common + own, 0.7, 1.3)

    # ---- objects -----------------------------------------------------------------------------
    def add_object(
        self,
        detection: str,
        category: str,
        kind: str,
        wlh: np.ndarray,
        *,
        s0: float,
        v: float,
        d: float,
        yaw_offset: float,
        a: float = 0.0,
        palette: tuple[tuple[int, int, int], ...] | None = None,
    ) -> None:
        spec = CLASS_SPECS[detection]
        colours = palette if palette is not None else spec.palette
        body = self.jitter(colours[self.rng.integers(len(colours))])
        accent = self.jitter(spec.accents[self.rng.integers(len(spec.accents))])
        # Annotation boxes enclose the object loosely, as human labels do; the visible body is
        # a little smaller so LiDAR points (with their noise) fall inside the labelled box.
        margin = float(np.clip(0.025 * wlh[:2].min() + 0.03, 0.03, 0.09))
        o = self.obj
        o["category"].append(category)
        o["detection"].append(detection)
        o["kind"].append(kind)
        o["wlh"].append(np.asarray(wlh, np.float64))
        o["margin"].append(margin)
        o["s0"].append(s0)
        o["v"].append(v)
        o["a"].append(a)
        o["d"].append(d)
        o["yaw_offset"].append(yaw_offset)
        # One set of instance colours for all parts, so the body is painted alike throughout.
        instance = {
            "body": body,
            "accent": accent,
            "skin": np.array(SKIN[self.rng.integers(len(SKIN))], dtype=np.float32),
            "hair": np.array(HAIR[self.rng.integers(len(HAIR))], dtype=np.float32),
        }
        parts = spec.body(with_rider=kind != "parked_cycle")
        o["parts"].append(parts)
        o["styles"].append([self.style(part.decals, instance) for part in parts])
        o["reflectivity"].append(spec.reflectivity * self.rng.uniform(0.8, 1.2))

    def add_clutter(
        self,
        s: float,
        d: float,
        wlh: tuple[float, float, float],
        style: int,
        reflectivity: float,
        *,
        z: float = 0.0,
        yaw_offset: float = 0.0,
    ) -> None:
        c = self.clutter
        c["s"].append(s)
        c["d"].append(d)
        c["z"].append(z + wlh[2] / 2.0)
        c["wlh"].append(wlh)
        c["yaw_offset"].append(yaw_offset)
        c["style"].append(style)
        c["reflectivity"].append(reflectivity)

    def objects(self) -> Objects:
        o = self.obj
        n = len(o["category"])
        arr = {k: np.array(o[k], dtype=np.float64) for k in "margin s0 v a d yaw_offset".split()}
        parts: list[tuple[Part, ...]] = o["parts"]
        extent = [(p.x0, p.x1, p.width, p.z0, p.z1) for body in parts for p in body]
        return Objects(
            category=list(o["category"]),
            detection=list(o["detection"]),
            kind=list(o["kind"]),
            wlh=np.array(o["wlh"], dtype=np.float64).reshape(n, 3),
            margin=arr["margin"],
            tracks=Tracks(arr["s0"], arr["v"], arr["a"], arr["d"], arr["yaw_offset"]),
            reflectivity=np.array(o["reflectivity"], dtype=np.float64),
            part_object=np.repeat(np.arange(n, dtype=np.int64), [len(b) for b in parts]),
            part_extent=np.array(extent, dtype=np.float64).reshape(-1, 5),
            part_style=np.array([i for styles in o["styles"] for i in styles], dtype=np.int64),
            part_layer=np.array([k for body in parts for k in part_layers(body)], dtype=np.int64),
        )

    def clutter_prisms(self) -> Prisms:
        c = self.clutter
        s = np.array(c["s"], dtype=np.float64)
        xy, heading = self.road.point(s, np.array(c["d"], dtype=np.float64))
        centre = np.concatenate([xy, np.array(c["z"], dtype=np.float64)[:, None]], axis=1)
        return Prisms(
            centre=centre,
            wlh=np.array(c["wlh"], dtype=np.float64).reshape(-1, 3),
            yaw=heading + np.array(c["yaw_offset"], dtype=np.float64),
            style=np.array(c["style"], dtype=np.int64),
            reflectivity=np.array(c["reflectivity"], dtype=np.float64),
            object=np.full(len(s), -1, dtype=np.int64),
            layer=np.zeros(len(s), dtype=np.int64),
        )


def _lane_d(drive_side: int, direction: int, lane: int) -> float:
    """Lateral offset of lane `lane` (0 = next to the centreline) for traffic along +-s."""
    return -drive_side * direction * (LANE_WIDTH / 2 + LANE_WIDTH * lane)


def _pick(rng: np.random.Generator, table: dict[str, float]) -> str:
    names = list(table)
    p = np.array([table[n] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


_LANE_MIX = {
    "car": 0.83,
    "truck": 0.08,
    "bus": 0.03,
    "construction_vehicle": 0.01,
    "motorcycle": 0.05,
}
_PARKED_MIX = {
    "car": 0.8,
    "truck": 0.07,
    "trailer": 0.035,
    "bus": 0.015,
    "construction_vehicle": 0.015,
    "motorcycle": 0.03,
}
_CATEGORY = {
    "car": "vehicle.car",
    "truck": "vehicle.truck",
    "construction_vehicle": "vehicle.construction",
    "trailer": "vehicle.trailer",
    "motorcycle": "vehicle.motorcycle",
    "bicycle": "vehicle.bicycle",
    "traffic_cone": "movable_object.trafficcone",
    "barrier": "movable_object.barrier",
}
_VEST = ((236, 140, 30), (226, 226, 60))
_POLICE = ((30, 36, 70),)


def _vehicle(b: _Builder, detection: str, *, riding: bool) -> tuple[str, np.ndarray]:
    """Category and size of a vehicle-like object (buses may be bendy, cycles may be ridden)."""
    wlh = b.size(detection)
    category = _CATEGORY.get(detection, "")
    if detection == "bus":
        bendy = b.rng.random() < 0.1
        category = "vehicle.bus.bendy" if bendy else "vehicle.bus.rigid"
        if bendy:
            wlh[1] *= 1.6
    if detection in ("bicycle", "motorcycle"):
        # A rider makes the box taller (nuScenes boxes a cycle together with its rider).
        wlh[2] = b.rng.uniform(1.55, 1.8) if riding else wlh[2] * b.rng.uniform(0.8, 0.9)
    return category, wlh


def _lane_traffic(b: _Builder, duration: float, ego_lane: tuple[int, int], mean_speed: float):
    rng, T = b.rng, duration
    for direction in (1, -1):
        for lane in (0, 1):
            d = _lane_d(b.drive_side, direction, lane)
            if (direction, lane) == ego_lane:
                # Vehicles ahead of and behind the ego share its speed profile (a platoon).
                for sign in (1, -1):
                    gap_start = 2.6 if sign > 0 else 2.4  # ego front / rear overhang
                    offset = gap_start + rng.uniform(6.0, 25.0)
                    while offset < RELEVANT_RANGE - 10:
                        det = _pick(rng, _LANE_MIX)
                        category, wlh = _vehicle(b, det, riding=True)
                        centre = offset + wlh[1] / 2
                        b.add_object(
                            det, category, "lane", wlh,
                            s0=float(b.ego.s0[0] + sign * centre), v=float(b.ego.v[0]),
                            a=float(b.ego.a[0]), d=d, yaw_offset=0.0,
                        )  # fmt: skip
                        offset += wlh[1] + rng.uniform(6.0, 30.0)
                continue
            if rng.random() < 0.12:
                speed, headway = 0.0, (1.5, 4.0)  # a queue waiting at a light
            elif direction > 0:
                speed, headway = float(np.clip(mean_speed + rng.uniform(-3, 4), 1.0, 15.0)), (8, 45)
            else:
                speed, headway = float(rng.uniform(4.0, 13.0)), (8.0, 45.0)
            v = direction * speed
            reach = RELEVANT_RANGE + 20 + 15 * T
            s = float(b.ego.s0[0]) - reach + rng.uniform(0, headway[1])
            towing = False
            while s < float(b.ego.s0[0]) + reach + 15 * T:
                det = "trailer" if towing else _pick(rng, _LANE_MIX)
                category, wlh = _vehicle(b, det, riding=True)
                # Place by rear bumper along the direction of travel.
                centre = s + wlh[1] / 2
                if b.near_ego(centre, v, 0.0, d, RELEVANT_RANGE):
                    b.add_object(
                        det, category, "lane", wlh, s0=centre, v=v, d=d,
                        yaw_offset=0.0 if direction > 0 else np.pi,
                    )  # fmt: skip
                towing = det == "truck" and rng.random() < 0.35
                s += wlh[1] + (rng.uniform(0.6, 1.0) if towing else rng.uniform(*headway))
    # Cyclists in the bike lanes.
    for direction in (1, -1):
        if rng.random() < 0.7:
            continue  # most streets have no cyclist nearby
        d = -b.drive_side * direction * BIKE_LANE_D
        speed = rng.uniform(2.5, 6.0)
        s = float(b.ego.s0[0]) - RELEVANT_RANGE - 6 * T + rng.uniform(0, 40)
        while s < float(b.ego.s0[0]) + RELEVANT_RANGE + 6 * T + 60:
            category, wlh = _vehicle(b, "bicycle", riding=True)
            if b.near_ego(s, direction * speed, 0.0, d, RELEVANT_RANGE):
                b.add_object(
                    "bicycle", category, "riding", wlh, s0=s, v=direction * speed, d=d,
                    yaw_offset=0.0 if direction > 0 else np.pi,
                )  # fmt: skip
            s += rng.uniform(25.0, 90.0)


def _parked_d(side: int, w: float) -> float:
    return side * (KERB_D - 0.2 - w / 2)


def _parked_vehicle(b: _Builder, det: str, side: int, s_lo: float) -> float | None:
    """Park one vehicle of class `det` starting at arc length s_lo; returns its length or None."""
    riding = False
    category, wlh = _vehicle(b, det, riding=riding)
    if not b.free(side, "parking", s_lo, s_lo + wlh[1]):
        return None
    # Parked along the kerb, facing the traffic on that side of the road.
    facing = 0.0 if side == -b.drive_side else np.pi
    kind = "parked"
    if det == "motorcycle":
        kind = "parked_cycle"
    elif det == "bus":
        kind = "stopped"  # at a bus stop
    b.add_object(
        det, category, kind, wlh, s0=s_lo + wlh[1] / 2, v=0.0, d=_parked_d(side, wlh[0]),
        yaw_offset=facing + b.rng.normal(0.0, 0.03),
    )  # fmt: skip
    return float(wlh[1])


def _construction_zone(b: _Builder, side: int, s_lo: float, length: float) -> bool:
    """Cones along the bike lane edge, barriers closing both ends, a machine and workers."""
    rng = b.rng
    if not b.free(side, "parking", s_lo - 1.5, s_lo + length + 1.5):
        return False
    for s in np.arange(s_lo, s_lo + length + 0.1, rng.uniform(2.5, 4.0)):
        b.add_object(
            "traffic_cone", _CATEGORY["traffic_cone"], "static", b.size("traffic_cone"),
            s0=float(s), v=0.0, d=side * 8.8, yaw_offset=rng.uniform(-np.pi, np.pi),
        )  # fmt: skip
    for s in (s_lo - 0.4, s_lo + length + 0.4):
        # A barrier's 2.5 m w axis runs across the strip here (closing the zone).
        b.add_object(
            "barrier", _CATEGORY["barrier"], "static", b.size("barrier"),
            s0=float(s), v=0.0, d=side * 10.1, yaw_offset=rng.normal(0.0, 0.05),
        )  # fmt: skip
    if length > 14 and rng.random() < 0.8:
        category, wlh = _vehicle(b, "construction_vehicle", riding=False)
        wlh[0] = min(wlh[0], 2.8)
        b.add_object(
            "construction_vehicle", category, "parked", wlh,
            s0=s_lo + length / 2, v=0.0, d=side * 10.15, yaw_offset=rng.choice([0.0, np.pi]),
        )  # fmt: skip
    for _ in range(int(rng.integers(0, 3))):
        b.add_object(
            "pedestrian", "human.pedestrian.construction_worker", "standing",
            b.size("pedestrian"), s0=s_lo + rng.uniform(0.5, 3.0), v=0.0,
            d=side * rng.uniform(9.3, 10.0), yaw_offset=rng.uniform(-np.pi, np.pi), palette=_VEST,
        )  # fmt: skip
    return True


def _barrier_run(b: _Builder, side: int, s_lo: float, count: int) -> bool:
    """Jersey barriers end to end on the kerb strip (w axis along the road)."""
    if not b.free(side, "kerb", s_lo - 0.5, s_lo + count * 2.7 + 0.5):
        return False
    for i in range(count):
        b.add_object(
            "barrier", _CATEGORY["barrier"], "static", b.size("barrier"),
            s0=s_lo + 1.3 + i * 2.7, v=0.0, d=side * KERB_STRIP_D, yaw_offset=np.pi / 2,
        )  # fmt: skip
    return True


def _pedestrian(b: _Builder, side: int, s0: float, kind: str) -> None:
    rng = b.rng
    wlh = b.size("pedestrian")
    roll = rng.random()
    category, palette = "human.pedestrian.adult", None
    if roll < 0.06:
        category = "human.pedestrian.child"
        wlh = wlh * np.array([0.8, 0.8, 0.65])
    elif roll < 0.08:
        category, palette = "human.pedestrian.police_officer", _POLICE
    if kind == "walking":
        speed = rng.uniform(0.8, 1.7) * rng.choice([-1.0, 1.0])
        b.add_object(
            "pedestrian", category, "walking", wlh, s0=s0, v=float(speed),
            d=side * rng.uniform(12.6, 15.0), yaw_offset=0.0 if speed > 0 else np.pi,
            palette=palette,
        )  # fmt: skip
    elif kind == "sitting":
        wlh[2] = rng.uniform(1.05, 1.3)
        wlh[1] = rng.uniform(0.8, 1.0)
        b.add_object(
            "pedestrian", category, "sitting", wlh, s0=s0, v=0.0, d=side * 15.0,
            yaw_offset=-side * np.pi / 2 + rng.normal(0, 0.2), palette=palette,
        )  # fmt: skip
    else:
        b.add_object(
            "pedestrian", category, "standing", wlh, s0=s0, v=0.0,
            d=side * rng.uniform(12.5, 14.8), yaw_offset=rng.uniform(-np.pi, np.pi),
            palette=palette,
        )  # fmt: skip


def _parked_bicycle(b: _Builder, side: int, s0: float) -> bool:
    if not b.free(side, "kerb", s0 - 0.5, s0 + 0.5):
        return False
    category, wlh = _vehicle(b, "bicycle", riding=False)
    b.add_object(
        "bicycle", category, "parked_cycle", wlh, s0=s0, v=0.0, d=side * 12.5,
        yaw_offset=np.pi / 2 + b.rng.normal(0, 0.15),
    )  # fmt: skip
    return True


def _roadside(b: _Builder, s_lo: float, s_hi: float) -> None:
    """Parked vehicles, construction, pedestrians and parked bicycles along [s_lo, s_hi]."""
    rng = b.rng
    span = s_hi - s_lo
    for side in (1, -1):
        if rng.random() < 0.5:
            z_len = rng.uniform(10.0, 30.0)
            _construction_zone(b, side, rng.uniform(s_lo, s_hi - z_len), z_len)
        if rng.random() < 0.4:
            _barrier_run(b, side, rng.uniform(s_lo, s_hi - 20), int(rng.integers(3, 8)))
        s = s_lo + rng.uniform(0, 10)
        while s < s_hi:
            if rng.random() < 0.25:
                s += rng.uniform(5.0, 30.0)  # driveway / no-parking stretch
                continue
            length = _parked_vehicle(b, _pick(rng, _PARKED_MIX), side, s)
            s += (length or 2.0) + rng.uniform(1.0, 5.0)
        for _ in range(rng.poisson(span / 100 * 3.0)):
            _pedestrian(b, side, rng.uniform(s_lo, s_hi), "walking")
        for _ in range(rng.poisson(span / 100 * 1.5)):
            _pedestrian(b, side, rng.uniform(s_lo, s_hi), "standing")
        for _ in range(rng.poisson(span / 100 * 0.4)):
            _pedestrian(b, side, rng.uniform(s_lo, s_hi), "sitting")
        for _ in range(rng.poisson(span / 100 * 0.3)):
            _parked_bicycle(b, side, rng.uniform(s_lo, s_hi))


# Eval ranges of the nuScenes detection benchmark (m), minus a safety margin.
_GUARANTEE_RANGE = {
    "pedestrian": 25.0,
    "traffic_cone": 25.0,
    "barrier": 25.0,
    "bicycle": 32.0,
    "motorcycle": 32.0,
}


def _guarantee_all_classes(b: _Builder) -> None:
    """Add, near the ego's mid-scene position, one object of every class not yet seen in range."""
    rng = b.rng
    t_mid = b.key_times[len(b.key_times) // 2]
    s_mid = float(b.ego_s(np.array([t_mid]))[0])
    order = ["car", "truck", "bus", "trailer", "construction_vehicle", "motorcycle"]
    order += ["bicycle", "pedestrian", "traffic_cone", "barrier"]
    for det in order:
        radius = _GUARANTEE_RANGE.get(det, 42.0)
        o = b.obj
        present = any(
            o["detection"][i] == det
            and b.near_ego(o["s0"][i], o["v"][i], o["a"][i], o["d"][i], radius)
            for i in range(len(o["category"]))
        )
        if present:
            continue
        for attempt in range(200):
            side = int(rng.choice([-1, 1]))
            s = s_mid + rng.uniform(-12.0, 12.0) * (1 + attempt / 20)
            if det in ("traffic_cone", "barrier"):
                ok = _construction_zone(b, side, s, rng.uniform(8.0, 16.0))
            elif det == "bicycle":
                ok = _parked_bicycle(b, side, s)
            elif det == "pedestrian":
                _pedestrian(b, side, s, "standing")
                ok = True
            else:
                ok = _parked_vehicle(b, det, side, s) is not None
            if ok:
                break
        else:
            raise RuntimeError(f"could not place a {det} near the ego path")


def _building_style(b: _Builder, height: float) -> int:
    rng = b.rng
    facade = b.jitter(
        [
            (200, 190, 170),
            (170, 165, 160),
            (225, 220, 210),
            (150, 82, 62),
            (120, 130, 140),
            (210, 200, 182),
            (92, 100, 115),
        ][rng.integers(7)]  # fmt: skip
    )
    window = b.jitter([(60, 70, 85), (80, 95, 110), (40, 45, 55)][rng.integers(3)])
    floor = 3.2 * max(1, int(np.ceil(height / 3.2 / 6)))  # at most ~6 window rows drawn
    spec: list[tuple[float, float, str]] = [(0.0, min(1.0, 3.0 / height), "accent")]
    z = 3.6
    while z + 2.0 < height:
        spec.append((z / height, min(1.0, (z + 1.5) / height), "glass_row"))
        z += floor
    decals = list(bands(*[(v0, v1, "body" if r == "glass_row" else r) for v0, v1, r in spec]))
    resolved = [
        (SIDES, 0.0, 1.0, 0.0, 1.0, facade, False),
        (TOP, 0.0, 1.0, 0.0, 1.0, np.array([110, 110, 108], np.float32), False),
    ]
    for (v0, v1, role), dec in zip(spec, decals):
        rgb = window * (0.8 if role == "accent" else 1.0)
        resolved.append((dec.faces, 0.04, 0.96, v0, v1, rgb.astype(np.float32), False))
    b.styles.append(tuple(resolved))
    return len(b.styles) - 1


def _plain_style(b: _Builder, rgb: tuple[int, int, int]) -> int:
    colour = b.jitter(rgb, 0.08)
    b.styles.append(((SIDES | TOP, 0.0, 1.0, 0.0, 1.0, colour, False),))
    return len(b.styles) - 1


def _clutter(b: _Builder, s_lo: float, s_hi: float) -> None:
    """Unannotated things: buildings and walls, trees, poles, signs, street furniture."""
    rng = b.rng
    for side in (1, -1):
        s = s_lo
        while s < s_hi:
            length = rng.uniform(8.0, 40.0)
            front = rng.uniform(BUILDING_MIN_D, 22.0)
            if rng.random() < 0.8:
                depth, height = rng.uniform(8.0, 25.0), rng.uniform(4.0, 30.0)
                b.add_clutter(
                    s + length / 2, side * (front + depth / 2), (depth, length, height),
                    _building_style(b, height), rng.uniform(30, 55),
                )  # fmt: skip
            else:
                height = rng.uniform(1.0, 2.5)
                b.add_clutter(
                    s + length / 2, side * (BUILDING_MIN_D + 0.2), (0.3, length, height),
                    _plain_style(b, [(150, 150, 145), (80, 86, 80), (170, 120, 90)][rng.integers(3)]),
                    rng.uniform(25, 45),
                )  # fmt: skip
            s += length + rng.uniform(0.0, 8.0)
        s = s_lo + rng.uniform(0, 8)
        while s < s_hi:
            roll = rng.random()
            if b.free(side, "kerb", s - 1.0, s + 1.0):
                d = side * KERB_STRIP_D
                if roll < 0.45:
                    trunk = rng.uniform(4.2, 5.0)
                    b.add_clutter(s, d, (0.3, 0.3, trunk), _plain_style(b, (92, 70, 50)), 15)
                    c = rng.uniform(2.5, 4.5)
                    b.add_clutter(
                        s, d, (c, c, rng.uniform(2.5, 4.5)),
                        _plain_style(b, [(50, 95, 45), (70, 110, 50), (40, 80, 40)][rng.integers(3)]),
                        12, z=trunk, yaw_offset=rng.uniform(0, np.pi),
                    )  # fmt: skip
                elif roll < 0.75:
                    b.add_clutter(
                        s,
                        d,
                        (0.25, 0.25, rng.uniform(6.0, 9.0)),
                        _plain_style(b, (122, 124, 127)),
                        60,
                    )
                else:
                    b.add_clutter(s, d, (0.1, 0.1, 2.2), _plain_style(b, (130, 130, 130)), 60)
                    plate = [(30, 70, 160), (200, 30, 30), (235, 235, 235)][rng.integers(3)]
                    b.add_clutter(s, d, (0.7, 0.05, 0.7), _plain_style(b, plate), 150, z=2.2)
            s += rng.uniform(6.0, 18.0)
        s = s_lo + rng.uniform(0, 20)
        while s < s_hi:
            kind = rng.integers(3)
            wlh = [(0.6, 0.6, 1.0), (0.6, 1.0, 1.3), (1.5, 4.0, 2.5)][kind]
            colour = [(40, 70, 50), (130, 134, 130), (70, 80, 95)][kind]
            if b.free(side, "inner", s - wlh[1] / 2, s + wlh[1] / 2):
                b.add_clutter(s, side * (SIDEWALK_OUTER_D - 0.1 - wlh[0] / 2), wlh,
                              _plain_style(b, colour), 25)  # fmt: skip
            s += rng.uniform(15.0, 45.0)


def _ground(b: _Builder, s_lo: float, s_hi: float, location: str) -> GroundRaster:
    """Rasterise asphalt, markings, bike lanes, kerbs, sidewalks and verges (BGR + intensity)."""
    rng = b.rng
    s = np.arange(s_lo, s_hi + 0.5, 0.5)
    outline, _ = b.road.point(np.concatenate([s, s]), np.concatenate([s * 0 + 40, s * 0 - 40]))
    lo, hi = outline.min(0) - 5, outline.max(0) + 5
    resolution = max(0.1, float(np.max(hi - lo)) / 4000.0)  # cap the raster at ~4000 px
    w, h = (np.ceil((hi - lo) / resolution)).astype(int)
    verge = b.jitter([(96, 112, 72), (140, 138, 130), (110, 120, 80)][rng.integers(3)], 0.06)
    bgr = np.empty((h, w, 3), np.uint8)
    bgr[:] = verge[::-1].astype(np.uint8)
    intensity = np.full((h, w), 12, np.uint8)

    def strip(d0: float, d1: float) -> np.ndarray:
        a, _ = b.road.point(s, np.full_like(s, d0))
        c, _ = b.road.point(s, np.full_like(s, d1))
        poly = np.concatenate([a, c[::-1]]) - lo
        return np.round(poly / resolution * 16).astype(np.int32)  # 4 fractional bits

    def fill(poly: np.ndarray, rgb: np.ndarray, value: int) -> None:
        cv2.fillPoly(bgr, [poly], tuple(float(x) for x in rgb[::-1]), cv2.LINE_AA, shift=4)
        cv2.fillPoly(intensity, [poly], value, cv2.LINE_8, shift=4)

    asphalt = b.jitter((74, 74, 76), 0.1)
    sidewalk = b.jitter((168, 164, 156), 0.06)
    for side in (1, -1):
        fill(strip(side * KERB_D, side * SIDEWALK_OUTER_D), sidewalk, 24)
        fill(strip(side * (KERB_D - 0.05), side * (KERB_D + 0.2)), sidewalk * 1.12, 30)
    fill(strip(-KERB_D + 0.05, KERB_D - 0.05), asphalt, 8)
    centre_colour = (222, 182, 52) if location.startswith("boston") else (230, 230, 224)
    white = np.array((232, 232, 226), np.float32)

    def line(d: float, width: float, rgb, dashed: bool) -> None:
        if not dashed:
            fill(strip(d - width / 2, d + width / 2), np.asarray(rgb, np.float32), 80)
            return
        for start in np.arange(s_lo, s_hi, 9.0):
            seg = np.arange(start, start + 3.01, 0.5)
            a, _ = b.road.point(seg, np.full_like(seg, d - width / 2))
            c, _ = b.road.point(seg, np.full_like(seg, d + width / 2))
            poly = np.round((np.concatenate([a, c[::-1]]) - lo) / resolution * 16).astype(np.int32)
            fill(poly, np.asarray(rgb, np.float32), 80)

    line(0.12, 0.12, centre_colour, False)
    line(-0.12, 0.12, centre_colour, False)
    for side in (1, -1):
        line(side * LANE_WIDTH, 0.15, white, True)
        line(side * 2 * LANE_WIDTH, 0.15, white, False)
        line(side * 8.5, 0.12, white, True)
    # Asphalt grain and wear, so the ground has texture in camera images.
    tile = cv2.GaussianBlur(rng.normal(0.0, 7.0, (256, 256)), (0, 0), 1.0)
    tile = np.repeat(np.round(tile).astype(np.int16)[..., None], 3, axis=2)
    grain = np.tile(tile, (h // 256 + 1, w // 256 + 1, 1))[:h, :w]
    bgr = cv2.add(bgr, grain, dtype=cv2.CV_8U)
    return GroundRaster(float(lo[0]), float(lo[1]), resolution, bgr, intensity)


def describe(drive_side: int, ego_speed: float, objects: Objects) -> str:
    """The scene's description (the scene table's field): traffic side, ego speed, objects."""
    counts = {det: objects.detection.count(det) for det in sorted(set(objects.detection))}
    return (
        f"Synthetic {'right' if drive_side > 0 else 'left'}-hand traffic, "
        f"ego {ego_speed:.1f} m/s, {len(objects)} objects ("
        + ", ".join(f"{n} {k}" for k, n in counts.items())
        + ")"
    )


def make_layout(
    rng: np.random.Generator, *, key_times: np.ndarray, duration: float, location: str
) -> SceneLayout:
    """Generate one scene. key_times [K]: keyframe times (s); duration: covered time span (s),
    from the first sweep (t = 0) to the last keyframe."""
    drive_side = 1 if location.startswith("boston") else -1
    if rng.random() < 0.1:
        v0, acc = 0.0, 0.0  # waiting at a light, as some nuScenes scenes do
    else:
        v0 = float(rng.uniform(4.0, 12.0))
        acc = float(np.clip(rng.uniform(-0.4, 0.4), -0.9 * v0 / max(duration, 1e-3), 1.0))
    travel = v0 * duration + 0.5 * acc * duration**2
    ego_s0 = 260.0 + 15.0 * duration
    road = make_road(
        rng,
        length=ego_s0 + travel + 260.0 + 15.0 * duration,
        start_xy=rng.uniform(300.0, 1800.0, 2),
        start_heading=float(rng.uniform(-np.pi, np.pi)),
    )
    ego_lane = (1, int(rng.integers(2)))
    ego = Tracks(
        s0=np.array([ego_s0]),
        v=np.array([v0]),
        a=np.array([acc]),
        d=np.array([_lane_d(drive_side, *ego_lane)]),
        yaw_offset=np.zeros(1),
    )
    b = _Builder(rng=rng, road=road, drive_side=drive_side, ego=ego, key_times=key_times)
    s_lo, s_hi = ego_s0 - RELEVANT_RANGE, ego_s0 + travel + RELEVANT_RANGE
    _lane_traffic(b, duration, ego_lane, max(v0, 4.0))
    _roadside(b, s_lo, s_hi)
    _guarantee_all_classes(b)
    _clutter(b, ego_s0 - CLUTTER_RANGE, ego_s0 + travel + CLUTTER_RANGE)
    ground = _ground(b, ego_s0 - CLUTTER_RANGE - 40, ego_s0 + travel + CLUTTER_RANGE + 40, location)
    sun_az, sun_el = rng.uniform(-np.pi, np.pi), rng.uniform(np.radians(25), np.radians(70))
    sun = np.array(
        [np.cos(sun_el) * np.cos(sun_az), np.cos(sun_el) * np.sin(sun_az), np.sin(sun_el)]
    )
    overcast = rng.random()
    sky_top = np.array([200, 140, 80], np.float32) * (1 - overcast) + overcast * 175
    sky_horizon = np.array([235, 215, 190], np.float32) * (1 - overcast) + overcast * 205
    objects = b.objects()
    return SceneLayout(
        road=road,
        drive_side=drive_side,
        ego=ego,
        objects=objects,
        clutter=b.clutter_prisms(),
        styles=b.styles,
        ground=ground,
        sun=sun,
        exposure=float(rng.uniform(0.85, 1.1)),
        sky_top=sky_top,
        sky_horizon=sky_horizon,
        description=describe(drive_side, float(ego.v[0]), objects),
    )
