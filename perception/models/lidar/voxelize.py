"""From a batch's LiDAR points to SPVConv's inputs: per-point features and stride-1 voxels.

Frames and units: points are in the (augmented) keyframe LiDAR frame, metres (docs/frames.md).
Voxel coordinates are in stride-1 voxel units measured from the range minimum: a point at
``(x, y, z)`` m sits at ``((x - x_min) / dx, (y - y_min) / dy, (z - z_min) / dz)``, and voxel
``(i, j, k)`` covers ``[i, i + 1) x [j, j + 1) x [k, k + 1)`` in those units (the convention of
:mod:`perception.ops.point_voxel`). The voxel x index becomes BEV dim 2, y dim 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perception.ops.point_voxel import point_to_voxel
from perception.ops.sparse import SparseTensor

# Per-point channels the encoder appends to the point columns: the offset (m) from the centre
# of the point's stride-1 voxel, along x, y, z.
NUM_OFFSET_CHANNELS = 3


@dataclass(frozen=True)
class VoxelizedPoints:
    """The points kept by :func:`voxelize_points` and their stride-1 voxels.

    Shapes: N kept points, M non-empty voxels, D point columns (x, y, z, then the rest, e.g.
    intensity and time_lag), F = D + 3 feature channels.
    """

    point_coords: torch.Tensor  # [N, 4] float32 (batch, x, y, z), stride-1 voxel units
    point_feats: torch.Tensor  # [N, F] float32: the D point columns, then the 3 centre offsets
    voxels: SparseTensor  # feats [M, F] scatter-mean of point_feats, coords [M, 4] int32, stride 1
    present: torch.Tensor  # [B] bool: the sample kept at least one point


def voxelize_points(
    points: torch.Tensor,
    *,
    batch_size: int,
    point_range: tuple[float, float, float, float, float, float],
    voxel_size: tuple[float, float, float],
    lidar_mask: torch.Tensor | None = None,
) -> VoxelizedPoints:
    """Keeps the finite points inside ``point_range`` and averages their features per voxel.

    Args:
        points: ``[P, 1 + D]`` float, columns ``(batch index, x, y, z, ...)``, LiDAR frame, m
            (``Batch.points``: D = 5, ``(x, y, z, intensity, time_lag)``).
        batch_size: ``B``; batch indices must lie in ``[0, B)``.
        point_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` m; a point is kept when
            ``min <= p < max`` on every axis (checked in voxel units, so a point that rounds
            onto the upper face is dropped rather than landing outside the grid).
        voxel_size: ``(dx, dy, dz)`` m.
        lidar_mask: ``[B]`` bool or None; the points of samples marked False are dropped.

    Returns:
        :class:`VoxelizedPoints`. Points with any non-finite column are dropped.

    Raises:
        ValueError: wrong shapes, or a batch index that is not an integer in ``[0, B)``.
    """
    if points.dim() != 2 or points.shape[1] < 4:
        raise ValueError(f"points must be [P, 1 + D] with D >= 3, got {tuple(points.shape)}")
    if lidar_mask is not None and lidar_mask.shape != (batch_size,):
        raise ValueError(f"lidar_mask must be [{batch_size}], got {tuple(lidar_mask.shape)}")
    points = points.float()
    batch = points[:, 0]  # [P]
    finite_batch = batch[torch.isfinite(batch)]
    if finite_batch.numel() and (
        bool((finite_batch != finite_batch.round()).any())
        or bool((finite_batch < 0).any())
        or bool((finite_batch >= batch_size).any())
    ):
        raise ValueError(f"batch indices must be integers in [0, {batch_size})")

    lo = points.new_tensor(point_range[:3])  # [3]
    hi = points.new_tensor(point_range[3:])  # [3]
    size = points.new_tensor(voxel_size)  # [3]
    extent = torch.round((hi - lo) / size)  # [3] voxels per axis
    xyz = points[:, 1:4]  # [P, 3] m
    grid = (xyz - lo) / size  # [P, 3] stride-1 voxel units
    keep = torch.isfinite(points).all(dim=1) & ((grid >= 0) & (grid < extent)).all(dim=1)  # [P]
    if lidar_mask is not None:
        safe_batch = torch.nan_to_num(batch, nan=0.0).clamp(0, batch_size - 1).long()  # [P]
        keep &= lidar_mask.to(points.device)[safe_batch]
    points, grid = points[keep], grid[keep]  # [N, 1 + D], [N, 3]

    centre = lo + (torch.floor(grid) + 0.5) * size  # [N, 3] m, centre of the stride-1 voxel
    offset = points[:, 1:4] - centre  # [N, 3] m
    point_feats = torch.cat([points[:, 1:], offset], dim=1)  # [N, D + 3]
    point_coords = torch.cat([points[:, :1], grid], dim=1)  # [N, 4]
    voxels = point_to_voxel(point_feats, point_coords, 1)  # feats [M, D + 3]
    present = torch.zeros(batch_size, dtype=torch.bool, device=points.device)
    present[points[:, 0].long()] = True  # [B]
    return VoxelizedPoints(point_coords, point_feats, voxels, present)
