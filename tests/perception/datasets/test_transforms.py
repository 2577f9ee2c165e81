"""Transforms keep geometry consistent: what they do to pixels and points is what their
recorded matrices say."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from perception.config.schema import ImageAugConfig, LidarAugConfig
from perception.datasets.transforms import (
    BoxesRangeFilter,
    DropSensors,
    ImageAug,
    LidarAug,
    PointsRangeFilter,
)
from perception.geometry import lidar_to_image, project
from perception.structures import CAMERA_NAMES, Boxes3D, Sample


def _camera_to_lidar() -> torch.Tensor:
    """Camera looking along LiDAR +y (x right = LiDAR +x, y down = LiDAR -z, z fwd = LiDAR +y)."""
    m = torch.eye(4)
    m[:3, :3] = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])
    return m


def make_sample(height=90, width=160, n_cams=2, frames=2, dot=(100, 40)) -> Sample:
    images = torch.zeros(n_cams, frames, 3, height, width, dtype=torch.uint8)
    images[:, :, :, dot[1] - 1 : dot[1] + 2, dot[0] - 1 : dot[0] + 2] = 255
    k = torch.tensor([[100.0, 0, width / 2], [0, 100.0, height / 2], [0, 0, 1]])
    gen = torch.Generator().manual_seed(0)
    points = torch.cat(
        [torch.rand(500, 3, generator=gen) * 40 - 20, torch.rand(500, 2, generator=gen)], 1
    )
    boxes = Boxes3D(
        torch.tensor(
            [
                [2.0, 10.0, 0.0, 2.0, 4.0, 1.5, 0.4, 1.0, 0.5],
                [-5.0, 3.0, 0.5, 1.0, 1.0, 2.0, -1.0, 0.0, 0.0],
            ]
        )
    )
    return Sample(
        token="t",
        timestamp_us=0,
        points=points,
        images=images,
        camera_names=CAMERA_NAMES[:n_cams],
        intrinsics=k.repeat(n_cams, 1, 1),
        camera_to_lidar=_camera_to_lidar().repeat(n_cams, frames, 1, 1),
        camera_time_lag=torch.zeros(n_cams, frames),
        image_aug=torch.eye(4).repeat(n_cams, 1, 1),
        lidar_aug=torch.eye(4),
        lidar_to_ego=torch.eye(4, dtype=torch.float64),
        ego_to_global=torch.eye(4, dtype=torch.float64),
        camera_mask=torch.ones(n_cams, dtype=torch.bool),
        lidar_present=True,
        gt_boxes=boxes,
        gt_labels=torch.tensor([0, 8]),
        gt_attributes=torch.tensor([0, 3]),
        gt_num_points=torch.tensor([10, 5]),
    )


def _points_in_boxes(points: torch.Tensor, boxes: Boxes3D) -> torch.Tensor:
    local = points[:, None, :3] - boxes.center[None]
    c, s = torch.cos(-boxes.yaw), torch.sin(-boxes.yaw)
    x = local[..., 0] * c - local[..., 1] * s
    y = local[..., 0] * s + local[..., 1] * c
    half = boxes.size / 2
    return (x.abs() <= half[:, 1]) & (y.abs() <= half[:, 0]) & (local[..., 2].abs() <= half[:, 2])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lidar_aug_keeps_points_in_their_boxes(seed):
    sample = make_sample()
    # add points near the box centres so some fall inside the boxes
    near = (
        sample.gt_boxes.center.repeat(3, 1)
        + torch.randn(6, 3, generator=torch.Generator().manual_seed(1)) * 0.2
    )
    sample = sample.replace(
        points=torch.cat([sample.points, torch.cat([near, torch.zeros(6, 2)], 1)])
    )
    before = _points_in_boxes(sample.points, sample.gt_boxes)
    out = LidarAug(LidarAugConfig(flip_x_prob=0.5, flip_y_prob=0.5))(
        sample, np.random.default_rng(seed)
    )
    after = _points_in_boxes(out.points, out.gt_boxes)
    assert before.any()
    assert torch.equal(before, after)
    # the recorded matrix maps the old points to the new ones
    a = out.lidar_aug
    assert torch.allclose(
        sample.points[:, :3] @ a[:3, :3].T + a[:3, 3], out.points[:, :3], atol=1e-4
    )


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_aug_matrix_matches_pixels(train, seed):
    dot = (100, 40)
    sample = make_sample(dot=dot)
    config = ImageAugConfig(
        final_size=(128, 64), scale_lim=(0.875, 1.125), rotate_lim_deg=(-10, 10)
    )
    out = ImageAug(config, train=train)(sample, np.random.default_rng(seed))
    assert out.images.shape == (2, 2, 3, 64, 128)
    for c in range(2):
        u, v = (
            out.image_aug[c, :2, :2] @ torch.tensor(dot, dtype=torch.float32)
            + out.image_aug[c, :2, 3]
        ).tolist()
        image = out.images[c, 1, 0].float()
        if not (2 <= u < 126 and 2 <= v < 62):
            continue  # the crop removed the dot
        ys, xs = torch.nonzero(image > 60, as_tuple=True)
        assert len(xs), "the dot should be visible where the matrix puts it"
        assert abs(xs.float().mean().item() - u) < 1.5 and abs(ys.float().mean().item() - v) < 1.5


def test_projection_follows_both_augmentations():
    sample = make_sample()
    rng = np.random.default_rng(5)
    aug = ImageAug(ImageAugConfig(final_size=(128, 64), scale_lim=(0.875, 1.125)), train=True)
    out = LidarAug(LidarAugConfig())(aug(sample, rng), rng)
    before = lidar_to_image(
        sample.intrinsics[0], sample.camera_to_lidar[0, -1], sample.image_aug[0], sample.lidar_aug
    )
    after = lidar_to_image(
        out.intrinsics[0], out.camera_to_lidar[0, -1], out.image_aug[0], out.lidar_aug
    )
    uv0, d0 = project(sample.gt_boxes.center, before)
    uv1, d1 = project(out.gt_boxes.center, after)
    expected = uv0 @ out.image_aug[0, :2, :2].T + out.image_aug[0, :2, 3]
    assert torch.allclose(uv1, expected, atol=1e-2)
    assert torch.allclose(d0, d1, atol=1e-3)


def test_augmentation_is_reproducible():
    sample = make_sample()
    aug = LidarAug(LidarAugConfig())
    a = aug(sample, np.random.default_rng([0, 1, 2]))
    b = aug(sample, np.random.default_rng([0, 1, 2]))
    c = aug(sample, np.random.default_rng([0, 2, 2]))
    assert torch.equal(a.points, b.points)
    assert not torch.equal(a.points, c.points)


def test_range_filters():
    sample = make_sample()
    r = (-10.0, -10.0, -5.0, 10.0, 10.0, 3.0)
    out = BoxesRangeFilter(r)(PointsRangeFilter(r)(sample, None), None)
    assert (out.points[:, :2].abs() < 10).all() and len(out.points) < len(sample.points)
    assert len(out.gt_boxes) == 1 and int(out.gt_labels[0]) == 8


def test_drop_sensors():
    sample = make_sample()
    out = DropSensors(cameras=["CAM_FRONT"], lidar=True)(sample, None)
    assert out.camera_mask.tolist() == [False, True]
    assert int(out.images[0].sum()) == 0 and int(out.images[1].sum()) > 0
    assert len(out.points) == 0 and not out.lidar_present
    with pytest.raises(ValueError, match="CAM_BACK"):
        DropSensors(cameras=["CAM_BACK"])(sample, None)


def test_rotation_about_z_turns_yaw():
    sample = make_sample()
    cfg = LidarAugConfig(
        rotate_lim_deg=(30, 30), scale_lim=(1, 1), translation_std=0, flip_x_prob=0, flip_y_prob=0
    )
    out = LidarAug(cfg)(sample, np.random.default_rng(0))
    assert torch.allclose(out.gt_boxes.yaw, sample.gt_boxes.yaw + math.radians(30), atol=1e-5)
