"""Numba CPU kernels for :mod:`.voxelize`: one pass over the points with a voxel hash table.

Each point's voxel index is ``floor((p - lo) / size)`` computed in the points' dtype (the
arrays ``lo``, ``size`` and ``upper = grid - 1`` come in that dtype), the arithmetic of
:func:`perception.ops._geometry.point_voxel_coords`, so both paths agree bit for bit on which
voxel a point falls in and which points are dropped. Voxels live in an open-addressing table
``[C, 2]`` (linear probing, power-of-two capacity C, at most half full) of pairs
``(key + 1, row)``: the linear key ``(x * Y + y) * Z + z`` (0 marks an empty slot, so a zeroed
array is an empty table) and the voxel's row, rows numbered in the order their first point
appears in the input. The table is int32 where the keys fit (half the cache footprint: the
probes are most of the time), else int64.

The caller allocates the outputs with ``np.zeros`` (lazily zeroed pages: rows and slots never
touched cost nothing) and passes them in; the kernels fill them and return the counts.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def new_table(num_voxels: int, num_keys: int) -> np.ndarray:
    """An empty ``[C, 2]`` table for up to ``num_voxels`` voxels (at most half full) over keys
    ``0 .. num_keys - 1``."""
    capacity = 16
    while capacity < 2 * num_voxels:
        capacity *= 2
    fits_int32 = num_keys < 2**31 - 1 and capacity < 2**31
    return np.zeros((capacity, 2), dtype=np.int32 if fits_int32 else np.int64)


@njit(cache=True, nogil=True, error_model="numpy")
def _voxel_key(points, i, lo, size, upper, gy, gz):
    """Linear voxel key of ``points[i]``, or -1 if it is out of range or not finite.

    ``lo``, ``size``, ``upper`` are 3-tuples in the points' dtype.
    """
    for j in range(3, points.shape[1]):
        if not np.isfinite(points[i, j]):
            return -1
    cx = np.floor((points[i, 0] - lo[0]) / size[0])
    cy = np.floor((points[i, 1] - lo[1]) / size[1])
    cz = np.floor((points[i, 2] - lo[2]) / size[2])
    # written so that NaN fails every test (inf fails the upper one)
    if not (cx >= 0 and cx <= upper[0] and cy >= 0 and cy <= upper[1]):
        return -1
    if not (cz >= 0 and cz <= upper[2]):
        return -1
    return (np.int64(cx) * gy + np.int64(cy)) * gz + np.int64(cz)


@njit(cache=True, nogil=True)
def _triple(values):
    return values[0], values[1], values[2]


@njit(cache=True, nogil=True, error_model="numpy")
def _slot(key, mask):
    h = np.uint64(key) * _GOLDEN
    h ^= h >> np.uint64(29)
    return np.int64(h & np.uint64(mask))


@njit(cache=True, nogil=True, error_model="numpy")
def hard_voxelize(
    points, lo, size, upper, gy, gz, max_points, max_voxels, table, out, coords, counts, mean
):
    """Hard voxelization of ``points [N, D]`` (float32 or float64, C-contiguous).

    Args:
        lo, size, upper: ``[3]`` in the points' dtype: ``pc_range[:3]``, ``voxel_size`` and
            ``grid - 1``; ``gy``, ``gz``: the grid's y and z sizes.
        table: ``[C, 2]`` int32 or int64 zeros, C a power of two >= 2 * ``len(counts)``.
        out: ``[V, max_points, D]`` zeros, ``coords``: ``[V, 3]`` int32, ``counts``: ``[V]``
            int32 zeros, ``mean``: ``[V, D]`` zeros (points' dtype), V = min(N, max_voxels).

    Returns:
        ``(M, num_dropped, num_overflow)``; rows ``[:M]`` of the outputs are filled, ``mean``
        is each voxel's sum of stored points (in input order) divided by its count.
    """
    n, d = points.shape
    mask = np.int64(table.shape[0] - 1)
    lo, size, upper = _triple(lo), _triple(size), _triple(upper)
    m = 0
    num_dropped = 0
    num_overflow = 0
    last_key = np.int64(-2)  # consecutive LiDAR points often share a voxel
    last_row = np.int64(-1)
    for i in range(n):
        key = _voxel_key(points, i, lo, size, upper, gy, gz)
        if key < 0:
            num_dropped += 1
            continue
        if key == last_key:
            row = last_row
        else:
            s = _slot(key, mask)
            while True:
                k = table[s, 0]
                if k == key + 1:
                    row = np.int64(table[s, 1])
                    break
                if k == 0:
                    if m < max_voxels:  # a new voxel; past the budget it is never stored
                        row = m
                        table[s, 0] = key + 1
                        table[s, 1] = m
                        coords[m, 0] = key // (gy * gz)
                        coords[m, 1] = (key // gz) % gy
                        coords[m, 2] = key % gz
                        m += 1
                    else:
                        row = -1
                    break
                s = (s + 1) & mask
            last_key = key
            last_row = row
        if row < 0:
            num_overflow += 1
            continue
        c = counts[row]
        if c >= max_points:
            num_overflow += 1
            continue
        for j in range(d):
            out[row, c, j] = points[i, j]
            mean[row, j] += points[i, j]
        counts[row] = c + 1
    for row in range(m):
        # float32 / int32 divides in float64 and rounds once more: the same float32 quotient
        for j in range(d):
            mean[row, j] /= counts[row]
    return m, num_dropped, num_overflow


@njit(cache=True, nogil=True, error_model="numpy")
def dynamic_voxelize(points, lo, size, upper, gy, gz, table, point_to_voxel, coords):
    """Dynamic voxelization of ``points [N, D]``: every in-range, finite point is kept.

    Args:
        lo, size, upper, gy, gz: as :func:`hard_voxelize`.
        table: ``[C, 2]`` int32 or int64 zeros, C a power of two >= 2 * N.
        point_to_voxel: ``[N]`` int64 (filled: voxel row, -1 for a dropped point);
            ``coords``: ``[N, 3]`` int32.

    Returns:
        ``(M, num_dropped)``; ``coords[:M]`` are the voxels in first-come order.
    """
    n = points.shape[0]
    mask = np.int64(table.shape[0] - 1)
    lo, size, upper = _triple(lo), _triple(size), _triple(upper)
    m = 0
    num_dropped = 0
    last_key = np.int64(-2)
    last_row = np.int64(-1)
    for i in range(n):
        key = _voxel_key(points, i, lo, size, upper, gy, gz)
        if key < 0:
            num_dropped += 1
            point_to_voxel[i] = -1
            continue
        if key == last_key:
            point_to_voxel[i] = last_row
            continue
        s = _slot(key, mask)
        while True:
            k = table[s, 0]
            if k == key + 1:
                row = np.int64(table[s, 1])
                break
            if k == 0:
                row = m
                table[s, 0] = key + 1
                table[s, 1] = m
                coords[m, 0] = key // (gy * gz)
                coords[m, 1] = (key // gz) % gy
                coords[m, 2] = key % gz
                m += 1
                break
            s = (s + 1) & mask
        point_to_voxel[i] = row
        last_key = key
        last_row = row
    return m, num_dropped
