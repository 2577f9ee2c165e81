"""Sweep and clip age limits: a gap in the recording does not merge stale data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from perception.datasets.index import build_index
from perception.datasets.nuscenes import NuScenesDataset
from perception.datasets.sensors import (
    fresh_clip_length,
    merge_sweeps,
    sweep_reach_problem,
    within_age,
)

VERSION = "v1.0-mini"
GAP_US = 3_000_000


@pytest.mark.parametrize(
    "lag,limit,expected",
    [(0.45, 0.55, True), (0.55, 0.55, True), (0.6, 0.55, False), (0.0, 0.55, False),
     (-0.05, None, False), (30.0, None, True)],
)  # fmt: skip
def test_within_age(lag, limit, expected):
    assert within_age(lag, limit) is expected


@pytest.mark.parametrize(
    "lags,limit,expected",
    [([0.01, 0.09, 0.17], 0.55, 3), ([0.01, 0.09, 3.1, 0.2], 0.55, 2), ([0.9], 0.55, 1),
     ([0.01, 0.09, 3.1], None, 3), ([], 0.55, 0)],
)  # fmt: skip
def test_fresh_clip_length_keeps_the_newest_and_stops_at_the_first_stale(lags, limit, expected):
    assert fresh_clip_length(lags, limit) == expected


def test_merge_sweeps_skips_and_counts_stale_sweeps():
    key = np.ones((3, 5), np.float32) * 5
    old = np.ones((4, 5), np.float32) * 5
    shift = np.eye(4)
    shift[0, 3] = 1.0
    points, skipped = merge_sweeps(key, [(old, shift, 0.05), (old, np.eye(4), 2.0)], 0.55)
    assert skipped == 1 and points.shape == (7, 5)
    np.testing.assert_allclose(points[3:, 0], 6.0)
    np.testing.assert_allclose(points[:, 4], [0, 0, 0, 0.05, 0.05, 0.05, 0.05], rtol=1e-6)


def _chain(by_token: dict, start: dict, steps: int) -> list[dict]:
    """`start` and the records `steps` prev links back of it, newest first."""
    records = [start]
    while len(records) <= steps and records[-1]["prev"]:
        records.append(by_token[records[-1]["prev"]])
    return records


@pytest.fixture(scope="module")
def gap_world(tiny_world, tmp_path_factory):
    """A world with a 3 s recording gap before one keyframe K: its 4th and older LiDAR sweeps
    and its CAM_FRONT frames from the 2nd before on are 3 s older (relative times within the
    older part unchanged, so only K's sweeps and clip straddle the gap)."""
    import shutil

    root = tmp_path_factory.mktemp("gap") / "world"
    shutil.copytree(tiny_world, root)
    path = root / VERSION / "sample_data.json"
    sample_data = json.loads(path.read_text())
    by_token = {r["token"]: r for r in sample_data}
    samples = json.loads((root / VERSION / "sample.json").read_text())
    key_sample = next(s for s in samples if s["prev"])  # the 2nd sample of a scene
    keyframes = [r for r in sample_data if r["sample_token"] == key_sample["token"]]
    keyframes = [r for r in keyframes if r["is_key_frame"]]
    lidar = next(r for r in keyframes if "LIDAR_TOP" in r["filename"])
    camera = next(r for r in keyframes if "/CAM_FRONT/" in r["filename"])
    for start, steps in ((lidar, 4), (camera, 2)):
        record = _chain(by_token, start, steps)[-1]
        assert record is not start
        while True:  # this record and every older one of the sensor
            record["timestamp"] -= GAP_US
            if not record["prev"]:
                break
            record = by_token[record["prev"]]
    path.write_text(json.dumps(sample_data))
    build_index(root, VERSION, max_sweeps=10, max_clip_frames=3, progress=False)
    return root, key_sample["token"]


def test_dataset_does_not_merge_sweeps_or_clip_frames_across_a_gap(gap_world):
    root, token = gap_world
    with pytest.warns(UserWarning, match="6 earlier LiDAR sweep.*max_sweep_age=0.55 s"):
        ds = NuScenesDataset(root, VERSION, "all", sweeps=10, clip_frames=3, load_images=False)
    assert ds.stale_sweeps == 6 and ds.stale_clip_frames == 1
    i = ds.tokens.index(token)
    sample = ds[i]
    lags = sample.points[:, 4]
    assert 0 < float(lags.max()) <= 0.55
    assert len(np.unique(lags.numpy())) == 4  # the keyframe and the 3 sweeps before the gap
    front = ds.cameras.index("CAM_FRONT")
    clip_lags = sample.camera_time_lag[front].tolist()  # oldest first
    assert clip_lags[0] == clip_lags[1] and max(clip_lags) <= 0.55  # padded, not 3 s old

    unlimited = NuScenesDataset(
        root, VERSION, "all", sweeps=10, clip_frames=3, load_images=False,
        max_sweep_age=None, max_clip_frame_age=None,
    )  # fmt: skip
    assert unlimited.stale_sweeps == 0 and unlimited.stale_clip_frames == 0
    sample = unlimited[i]
    assert float(sample.points[:, 4].max()) > GAP_US * 1e-6
    assert float(sample.camera_time_lag[front, 0]) > GAP_US * 1e-6


def test_settings_that_do_not_reach_back_to_the_gap_skip_nothing(gap_world, recwarn):
    root, _ = gap_world
    ds = NuScenesDataset(root, VERSION, "all", sweeps=3, clip_frames=2, load_images=False)
    assert ds.stale_sweeps == 0 and ds.stale_clip_frames == 0
    assert not [w for w in recwarn if "max_sweep_age" in str(w.message)]


@pytest.mark.parametrize(
    "sweeps,stride,age,beyond",
    [(10, 1, 0.55, 0), (10, 4, 0.55, 7), (3, 4, 0.55, 0), (10, 4, None, 0), (1, 9, 0.01, 0),
     (4, 3, 0.3, 1), (4, 3, 0.29, 2)],
)  # fmt: skip
def test_sweep_reach_problem_names_both_keys(sweeps, stride, age, beyond):
    problem = sweep_reach_problem(sweeps, stride, 0.05, age)
    if not beyond:
        assert problem is None
        return
    assert f"data.sweeps={sweeps} with data.sweep_stride={stride}" in problem
    assert f"data.max_sweep_age={age} s: {beyond} of the {sweeps - 1} earlier" in problem


def test_building_a_dataset_warns_when_the_stride_reaches_past_the_age(gap_world, recwarn):
    """#28 (d): stride 3 with 4 sweeps reaches 0.45 s back at the world's 20 Hz; with
    data.max_sweep_age 0.35 the oldest merged sweep is skipped at every keyframe, not only
    at the gap: `build_dataset` says so, naming both keys and the rate it measured."""
    from perception.config import load_config
    from perception.datasets.pipeline import build_dataset, lidar_period

    root, _ = gap_world
    base = ["data.train_split=all", "data.val_split=all", "data.load_images=false"]
    settings = ["data.sweeps=4", "data.sweep_stride=3"]
    config = load_config("configs/bevfusion_tiny.yaml", [*base, *settings])
    build_dataset(config, train=False, root=root)  # 0.55 s: only the gap's sweeps
    assert not [w for w in recwarn if "data.sweep_stride=3" in str(w.message)]
    config = load_config(
        "configs/bevfusion_tiny.yaml", [*base, *settings, "data.max_sweep_age=0.35"]
    )
    with pytest.warns(UserWarning) as warned:
        dataset = build_dataset(config, train=False, root=root)
    reach = [str(w.message) for w in warned if "data.sweep_stride=3" in str(w.message)]
    assert len(reach) == 1 and "of 50 ms" in reach[0] and "1 of the 3 earlier" in reach[0]
    assert lidar_period(dataset.records) == pytest.approx(0.05, abs=1e-3)  # jittered stamps
    assert dataset.stale_sweeps >= len(dataset)  # one a keyframe at least
