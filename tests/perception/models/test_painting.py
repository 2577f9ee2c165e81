"""Point painting: a point takes the colour of the pixel it projects to, in the camera that
sees it, through every augmentation matrix; missing cameras, NaN points and placeholder images
paint nothing; a painting model trains and reads the colours."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from perception.models.builder import build_model
from perception.models.painting import PAINT_CHANNELS, image_from_lidar, paint_points
from tests.perception.models.helpers import micro_config, synthetic_batch


def coloured_batch(config, seed: int = 0):
    """A random batch whose keyframe images encode (camera, column, row) in (r, g, b)."""
    batch = synthetic_batch(config, seed=seed)
    B, N, T, _, H, W = batch.images.shape
    images = torch.zeros_like(batch.images)
    images[:, :, -1, 0] = (torch.arange(N) * 40 + 10).view(1, N, 1, 1).to(torch.uint8)
    images[:, :, -1, 1] = torch.arange(W).view(1, 1, 1, W).to(torch.uint8)
    images[:, :, -1, 2] = torch.arange(H).view(1, 1, H, 1).to(torch.uint8)
    return replace(batch, images=images)


def point_at_pixel(batch, b: int, camera: int, u: float, v: float, depth: float):
    """The LiDAR point (augmented frame) that projects to pixel (u, v) of `camera` at `depth`."""
    lidar_from_image = torch.linalg.inv(image_from_lidar(batch)[b, camera].double())
    homogeneous = torch.tensor([u * depth, v * depth, depth, 1.0], dtype=torch.float64)
    return (lidar_from_image @ homogeneous)[:3].float()


def with_points(batch, rows):
    points = torch.stack(
        [torch.cat([torch.tensor([float(b)]), xyz, torch.tensor([0.5, 0.0])]) for b, xyz in rows]
    )
    return replace(batch, points=points)


@pytest.mark.parametrize("augmented", [False, True])
def test_a_point_takes_its_pixels_colour(augmented):
    config = micro_config()
    batch = coloured_batch(config)
    if augmented:  # a rotated, scaled LiDAR frame and a shifted, scaled image
        angle = torch.tensor(0.4)
        lidar_aug = torch.eye(4).repeat(2, 1, 1)
        lidar_aug[:, :2, :2] = 1.1 * torch.tensor(
            [[torch.cos(angle), -torch.sin(angle)], [torch.sin(angle), torch.cos(angle)]]
        )
        image_aug = batch.image_aug.clone()
        image_aug[..., 0, 0] = image_aug[..., 1, 1] = 0.9
        image_aug[..., 0, 3], image_aug[..., 1, 3] = 7.0, -3.0
        batch = replace(batch, lidar_aug=lidar_aug, image_aug=image_aug)
    H, W = batch.images.shape[-2:]
    # (sample, camera, u, v, depth); camera 0 is first in order, so its corner stays its own
    # where the next camera's view overlaps it
    cases = [(0, 0, 20.5, 30.5, 8.0), (1, 3, 100.5, 10.5, 15.0), (0, 0, W - 0.5, H - 0.5, 3.0),
             (1, 4, W / 2, H / 2, 30.0)]  # fmt: skip
    batch = with_points(
        batch, [(b, point_at_pixel(batch, b, c, u, v, d)) for b, c, u, v, d in cases]
    )
    painted = paint_points(batch, batch.camera_mask)
    assert painted.shape == (4, batch.points.shape[1] + PAINT_CHANNELS)
    assert torch.equal(painted[:, : batch.points.shape[1]], batch.points)
    for row, (_, camera, u, v, _) in enumerate(cases):
        expected = torch.tensor([camera * 40 + 10, int(u), int(v)]) / 255.0
        torch.testing.assert_close(painted[row, -4:-1], expected, msg=f"case {row}")
        assert painted[row, -1] == 1.0


def test_what_no_camera_sees_stays_unpainted():
    config = micro_config()
    batch = coloured_batch(config)
    seen = point_at_pixel(batch, 0, 0, 88.5, 20.5, 10.0)  # mid-image: camera 0 alone
    nan = torch.tensor([float("nan"), 0.0, 0.0])
    above = torch.tensor([0.0, 0.0, 40.0])  # straight up: in no camera's view
    batch = with_points(batch, [(0, seen), (0, nan), (0, above), (1, seen)])
    painted = paint_points(batch, batch.camera_mask)
    assert painted[0, -1] == 1 and painted[3, -1] == 1  # sample 1 has the same rig
    assert torch.equal(painted[1:3, -4:], torch.zeros(2, 4))
    # the camera that saw it is missing in sample 0 (and another camera does not see it)
    mask = batch.camera_mask.clone()
    mask[0, 0] = False
    painted = paint_points(batch, mask)
    assert painted[0, -1] == 0 and painted[3, -1] == 1
    # placeholder images (the loader decoded none): nothing is painted
    placeholder = replace(
        batch, images=torch.zeros(*batch.images.shape[:4], 1, 1, dtype=torch.uint8)
    )
    assert not paint_points(placeholder, batch.camera_mask)[:, -4:].any()


def test_a_painting_model_trains_and_reads_the_colours():
    torch.manual_seed(0)
    config = micro_config("model.paint_points=true")
    model = build_model(config).train()
    assert model.lidar.in_channels == 5 + PAINT_CHANNELS
    batch = coloured_batch(config)
    losses = model(batch)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is not None for p in model.lidar.parameters())
    # the LiDAR branch sees the colours even while the camera branch is skipped (LiDAR first)
    model.eval()
    model.camera_enabled = False
    darker = replace(batch, images=batch.images // 2)
    with torch.no_grad():
        a, _ = model.bev_features(batch)
        b, _ = model.bev_features(darker)
        no_cameras, _ = model.bev_features(
            replace(batch, camera_mask=torch.zeros_like(batch.camera_mask))
        )
        no_cameras_darker, _ = model.bev_features(
            replace(darker, camera_mask=torch.zeros_like(batch.camera_mask))
        )
    assert not torch.allclose(a, b)
    torch.testing.assert_close(no_cameras, no_cameras_darker)


def test_painting_needs_both_sensors():
    with pytest.raises(ValueError, match="paint_points"):
        micro_config("model.paint_points=true", "model.camera=null")
