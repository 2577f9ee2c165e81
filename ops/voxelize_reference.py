"""Plain reference voxelization: a Python loop over points with a dict of voxels.

The test oracle for :mod:`perception.ops.voxelize`; slow, meant for small inputs. It shares
only the per-point voxel index (:func:`point_voxel_coords`) with the fast path, so the two
agree bit for bit on which voxel a point falls in; the grouping, budgets and ordering are
written out independently here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._geometry import as_float_triple, as_pc_range, point_voxel_coords
from .voxelize import Voxels


def voxelize_reference(
    points: torch.Tensor,
    voxel_size: float | Sequence[float],
    pc_range: Sequence[float],
    max_points_per_voxel: int,
    max_voxels: int,
) -> Voxels:
    """Same contract as :func:`perception.ops.voxelize`."""
    voxel_size = as_float_triple(voxel_size, "voxel_size")
    pc_range = as_pc_range(pc_range)
    n, d = points.shape
    coords, valid = point_voxel_coords(points, voxel_size, pc_range)
    voxel_row: dict[tuple[int, int, int], int] = {}
    members: list[list[int]] = []
    voxel_coords: list[tuple[int, int, int]] = []
    num_dropped = num_overflow = 0
    for i, (key, ok) in enumerate(zip(coords.tolist(), valid.tolist())):
        if not ok:
            num_dropped += 1
            continue
        key = tuple(key)
        row = voxel_row.get(key)
        if row is None:
            if len(members) >= max_voxels:
                num_overflow += 1
                continue
            row = voxel_row[key] = len(members)
            members.append([])
            voxel_coords.append(key)
        if len(members[row]) >= max_points_per_voxel:
            num_overflow += 1
            continue
        members[row].append(i)
    m = len(members)
    out = points.new_zeros(m, max_points_per_voxel, d)
    for row, idx in enumerate(members):
        out[row, : len(idx)] = points[idx]
    num_points = torch.tensor([len(idx) for idx in members], dtype=torch.int32)
    mean = out.sum(dim=1) / num_points.clamp(min=1).to(points.dtype)[:, None]
    return Voxels(
        points=out,
        coords=torch.tensor(voxel_coords, dtype=torch.int32).reshape(m, 3),
        num_points=num_points.to(points.device),
        mean=mean,
        num_dropped=num_dropped,
        num_overflow=num_overflow,
    )


def dynamic_voxelize_reference(
    points: torch.Tensor,
    voxel_size: float | Sequence[float],
    pc_range: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Same contract as :func:`perception.ops.dynamic_voxelize`."""
    voxel_size = as_float_triple(voxel_size, "voxel_size")
    pc_range = as_pc_range(pc_range)
    coords, valid = point_voxel_coords(points, voxel_size, pc_range)
    voxel_row: dict[tuple[int, int, int], int] = {}
    point_to_voxel = []
    for key, ok in zip(coords.tolist(), valid.tolist()):
        if not ok:
            point_to_voxel.append(-1)
            continue
        point_to_voxel.append(voxel_row.setdefault(tuple(key), len(voxel_row)))
    coords_out = torch.tensor(list(voxel_row), dtype=torch.int32).reshape(len(voxel_row), 3)
    num_dropped = sum(1 for v in point_to_voxel if v < 0)
    return torch.tensor(point_to_voxel, dtype=torch.int64), coords_out, num_dropped
