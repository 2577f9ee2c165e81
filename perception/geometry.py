"""Camera projection with every matrix the pipeline records (docs/frames.md)."""

from __future__ import annotations

import torch


def intrinsics_4x4(intrinsics: torch.Tensor) -> torch.Tensor:
    """`[..., 3, 3]` camera matrix -> `[..., 4, 4]` acting on homogeneous camera points."""
    out = torch.zeros(
        *intrinsics.shape[:-2], 4, 4, dtype=intrinsics.dtype, device=intrinsics.device
    )
    out[..., :3, :3] = intrinsics
    out[..., 3, 3] = 1
    return out


def lidar_to_image(
    intrinsics: torch.Tensor,
    camera_to_lidar: torch.Tensor,
    image_aug: torch.Tensor,
    lidar_aug: torch.Tensor,
) -> torch.Tensor:
    """`[..., 4, 4]` matrix taking an augmented-LiDAR-frame point `(x, y, z, 1)` to
    `(u * d, v * d, d, 1)` in the augmented image, d the depth along the optical axis.

    Shapes broadcast: `intrinsics [..., 3, 3]`, `camera_to_lidar [..., 4, 4]`,
    `image_aug [..., 4, 4]`, `lidar_aug [..., 4, 4]`.
    """
    lidar_to_camera = torch.linalg.inv(camera_to_lidar)
    camera_to_pixels = intrinsics_4x4(intrinsics)
    # image_aug acts on (u, v) only; lift it to act on (u*d, v*d, d): its translation scales
    # with d, which the third column of a 4x4 on (ud, vd, d, 1) expresses.
    aug = image_aug.clone()
    aug[..., :2, 2] = image_aug[..., :2, 3]
    aug[..., :2, 3] = 0
    return aug @ camera_to_pixels @ lidar_to_camera @ torch.linalg.inv(lidar_aug)


def project(points: torch.Tensor, matrix: torch.Tensor, min_depth: float = 0.1):
    """Projects `points [N, 3]` with a `lidar_to_image` matrix `[4, 4]`.

    Returns `uv [N, 2]` pixels and `depth [N]`; uv is meaningful where depth > min_depth.
    """
    homogeneous = torch.cat([points, torch.ones_like(points[:, :1])], 1) @ matrix.T
    depth = homogeneous[:, 2]
    uv = homogeneous[:, :2] / depth.clamp(min=min_depth)[:, None]
    return uv, depth
