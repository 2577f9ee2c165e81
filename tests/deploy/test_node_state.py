"""The node's streaming state and stage pieces on small hand-made inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from perception.config import parse_config
from perception.datasets.random_batch import random_batch
from perception.deploy.convert import StampedTransform
from perception.deploy.node import LatestSlot
from perception.deploy.pipeline import ModelStages, points_in_range
from perception.deploy.state import (
    CameraHistory,
    MissingTransform,
    Sweep,
    SweepAccumulator,
    TfBuffer,
    merge_earlier,
)
from perception.models.builder import build_model
from tests.perception.models.helpers import MICRO


def _pose(x: float, yaw: float = 0.0) -> np.ndarray:
    m = np.eye(4)
    m[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    m[0, 3] = x
    return m


def test_tf_buffer_exact_interpolated_held_and_missing():
    tf = TfBuffer(tolerance_ns=50)
    tf.add([StampedTransform("base_link", "lidar_top", 0, _pose(1.0))], static=True)
    tf.add([StampedTransform("map", "base_link", 100, _pose(10.0, 0.0))], static=False)
    tf.add([StampedTransform("map", "base_link", 200, _pose(20.0, math.pi / 2))], static=False)
    np.testing.assert_allclose(tf.ego_pose(100), _pose(10.0))
    np.testing.assert_allclose(tf.ego_pose(150), _pose(15.0, math.pi / 4), atol=1e-12)
    np.testing.assert_allclose(tf.ego_pose(240), _pose(20.0, math.pi / 2))  # held
    np.testing.assert_allclose(tf.sensor_to_map("lidar_top", 100), _pose(11.0))
    with pytest.raises(MissingTransform):
        tf.ego_pose(300)
    with pytest.raises(MissingTransform):
        tf.sensor_to_map("cam_front", 100)
    assert tf.known_frames == {"map", "base_link", "lidar_top"}
    tf.reset()
    assert tf.static and not tf._stamps


def test_sweeps_merge_into_the_newest_frame_with_time_lag():
    acc = SweepAccumulator(sweeps=3)
    first = np.array([[5.0, 0, 0, 1], [0.5, 0, 0, 2]], np.float32)  # the second hits the ego
    acc.merge(Sweep(0, first, _pose(0.0)))
    second = np.array([[7.0, 1, 0, 3]], np.float32)
    acc.merge(Sweep(50_000_000, second, _pose(1.0)))
    third = np.array([[2.0, 0, 0, 4]], np.float32)
    merged, skipped = acc.merge(Sweep(100_000_000, third, _pose(3.0)))
    expected = [
        [2.0, 0, 0, 4, 0.0],  # the new cloud, lag 0
        [5.0, 1, 0, 3, 0.05],  # newest earlier sweep, moved back by 2 m
        [2.0, 0, 0, 1, 0.1],  # oldest, moved back by 3 m; its ego point removed
    ]
    np.testing.assert_allclose(merged, expected, atol=1e-6)
    assert merged.dtype == np.float32 and skipped == 0
    fourth, _ = acc.merge(Sweep(150_000_000, third, _pose(3.0)))
    assert len(fourth) == 3  # only sweeps - 1 = 2 earlier sweeps are kept
    acc.reset()
    assert len(acc.merge(Sweep(200_000_000, third, _pose(3.0)))[0]) == 1


def test_the_node_merges_with_the_datasets_function_and_age_limit():
    """#28 (a): the accumulator's age limit is `data.max_sweep_age` (seconds, the dataset's
    default 0.55 s), sweeps beyond it are skipped and counted, and the merge is the dataset's
    `merge_sweeps` on the sweeps moved into the new cloud's frame."""
    from perception.config.schema import DataConfig
    from perception.datasets.sensors import merge_sweeps

    assert SweepAccumulator(sweeps=3).max_age_s == DataConfig().max_sweep_age
    acc = SweepAccumulator(sweeps=4, max_age_s=0.12)
    clouds = [np.array([[5.0 + k, 0, 0, k], [0.5, 0, 0, 9]], np.float32) for k in range(4)]
    sweeps = [Sweep(k * 50_000_000, clouds[k], _pose(float(k))) for k in range(3)]
    sweeps.append(Sweep(900_000_000, clouds[3], _pose(4.0)))  # after a gap: all too old
    for sweep in sweeps[:3]:
        merged, skipped = acc.merge(sweep)
    assert skipped == 0 and np.unique(merged[:, 4]).tolist() == pytest.approx([0.0, 0.05, 0.1])
    merged, skipped = acc.merge(sweeps[3])
    assert skipped == 3 and len(merged) == 2 and not merged[:, 4].any()

    key = sweeps[2]
    earlier = tuple(sweeps[:2])
    got, skipped = merge_earlier(key, earlier, 0.06)
    to_key = np.linalg.inv(key.sensor_to_map)
    expected, expected_skipped = merge_sweeps(
        key.points,
        [(s.points, to_key @ s.sensor_to_map, (key.stamp_ns - s.stamp_ns) * 1e-9)
         for s in reversed(earlier)],
        0.06,
    )  # fmt: skip
    assert skipped == expected_skipped == 1
    np.testing.assert_array_equal(got, expected)


def test_sweep_stride_merges_every_kth_earlier_cloud():
    acc = SweepAccumulator(sweeps=3, stride=2)
    lags = []
    for k in range(7):  # clouds 50 ms apart, one point each at x = 10 + k
        cloud = np.array([[10.0 + k, 0, 0, k]], np.float32)
        lags.append(acc.merge(Sweep(k * 50_000_000, cloud, _pose(0.0)))[0][:, 4].tolist())
    assert lags[1] == [0.0]  # nothing 2 clouds back yet
    assert lags[2] == pytest.approx([0.0, 0.1])
    assert lags[3] == pytest.approx([0.0, 0.1])
    assert lags[4] == pytest.approx([0.0, 0.1, 0.2])  # clouds 2 and 0: newest earlier first
    assert lags[6] == pytest.approx([0.0, 0.1, 0.2])
    assert len(acc.history) == 4
    with pytest.raises(ValueError, match="stride must be >= 1"):
        SweepAccumulator(sweeps=3, stride=0)


def test_points_in_range_is_half_open():
    points = np.array([[0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [-1, 0, 0, 0, 0]], np.float32)
    kept = points_in_range(points, [-1, -1, -1, 1, 1, 1])
    np.testing.assert_array_equal(kept[:, 0], [0, -1])


def test_camera_history_nearest_and_padded_clip():
    history = CameraHistory(depth=4)
    image = np.zeros((3, 2, 2), np.uint8)
    for stamp in (0, 83, 166):
        history.add(stamp, image, 0)
    assert history.nearest(100, max_delay_ns=50).stamp_ns == 83
    assert history.nearest(300, max_delay_ns=50) is None
    frame = history.nearest(90, 50)
    clip, stale = history.clip(frame, 3)
    assert [f.seq for f in clip] == [0, 0, 1] and stale == 0  # padded with the oldest
    assert [f.seq for f in history.clip(history.latest, 2)[0]] == [1, 2]


def test_camera_history_clip_stops_at_a_frame_too_old_for_the_cloud():
    """#28 (a): the dataset's clip rule (`fresh_clip_length`), lags measured back from the
    cloud's stamp: the chosen frame always, earlier ones up to the first older than
    `max_age_s`, then padded with the oldest kept, as the dataset pads; the cut is counted."""
    history = CameraHistory(depth=6)
    image = np.zeros((3, 2, 2), np.uint8)
    for stamp in (0, 600, 683, 766):  # a gap of 0.6 s after the first frame (ms -> ns below)
        history.add(stamp * 1_000_000, image, 0)
    cloud_ns = 780_000_000
    clip, stale = history.clip(history.latest, 4, reference_ns=cloud_ns, max_age_s=0.55)
    assert [f.seq for f in clip] == [1, 1, 2, 3] and stale == 1
    clip, stale = history.clip(history.latest, 4, reference_ns=cloud_ns, max_age_s=0.1)
    assert [f.seq for f in clip] == [2, 2, 2, 3] and stale == 2  # 683 ms: 97 ms before the cloud
    clip, stale = history.clip(history.latest, 4, reference_ns=cloud_ns, max_age_s=None)
    assert [f.seq for f in clip] == [0, 1, 2, 3] and stale == 0
    # the newest frame is kept whatever its age (the camera's delay is the sync's business)
    clip, stale = history.clip(history.latest, 2, reference_ns=cloud_ns + 10**9, max_age_s=0.1)
    assert [f.seq for f in clip] == [3, 3] and stale == 1


def test_latest_slot_replaces_a_waiting_item():
    slot = LatestSlot()
    assert slot.put(1) is None
    assert slot.put(2) == 1  # the stale one comes back to be counted as dropped
    assert slot.get(0.01) == 2
    assert slot.get(0.01) is None


@pytest.mark.parametrize("overrides", [[], ["model.paint_points=true"]])
def test_stages_compose_to_the_model(overrides):
    torch.manual_seed(0)
    config = parse_config(MICRO, overrides)
    model = build_model(config).eval()
    batch = random_batch(config, batch_size=1, seed=0)
    stages = ModelStages(model)
    with torch.inference_mode():
        expected = model(batch)[0]
        lidar_bev, voxelize_s = stages.lidar(batch)
        got = stages.fuse_head(batch, stages.camera_clip(batch), lidar_bev)
    assert voxelize_s > 0
    assert len(got) == len(expected)
    assert torch.equal(got.boxes.tensor, expected.boxes.tensor)
    assert torch.equal(got.scores, expected.scores)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_encoded_image_size_reads_the_header_without_decoding(ext):
    import cv2

    from perception.deploy.convert import jpeg_to_compressed_image
    from perception.deploy.validation import InvalidMessage, check_encoded_image, encoded_image_size

    ok, data = cv2.imencode(ext, np.zeros((45, 80, 3), np.uint8))
    assert ok and encoded_image_size(data.tobytes()) == (80, 45)
    msg = jpeg_to_compressed_image(data.tobytes(), frame_id="cam_front", stamp_ns=0)
    check_encoded_image(msg, topic="/cam", expected_size=(80, 45))
    with pytest.raises(InvalidMessage) as info:
        check_encoded_image(msg, topic="/cam", expected_size=(800, 450))
    assert info.value.reason == "image_size"
    msg.data = msg.data[:10]
    with pytest.raises(InvalidMessage) as info:
        check_encoded_image(msg, topic="/cam", expected_size=None)
    assert info.value.reason == "corrupt_image"


def test_camera_stream_masks_only_the_camera_that_fails():
    """#28 item 8: a camera whose TSM cache cannot be rebuilt is masked for the cloud (as if it
    had no frame) and the other cameras go on; nothing is raised."""
    import dataclasses

    from perception.deploy.pipeline import CameraStreamState
    from perception.deploy.state import CameraFrame

    torch.manual_seed(0)
    config = parse_config(MICRO)
    stages = ModelStages(build_model(config).eval())
    batch = random_batch(config, batch_size=1, seed=0)  # [1, Ncam, T=2, 3, H, W]
    n = batch.images.shape[1]
    clips = []
    for c in range(n):
        history = CameraHistory(depth=4)
        history.add(0, batch.images[0, c, 0].numpy(), 0)
        clips.append([history.frames[0], history.add(1, batch.images[0, c, 1].numpy(), 0)])
    clips[1][0] = CameraFrame(0, 0, np.zeros((3, 5, 5), np.uint8), 0)  # unusable earlier frame
    state = CameraStreamState.fresh(n)
    with torch.inference_mode():
        bev, masked, failed = stages.camera_stream(batch, clips, state)
    assert list(failed) == [1]
    assert masked.camera_mask[0].tolist() == [c != 1 for c in range(n)]
    assert state.seqs[1] is None and all(state.seqs[c] == 1 for c in range(n) if c != 1)
    # the same as camera 1 masked from the start
    mask = batch.camera_mask.clone()
    mask[0, 1] = False
    expected_clips = [None if c == 1 else clip for c, clip in enumerate(clips)]
    with torch.inference_mode():
        expected, _, none = stages.camera_stream(
            dataclasses.replace(batch, camera_mask=mask), expected_clips, CameraStreamState.fresh(n)
        )
    assert none == {}
    torch.testing.assert_close(bev, expected)


def test_camera_stream_rebuilds_its_cache_when_the_clip_was_cut_for_age():
    """#28 (a): a camera's next frame after a gap in its stream is the next by sequence, but
    its clip was cut at the gap (`data.max_clip_frame_age`): the TSM cache must not carry the
    pre-gap frames on. The features equal a fresh start on the cut clip, as offline."""
    import dataclasses

    from perception.deploy.pipeline import CameraStreamState

    torch.manual_seed(0)
    config = parse_config(MICRO)
    stages = ModelStages(build_model(config).eval())
    batch = random_batch(config, batch_size=1, seed=0)  # [1, Ncam, T=2, 3, H, W]
    n = batch.images.shape[1]
    clips, cut = [], []
    for c in range(n):
        history = CameraHistory(depth=4)
        for k, stamp_ms in enumerate((0, 83, 900)):  # a gap before the third frame
            history.add(stamp_ms * 1_000_000, batch.images[0, c, k % 2].numpy(), 0)
        clips.append(list(history.frames)[:2])
        clip, stale = history.clip(history.latest, 2, reference_ns=900_000_000, max_age_s=0.55)
        assert stale == 1 and [f.seq for f in clip] == [2, 2]
        cut.append(clip)
    after_gap = dataclasses.replace(batch, images=batch.images[:, :, [0, 0]])  # frame 2 last
    state = CameraStreamState.fresh(n)
    with torch.inference_mode():
        stages.camera_stream(batch, clips, state)
        gaps = state.gaps
        bev, _, failed = stages.camera_stream(after_gap, cut, state)
        expected, _, _ = stages.camera_stream(after_gap, cut, CameraStreamState.fresh(n))
    assert failed == {} and state.gaps == gaps + n and state.seqs == [2] * n
    torch.testing.assert_close(bev, expected)
