"""Small shared helpers for the BEV ops: argument checks and grid arithmetic."""

from __future__ import annotations

from collections.abc import Sequence

import torch

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def as_float_triple(value: float | Sequence[float], name: str) -> tuple[float, float, float]:
    """A positive scalar or 3 positive numbers -> a tuple of 3 floats (x, y, z)."""
    if isinstance(value, int | float):
        triple = (float(value),) * 3
    else:
        triple = tuple(float(v) for v in value)
    if len(triple) != 3 or not all(v > 0 and v < float("inf") for v in triple):
        raise ValueError(f"{name} must be 3 positive finite numbers (x, y, z), got {value!r}")
    return triple  # type: ignore[return-value]


def as_pc_range(pc_range: Sequence[float]) -> tuple[float, ...]:
    """Checks ``(x_min, y_min, z_min, x_max, y_max, z_max)`` (metres)."""
    values = tuple(float(v) for v in pc_range)
    if len(values) != 6 or not all(values[i] < values[i + 3] for i in range(3)):
        raise ValueError(
            f"pc_range must be (x_min, y_min, z_min, x_max, y_max, z_max) with min < max, "
            f"got {pc_range!r}"
        )
    return values


def as_grid(grid: Sequence[int], name: str = "grid") -> tuple[int, int, int]:
    """Checks a grid of 3 positive ints."""
    values = tuple(int(v) for v in grid)
    if len(values) != 3 or min(values) <= 0 or any(int(v) != v for v in grid):
        raise ValueError(f"{name} must be 3 positive ints, got {grid!r}")
    return values  # type: ignore[return-value]


def check_int_tensor(tensor: torch.Tensor, name: str) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.dtype not in _INT_DTYPES:
        dtype = getattr(tensor, "dtype", type(tensor).__name__)
        raise ValueError(f"{name} must be an integer tensor, got {dtype}")


def check_float_tensor(tensor: torch.Tensor, name: str) -> None:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        dtype = getattr(tensor, "dtype", type(tensor).__name__)
        raise ValueError(f"{name} must be a floating-point tensor, got {dtype}")


def voxel_grid_size(
    voxel_size: tuple[float, float, float], pc_range: tuple[float, ...]
) -> tuple[int, int, int]:
    """Number of voxels per axis (x, y, z): ``round((max - min) / voxel_size)``, as mmcv."""
    return tuple(  # type: ignore[return-value]
        max(1, round((pc_range[i + 3] - pc_range[i]) / voxel_size[i])) for i in range(3)
    )


def point_voxel_coords(
    points: torch.Tensor, voxel_size: tuple[float, float, float], pc_range: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel index of every point and whether it is kept.

    Args:
        points: ``[N, D]`` float, columns 0..2 are x, y, z in metres (LiDAR/ego frame).

    Returns:
        ``coords [N, 3]`` int64 ``(x, y, z)`` voxel indices,
        ``floor((p - min) / voxel_size)`` computed in the points' dtype (as mmcv and spconv do);
        ``valid [N]`` bool: every column finite and ``0 <= coords < grid`` on all 3 axes
        (a point exactly on a max face falls outside).
    """
    grid = voxel_grid_size(voxel_size, pc_range)
    xyz = points[:, :3]
    lo = torch.tensor(pc_range[:3], dtype=points.dtype, device=points.device)
    size = torch.tensor(voxel_size, dtype=points.dtype, device=points.device)
    scaled = torch.floor((xyz - lo) / size)
    finite = torch.isfinite(points).all(dim=1)
    upper = torch.tensor(grid, dtype=points.dtype, device=points.device)
    valid = finite & ((scaled >= 0) & (scaled < upper)).all(dim=1)
    coords = torch.where(valid[:, None], scaled, torch.zeros_like(scaled)).to(torch.int64)
    return coords, valid
