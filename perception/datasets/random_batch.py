"""A fixed random `Batch` shaped like a config's inputs: for benchmarks, tests and export,
where no dataset is needed. Six cameras ring the ego, 1.5 m up, looking out at 0, +-55, +-110
and 180 degrees; points are uniform over the range; two GT boxes per sample."""

from __future__ import annotations

import math

import torch

from ..config.schema import ExperimentConfig
from ..structures import CAMERA_NAMES, Batch, Boxes3D

CAMERA_YAWS_DEG = (0.0, -55.0, 55.0, 180.0, 110.0, -110.0)  # CAMERA_NAMES order


def camera_to_lidar(yaw: float, height: float = 1.5) -> torch.Tensor:
    """`[4, 4]`: a camera `height` m up looking along LiDAR yaw `yaw` (rad), OpenCV axes."""
    forward = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
    up = torch.tensor([0.0, 0.0, 1.0])
    right = torch.linalg.cross(forward, up)
    m = torch.eye(4)
    m[:3, :3] = torch.stack([right, -up, forward], dim=1)  # columns: camera x, y, z in LiDAR
    m[:3, 3] = torch.tensor([0.0, 0.0, height])
    return m


def random_batch(
    config: ExperimentConfig, batch_size: int = 2, seed: int = 0, points_per_sample: int = 3000
) -> Batch:
    """A reproducible random batch with the image size, clip length and point range of
    `config` (intrinsics: focal length 0.6 x image width, principal point at the centre)."""
    g = torch.Generator().manual_seed(seed)
    W, H = config.augment.image.final_size
    T, N = config.data.clip_frames, len(CAMERA_NAMES)
    r = config.data.point_range
    lo, hi = torch.tensor(r[:3]), torch.tensor(r[3:])
    points, boxes, labels, attributes = [], [], [], []
    for b in range(batch_size):
        xyz = lo + torch.rand(points_per_sample, 3, generator=g) * (hi - lo) * 0.98
        extra = torch.cat(
            [torch.rand(points_per_sample, 1, generator=g), torch.zeros(points_per_sample, 1)], 1
        )
        points.append(torch.cat([torch.full((points_per_sample, 1), float(b)), xyz, extra], 1))
        boxes.append(
            Boxes3D(
                torch.tensor(
                    [
                        [5.0 + b, 3.0, -0.5, 2.0, 4.5, 1.6, 0.3, 1.0, 0.0],
                        [-8.0, -6.0 + b, -0.8, 0.7, 0.7, 1.8, 1.2, 0.0, 0.5],
                    ]
                )  # fmt: skip
            )
        )
        labels.append(torch.tensor([0, 8]))
        attributes.append(torch.tensor([0, 3]))
    k = torch.tensor([[W * 0.6, 0.0, W / 2], [0.0, W * 0.6, H / 2], [0.0, 0.0, 1.0]])
    cams = torch.stack([camera_to_lidar(math.radians(y)) for y in CAMERA_YAWS_DEG])  # [N, 4, 4]
    return Batch(
        tokens=tuple(f"sample{b}" for b in range(batch_size)),
        points=torch.cat(points),
        images=torch.randint(0, 256, (batch_size, N, T, 3, H, W), generator=g, dtype=torch.uint8),
        camera_names=CAMERA_NAMES,
        intrinsics=k.expand(batch_size, N, 3, 3).clone(),
        camera_to_lidar=cams[None, :, None].expand(batch_size, N, T, 4, 4).clone(),
        camera_time_lag=torch.zeros(batch_size, N, T),
        image_aug=torch.eye(4).expand(batch_size, N, 4, 4).clone(),
        lidar_aug=torch.eye(4).expand(batch_size, 4, 4).clone(),
        lidar_to_ego=torch.eye(4, dtype=torch.float64).expand(batch_size, 4, 4).clone(),
        ego_to_global=torch.eye(4, dtype=torch.float64).expand(batch_size, 4, 4).clone(),
        camera_mask=torch.ones(batch_size, N, dtype=torch.bool),
        lidar_mask=torch.ones(batch_size, dtype=torch.bool),
        gt_boxes=tuple(boxes),
        gt_labels=tuple(labels),
        gt_attributes=tuple(attributes),
    )
