"""Point painting: every LiDAR point gets the colour of the pixel it projects to.

PointPainting (Vora et al., CVPR 2020) decorates each point with what a camera sees there;
this is its cheapest form, the raw colour of the keyframe image, so the LiDAR branch reads
appearance (a traffic cone's orange, a car's red tail lamps at its back, a rider's helmet)
at almost no cost: one projection per camera and a gather, no camera network. A fused model
with `model.paint_points` feeds its LiDAR branch the painted points and keeps its camera BEV
branch as well (BEVFusion's lift); the two fuse at different stages.

Frames: points are in the augmented keyframe LiDAR frame; the projection uses every recorded
matrix (`perception.geometry.lidar_to_image`), so image and LiDAR augmentation stay consistent.
"""

from __future__ import annotations

import torch

from ..geometry import lidar_to_image
from ..structures import Batch

# Channels appended to each point: r, g, b in [0, 1], then 1 where a camera saw the point.
PAINT_CHANNELS = 4
MIN_DEPTH = 0.1  # m in front of the camera


def image_from_lidar(batch: Batch) -> torch.Tensor:
    """`[B, Ncam, 4, 4]`: augmented LiDAR point -> (u*d, v*d, d, 1) in the augmented image of
    each camera's keyframe (the clip's last frame)."""
    return lidar_to_image(
        batch.intrinsics.float(),  # [B, Ncam, 3, 3]
        batch.camera_to_lidar[:, :, -1].float(),  # [B, Ncam, 4, 4]
        batch.image_aug.float(),  # [B, Ncam, 4, 4]
        batch.lidar_aug.float()[:, None],  # [B, 1, 4, 4]
    )


@torch.no_grad()
def paint_points(batch: Batch, cameras: torch.Tensor) -> torch.Tensor:
    """`batch.points [P, 1 + D]` -> `[P, 1 + D + 4]`: each point's columns, then the (r, g, b)
    in [0, 1] of the keyframe pixel it projects to and a 1, or four zeros where it projects
    into no camera of `cameras`.

    Args:
        batch: the points, keyframe images `images[:, :, -1]` and calibration.
        cameras: `[B, Ncam]` bool, the cameras that may paint (present and not dropped).

    A point seen by two cameras (where their fields of view overlap) takes the first one's
    colour, in camera order. Points with a non-finite coordinate or batch index stay unpainted.
    Images of 1 x 1 pixel (placeholders: the loader decoded none) paint nothing.
    """
    points = batch.points
    B, N = batch.images.shape[:2]
    H, W = batch.images.shape[-2:]
    if cameras.shape != (B, N):
        raise ValueError(f"cameras must be [{B}, {N}], got {tuple(cameras.shape)}")
    paint = points.new_zeros(len(points), PAINT_CHANNELS)
    if len(points) == 0 or H * W <= 1 or not bool(cameras.any()):
        return torch.cat([points, paint], 1)
    matrices = image_from_lidar(batch)  # [B, N, 4, 4]
    keyframes = batch.images[:, :, -1]  # [B, N, 3, H, W] uint8
    for b in range(B):
        if not bool(cameras[b].any()):
            continue
        rows = torch.nonzero(points[:, 0] == b).squeeze(1)  # [P_b]
        if not len(rows):
            continue
        xyz = points[rows, 1:4].float()
        homogeneous = torch.cat([xyz, torch.ones_like(xyz[:, :1])], 1)  # [P_b, 4]
        projected = torch.einsum("nij,pj->npi", matrices[b], homogeneous)  # [N, P_b, 4]
        depth = projected[..., 2]
        uv = projected[..., :2] / depth.clamp(min=MIN_DEPTH)[..., None]
        u = torch.floor(uv[..., 0])
        v = torch.floor(uv[..., 1])
        seen = (
            (depth > MIN_DEPTH) & (u >= 0) & (u < W) & (v >= 0) & (v < H) & cameras[b, :, None]
        )  # [N, P_b]; NaN coordinates compare False
        first = torch.full_like(rows, -1)  # [P_b] the first camera that sees each point
        for n in reversed(range(N)):  # (an argmax over cameras is ~10x slower on CPU)
            first = torch.where(seen[n], n, first)
        index = torch.nonzero(first >= 0).squeeze(1)  # [S]
        if not len(index):
            continue
        camera = first[index]
        col = u[camera, index].long()
        row = v[camera, index].long()
        colour = keyframes[b][camera, :, row, col]  # [S, 3] uint8
        paint[rows[index], :3] = colour.to(paint.dtype) / 255.0
        paint[rows[index], 3] = 1.0
    return torch.cat([points, paint], 1)
