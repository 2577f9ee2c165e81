"""The one sensor-preprocessing module (`perception.datasets.sensors`): quaternion order and
round trips against hand-computed cases, sweep merging against a plain reference of its rule,
range bounds, the test-time image transform against the dataset's `ImageAug`, and that the
dataset and the node call these very functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pyquaternion import Quaternion

from perception.config import parse_config
from perception.datasets import sensors
from perception.datasets.sensors import (
    EGO_RADIUS_M,
    TestTimeImageTransform,
    image_aug_matrix,
    in_range_mask,
    interpolate_pose,
    matrix_to_quaternion,
    merge_sweeps,
    points_in_range,
    pose_matrix,
    quaternion_to_matrix,
    quaternion_yaw,
    read_table,
    yaw_to_quaternion,
)
from perception.datasets.transforms import ImageAug, PointsRangeFilter
from tests.perception.datasets.test_transforms import make_sample

H = math.sqrt(0.5)

# -- quaternions: (w, x, y, z) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        # 90 deg about +z: x -> y, y -> -x
        ((H, 0.0, 0.0, H), [[0, -1, 0], [1, 0, 0], [0, 0, 1]]),
        # 90 deg about +x: y -> z, z -> -y
        ((H, H, 0.0, 0.0), [[1, 0, 0], [0, 0, -1], [0, 1, 0]]),
        # 180 deg about +y: x -> -x, z -> -z
        ((0.0, 0.0, 1.0, 0.0), [[-1, 0, 0], [0, 1, 0], [0, 0, -1]]),
        # not normalised: scaled quaternions are the same rotation
        ((2 * H, 0.0, 0.0, 2 * H), [[0, -1, 0], [1, 0, 0], [0, 0, 1]]),
    ],
)
def test_quaternion_components_are_w_x_y_z(q, expected):
    np.testing.assert_allclose(quaternion_to_matrix(q), expected, atol=1e-15)
    w, x, y, z = matrix_to_quaternion(np.asarray(expected, np.float64))
    norm = math.sqrt(sum(v * v for v in q))
    np.testing.assert_allclose([w, x, y, z], np.asarray(q) / norm, atol=1e-15)


def test_quaternion_to_matrix_is_the_devkits_bit_for_bit():
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.normal(size=4).tolist()
        assert np.array_equal(quaternion_to_matrix(q), Quaternion(q).rotation_matrix)


def test_quaternion_round_trip_and_sign():
    rng = np.random.default_rng(1)
    for _ in range(200):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        back = np.array(matrix_to_quaternion(quaternion_to_matrix(q)))
        assert back[0] >= 0  # w first, non-negative
        np.testing.assert_allclose(back, q if q[0] >= 0 else -q, atol=1e-12)
    # every branch of Shepperd's method (trace > 0, then x, y, z largest)
    for q in [(1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0, 0, 0, 1.0)]:
        assert matrix_to_quaternion(quaternion_to_matrix(q)) == q
    with pytest.raises(ValueError, match="zero quaternion"):
        quaternion_to_matrix((0.0, 0.0, 0.0, 0.0))


@pytest.mark.parametrize("yaw", [0.0, 0.3, math.pi / 2, -2.0, 3.0])
def test_yaw_quaternion(yaw):
    q = yaw_to_quaternion(yaw)
    assert q == (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
    assert quaternion_yaw(q) == pytest.approx(yaw)
    c, s = math.cos(yaw), math.sin(yaw)
    np.testing.assert_allclose(
        quaternion_to_matrix(q), [[c, -s, 0], [s, c, 0], [0, 0, 1]], atol=1e-15
    )
    # the devkit's reading of the same record
    from nuscenes.eval.common.utils import quaternion_yaw as devkit_yaw

    assert devkit_yaw(Quaternion(list(q))) == pytest.approx(yaw)


def test_pose_matrix_is_parent_from_child():
    """nuScenes' calibrated_sensor (ego <- sensor): a sensor at (1, 2, 3) in the ego frame,
    turned 90 deg left; its +x axis points along ego +y."""
    m = pose_matrix([1.0, 2.0, 3.0], yaw_to_quaternion(math.pi / 2))
    assert m.dtype == np.float64 and m.shape == (4, 4)
    np.testing.assert_allclose(m @ [1.0, 0, 0, 1], [1.0, 3.0, 3.0, 1.0], atol=1e-15)
    np.testing.assert_allclose(m @ [0.0, 0, 0, 1], [1.0, 2.0, 3.0, 1.0])


def test_interpolate_pose_halfway():
    a = pose_matrix([0.0, 0, 0], yaw_to_quaternion(0.0))
    b = pose_matrix([2.0, 4.0, 0], yaw_to_quaternion(math.pi / 2))
    mid = interpolate_pose(a, b, 0.5)
    np.testing.assert_allclose(
        mid, pose_matrix([1.0, 2.0, 0], yaw_to_quaternion(math.pi / 4)), atol=1e-12
    )
    np.testing.assert_allclose(interpolate_pose(a, b, 0.0), a, atol=1e-12)
    np.testing.assert_allclose(interpolate_pose(a, b, 1.0), b, atol=1e-12)


# -- sweeps --------------------------------------------------------------------------------


def _reference_merge(key, earlier, max_age):
    """The merging rule point by point: keyframe points with lag 0, then each sweep newest first
    (if 0 < lag <= max_age) without points within EGO_RADIUS_M (x-y) of its sensor, moved by
    float64 sweep_to_key and stored as float32."""
    rows = [[*p[:4], 0.0] for p in key]
    skipped = 0
    for points, to_key, lag in earlier:
        if not (lag > 0 and (max_age is None or lag <= max_age)):
            skipped += 1
            continue
        for p in points:
            if math.hypot(float(p[0]), float(p[1])) <= EGO_RADIUS_M:
                continue
            xyz = to_key[:3, :3] @ p[:3].astype(np.float64) + to_key[:3, 3]
            rows.append([*xyz, p[3], lag])
    return np.asarray(rows, np.float32).reshape(-1, 5), skipped


def test_merge_sweeps_matches_the_rule():
    rng = np.random.default_rng(2)
    key = rng.normal(scale=5, size=(50, 5)).astype(np.float32)
    earlier = []
    for k, lag in enumerate([0.05, 0.1, 0.7, 0.0, 0.15]):  # 0.7: too old; 0.0: not earlier
        pts = rng.normal(scale=3, size=(40, 5)).astype(np.float32)
        pts[:5, :2] = rng.uniform(-0.6, 0.6, size=(5, 2))  # ego hits
        pts[5:, 0] = rng.uniform(1.5, 10, size=35)  # beyond the ego radius
        to_key = pose_matrix(rng.normal(size=3), yaw_to_quaternion(0.1 * k))
        earlier.append((pts, to_key, lag))
    got, skipped = merge_sweeps(key, earlier, 0.55)
    expected, expected_skipped = _reference_merge(key, earlier, 0.55)
    assert got.dtype == np.float32 and got.shape[1] == 5
    assert skipped == expected_skipped == 2
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)  # matmul vs per-point order
    np.testing.assert_array_equal(got[:50, :4], key[:, :4])
    assert len(got) == 50 + 3 * 35
    no_limit, skipped = merge_sweeps(key, earlier, None)
    assert skipped == 1 and len(no_limit) == 50 + 4 * 35


def test_dataset_and_node_call_the_same_functions():
    from perception.datasets import nuscenes, pipeline, transforms
    from perception.deploy import bag, convert, state
    from perception.deploy import pipeline as node_pipeline

    assert nuscenes.merge_sweeps is state.merge_sweeps is merge_sweeps
    assert pipeline.sweep_reach_problem is sensors.sweep_reach_problem
    assert node_pipeline.points_in_range is sensors.points_in_range
    assert node_pipeline.ImagePreprocess is sensors.TestTimeImageTransform
    assert state.interpolate_pose is interpolate_pose
    assert bag.pose_matrix is pose_matrix and bag.read_table is read_table
    assert convert.matrix_to_quaternion is matrix_to_quaternion
    assert transforms.in_range_mask is in_range_mask


# -- range filter --------------------------------------------------------------------------


def test_range_filter_is_half_open_in_float32():
    r = [-25.6, -25.6, -4.0, 25.6, 25.6, 2.4]
    lo, hi = np.float32(-25.6), np.float32(25.6)
    points = np.array(
        [
            [lo, 0, 0, 1, 0],  # on the lower bound: in
            [hi, 0, 0, 1, 0],  # on the upper bound: out
            [np.nextafter(hi, np.float32(0)), 0, 0, 1, 0],  # just below it: in
            [np.nextafter(lo, np.float32(-30)), 0, 0, 1, 0],  # just below the lower: out
            [0, 0, np.float32(2.4), 1, 0],  # z on its upper bound: out
            [0, 0, -4.0, 1, 0],  # z on its lower bound: in
        ],
        np.float32,
    )
    np.testing.assert_array_equal(in_range_mask(points, r), [1, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(points_in_range(points, r), points[[0, 2, 5]])


def test_points_range_filter_is_points_in_range():
    sample = make_sample()
    r = [-10.0, -5.0, -1.0, 10.0, 15.0, 0.5]
    kept = PointsRangeFilter(r)(sample, np.random.default_rng(0)).points
    assert 0 < len(kept) < len(sample.points)
    np.testing.assert_array_equal(kept.numpy(), points_in_range(sample.points.numpy(), r))


# -- test-time image transform --------------------------------------------------------------


def test_test_time_transform_is_the_datasets_image_aug():
    config = parse_config({"augment": {"image": {"final_size": [128, 48]}}})
    node = TestTimeImageTransform.from_config(config)
    sample = make_sample(height=90, width=160, n_cams=1, frames=1)
    gen = torch.Generator().manual_seed(0)
    sample = sample.replace(images=torch.randint(0, 256, (1, 1, 3, 90, 160), generator=gen).byte())
    warped = ImageAug(config.augment.image, train=False, test_resize=config.augment.test_resize)(
        sample, np.random.default_rng(0)
    )
    assert node.size == (128, 48)
    np.testing.assert_array_equal(node.matrix(160, 90), warped.image_aug[0].numpy())
    rgb = np.ascontiguousarray(sample.images[0, 0].numpy().transpose(1, 2, 0))
    np.testing.assert_array_equal(node(rgb), warped.images[0, 0].numpy())
    m = node.affine(160, 90)
    np.testing.assert_array_equal(image_aug_matrix(m)[:2, [0, 1, 3]], m[:2])
    with pytest.raises(ValueError, match="train=False"):
        TestTimeImageTransform(ImageAug(config.augment.image, train=True))
    with pytest.raises(ValueError, match="random generator"):
        ImageAug(config.augment.image, train=True).affine(160, 90)


# -- tables --------------------------------------------------------------------------------


def test_read_table(tmp_path):
    (tmp_path / "v1.0-mini").mkdir()
    (tmp_path / "v1.0-mini" / "ego_pose.json").write_text('[{"token": "a"}]')
    assert read_table(tmp_path, "v1.0-mini", "ego_pose") == [{"token": "a"}]
    with pytest.raises(FileNotFoundError, match=r"scene\.json: nuScenes table is missing"):
        read_table(tmp_path, "v1.0-mini", "scene")
    assert sensors.__all__  # the public surface is declared
