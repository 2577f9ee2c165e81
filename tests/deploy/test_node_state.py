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
)
from perception.models.builder import build_model
from tests.perception.models.test_detector import MICRO


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
    merged = acc.merge(Sweep(100_000_000, third, _pose(3.0)))
    expected = [
        [2.0, 0, 0, 4, 0.0],  # the new cloud, lag 0
        [5.0, 1, 0, 3, 0.05],  # newest earlier sweep, moved back by 2 m
        [2.0, 0, 0, 1, 0.1],  # oldest, moved back by 3 m; its ego point removed
    ]
    np.testing.assert_allclose(merged, expected, atol=1e-6)
    assert merged.dtype == np.float32
    fourth = acc.merge(Sweep(150_000_000, third, _pose(3.0)))
    assert len(fourth) == 3  # only sweeps - 1 = 2 earlier sweeps are kept
    acc.reset()
    assert len(acc.merge(Sweep(200_000_000, third, _pose(3.0)))) == 1


def test_sweep_stride_merges_every_kth_earlier_cloud():
    acc = SweepAccumulator(sweeps=3, stride=2)
    lags = []
    for k in range(7):  # clouds 50 ms apart, one point each at x = 10 + k
        cloud = np.array([[10.0 + k, 0, 0, k]], np.float32)
        lags.append(acc.merge(Sweep(k * 50_000_000, cloud, _pose(0.0)))[:, 4].tolist())
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
    assert [f.seq for f in history.clip(frame, 3)] == [0, 0, 1]  # padded with the oldest
    assert [f.seq for f in history.clip(history.latest, 2)] == [1, 2]


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
    from perception.deploy.node import check_encoded_image, encoded_image_size
    from perception.deploy.validation import InvalidMessage

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
