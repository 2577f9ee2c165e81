"""The reader against the devkit's own view of a generated world."""

from __future__ import annotations

import gzip
import json
import re
import shutil

import numpy as np
import pytest
import torch

from perception.datasets.checks import check_dataroot
from perception.datasets.collate import collate_samples
from perception.datasets.index import IndexFileError, default_index_path, load_index
from perception.datasets.io import DataError
from perception.datasets.nuscenes import NuScenesDataset
from perception.geometry import lidar_to_image, project
from perception.structures import CLASS_NAMES

VERSION = "v1.0-mini"


@pytest.fixture(scope="module")
def indexed_world(indexed_world_copy):
    return indexed_world_copy("reader", max_sweeps=10, max_clip_frames=3)


@pytest.fixture(scope="module")
def nusc(indexed_world):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=VERSION, dataroot=str(indexed_world), verbose=False)


def test_sample_shapes_and_sweeps(indexed_world):
    ds = NuScenesDataset(indexed_world, VERSION, "all", sweeps=5, clip_frames=3)
    sample = ds[len(ds) - 1]  # late in its scene: all sweeps available
    assert sample.points.ndim == 2 and sample.points.shape[1] == 5
    lags = sample.points[:, 4].unique()
    assert len(lags) == 5, lags
    assert float(lags.min()) == 0.0 and float(lags.max()) == pytest.approx(0.2, abs=0.02)
    n, t, three, h, w = sample.images.shape
    assert (n, t, three) == (6, 3, 3) and sample.images.dtype == torch.uint8
    assert sample.camera_mask.all()
    # clip frames at 12 Hz, oldest first, keyframe image last
    assert torch.all(sample.camera_time_lag[:, -1] < 0.05)
    assert torch.allclose(
        sample.camera_time_lag[:, 0] - sample.camera_time_lag[:, 1],
        torch.full((6,), 1 / 12),
        atol=0.01,
    )


def test_sweep_stride_reaches_further_back_with_the_same_sweeps(indexed_world):
    consecutive = NuScenesDataset(indexed_world, VERSION, "all", sweeps=9, load_images=False)
    strided = NuScenesDataset(
        indexed_world, VERSION, "all", sweeps=3, sweep_stride=4, load_images=False
    )
    i = len(strided) - 1  # late in its scene: all sweeps available
    every, picked = consecutive[i].points, strided[i].points
    lags = picked[:, 4].unique()
    # 20 Hz sweeps: the keyframe, the 4th and the 8th sweep before it (0.2 s and 0.4 s back)
    assert lags.tolist() == pytest.approx([0.0, 0.2, 0.4], abs=0.01)
    for lag in lags.tolist():  # the very points the consecutive merge holds at those lags
        assert torch.equal(picked[picked[:, 4] == lag], every[every[:, 4] == lag])
    with pytest.raises(ValueError, match=r"sweep_stride=5 reach 10 sweeps back.*holds 9"):
        NuScenesDataset(indexed_world, VERSION, "all", sweeps=3, sweep_stride=5)


def test_split_selects_scenes(indexed_world):
    val = NuScenesDataset(indexed_world, VERSION, "mini_val", load_images=False)
    train = NuScenesDataset(indexed_world, VERSION, "mini_train", load_images=False)
    assert set(val.tokens).isdisjoint(train.tokens)
    assert len(val) + len(train) == len(
        NuScenesDataset(indexed_world, VERSION, "all", load_images=False)
    )
    with pytest.raises(ValueError, match="unknown split"):
        NuScenesDataset(indexed_world, VERSION, "nope")


def test_gt_boxes_match_devkit(indexed_world, nusc):
    ds = NuScenesDataset(
        indexed_world, VERSION, "all", sweeps=1, load_images=False, filter_gt=False
    )
    sample = ds[0]
    record = nusc.get("sample", sample.token)
    _, boxes, _ = nusc.get_sample_data(record["data"]["LIDAR_TOP"])
    from nuscenes.eval.detection.utils import category_to_detection_name

    boxes = [b for b in boxes if category_to_detection_name(b.name) is not None]
    assert len(boxes) == len(sample.gt_boxes) > 0
    ours = {tuple(np.round(b[:3].numpy(), 3)): b for b in sample.gt_boxes.tensor}
    for box in boxes:
        mine = ours[tuple(np.round(box.center.astype(np.float32), 3))]
        assert np.allclose(mine[3:6].numpy(), box.wlh, atol=1e-4)
        yaw = box.orientation.yaw_pitch_roll[0]
        assert abs(np.angle(np.exp(1j * (float(mine[6]) - yaw)))) < 1e-4
    assert set(int(x) for x in sample.gt_labels) <= set(range(len(CLASS_NAMES)))


def test_gt_filter_follows_the_evaluation(indexed_world):
    ds = NuScenesDataset(indexed_world, VERSION, "all", sweeps=1, load_images=False)
    for i in range(len(ds)):
        sample = ds[i]
        assert (sample.gt_num_points > 0).all()


def test_projection_matches_devkit(indexed_world, nusc):
    from nuscenes.utils.geometry_utils import view_points

    ds = NuScenesDataset(indexed_world, VERSION, "all", sweeps=1, clip_frames=1, filter_gt=False)
    sample = ds[1]
    record = nusc.get("sample", sample.token)
    checked = 0
    for c, name in enumerate(sample.camera_names):
        _, boxes, intrinsic = nusc.get_sample_data(record["data"][name])
        matrix = lidar_to_image(
            sample.intrinsics[c].double(),
            sample.camera_to_lidar[c, -1].double(),
            sample.image_aug[c].double(),
            sample.lidar_aug.double(),
        )
        by_token = {b.token: b for b in boxes}
        ann_tokens = ds.records[1]["gt"]["ann_tokens"]
        for k, token in enumerate(ann_tokens):
            box = by_token.get(token)  # the devkit keeps only boxes visible in this camera
            if box is None or box.center[2] < 1.0:
                continue
            expected = view_points(box.center[:, None], np.asarray(intrinsic), normalize=True)[
                :2, 0
            ]
            uv, depth = project(sample.gt_boxes.center[k : k + 1].double(), matrix)
            checked += 1
            assert np.allclose(uv[0].numpy(), expected, atol=1e-3), (name, token)
            assert float(depth[0]) == pytest.approx(box.center[2], abs=1e-4)
    assert checked > 0


def test_sweeps_land_on_static_objects(indexed_world):
    ds = NuScenesDataset(indexed_world, VERSION, "all", sweeps=10, load_images=False)
    sample = ds[len(ds) - 1]
    static = [
        i
        for i, label in enumerate(sample.gt_labels)
        if CLASS_NAMES[int(label)] in ("barrier", "traffic_cone")
    ]
    assert static
    earlier = sample.points[sample.points[:, 4] > 0.2]
    hits = 0
    for i in static:
        box = sample.gt_boxes.tensor[i]
        local = earlier[:, :3] - box[:3]
        c, s = torch.cos(-box[6]), torch.sin(-box[6])
        x = local[:, 0] * c - local[:, 1] * s
        y = local[:, 0] * s + local[:, 1] * c
        inside = (
            (x.abs() <= box[4] / 2 + 0.1)
            & (y.abs() <= box[3] / 2 + 0.1)
            & (local[:, 2].abs() <= box[5] / 2 + 0.1)
        )
        hits += int(inside.sum())
    assert hits > 0, "earlier sweeps' points should hit static objects where the keyframe does"


def test_collate(indexed_world):
    ds = NuScenesDataset(indexed_world, VERSION, "all", sweeps=2, clip_frames=2)
    batch = collate_samples([ds[0], ds[1]])
    assert batch.batch_size == 2
    assert batch.images.shape[:3] == (2, 6, 2)
    assert set(batch.points[:, 0].unique().tolist()) == {0.0, 1.0}
    assert batch.camera_to_lidar.shape == (2, 6, 2, 4, 4)


# -- the index refuses what it should -----------------------------------------------------


def test_index_refuses_stale_tables(indexed_world, tmp_path):
    root = tmp_path / "w"
    shutil.copytree(indexed_world, root)
    sample_json = root / VERSION / "sample.json"
    records = json.loads(sample_json.read_text())
    sample_json.write_text(json.dumps(records[:-1]))
    with pytest.raises(IndexFileError, match="stale or foreign"):
        load_index(default_index_path(root, VERSION), root, VERSION)


def test_index_refuses_other_format_or_kind(indexed_world, tmp_path):
    path = tmp_path / "index.json.gz"
    with gzip.open(default_index_path(indexed_world, VERSION), "rt") as f:
        payload = json.load(f)
    payload["format_version"] = 999
    with gzip.open(path, "wt") as f:
        json.dump(payload, f)
    with pytest.raises(IndexFileError, match="format version 999"):
        load_index(path, indexed_world, VERSION)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(IndexFileError, match="unreadable index"):
        load_index(path, indexed_world, VERSION)
    with pytest.raises(IndexFileError, match="no index file"):
        load_index(tmp_path / "missing.json.gz", indexed_world, VERSION)


# -- bad files: errors name the file; `check` reports every problem at once -----------------


@pytest.fixture
def damaged_world(indexed_world, tmp_path):
    root = tmp_path / "damaged"
    shutil.copytree(indexed_world, root)
    ds = NuScenesDataset(root, VERSION, "all", sweeps=1, clip_frames=1)
    record = ds.records[0]
    lidar = root / record["lidar"]["path"]
    lidar.write_bytes(lidar.read_bytes()[:-7])  # truncated
    image = root / record["cameras"]["CAM_FRONT"]["frames"][0]["path"]
    image.write_bytes(b"\xff\xd8garbage")  # corrupt JPEG
    lidar2 = root / ds.records[1]["lidar"]["path"]
    pts = np.fromfile(lidar2, dtype=np.float32).reshape(-1, 5)
    pts[3, 0] = np.nan
    pts.tofile(lidar2)
    return root, ds, lidar, image, lidar2


def test_bad_files_raise_naming_the_file(damaged_world):
    root, ds, lidar, image, lidar2 = damaged_world
    ds = NuScenesDataset(root, VERSION, "all", sweeps=1, clip_frames=1, load_images=False)
    with pytest.raises(DataError, match=re.escape(lidar.name) + ".*truncated"):
        ds[0]
    with pytest.raises(DataError, match=re.escape(lidar2.name) + ".*NaN"):
        ds[1]
    images = NuScenesDataset(root, VERSION, "all", sweeps=1, clip_frames=1)
    with pytest.raises(DataError, match=re.escape(image.name) + ": .*(decoded|JPEG)"):
        images._cameras(images.records[0])


def test_check_reports_every_problem(damaged_world):
    root, _, lidar, image, lidar2 = damaged_world
    (root / VERSION / "visibility.json").unlink()
    problems = check_dataroot(root, VERSION, progress=False).problems
    text = "\n".join(str(p) for p in problems)
    assert "visibility.json: table is missing" in text
    assert f"{lidar.name}: " in text and "truncated" in text
    assert re.search(re.escape(image.name) + ": .*(decoded|JPEG)", text)
    assert f"{lidar2.name}: 1 of" in text
    assert len(problems) == 4, text


def test_check_clean_world_is_clean(indexed_world):
    result = check_dataroot(indexed_world, VERSION, progress=False)
    assert result.problems == [] and result.files_not_checked == {}
    assert result.files_checked == len(
        json.loads((indexed_world / VERSION / "sample_data.json").read_text())
    )
