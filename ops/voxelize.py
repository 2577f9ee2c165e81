"""Hard and dynamic voxelization of LiDAR points (the fast, vectorized path).

Frame and units: points are ``[N, D]`` float, columns 0..2 are x, y, z in metres in the LiDAR
(or ego) frame, the remaining columns are features (intensity, time lag, ...). A point falls in
voxel ``floor((p - pc_range[:3]) / voxel_size)`` (computed in the points' dtype); the grid has
``round((max - min) / voxel_size)`` voxels per axis. Points outside ``pc_range`` (a point exactly
on a max face is outside) or with any non-finite column are dropped and counted.

Which points are kept (deterministic, the same rule as mmcv's and spconv's hard voxelization):
voxels are numbered in the order in which their first point appears in the input; only the
first ``max_voxels`` voxels are kept, and in each voxel only its first ``max_points_per_voxel``
points, in input order. The output rows are in that voxel order.

Paths, chosen per call with ``impl=`` (the vocabulary of :mod:`perception.ops._impl`):

* ``"numba"`` (float32/float64 CPU tensors without autograd, when numba is importable): a key
  bitmap kept between calls, parallel where the first-come rule allows
  (:mod:`perception.ops._voxelize_numba`).
* ``"torch"``: sorts the points' linear voxel keys once (stable), so no Python loop runs over
  points; any device, dtype, autograd.
* ``"triton"`` (float32/float64 CUDA tensors where triton is importable): the torch path with
  the keys computed by one triton kernel (:func:`perception.ops._triton.voxel_keys`).
* ``"reference"``: the Python loop of :mod:`perception.ops.voxelize_reference`.
* ``"auto"``: numba where it can run (hard voxelization: for grids of at most
  :data:`MAX_BITMAP_KEYS` voxels), else triton on CUDA, else torch.

Both give identical outputs. The plain reference is :mod:`perception.ops.voxelize_reference`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from . import _triton
from ._geometry import (
    as_float_triple,
    as_pc_range,
    check_float_tensor,
    voxel_grid_size,
)
from ._impl import Impl, ImplTrace, check_impl, record, unavailable

__all__ = [
    "IMPLS",
    "BatchVoxels",
    "Voxels",
    "dynamic_voxelize",
    "voxelize",
    "voxelize_batch",
]


IMPLS = ("auto", "torch", "numba", "triton", "reference")
"""The values ``impl=`` accepts (see the module docstring)."""
# Grids with more voxels than this take the torch path even on CPU: the numba path keeps a
# bitmap of nk / 8 bytes and a word table of nk / 16 bytes (0.4 GB at this size).
MAX_BITMAP_KEYS = 1 << 31


@dataclass(frozen=True)
class Voxels:
    """The result of hard voxelization of one point cloud.

    Attributes:
        points: ``[M, max_points_per_voxel, D]`` float (dtype of the input), each voxel's points
            in input order, zero-padded after ``num_points``.
        coords: ``[M, 3]`` int32 ``(x, y, z)`` voxel indices.
        num_points: ``[M]`` int32, points stored per voxel (1..max_points_per_voxel).
        mean: ``[M, D]`` float, the mean of each voxel's stored points (HardSimpleVFE).
        num_dropped: points outside ``pc_range`` or with a non-finite value.
        num_overflow: points inside the range that were not stored because their voxel was
            full or the voxel budget ``max_voxels`` was used up.
    """

    points: torch.Tensor
    coords: torch.Tensor
    num_points: torch.Tensor
    mean: torch.Tensor
    num_dropped: int
    num_overflow: int = 0


@dataclass(frozen=True)
class BatchVoxels:
    """Hard voxelization of a list of clouds, concatenated.

    Attributes:
        points: ``[M, max_points_per_voxel, D]`` float.
        coords: ``[M, 4]`` int32 ``(batch, x, y, z)``; rows of cloud 0 first, then cloud 1, ...
        num_points: ``[M]`` int32.
        mean: ``[M, D]`` float.
        num_dropped: per cloud, points outside the range or non-finite.
        num_overflow: per cloud, points not stored because of the per-voxel or voxel budget.
    """

    points: torch.Tensor
    coords: torch.Tensor
    num_points: torch.Tensor
    mean: torch.Tensor
    num_dropped: tuple[int, ...]
    num_overflow: tuple[int, ...]


def _check_args(
    points: torch.Tensor,
    voxel_size: float | Sequence[float],
    pc_range: Sequence[float],
) -> tuple[tuple[float, float, float], tuple[float, ...]]:
    check_float_tensor(points, "points")
    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(
            f"points must be [N, D] with D >= 3 (x, y, z, ...), got {tuple(points.shape)}"
        )
    return as_float_triple(voxel_size, "voxel_size"), as_pc_range(pc_range)


def _check_budget(max_points_per_voxel: int, max_voxels: int) -> None:
    if int(max_points_per_voxel) != max_points_per_voxel or max_points_per_voxel < 1:
        raise ValueError(
            f"max_points_per_voxel must be a positive int, got {max_points_per_voxel!r}"
        )
    if int(max_voxels) != max_voxels or max_voxels < 1:
        raise ValueError(f"max_voxels must be a positive int, got {max_voxels!r}")


@functools.cache
def _numba_kernels() -> ModuleType | None:
    """:mod:`._voxelize_numba`, or None where numba is not importable (imported on first use:
    numba takes a while to import and most users of :mod:`perception.ops` never voxelize)."""
    try:
        from . import _voxelize_numba
    except ImportError:
        return None
    return _voxelize_numba


def _choose_impl(
    op: str,
    points: torch.Tensor,
    impl: str,
    voxel_size: tuple[float, float, float],
    pc_range: tuple[float, ...],
    bitmap: bool,
) -> str:
    """The path ``impl`` resolves to for ``points`` (see the module docstring); an explicit
    ``impl`` that cannot run raises :class:`._impl.ImplUnavailable`. ``bitmap``: the numba
    path keeps a bitmap over the grid (hard voxelization), so it needs a grid of at most
    :data:`MAX_BITMAP_KEYS` voxels."""
    check_impl(op, impl, IMPLS)
    cpu_float = points.device.type == "cpu" and points.dtype in (torch.float32, torch.float64)
    autograd = points.requires_grad and torch.is_grad_enabled()
    if impl in ("auto", "numba"):
        why = None
        if not cpu_float or autograd:
            why = (
                "it needs float32/float64 CPU points without autograd, got "
                f"{points.dtype} on {points.device} (requires_grad={points.requires_grad})"
            )
        elif _numba_kernels() is None:
            why = "numba is not importable"
        elif bitmap and math.prod(voxel_grid_size(voxel_size, pc_range)) > MAX_BITMAP_KEYS:
            why = f"its bitmap takes grids of at most {MAX_BITMAP_KEYS} voxels"
        if why is None:
            return "numba"
        if impl == "numba":
            raise unavailable(op, impl, why)
    triton_ok = _triton.available(points) and points.dtype in (torch.float32, torch.float64)
    if impl == "triton" and not triton_ok:
        raise unavailable(
            op, impl, "it needs float32/float64 CUDA points and triton (or TRITON_INTERPRET=1)"
        )
    if impl == "auto":
        return "triton" if triton_ok and points.is_cuda else "torch"
    return impl


def _numba_geometry(
    points: np.ndarray, voxel_size: tuple[float, float, float], pc_range: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, int]:
    """``lo, size, upper`` (``[3]``, the points' dtype, as :func:`_voxel_keys` builds them),
    the grid's y, z sizes and its number of voxels (keys), for the numba kernels."""
    grid = voxel_grid_size(voxel_size, pc_range)
    lo = np.asarray(pc_range[:3], dtype=points.dtype)
    size = np.asarray(voxel_size, dtype=points.dtype)
    upper = np.asarray(grid, dtype=points.dtype) - 1
    return lo, size, upper, grid[1], grid[2], grid[0] * grid[1] * grid[2]


def _as_numpy(points: torch.Tensor) -> np.ndarray:
    """``[N, D]`` C-contiguous NumPy view of CPU points (a copy only if not contiguous)."""
    return points.detach().contiguous().numpy()


def _voxelize_numba(
    points: torch.Tensor,
    voxel_size: tuple[float, float, float],
    pc_range: tuple[float, ...],
    max_points_per_voxel: int,
    max_voxels: int,
) -> Voxels:
    kernels = _numba_kernels()
    pts = _as_numpy(points)  # [N, D]
    lo, size, upper, gy, gz, num_keys = _numba_geometry(pts, voxel_size, pc_range)
    out, coords, counts, mean, _, num_dropped, num_overflow = kernels.hard_voxelize(
        pts, lo, size, upper, gy, gz, num_keys, max_points_per_voxel, max_voxels
    )
    return Voxels(
        points=torch.from_numpy(out),
        coords=torch.from_numpy(coords),
        num_points=torch.from_numpy(counts),
        mean=torch.from_numpy(mean),
        num_dropped=int(num_dropped),
        num_overflow=int(num_overflow),
    )


def _dynamic_voxelize_numba(
    points: torch.Tensor, voxel_size: tuple[float, float, float], pc_range: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor, int]:
    kernels = _numba_kernels()
    pts = _as_numpy(points)  # [N, D]
    n = pts.shape[0]
    lo, size, upper, gy, gz, num_keys = _numba_geometry(pts, voxel_size, pc_range)
    table = kernels.new_table(n, num_keys)
    point_to_voxel = np.empty(n, dtype=np.int64)
    coords = np.empty((n, 3), dtype=np.int32)
    m, num_dropped = kernels.dynamic_voxelize(
        pts, lo, size, upper, gy, gz, table, point_to_voxel, coords
    )
    return torch.from_numpy(point_to_voxel), torch.from_numpy(coords[:m]), int(num_dropped)


def _voxel_keys(
    points: torch.Tensor,
    voxel_size: tuple[float, float, float],
    pc_range: tuple[float, ...],
    use_triton: bool,
) -> tuple[torch.Tensor, int, tuple[int, int, int]]:
    """Linear voxel key of every point, ``(x * Y + y) * Z + z``; dropped points get ``X*Y*Z``.
    With ``use_triton`` one kernel computes them (:func:`._triton.voxel_keys`).

    Returns ``key [N]`` (int32 when the grid allows, else int64), the sentinel ``X*Y*Z`` and
    the grid ``(X, Y, Z)``. The voxel index is :func:`point_voxel_coords`' (same arithmetic).
    """
    grid = voxel_grid_size(voxel_size, pc_range)
    gx, gy, gz = grid
    sentinel = gx * gy * gz
    dtype = torch.int32 if sentinel < 2**31 - 1 else torch.int64
    lo = torch.tensor(pc_range[:3], dtype=points.dtype, device=points.device)
    size = torch.tensor(voxel_size, dtype=points.dtype, device=points.device)
    if use_triton:
        upper = torch.tensor(grid, dtype=points.dtype, device=points.device) - 1
        params = torch.cat([lo, size, upper])
        return _triton.voxel_keys(points, params, grid, dtype), sentinel, grid
    # Same arithmetic as point_voxel_coords, with fewer passes over the points.
    scaled = torch.floor_((points[:, :3] - lo) / size)  # [N, 3], NaN stays NaN
    upper = torch.tensor(grid, dtype=points.dtype, device=points.device) - 1
    valid = (scaled == scaled.clamp(min=0).minimum(upper)).all(dim=1)  # NaN/inf: False
    if points.shape[1] > 3:
        valid &= torch.isfinite(points[:, 3:]).all(dim=1)
    c = scaled.masked_fill_(~valid[:, None], 0.0).to(dtype)  # [N, 3]; NaN never reaches int
    key = (c[:, 0] * gy + c[:, 1]) * gz + c[:, 2]
    key.masked_fill_(~valid, sentinel)
    return key, sentinel, grid


def _group_first_come(
    key: torch.Tensor, sentinel: int, grid: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Groups the valid points by voxel, voxels numbered by first appearance in the input.

    Args:
        key: ``[N]`` int voxel keys (:func:`_voxel_keys`), ``sentinel`` for dropped points.

    Returns:
        ``point_index [K]`` int64: the K valid points grouped by voxel (input order within a
        voxel: the sort is stable); ``voxel_of [K]`` int64: each one's voxel number
        (first-come order); ``rank [K]`` int64: its position within its voxel;
        ``voxel_coords [G, 3]`` int64 ``(x, y, z)`` and ``voxel_count [G]`` int64, both in
        first-come voxel order.
    """
    device = key.device
    _, gy, gz = grid
    n = key.shape[0]
    sorted_key, perm = torch.sort(key, stable=True)  # dropped points (sentinel) sort last
    k = int(
        torch.searchsorted(sorted_key, torch.tensor([sentinel], dtype=key.dtype, device=device))
    )
    sorted_key, point_index = sorted_key[:k], perm[:k]
    is_start = torch.empty(k, dtype=torch.bool, device=device)
    is_start[:1] = True
    torch.ne(sorted_key[1:], sorted_key[:-1], out=is_start[1:])
    starts = torch.nonzero(is_start).squeeze(1)  # [G] group starts in key order
    num_groups = starts.shape[0]
    counts = torch.diff(starts, append=torch.tensor([k], device=device))
    group = torch.cumsum(is_start, 0, dtype=torch.int64) - 1  # [K] group in key order
    # Number the voxels first-come without a second sort: flag each voxel's first point at
    # its input position, then a running count over the input numbers them in that order.
    first_seen = point_index.index_select(0, starts)  # [G] smallest input index per group
    is_first = torch.zeros(n, dtype=torch.bool, device=device)
    is_first[first_seen] = True
    rank_of_group = torch.cumsum(is_first, 0, dtype=torch.int64).index_select(0, first_seen) - 1
    voxel_of = rank_of_group.index_select(0, group)
    rank = torch.arange(k, device=device) - starts.index_select(0, group)
    group_of_voxel = torch.empty_like(rank_of_group).scatter_(
        0, rank_of_group, torch.arange(num_groups, device=device)
    )
    voxel_key = sorted_key.index_select(0, starts.index_select(0, group_of_voxel)).to(torch.int64)
    voxel_coords = torch.stack(
        [voxel_key // (gy * gz), (voxel_key // gz) % gy, voxel_key % gz], dim=1
    )
    return point_index, voxel_of, rank, voxel_coords, counts.index_select(0, group_of_voxel)


def voxelize(
    points: torch.Tensor,
    voxel_size: float | Sequence[float],
    pc_range: Sequence[float],
    max_points_per_voxel: int,
    max_voxels: int,
    *,
    impl: Impl = "auto",
    trace: ImplTrace | None = None,
) -> Voxels:
    """Hard voxelization (SECOND/PointPillars style).

    Args:
        points: ``[N, D]`` float, ``D >= 3``; x, y, z in metres, then features.
        voxel_size: voxel edge (x, y, z) in metres, or one number for all three.
        pc_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` in metres.
        max_points_per_voxel: points stored per voxel (the first ones in input order).
        max_voxels: voxels kept (the first ones to receive a point, in input order).
        impl: one of :data:`IMPLS` (see the module docstring).
        trace: an :class:`~perception.ops._impl.ImplTrace` that records the path taken.

    Returns:
        :class:`Voxels` (``M <= max_voxels`` rows, first-come voxel order; see the module
        docstring for which points are kept), on the points' device.
    """
    voxel_size, pc_range = _check_args(points, voxel_size, pc_range)
    _check_budget(max_points_per_voxel, max_voxels)
    path = _choose_impl("voxelize", points, impl, voxel_size, pc_range, bitmap=True)
    record(trace, "voxelize", path)
    if path == "numba":
        return _voxelize_numba(
            points, voxel_size, pc_range, int(max_points_per_voxel), int(max_voxels)
        )
    if path == "reference":
        from .voxelize_reference import voxelize_reference

        return voxelize_reference(points, voxel_size, pc_range, max_points_per_voxel, max_voxels)
    return _voxelize_torch(
        points, voxel_size, pc_range, max_points_per_voxel, max_voxels, path == "triton"
    )


def _voxelize_torch(
    points: torch.Tensor,
    voxel_size: tuple[float, float, float],
    pc_range: tuple[float, ...],
    max_points_per_voxel: int,
    max_voxels: int,
    use_triton: bool,
) -> Voxels:
    n, d = points.shape
    key, sentinel, grid = _voxel_keys(points, voxel_size, pc_range, use_triton)
    point_index, voxel_of, rank, voxel_coords, counts = _group_first_come(key, sentinel, grid)
    num_valid = point_index.shape[0]
    m = min(voxel_coords.shape[0], max_voxels)
    stored = torch.nonzero((voxel_of < m) & (rank < max_points_per_voxel)).squeeze(1)
    slot = voxel_of.index_select(0, stored) * max_points_per_voxel + rank.index_select(0, stored)
    out = points.new_zeros(m * max_points_per_voxel, d)
    out.index_copy_(0, slot, points.index_select(0, point_index.index_select(0, stored)))
    out = out.view(m, max_points_per_voxel, d)
    num_points = counts[:m].clamp(max=max_points_per_voxel)
    mean = out.sum(dim=1) / num_points.clamp(min=1).to(points.dtype)[:, None]
    return Voxels(
        points=out,
        coords=voxel_coords[:m].to(torch.int32),
        num_points=num_points.to(torch.int32),
        mean=mean,
        num_dropped=n - num_valid,
        num_overflow=num_valid - stored.shape[0],
    )


def dynamic_voxelize(
    points: torch.Tensor,
    voxel_size: float | Sequence[float],
    pc_range: Sequence[float],
    *,
    impl: Impl = "auto",
    trace: ImplTrace | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Dynamic voxelization: every in-range point is kept (no budgets).

    Args:
        points: ``[N, D]`` float, ``D >= 3``; x, y, z in metres.
        voxel_size, pc_range, impl, trace: as :func:`voxelize` (the numba path has no grid
            limit here: it hashes the keys).

    Returns:
        ``point_to_voxel [N]`` int64, the row of each point's voxel in ``coords``, -1 for a
        dropped point; ``coords [M, 3]`` int32 ``(x, y, z)`` in first-come order (the same
        rows :func:`voxelize` gives with unlimited budgets); ``num_dropped`` (int).
    """
    voxel_size, pc_range = _check_args(points, voxel_size, pc_range)
    path = _choose_impl("dynamic_voxelize", points, impl, voxel_size, pc_range, bitmap=False)
    record(trace, "dynamic_voxelize", path)
    if path == "numba":
        return _dynamic_voxelize_numba(points, voxel_size, pc_range)
    if path == "reference":
        from .voxelize_reference import dynamic_voxelize_reference

        return dynamic_voxelize_reference(points, voxel_size, pc_range)
    key, sentinel, grid = _voxel_keys(points, voxel_size, pc_range, path == "triton")
    point_index, voxel_of, _, voxel_coords, _ = _group_first_come(key, sentinel, grid)
    point_to_voxel = torch.full((points.shape[0],), -1, dtype=torch.int64, device=points.device)
    point_to_voxel[point_index] = voxel_of
    num_dropped = points.shape[0] - point_index.shape[0]
    return point_to_voxel, voxel_coords.to(torch.int32), num_dropped


def voxelize_batch(
    clouds: Sequence[torch.Tensor],
    voxel_size: float | Sequence[float],
    pc_range: Sequence[float],
    max_points_per_voxel: int,
    max_voxels: int,
    *,
    impl: Impl = "auto",
    trace: ImplTrace | None = None,
) -> BatchVoxels:
    """Hard-voxelizes each cloud (budgets per cloud) and concatenates with a batch column.

    Args:
        clouds: B tensors ``[N_b, D]`` float (same D and dtype).
        voxel_size, pc_range, max_points_per_voxel, max_voxels, impl: as :func:`voxelize`.
        trace: records the path taken for each cloud.

    Returns:
        :class:`BatchVoxels` with ``coords [M, 4]`` int32 ``(batch, x, y, z)``.
    """
    if len(clouds) == 0:
        raise ValueError("clouds must hold at least one point cloud")
    dims = {c.shape[-1] if c.dim() == 2 else None for c in clouds}
    if len(dims) != 1:
        raise ValueError(
            f"clouds must all be [N_b, D] with one D, got shapes {[tuple(c.shape) for c in clouds]}"
        )
    results = [
        voxelize(
            cloud, voxel_size, pc_range, max_points_per_voxel, max_voxels, impl=impl, trace=trace
        )
        for cloud in clouds
    ]
    coords = [
        torch.cat([torch.full_like(r.coords[:, :1], b), r.coords], dim=1)
        for b, r in enumerate(results)
    ]
    return BatchVoxels(
        points=torch.cat([r.points for r in results]),
        coords=torch.cat(coords),
        num_points=torch.cat([r.num_points for r in results]),
        mean=torch.cat([r.mean for r in results]),
        num_dropped=tuple(r.num_dropped for r in results),
        num_overflow=tuple(r.num_overflow for r in results),
    )
