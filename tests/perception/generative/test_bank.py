"""The object bank (perception.generative.bank) on the tiny generated world: exact round trip,
points in the box frame, crops inside the images, filters, no train/val leakage, and errors
that name the file for corrupt or mismatched banks."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from perception.datasets.io import read_image
from perception.datasets.nuscenes import NuScenesDataset
from perception.generative.bank import (
    INDEX_NAME,
    BankFileError,
    ObjectBank,
    extract_objects,
    read_bank,
    write_bank,
)

VERSION = "v1.0-mini"
TRAIN, VAL = "mini_train", "mini_val"


@pytest.fixture(scope="module")
def world(indexed_world_copy):
    return indexed_world_copy("bank_world")


@pytest.fixture(scope="module")
def train_bank(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("bank") / "train"
    write_bank(world, VERSION, TRAIN, out, progress=False, shard_samples=3)
    return out


def _tables(world, name):
    return json.loads((world / VERSION / f"{name}.json").read_text())


def _assert_same(a, b):
    """Two BankObjects hold equal fields and arrays (NaN velocities equal NaN)."""
    for name in ("class_name", "attribute", "ego_distance", "sample_token", "instance_token",
                 "annotation_token", "scene_name", "split"):  # fmt: skip
        assert getattr(a, name) == getattr(b, name), name
    for name in ("size", "velocity", "box_lidar", "points"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), name
    assert len(a.views) == len(b.views)
    for u, v in zip(a.views, b.views):
        for name in ("camera", "crop_box", "image_size", "visible_fraction", "depth", "view_angle"):
            assert getattr(u, name) == getattr(v, name), name
        for name in ("crop", "mask", "box2d", "intrinsics", "box_to_camera"):
            x, y = getattr(u, name), getattr(v, name)
            assert x.dtype == y.dtype and np.array_equal(x, y), name


def test_bank_round_trips_exactly(world, train_bank):
    dataset = NuScenesDataset(world, VERSION, TRAIN, clip_frames=1, filter_gt=False)
    instance = {r["token"]: r["instance_token"] for r in _tables(world, "sample_annotation")}
    expected = [
        obj
        for record in dataset.records
        for obj in extract_objects(dataset.load_raw(record), record, instance, split=TRAIN)
    ]
    bank = ObjectBank.open(train_bank, version=VERSION, split=TRAIN, training=True)
    assert len(bank) == len(expected) > 50
    assert sum(len(o.views) for o in expected) > 50  # crops are part of the round trip
    for i, obj in enumerate(expected):
        _assert_same(bank[i], obj)
    assert not bank[0].points.flags.writeable  # shared arrays handed out read-only
    labels = [bank.classes.index(o.class_name) for o in expected]
    assert list(bank.counts().values()) == np.bincount(labels, minlength=10).tolist()


def test_points_lie_in_their_box_and_match_the_annotations_counts(world, train_bank):
    """Box frame: |x| <= l/2, |y| <= w/2, |z| <= h/2. The keyframe's points (time lag 0)
    agree with the annotation's num_lidar_pts, which the generator counted in its own frame."""
    bank = ObjectBank.open(train_bank)
    annotated = {r["token"]: r["num_lidar_pts"] for r in _tables(world, "sample_annotation")}
    with_sweeps = exact = 0
    for obj in bank:
        w, l, h = obj.size
        half = np.array([l / 2, w / 2, h / 2]) + 1e-4
        assert (np.abs(obj.points[:, :3]) <= half).all(), obj.annotation_token
        lag = obj.points[:, 4]
        assert (lag >= 0).all() and (lag <= 0.55).all()
        with_sweeps += bool((lag > 0).any())
        n_key, n_ann = int((lag == 0).sum()), annotated[obj.annotation_token]
        # the generator counts in its own float32 frames: points on a face may fall either way
        assert abs(n_key - n_ann) <= max(6, 0.05 * n_ann), (obj.class_name, n_key, n_ann)
        exact += n_key == n_ann
    assert exact > 0.8 * len(bank)
    assert with_sweeps > len(bank) // 2


def test_a_margin_takes_points_around_the_box(world, tmp_path, train_bank):
    write_bank(world, VERSION, TRAIN, tmp_path / "m", margin=0.3, progress=False)
    wide, tight = ObjectBank.open(tmp_path / "m"), ObjectBank.open(train_bank)
    assert (wide.num_points >= tight.num_points).all()
    assert wide.num_points.sum() > tight.num_points.sum()
    for obj in wide:
        w, l, h = obj.size
        assert (np.abs(obj.points[:, :3]) <= np.array([l / 2, w / 2, h / 2]) + 0.3 + 1e-4).all()


def test_crops_lie_inside_their_images(world, train_bank):
    bank = ObjectBank.open(train_bank)
    dataset = NuScenesDataset(world, VERSION, TRAIN, clip_frames=1, load_images=False)
    by_token = {r["token"]: r for r in dataset.records}
    views = 0
    for obj in bank:
        for view in obj.views:
            views += 1
            W, H = view.image_size
            u0, v0, u1, v1 = view.box2d
            assert 0 <= u0 < u1 <= W and 0 <= v0 < v1 <= H
            cu0, cv0, cu1, cv1 = view.crop_box
            assert 0 <= cu0 <= u0 and u1 <= cu1 <= W and 0 <= cv0 <= v0 and v1 <= cv1 <= H
            assert view.crop.shape == (cv1 - cv0, cu1 - cu0, 3) == (*view.mask.shape, 3)
            assert 0.0 <= view.visible_fraction <= 1.0 and view.depth > 0
            if view.mask.size >= 400:  # (on a few pixels, a visible sliver may hold no centre)
                assert view.mask.any() or view.visible_fraction < 0.1
            # the box centre projects into the 2-D box when it is in the image
            centre = view.intrinsics @ view.box_to_camera[:3, 3]
            cu, cv = centre[:2] / centre[2]
            if 0 <= cu < W and 0 <= cv < H:
                assert u0 - 1e-3 <= cu <= u1 + 1e-3 and v0 - 1e-3 <= cv <= v1 + 1e-3
            # viewing angle: the camera's azimuth in the box frame
            camera_in_box = np.linalg.inv(view.box_to_camera.astype(np.float64))[:3, 3]
            angle = math.atan2(camera_in_box[1], camera_in_box[0])
            assert math.cos(view.view_angle - angle) == pytest.approx(1.0, abs=1e-5)
        if obj.views:  # the crop's pixels are the keyframe image's
            view = obj.views[0]
            cam = by_token[obj.sample_token]["cameras"][view.camera]
            image = read_image(world / cam["frames"][0]["path"])
            cu0, cv0, cu1, cv1 = view.crop_box
            assert np.array_equal(view.crop, image[cv0:cv1, cu0:cu1])
    assert views > 50


def test_filters_by_class_points_and_visibility(train_bank):
    bank = ObjectBank.open(train_bank)
    cars = bank.filter(classes=["car"])
    assert len(cars) == bank.counts()["car"] > 0
    assert all(o.class_name == "car" for o in cars)
    assert set(cars.counts()) == set(bank.classes) and cars.counts()["pedestrian"] == 0
    dense = bank.filter(min_points=50)
    assert 0 < len(dense) < len(bank)
    assert (dense.num_points >= 50).all()
    assert len(dense) == int((bank.num_points >= 50).sum())
    seen = bank.filter(min_visibility=0.5)
    assert 0 < len(seen) < len(bank)
    for obj in seen:
        assert obj.views and all(v.visible_fraction >= 0.5 for v in obj.views)
    both = read_bank(train_bank, classes=["car", "pedestrian"], min_points=10, min_visibility=0.3)
    assert {o.class_name for o in both} == {"car", "pedestrian"}
    assert all(o.num_points >= 10 and o.visibility >= 0.3 for o in both)
    assert len(both.filter(classes=["car"])) == both.counts()["car"]  # filters compose


def test_a_requested_class_without_objects_is_an_error_naming_it(train_bank):
    bank = ObjectBank.open(train_bank)
    with pytest.raises(ValueError, match=r"no 'bus' objects with >= 1000000 points") as info:
        bank.filter(classes=["bus"], min_points=1_000_000)
    assert str(train_bank / INDEX_NAME) in str(info.value)
    with pytest.raises(ValueError, match="unknown class.*'bicycles'"):
        bank.filter(classes=["bicycles"])


def test_a_train_bank_holds_no_val_sample_or_instance(world, train_bank):
    scenes = {s["token"]: s["name"] for s in _tables(world, "scene")}
    from nuscenes.utils.splits import create_splits_scenes

    val_scenes = set(create_splits_scenes()[VAL])
    samples = _tables(world, "sample")
    val_samples = {s["token"] for s in samples if scenes[s["scene_token"]] in val_scenes}
    val_instances = {
        a["instance_token"] for a in _tables(world, "sample_annotation")
        if a["sample_token"] in val_samples
    }  # fmt: skip
    assert val_samples and val_instances  # the world has a val split to leak from
    bank = ObjectBank.open(train_bank, training=True)
    assert bank.split == TRAIN and bank.training
    assert f"{VERSION} {TRAIN}, training, {len(bank)} objects" in repr(bank)
    assert len(bank) > 0
    assert not set(bank.sample_tokens) & val_samples
    assert not set(bank.instance_tokens) & val_instances
    assert {o.split for o in bank} == {TRAIN}
    assert bank.scenes and not set(bank.scenes) & val_scenes


@pytest.mark.parametrize("split", [VAL, "all"])
def test_the_writer_refuses_an_evaluation_split_for_a_training_bank(world, tmp_path, split):
    with pytest.raises(ValueError, match=f"split '{split}' holds .*never enter a training bank"):
        write_bank(world, VERSION, split, tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists()


def test_an_evaluation_bank_is_marked_and_refused_for_training(world, tmp_path):
    out = tmp_path / "val"
    summary = write_bank(world, VERSION, VAL, out, allow_eval_split=True, progress=False)
    assert not summary.training and summary.objects > 0
    bank = ObjectBank.open(out)
    assert bank.split == VAL and not bank.training
    with pytest.raises(BankFileError, match="an evaluation bank") as info:
        ObjectBank.open(out, training=True)
    assert str(out / INDEX_NAME) in str(info.value)


def test_an_empty_split_is_an_error_naming_it(world, tmp_path):
    # train_track (a training split) holds none of the world's three scenes
    with pytest.raises(ValueError, match=r"split 'train_track' holds no samples"):
        write_bank(world, VERSION, "train_track", tmp_path / "b", progress=False)


def test_an_existing_output_is_kept_unless_overwrite(world, train_bank, tmp_path):
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_bank(world, VERSION, TRAIN, train_bank, progress=False)
    other = tmp_path / "not_a_bank"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an object bank"):
        write_bank(world, VERSION, TRAIN, other, overwrite=True, progress=False)
    assert (other / "keep.txt").is_file()


def _copy(bank, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(bank, out)
    return out


def _edit_index(path, **changes):
    index = path / INDEX_NAME
    payload = json.loads(index.read_text())
    payload.update(changes)
    index.write_text(json.dumps(payload))


def test_mismatched_banks_are_errors_naming_the_file(train_bank, tmp_path):
    index = str(train_bank / INDEX_NAME)
    with pytest.raises(
        BankFileError, match="dataset version 'v1.0-mini', not 'v1.0-trainval'"
    ) as e:
        ObjectBank.open(train_bank, version="v1.0-trainval")
    assert index in str(e.value)
    with pytest.raises(BankFileError, match="split 'mini_train', not 'train'") as e:
        ObjectBank.open(train_bank, split="train")
    assert index in str(e.value)
    copy = _copy(train_bank, tmp_path)
    _edit_index(copy, format_version=99)
    with pytest.raises(BankFileError, match="format version 99, this code reads 1") as e:
        ObjectBank.open(copy)
    assert str(copy / INDEX_NAME) in str(e.value)
    with pytest.raises(BankFileError, match="no object bank here") as e:
        ObjectBank.open(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / INDEX_NAME) in str(e.value)


def test_corrupt_banks_are_errors_naming_the_file(train_bank, tmp_path):
    copy = _copy(train_bank, tmp_path)
    (copy / INDEX_NAME).write_text("{not json")
    with pytest.raises(BankFileError, match="unreadable bank index") as e:
        ObjectBank.open(copy)
    assert str(copy / INDEX_NAME) in str(e.value)
    shutil.rmtree(copy)

    copy = _copy(train_bank, tmp_path)
    shard = sorted(copy.glob("objects-*.safetensors"))[1]
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # same size, one byte of the crops changed
    shard.write_bytes(bytes(data))
    with pytest.raises(BankFileError, match="corrupt") as e:
        ObjectBank.open(copy)
    assert str(shard) in str(e.value)
    shard.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(BankFileError, match="truncated") as e:
        ObjectBank.open(copy, verify=False)
    assert str(shard) in str(e.value)
    shard.unlink()
    with pytest.raises(BankFileError, match="bank shard is missing") as e:
        ObjectBank.open(copy)
    assert str(shard) in str(e.value)


def test_a_shard_with_a_damaged_header_is_an_error_naming_it(train_bank, tmp_path):
    copy = _copy(train_bank, tmp_path)
    shard = sorted(copy.glob("objects-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[8:20] = b"!" * 12  # the JSON header
    shard.write_bytes(bytes(data))
    with pytest.raises(BankFileError, match="unreadable bank shard") as e:
        ObjectBank.open(copy, verify=False)
    assert str(shard) in str(e.value)


def test_a_bank_crosses_processes_and_exposes_its_boxes(train_bank):
    """A bank (with shards already open) pickles for DataLoader workers; the boxes and
    distances of a selection come without reading points or crops."""
    import pickle

    cars = ObjectBank.open(train_bank).filter(classes=["car"])
    first = cars[0]
    again = pickle.loads(pickle.dumps(cars))
    _assert_same(again[0], first)
    assert cars.boxes_lidar.shape == (len(cars), 9)
    assert np.array_equal(cars.boxes_lidar[0], first.box_lidar)
    assert cars.ego_distances[0] == np.float32(first.ego_distance)


def _constructed_scene():
    """One camera looking along LiDAR +x (K: f=100, 320x180); box A (4 m long, heading +x,
    moving at 5 m/s along x) 10 m ahead, a 1 m box B 5 m ahead in front of it, and box C at
    +y heading +y, moving along +y, that the camera does not see."""
    import torch

    from perception.structures import Boxes3D, Sample

    boxes = [
        [10, 0, 0, 2, 4, 2, 0.0, 5, 0],  # A
        [5, 0, 0, 1, 1, 1, 0.0, 0, 0],  # B
        [0, 10, 0, 2, 4, 2, math.pi / 2, 0, 5],  # C
    ]
    points = np.array(
        [
            [11.5, 0.3, 0.4, 1, 0.0],  # A, keyframe: box frame (1.5, 0.3, 0.4)
            [10.5, 0.3, 0.4, 7, 0.2],  # A, 0.2 s earlier, 1 m further back: the same place
            [13.0, 0.0, 0.0, 1, 0.0],  # beyond A's front face
            [-0.3, 11.5, 0.0, 2, 0.0],  # C: box frame (1.5, 0.3, 0)
        ],
        np.float32,
    )
    camera_to_lidar = np.eye(4, dtype=np.float32)
    camera_to_lidar[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # z forward = LiDAR +x
    K = np.array([[100, 0, 160], [0, 100, 90], [0, 0, 1]], np.float32)
    u, v = np.meshgrid(np.arange(320), np.arange(180))
    image = np.stack([u % 256, v, (u + v) % 256]).astype(np.uint8)  # [3, H, W]
    sample = Sample(
        token="s0", timestamp_us=0, points=torch.from_numpy(points),
        images=torch.from_numpy(image)[None, None], camera_names=("CAM_FRONT",),
        intrinsics=torch.from_numpy(K)[None], camera_to_lidar=torch.from_numpy(camera_to_lidar)[None, None],
        camera_time_lag=torch.zeros(1, 1), image_aug=torch.eye(4)[None], lidar_aug=torch.eye(4),
        lidar_to_ego=torch.eye(4, dtype=torch.float64), ego_to_global=torch.eye(4, dtype=torch.float64),
        camera_mask=torch.ones(1, dtype=torch.bool), lidar_present=True,
        gt_boxes=Boxes3D.empty(), gt_labels=torch.zeros(0, dtype=torch.int64),
        gt_attributes=torch.zeros(0, dtype=torch.int64), gt_num_points=torch.zeros(0, dtype=torch.int64),
    )  # fmt: skip
    record = {
        "token": "s0",
        "scene_name": "scene-x",
        "gt": {
            "boxes": boxes,
            "labels": ["car", "traffic_cone", "car"],
            "attributes": ["vehicle.moving", "", "vehicle.moving"],
            "ego_dist": [10.0, 5.0, 10.0],
            "ann_tokens": ["a", "b", "c"],
        },
    }
    return sample, record, image


def test_extraction_on_a_constructed_scene():
    """Box frame, time lags, velocity compensation of earlier sweeps, projection, occlusion
    by a nearer box and the viewing angle, against values worked out by hand."""
    sample, record, image = _constructed_scene()
    a, b, c = extract_objects(sample, record, {"a": "ia", "b": "ib", "c": "ic"}, split="mini_train")
    assert np.allclose(a.points, [[1.5, 0.3, 0.4, 1, 0.0], [1.5, 0.3, 0.4, 7, 0.2]], atol=1e-5)
    assert np.allclose(c.points, [[1.5, 0.3, 0.0, 2, 0.0]], atol=1e-5)
    assert np.allclose(a.velocity, [5, 0]) and np.allclose(c.velocity, [5, 0], atol=1e-6)
    assert len(b.points) == 0 and c.views == () and c.visibility == 0.0
    (view,) = a.views
    # the near face (x = 8 m, +-1 m) projects to 160 +- 12.5, 90 +- 12.5
    assert np.allclose(view.box2d, [147.5, 77.5, 172.5, 102.5], atol=1e-3)
    assert view.crop_box == (147, 77, 173, 103)
    assert np.array_equal(view.crop, image.transpose(1, 2, 0)[77:103, 147:173])
    assert view.depth == pytest.approx(10.0)
    assert math.cos(view.view_angle) == pytest.approx(-1.0)  # seen from behind
    # B's near face (x = 4.5 m, +-0.5 m) hides 22.2^2 of A's 25^2 pixels
    assert view.visible_fraction == pytest.approx(1 - (100 / 4.5) ** 2 / 25**2, abs=0.03)
    assert not view.mask[12, 12] and view.mask[1, 1]  # hidden centre, visible corner
    assert b.views[0].visible_fraction == pytest.approx(1.0, abs=1e-3)
    assert (a.instance_token, c.instance_token, a.sample_token) == ("ia", "ic", "s0")
