"""GT-paste (perception.generative.paste): collision-free placement, LiDAR occlusion against a
brute-force per-point check, targets appended with rotated velocities, determinism, its place
in the training transforms, and errors naming the config key or bank file."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon

from perception.config.loader import ConfigError, parse_config
from perception.generative import paste as paste_module
from perception.generative.bank import BankObject, write_bank
from perception.generative.paste import (
    ClassPlan,
    GTPaste,
    build_paste,
    hidden_points,
    object_points,
    ray_cells,
)
from perception.structures import ATTRIBUTE_NAMES, CAMERA_NAMES, CLASS_NAMES, Boxes3D, Sample

VERSION = "v1.0-mini"
POINT_RANGE = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)


# -- a bank built in memory ------------------------------------------------------------------
def _object(index, name, box, n_points=60, velocity=(0.0, 0.0), attribute="", fill=False):
    """A BankObject of class `name` that was at `box` (LiDAR frame, 9 values): its points fill
    the front half of the box (box frame, +x; `fill`: all of it), half of them from the
    keyframe."""
    gen = np.random.default_rng(index)
    w, l, h = box[3:6]
    pts = np.zeros((n_points, 5), np.float32)
    pts[:, 0] = l / 2 * gen.uniform(-1.0 if fill else 0.5, 1.0, n_points)
    pts[:, 1] = gen.uniform(-w / 2, w / 2, n_points)
    pts[:, 2] = gen.uniform(-h / 2, h / 2, n_points)
    pts[:, 3] = 100
    pts[n_points // 2 :, 4] = 0.05
    box = np.asarray(box, np.float32)
    return BankObject(
        index=index,
        class_name=name,
        attribute=attribute,
        size=box[3:6].copy(),
        velocity=np.asarray(velocity, np.float32),
        box_lidar=box,
        ego_distance=float(np.hypot(box[0], box[1])),
        points=pts,
        views=(),
        sample_token=f"s{index}",
        instance_token=f"i{index}",
        annotation_token=f"a{index}",
        scene_name="scene-0061",
        split="mini_train",
    )


class _Bank:
    """What ClassPlan reads of an ObjectBank selection."""

    def __init__(self, objects):
        self.objects = list(objects)
        self.index_path = "memory/bank.json"

    @property
    def boxes_lidar(self):
        return np.stack([o.box_lidar for o in self.objects])

    @property
    def ego_distances(self):
        return np.array([o.ego_distance for o in self.objects], np.float32)

    def __getitem__(self, i):
        return self.objects[i]

    def __len__(self):
        return len(self.objects)


def _plan(name="bicycle", count=2, objects=None, min_points=5):
    if objects is None:
        objects = [
            _object(i, name, [8.0 + 3 * i, 2.0, -1.0, 0.6, 1.8, 1.2, 0.3 * i, 0, 0])
            for i in range(6)
        ]
    return ClassPlan.from_bank(name, count, min_points, _Bank(objects))


def _sample(boxes=None, n_points=4000, seed=0):
    """A LiDAR-only sample: points on a ring wall 30 m away and scattered ground, `boxes`."""
    gen = np.random.default_rng(seed)
    az = gen.uniform(-math.pi, math.pi, n_points)
    r = np.where(np.arange(n_points) % 2 == 0, 30.0, gen.uniform(3, 40, n_points))
    z = np.where(np.arange(n_points) % 2 == 0, gen.uniform(-1.5, 1.0, n_points), -1.8)
    pts = np.stack([r * np.cos(az), r * np.sin(az), z, np.full(n_points, 50.0), 0 * az], 1)
    boxes = np.asarray([] if boxes is None else boxes, np.float32).reshape(-1, 9)
    n = len(CAMERA_NAMES)
    return Sample(
        token="scene-sample",
        timestamp_us=0,
        points=torch.from_numpy(pts.astype(np.float32)),
        images=torch.zeros(n, 1, 3, 1, 1, dtype=torch.uint8),
        camera_names=CAMERA_NAMES,
        intrinsics=torch.eye(3).repeat(n, 1, 1),
        camera_to_lidar=torch.eye(4).repeat(n, 1, 1, 1),
        camera_time_lag=torch.zeros(n, 1),
        image_aug=torch.eye(4).repeat(n, 1, 1),
        lidar_aug=torch.eye(4),
        lidar_to_ego=torch.eye(4, dtype=torch.float64),
        ego_to_global=torch.eye(4, dtype=torch.float64),
        camera_mask=torch.ones(n, dtype=torch.bool),
        lidar_present=True,
        gt_boxes=Boxes3D(torch.from_numpy(boxes)),
        gt_labels=torch.zeros(len(boxes), dtype=torch.int64),
        gt_attributes=torch.full((len(boxes),), -1, dtype=torch.int64),
        gt_num_points=torch.full((len(boxes),), 10, dtype=torch.int64),
    )


def _polygon(box):
    corners = Boxes3D(torch.tensor(np.asarray(box, np.float64)[None])).corners()[0, :4, :2]
    return Polygon(corners.numpy())


# -- placement -------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    existing=st.lists(
        st.tuples(
            st.floats(-25, 25),
            st.floats(-25, 25),
            st.floats(0.5, 5),
            st.floats(0.5, 12),
            st.floats(-math.pi, math.pi),
        ),  # fmt: skip
        max_size=25,
    ),
)
def test_placement_never_overlaps_a_box(seed, existing):
    """Over many draws: no pasted box overlaps (BEV area, shapely) an existing box or another
    pasted one, every pasted box lies inside the point range, and what was requested is
    either pasted or counted as skipped."""
    boxes = [[x, y, -1.0, w, l, 1.5, yaw, 0, 0] for x, y, w, l, yaw in existing]
    objects = [
        _object(i, "bus", [12.0 + 2 * i, 0.0, -0.5, 2.9, 11.0, 3.0, 0.7 * i, 0, 0])
        for i in range(5)
    ]
    paste = GTPaste(
        plans=[_plan("bus", 3, objects), _plan("bicycle", 4)],
        point_range=POINT_RANGE,
        placement_tries=20,
        max_shadow=1.0,
    )
    out = paste(_sample(boxes, n_points=500), np.random.default_rng(seed))
    pasted = [r["box"] for r in out.pasted]
    for i, box in enumerate(pasted):
        poly = _polygon(box)
        for other in boxes + pasted[:i]:
            assert poly.intersection(_polygon(other)).area < 1e-6, (box, other)
        corners = np.asarray(poly.exterior.coords)
        assert (np.abs(corners) <= 54).all()
    s = paste.stats()
    assert s["requested"] == 7
    assert s["pasted"] + s["no_free_pose"] + s["occluded"] == 7


def test_pose_keeps_range_heading_to_ray_and_height():
    """The distance and yaw distribution is the class's own in the bank: a pasted object keeps
    its range from the LiDAR origin, its yaw relative to the ray and its box z."""
    source = _object(0, "bicycle", [9.0, 4.0, -0.9, 0.6, 1.8, 1.2, 2.0, 0, 0])
    paste = GTPaste(plans=[_plan("bicycle", 1, [source])], point_range=POINT_RANGE)
    for seed in range(5):
        (record,) = paste(_sample(), np.random.default_rng(seed)).pasted
        x, y, z, *_, yaw = record["box"][:7]
        assert math.hypot(x, y) == pytest.approx(math.hypot(9.0, 4.0), abs=1e-5)
        to_ray = (yaw - math.atan2(y, x)) - (2.0 - math.atan2(4.0, 9.0))
        assert math.remainder(to_ray, 2 * math.pi) == pytest.approx(0, abs=1e-5)
        assert z == pytest.approx(-0.9)


def test_no_pose_where_unannotated_things_stand():
    """A dense block of scene points (a building) with no box: no object is pasted into it."""
    gen = np.random.default_rng(0)
    n = 20000
    az = gen.uniform(-math.pi, 0, n)  # the building fills the ring's right half (y < 0)
    r = gen.uniform(13, 17, n)
    block = np.stack([r * np.cos(az), r * np.sin(az), gen.uniform(-1, 2, n), 0 * az, 0 * az], 1)
    sample = _sample(n_points=0).replace(points=torch.from_numpy(block.astype(np.float32)))
    objects = [_object(0, "bicycle", [15.0, 0.0, -1.0, 0.6, 1.8, 1.2, 0.0, 0, 0])]
    paste = GTPaste(plans=[_plan("bicycle", 1, objects)], point_range=POINT_RANGE)
    for seed in range(20):
        for record in paste(sample, np.random.default_rng(seed)).pasted:
            assert record["box"][1] > 0.5, record["box"]
    assert paste.stats()["pasted"] > 5


def test_a_sample_with_no_free_place_is_returned_unchanged_and_counted():
    cover = [[0, 0, -1, 200, 200, 3, 0, 0, 0]]  # one box over the whole range
    paste = GTPaste(plans=[_plan("bicycle", 2)], point_range=POINT_RANGE)
    sample = _sample(cover)
    out = paste(sample, np.random.default_rng(0))
    assert out.pasted == () and out.points is sample.points and out.gt_boxes is sample.gt_boxes
    s = paste.stats()
    assert s["samples"] == 1 and s["samples_skipped"] == 1
    assert s["no_free_pose"] == 2 and s["pasted"] == 0
    # the sample carries its own counters (out of a loader worker, into the training log)
    assert out.paste_counts == s and sample.paste_counts == {}


# -- occlusion -------------------------------------------------------------------------------
def _brute_force_hidden(groups, cell):
    """Per point, over every point of every other group: hidden when the other point's ray
    cell is the same or a neighbour (azimuth wraps) and it is nearer."""
    cells = [ray_cells(g, cell) for g in groups]
    n_az = cells[0][2]
    out = []
    for gi, g in enumerate(groups):
        hidden = np.zeros(len(g), bool)
        for p in range(len(g)):
            e, a, r = cells[gi][0][p], cells[gi][1][p], np.linalg.norm(g[p, :3])
            for hi, h in enumerate(groups):
                if hi == gi:
                    continue
                for q in range(len(h)):
                    de = abs(cells[hi][0][q] - e)
                    da = abs(cells[hi][1][q] - a) % n_az
                    if de <= 1 and min(da, n_az - da) <= 1 and np.linalg.norm(h[q, :3]) < r:
                        hidden[p] = True
                        break
                if hidden[p]:
                    break
        out.append(hidden)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_occlusion_matches_a_brute_force_ray_check(seed):
    """Scene points behind the objects and object points behind the scene or each other,
    exactly as a per-point check over all pairs finds them (azimuth wrap included: the
    objects straddle the -x axis, where azimuth jumps from pi to -pi)."""
    gen = np.random.default_rng(seed)
    cell = math.radians(2.0)  # coarse cells: many points share them

    def cloud(n, r_lo, r_hi, az_lo, az_hi):
        az = gen.uniform(az_lo, az_hi, n)
        r = gen.uniform(r_lo, r_hi, n)
        z = gen.uniform(-2, 1, n)
        return np.stack([r * np.cos(az), r * np.sin(az), z], 1)

    scene = np.concatenate([cloud(300, 2, 40, -math.pi, math.pi), cloud(100, 5, 30, 2.9, 3.4)])
    objects = [cloud(40, 10, 12, 2.95, 3.3), cloud(30, 8, 20, 3.1, 3.5), cloud(5, 50, 51, 0, 1)]
    hidden_scene, hidden_objects = hidden_points(scene, objects, cell)
    expected = _brute_force_hidden([scene, *objects], cell)
    np.testing.assert_array_equal(hidden_scene, expected[0])
    for got, want in zip(hidden_objects, expected[1:]):
        np.testing.assert_array_equal(got, want)
    assert hidden_scene.sum() > 10 and sum(h.sum() for h in hidden_objects) > 5  # not vacuous


def test_pasted_sample_holds_no_point_hidden_by_another_object():
    """After the transform: the scene points it removed are those behind a pasted object (or
    inside its box), and no kept point is hidden by a kept point of another object."""
    plan = _plan("bus", 2, [_object(0, "bus", [15.0, 0, -0.5, 2.9, 11.0, 3.0, 0.0, 0, 0], 400)])
    paste = GTPaste(plans=[plan], point_range=POINT_RANGE, occlusion_cell_deg=0.5)
    sample = _sample(n_points=6000)
    out = paste(sample, np.random.default_rng(3))
    assert len(out.pasted) == 2
    n_pasted = sum(r["points"] for r in out.pasted)
    scene_kept = out.points[: len(out.points) - n_pasted].numpy()
    assert scene_kept.shape[0] < len(sample.points)  # the wall behind the buses lost points
    groups, start = [scene_kept], len(scene_kept)
    for r in out.pasted:
        groups.append(out.points[start : start + r["points"]].numpy())
        start += r["points"]
    hidden_scene, hidden_objects = hidden_points(groups[0], groups[1:], math.radians(0.5))
    assert not hidden_scene.any() and not any(h.any() for h in hidden_objects)
    assert paste.stats()["scene_points_removed"] == len(sample.points) - len(scene_kept)


# -- targets ---------------------------------------------------------------------------------
def test_targets_appended_with_class_attribute_and_rotated_velocity():
    velocity = (3.0, 0.5)  # box frame: forward and to the left
    source = _object(
        0, "motorcycle", [10.0, -3.0, -1.0, 0.8, 2.2, 1.5, 0.4, 0, 0], 80, velocity,
        "cycle.with_rider",
    )  # fmt: skip
    existing = [[-20.0, 5.0, -1.0, 2.0, 4.5, 1.6, 0.0, 1.0, 0.0]]
    paste = GTPaste(plans=[_plan("motorcycle", 1, [source])], point_range=POINT_RANGE)
    sample = _sample(existing)
    out = paste(sample, np.random.default_rng(1))
    assert len(out.gt_boxes) == 2 and len(out.pasted) == 1
    assert torch.equal(out.gt_boxes.tensor[0], sample.gt_boxes.tensor[0])
    assert out.gt_labels.tolist() == [0, CLASS_NAMES.index("motorcycle")]
    assert out.gt_attributes.tolist() == [-1, ATTRIBUTE_NAMES.index("cycle.with_rider")]
    box = out.gt_boxes.tensor[1].double().numpy()
    c, s = math.cos(box[6]), math.sin(box[6])
    np.testing.assert_allclose(box[7:9], [c * 3.0 - s * 0.5, s * 3.0 + c * 0.5], atol=1e-5)
    record = out.pasted[0]
    assert record["class"] == "motorcycle" and record["bank_index"] == 0
    assert record["gt_index"] == 1
    np.testing.assert_allclose(record["box"], box, atol=1e-5)
    # the points moved with the box: keyframe points inside it, and counted
    pts = out.points[-record["points"] :].double()
    key = pts[pts[:, 4] == 0, :3].numpy()
    local = key - box[:3]
    along = c * local[:, 0] + s * local[:, 1]
    across = -s * local[:, 0] + c * local[:, 1]
    assert (np.abs(along) <= box[4] / 2 + 1e-4).all() and (
        np.abs(across) <= box[3] / 2 + 1e-4
    ).all()
    assert int(out.gt_num_points[1]) == len(key) > 0


def test_earlier_sweeps_trail_by_velocity():
    """The bank compensated earlier sweeps into the keyframe box; pasted, they are shifted
    back by velocity x time lag (a moving object trails as the scene's real ones do)."""
    source = _object(0, "car", [12.0, 0.0, -1.0, 1.8, 4.5, 1.5, 0.0, 0, 0], 40, (5.0, 0.0))
    box = np.array([0.0, 12.0, -1.0, 1.8, 4.5, 1.5, math.pi / 2, 0.0, 5.0])
    moved = object_points(source, box)
    lag = source.points[:, 4]
    expected_y = source.points[:, 0] + 12.0 - 5.0 * lag  # box x -> LiDAR y at yaw pi/2
    np.testing.assert_allclose(moved[:, 1], expected_y, atol=1e-5)
    np.testing.assert_array_equal(moved[:, 3:], source.points[:, 3:])


@pytest.mark.parametrize(
    ("scene_lags", "pasted_lags"), [((0.0,), {0.0}), ((0.0, 0.051), {0.0, 0.05})]
)
def test_pasted_points_only_of_the_scene_sweeps(scene_lags, pasted_lags):
    """A bank built with more sweeps than the dataset merges: only the bank points whose time
    lag matches one of the scene's sweeps are pasted (here the bank has lags 0 and 0.05)."""
    sample = _sample(n_points=2000)
    points = sample.points.clone()
    for k, lag in enumerate(scene_lags):  # consecutive runs, as merged sweeps are
        points[k * 2000 // len(scene_lags) :, 4] = lag
    sample = sample.replace(points=points)
    paste = GTPaste(plans=[_plan("bicycle", 2)], point_range=POINT_RANGE)
    out = paste(sample, np.random.default_rng(0))
    n = sum(r["points"] for r in out.pasted)
    assert n > 0
    lags = {round(float(v), 3) for v in out.points[-n:, 4]}
    assert lags == pasted_lags


def test_a_real_box_left_without_points_is_dropped_and_counted():
    """A real box whose keyframe points all end up behind a pasted object leaves the targets
    (as the dataset drops GT without points); the others keep updated point counts."""
    wall = _object(0, "bus", [10.0, 0.0, -0.5, 2.9, 3.0, 4.0, math.pi / 2, 0, 0], 8000, fill=True)
    sample = _sample(n_points=0)
    hidden_box = [25.0, 0.0, -1.0, 1.0, 1.0, 1.0, 0.0, 0, 0]
    pts = torch.tensor([[25.0, y, -1.0, 50, 0] for y in (-0.2, 0.0, 0.2)])
    sample = sample.replace(
        points=pts,
        gt_boxes=Boxes3D(torch.tensor([hidden_box])),
        gt_labels=torch.tensor([0]),
        gt_attributes=torch.tensor([-1]),
        gt_num_points=torch.tensor([3]),
    )
    paste = GTPaste(plans=[_plan("bus", 1, [wall])], point_range=POINT_RANGE, max_shadow=1.0)
    # find a seed whose pose puts the bus in front of the box
    for seed in range(400):
        out = paste(sample, np.random.default_rng(seed))
        x, y = out.pasted[0]["box"][:2] if out.pasted else (0, 1)
        if abs(math.atan2(y, x)) < 0.02:
            break
    else:
        pytest.fail("no draw put the bus in front of the box")
    assert out.gt_labels.tolist() == [CLASS_NAMES.index("bus")]
    assert paste.stats()["gt_hidden"] >= 1


# -- determinism, order, errors --------------------------------------------------------------
def test_deterministic_under_a_seed():
    def run(seed):
        paste = GTPaste(plans=[_plan("bicycle", 3), _plan("bus", 1)], point_range=POINT_RANGE)
        return paste(_sample([[5, 5, -1, 2, 4, 1.5, 0, 0, 0]]), np.random.default_rng(seed))

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.points, b.points) and torch.equal(a.gt_boxes.tensor, b.gt_boxes.tensor)
    assert a.pasted == b.pasted
    assert not torch.equal(a.gt_boxes.tensor, c.gt_boxes.tensor)


def test_paste_refuses_an_augmented_sample():
    paste = GTPaste(plans=[_plan()], point_range=POINT_RANGE)
    sample = _sample()
    sample = sample.replace(lidar_aug=torch.diag(torch.tensor([1.1, 1.1, 1.1, 1.0])))
    with pytest.raises(ValueError, match="scene-sample.*must come first"):
        paste(sample, np.random.default_rng(0))


def test_a_class_with_no_object_in_range_is_an_error_naming_it():
    far = _object(0, "traffic_cone", [45.0, 0.0, -1.5, 0.4, 0.4, 1.0, 0, 0, 0])  # range 30 m
    with pytest.raises(ValueError, match="memory/bank.json.*'traffic_cone'.*30 m"):
        _plan("traffic_cone", 1, [far])


def _paste_config(bank_path, **paste):
    raw = {"data": {"paste": {"enabled": True, "bank": str(bank_path), "cameras": False,
                              "classes": {"car": {"count": 2}}, **paste}}}  # fmt: skip
    return parse_config(raw)


@pytest.mark.parametrize(
    ("paste", "message"),
    [
        ({"classes": {"bicycle": {"count": 1, "colour": 2}}}, "data.paste.classes.bicycle.colour: unknown key"),
        ({"clases": {}}, "data.paste.clases: unknown key"),
        ({"classes": {"bike": {"count": 1}}}, r"unknown class\(es\) \['bike'\]"),
        ({"classes": {"car": {"count": 0}}}, "at least one class with count > 0"),
        ({"bank": None}, "enabled paste needs an object bank"),
        ({"classes": {"car": {"count": -1}}}, "data.paste.classes.car.count"),
    ],
)  # fmt: skip
def test_config_errors_name_their_path(paste, message):
    with pytest.raises(ConfigError, match=message):
        _paste_config("bank", **paste)


def test_paste_is_off_by_default():
    config = parse_config({})
    assert not config.data.paste.enabled and build_paste(config) is None


def test_cameras_without_the_compositor_is_an_error(monkeypatch):
    monkeypatch.setattr(paste_module, "camera_compositor", lambda: None)
    with pytest.raises(ValueError, match="data.paste.cameras: true needs"):
        build_paste(_paste_config("bank", cameras=True))


def test_paste_comes_first_in_the_training_transforms(monkeypatch):
    """Before image and LiDAR augmentation (on the sample as loaded), and only in training."""
    from perception.datasets import pipeline
    from perception.datasets.transforms import ImageAug, LidarAug

    marker = object()
    monkeypatch.setattr(paste_module, "build_paste", lambda config, cameras: marker)
    config = _paste_config("bank")
    train = pipeline.build_transforms(config, train=True)
    assert train[0] is marker
    assert isinstance(train[1], ImageAug) and isinstance(train[2], LidarAug)
    assert marker not in pipeline.build_transforms(config, train=False)
    assert marker not in pipeline.build_transforms(parse_config({}), train=True)


# -- with a bank of the tiny generated world -------------------------------------------------
@pytest.fixture(scope="module")
def world(indexed_world_copy):
    return indexed_world_copy("paste_world")


@pytest.fixture(scope="module")
def train_bank(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("paste_bank") / "train"
    write_bank(world, VERSION, "mini_train", out, progress=False, shard_samples=4)
    return out


def test_dataset_with_paste_adds_objects_before_augmentation(world, train_bank):
    from perception.datasets.pipeline import build_dataset

    config = _paste_config(
        train_bank, classes={"car": {"count": 2}, "pedestrian": {"count": 1, "min_points": 3}}
    )
    dataset = build_dataset(config, split="mini_train", train=True, root=world)
    paste = dataset.transforms[0]
    assert isinstance(paste, GTPaste)
    sample = dataset[0]
    assert len(sample.pasted) >= 1
    # the pasted boxes went through LidarAug with the real ones: the record's raw box, moved
    # by the sample's lidar_aug, is among the (range-filtered) targets
    raw = Boxes3D(torch.tensor([r["box"] for r in sample.pasted], dtype=torch.float32))
    moved = raw.transform(sample.lidar_aug).tensor
    for box in moved:
        assert (sample.gt_boxes.tensor - box).abs()[:, :7].max(1).values.min() < 1e-3
    assert paste.stats()["pasted"] == len(sample.pasted)


def test_bank_errors_at_dataset_build_name_the_file(world, train_bank, tmp_path):
    from perception.datasets.pipeline import build_dataset

    def build(bank, **paste):
        config = _paste_config(bank, **paste)
        return build_dataset(config, split="mini_train", train=True, root=world)

    with pytest.raises(
        ValueError, match="data.paste.classes.car: .*no 'car' objects with >= 100000"
    ):
        build(train_bank, classes={"car": {"count": 1, "min_points": 100000}})
    other = tmp_path / "other-version"
    shutil.copytree(train_bank, other)
    index = json.loads((other / "bank.json").read_text())
    index["dataset"]["version"] = "v1.0-trainval"
    (other / "bank.json").write_text(json.dumps(index))
    with pytest.raises(
        ValueError, match=r"other-version/bank.json: a bank of dataset version 'v1.0-trainval'"
    ):
        build(other)
    empty = tmp_path / "empty"
    shutil.copytree(train_bank, empty)
    index = json.loads((empty / "bank.json").read_text())
    index.update(shards=[], objects=0)
    (empty / "bank.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="empty/bank.json: the bank index lists no shards"):
        build(empty)
    with pytest.raises(ValueError, match="missing/bank.json: no object bank here"):
        build(tmp_path / "missing")
    # source: generated wants a bank of generated objects, and source: bank a real one
    with pytest.raises(ValueError, match="train/bank.json: .*source"):
        build(train_bank, source="generated")
    generated = tmp_path / "generated"
    shutil.copytree(train_bank, generated)
    index = json.loads((generated / "bank.json").read_text())
    index["source"] = "generated"
    (generated / "bank.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="generated/bank.json: .*source"):
        build(generated)
    assert len(build(generated, source="generated")) > 0
    # a training bank, but of the split this run evaluates on
    config = _paste_config(train_bank)
    config = config.model_copy(
        update={"data": config.data.model_copy(update={"val_split": "mini_train"})}
    )
    with pytest.raises(ValueError, match="train/bank.json: holds objects of 1 scene.*scene-0061"):
        build_dataset(config, split="mini_train", train=True, root=world)


def test_an_evaluation_bank_is_refused(world, tmp_path):
    from perception.datasets.pipeline import build_dataset

    bank = tmp_path / "val"
    write_bank(world, VERSION, "mini_val", bank, progress=False, allow_eval_split=True)
    with pytest.raises(ValueError, match="val/bank.json: an evaluation bank"):
        build_dataset(_paste_config(bank), split="mini_train", train=True, root=world)


def test_multimodal_paste_draws_the_objects_into_the_cameras(world, train_bank):
    """With cameras: perception.generative.paste_camera composites the pasted objects; the
    pixels that changed lie inside the pasted boxes' projections, and the records say which
    cameras were drawn into."""
    from perception.datasets.nuscenes import NuScenesDataset
    from perception.geometry import lidar_to_image, project

    config = _paste_config(
        train_bank, cameras=True, min_visibility=0.2,
        classes={"car": {"count": 3}, "pedestrian": {"count": 2, "min_points": 3}},
    )  # fmt: skip
    paste = build_paste(config)
    assert paste.compositor is not None
    dataset = NuScenesDataset(world, VERSION, "mini_train")
    drawn = 0
    for i in range(len(dataset)):
        sample = dataset.load_raw(dataset.records[i])
        out = paste(sample, np.random.default_rng(i))
        assert out.images.shape == sample.images.shape
        allowed = torch.zeros(out.images.shape[0], *out.images.shape[-2:], dtype=torch.bool)
        H, W = out.images.shape[-2:]
        for c in range(len(out.camera_names)):
            matrix = lidar_to_image(
                out.intrinsics[c].double(), out.camera_to_lidar[c, -1].double(),
                out.image_aug[c].double(), out.lidar_aug.double(),
            )  # fmt: skip
            for record in out.pasted:
                corners = Boxes3D(torch.tensor([record["box"]], dtype=torch.float64)).corners()
                uv, depth = project(corners[0], matrix)
                if (depth <= 0.1).any():
                    continue
                u0, v0 = (int(max(0, math.floor(x))) - 1 for x in uv.min(0).values)
                u1, v1 = (
                    int(min(lim, math.ceil(x))) + 1 for x, lim in zip(uv.max(0).values, (W, H))
                )
                allowed[c, max(v0, 0) : v1, max(u0, 0) : u1] = True
        changed = (out.images[:, -1] != sample.images[:, -1]).any(1)  # [Ncam, H, W]
        assert not (changed & ~allowed).any()
        drawn += int(changed.sum())
        for record in out.pasted:
            assert record["camera"]["bank_index"] == record["bank_index"]
            if record["camera"]["keyframe_pixels"]:
                assert record["camera"]["cameras"]
    assert drawn > 100 and paste.stats()["pasted"] > 0


def test_a_skip_is_logged_once_and_summarised(caplog):
    cover = [[0, 0, -1, 200, 200, 3, 0, 0, 0]]
    paste = GTPaste(plans=[_plan("bicycle", 1)], point_range=POINT_RANGE, log_every=3)
    with caplog.at_level("WARNING", logger="perception.generative.paste"):
        for seed in range(3):
            paste(_sample(cover, n_points=10), np.random.default_rng(seed))
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "GT-paste: sample scene-sample: 1 object(s) skipped (no_free_pose)"
    assert len(messages) == 2 and "3 samples, 0 of 3 objects pasted" in messages[1]
    assert "3 no free pose" in messages[1] and "3 samples with nothing placed" in messages[1]


def test_paste_survives_pickling_into_loader_workers(world, train_bank):
    """DataLoader workers get a pickled copy: it pastes the same as the original."""
    import pickle

    from perception.datasets.nuscenes import NuScenesDataset

    paste = build_paste(_paste_config(train_bank))
    copy = pickle.loads(pickle.dumps(paste))
    dataset = NuScenesDataset(world, VERSION, "mini_train", load_images=False)
    sample = dataset.load_raw(dataset.records[1])
    a, b = paste(sample, np.random.default_rng(5)), copy(sample, np.random.default_rng(5))
    assert a.pasted == b.pasted and torch.equal(a.points, b.points)


def test_visualize_paste_draws_the_pasted_boxes(world, train_bank, tmp_path, capsys):
    import cv2

    from perception.visualization.sample import PASTED_COLOR
    from tools.visualize import main as visualize

    out = tmp_path / "paste.png"
    argv = ["--root", str(world), "--split", "mini_train", "--sample", "1", "--out", str(out),
            "--paste", str(train_bank), "--paste-classes", "car=2,pedestrian=1"]  # fmt: skip
    assert visualize(argv) == 0
    printed = capsys.readouterr().out
    assert "  pasted car (bank object" in printed or "  pasted pedestrian (bank object" in printed
    picture = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert (picture == np.array(PASTED_COLOR, np.uint8)).all(-1).sum() > 50


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--paste", "{tmp}/no-bank"], "no-bank/bank.json: no object bank here"),
        (["--paste", "{bank}", "--paste-classes", "bike=1"], r"unknown class(es) ['bike']"),
    ],
)
def test_visualize_paste_errors_are_one_line(world, train_bank, tmp_path, capsys, args, message):
    from tools.visualize import main as visualize

    args = [a.format(tmp=tmp_path, bank=train_bank) for a in args]
    argv = ["--root", str(world), "--out", str(tmp_path / "p.png"), *args]
    assert visualize(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_an_occluded_object_gets_another_pose(monkeypatch):
    """Behind a wall (scene points, no box) an object is hidden; it is tried elsewhere before
    it is dropped: more objects are pasted than without the retries."""
    gen = np.random.default_rng(0)
    n = 200000  # dense: ~20 points in the 3 x 3 cells around any ray through it
    az = gen.uniform(-math.pi, 0, n)  # a wall 5 m away round the right half (y < 0)
    wall = np.stack([5 * np.cos(az), 5 * np.sin(az), gen.uniform(-2, 3, n), 0 * az, 0 * az], 1)
    sample = _sample(n_points=0).replace(points=torch.from_numpy(wall.astype(np.float32)))
    objects = [_object(0, "bicycle", [15.0, 0.0, -1.0, 0.6, 1.8, 1.2, 0.0, 0, 0], 200)]

    def pasted(retries):
        monkeypatch.setattr(paste_module, "OCCLUSION_RETRIES", retries)
        paste = GTPaste(plans=[_plan("bicycle", 1, objects)], point_range=POINT_RANGE)
        for seed in range(30):
            out = paste(sample, np.random.default_rng(seed))
            for record in out.pasted:
                assert record["box"][1] > 0  # never left behind the wall
        return paste.stats()

    without, with_retries = pasted(0), pasted(2)
    assert without["occluded"] > 5
    assert with_retries["pasted"] > without["pasted"] + 5
    assert with_retries["pasted"] + with_retries["occluded"] == 30
