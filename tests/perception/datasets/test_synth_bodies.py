"""Objects of the synthetic world have shaped bodies (parts) inside unchanged annotation boxes, so
that a LiDAR can tell a vehicle's front from its back."""

from __future__ import annotations

import numpy as np
import pytest

from perception.datasets.synth.catalog import BACK, CLASS_SPECS, FRONT, Part, part_layers
from perception.datasets.synth.layout import GroundRaster, Objects, _Builder, make_layout
from perception.datasets.synth.lidar import cast
from perception.datasets.synth.road import Road, Tracks

ONE_BOX = ("bus", "pedestrian", "barrier", "traffic_cone")


@pytest.fixture(scope="module")
def layout():
    return make_layout(
        np.random.default_rng(0), key_times=np.arange(4) * 0.5, duration=1.5, location="boston"
    )


def _in_object_frame(points: np.ndarray, centre: np.ndarray, yaw: float) -> np.ndarray:
    """points [N,3] global -> object frame (x forward along l, y left along w, z up) [N,3]."""
    c, s = np.cos(yaw), np.sin(yaw)
    rel = points - centre
    return np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], 1)


def test_every_part_lies_inside_its_annotation_box(layout):
    objects: Objects = layout.objects
    road = layout.road
    for t in (0.0, 1.5):
        centre, yaw, _ = objects.boxes(road, t)
        prisms = objects.prisms(road, t)
        assert np.array_equal(prisms.object, objects.part_object)
        assert np.all(np.diff(prisms.object) >= 0)  # an object's prisms are consecutive
        for i in range(len(prisms.object)):
            obj = prisms.object[i]
            np.testing.assert_allclose(prisms.yaw[i], yaw[obj])
            # The prism's 8 corners, in the object's frame.
            w, l, h = prisms.wlh[i]
            sx, sy, sz = np.meshgrid([-0.5, 0.5], [-0.5, 0.5], [-0.5, 0.5], indexing="ij")
            local = np.stack([sx.ravel() * l, sy.ravel() * w, sz.ravel() * h], 1)
            c, s = np.cos(yaw[obj]), np.sin(yaw[obj])
            corners = prisms.centre[i] + np.stack(
                [c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]],
                axis=1,
            )
            inside = _in_object_frame(corners, centre[obj], yaw[obj])
            bw, bl, bh = objects.wlh[obj]
            half = np.array([bl, bw, bh]) / 2 + 1e-9
            assert np.all(np.abs(inside) <= half), (objects.detection[obj], i)


def test_one_prism_for_classes_without_parts_and_one_per_part_otherwise(layout):
    objects: Objects = layout.objects
    counts = np.bincount(objects.part_object, minlength=len(objects))
    prisms = objects.prisms(layout.road, 0.0)
    seen = set()
    for obj, det in enumerate(objects.detection):
        spec = CLASS_SPECS[det]
        expected = len(spec.body(with_rider=objects.kind[obj] != "parked_cycle"))
        assert counts[obj] == expected, det
        if det in ONE_BOX:
            assert not spec.parts and counts[obj] == 1
            # Exactly the old body: the annotation box shrunk by the margin, on the ground.
            (i,) = np.flatnonzero(prisms.object == obj)
            m = objects.margin[obj]
            np.testing.assert_array_equal(prisms.wlh[i], objects.wlh[obj] - [2 * m, 2 * m, m])
            np.testing.assert_array_equal(prisms.centre[i, 2], prisms.wlh[i, 2] / 2)
        seen.add(det)
    assert {"car", "truck", "bus", "pedestrian", "bicycle"} <= seen
    assert all(len(CLASS_SPECS[d].body()) > 1 for d in ("car", "truck", "trailer", "motorcycle"))


@pytest.mark.parametrize("name", sorted(CLASS_SPECS))
def test_parts_are_valid_and_lamps_stay_at_the_vehicle_ends(name: str):
    spec = CLASS_SPECS[name]
    for parts in (spec.body(), spec.body(with_rider=False)):
        assert len(part_layers(parts)) == len(parts)
        for part in parts:
            for decal in part.decals:
                if decal.role == "lamp_front":
                    assert decal.faces == FRONT and part.x1 == 0.5, name
                if decal.role == "lamp_back":
                    assert decal.faces == BACK and part.x0 == -0.5, name
    with pytest.raises(ValueError):
        Part(-0.6, 0.5, 1.0, 0.0, 1.0, ())
    with pytest.raises(ValueError):
        Part(-0.5, 0.5, 1.0, 0.5, 0.4, ())


def _lone_object(det: str, yaw: float) -> tuple[Objects, Road]:
    """One object of class `det`, its centre 8 m to the left (+y) of the origin, heading `yaw`."""
    road = Road(
        seg_s0=np.zeros(1), seg_xy0=np.array([[-50.0, 0.0]]), seg_heading0=np.zeros(1),
        seg_curvature=np.zeros(1), length=100.0,
    )  # fmt: skip
    ego = Tracks(*(np.zeros(1) for _ in range(5)))
    b = _Builder(
        rng=np.random.default_rng(1), road=road, drive_side=1, ego=ego, key_times=np.zeros(1)
    )
    wlh = np.array(CLASS_SPECS[det].mean_wlh)
    b.add_object(det, det, "parked", wlh, s0=50.0, v=0.0, d=8.0, yaw_offset=yaw)
    return b.objects(), road


@pytest.mark.parametrize("yaw", [0.0, np.pi])
@pytest.mark.parametrize(
    "det, high",
    [("car", 0.6), ("truck", 0.85), ("construction_vehicle", 0.75), ("motorcycle", 0.65)],
)
def test_lidar_sees_which_end_is_the_front(det: str, high: float, yaw: float):
    """Broadside to the sensor, the upper points of a vehicle (a car's cabin, a truck's cargo box
    above its cab, a rider) lie mostly in the rear half of its box, whichever way it faces."""
    objects, road = _lone_object(det, yaw)
    ground = GroundRaster(0.0, 0.0, 1.0, np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.uint8))
    origin = np.array([0.0, 0.0, 1.84])
    prisms = objects.prisms(road, 0.0)
    sweep = cast(prisms, ground, origin, np.eye(3), len(objects), np.random.default_rng(2))
    # Nothing is in the way, so every ray through the object ends on it, counted once.
    assert sweep.hits_visible[0] == sweep.hits_total[0] > 0
    centre, box_yaw, _ = objects.boxes(road, 0.0)
    local = _in_object_frame(sweep.points[:, :3] + origin, centre[0], box_yaw[0])
    w, l, h = objects.wlh[0]
    on_object = np.all(np.abs(local) <= np.array([l, w, h]) / 2 + 0.1, axis=1)
    upper = local[on_object & (local[:, 2] + h / 2 > high * h)]
    assert len(upper) >= 15, len(upper)
    rear = float(np.mean(upper[:, 0] < 0.0))
    assert rear > 0.6, rear
