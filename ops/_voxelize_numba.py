"""Numba CPU kernels for :mod:`.voxelize`.

Each point's voxel index is ``floor((p - lo) / size)`` computed in the points' dtype (the
arrays ``lo``, ``size`` and ``upper = grid - 1`` come in that dtype), the arithmetic of
:func:`perception.ops._geometry.point_voxel_coords`, so both paths agree bit for bit on which
voxel a point falls in and which points are dropped. Voxel keys are linear, ``(x * Y + y) * Z +
z``; voxel rows are numbered in the order their first point appears in the input.

- Hard voxelization (:func:`hard_voxelize`): a bitmap over the grid's keys, kept between calls,
  gives every voxel a dense id by rank, so only the first-come numbering and the per-voxel slot
  counting run serially; keys, ids, the scatter of points and the means run in parallel.
- Dynamic voxelization (:func:`dynamic_voxelize`): one pass with an open-addressing table
  ``[C, 2]`` (linear probing, power-of-two capacity C, at most half full) of pairs
  ``(key + 1, row)`` (0 marks an empty slot, so a zeroed array is an empty table); int32 where
  the keys fit (half the cache footprint: the probes are most of the time), else int64.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit, prange

from .sparse._numba import popcount

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


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _point_keys(points, lo, size, upper, gy, gz, keys):
    """``keys[i]`` = linear voxel key of point ``i`` or -1 (:func:`_voxel_key`), in parallel."""
    lo, size, upper = _triple(lo), _triple(size), _triple(upper)
    for i in prange(points.shape[0]):
        keys[i] = _voxel_key(points, i, lo, size, upper, gy, gz)


@njit(cache=True, nogil=True)
def _mark(keys, bitmap, word_id, touched, word_base):
    """Sets each key's bit; numbers the touched 64-key words in first-touch order
    (``word_id``, ``touched``) and gives each word the number of voxels in earlier words
    (``word_base``). Returns ``(touched words, voxels)``."""
    num_words = 0
    for i in range(keys.shape[0]):
        key = keys[i]
        if key < 0:
            continue
        w = key >> 6
        if word_id[w] < 0:
            word_id[w] = num_words
            touched[num_words] = w
            num_words += 1
        bitmap[w] |= np.uint64(1) << np.uint64(key & 63)
    total = 0
    for t in range(num_words):
        word_base[t] = total
        total += popcount(bitmap[touched[t]])
    return num_words, total


@njit(cache=True, nogil=True, parallel=True)
def _voxel_ids(keys, bitmap, word_id, word_base, ids):
    """``ids[i]``: a dense id of point ``i``'s voxel (its rank in the bitmap), -1 if dropped."""
    for i in prange(keys.shape[0]):
        key = keys[i]
        if key < 0:
            ids[i] = -1
        else:
            w = key >> 6
            bit = np.uint64(1) << np.uint64(key & 63)
            ids[i] = word_base[word_id[w]] + popcount(bitmap[w] & (bit - np.uint64(1)))


@njit(cache=True, nogil=True, parallel=True)
def _clear(bitmap, word_id, touched, num_words):
    """Resets the touched words of the persistent tables."""
    for t in prange(num_words):
        w = touched[t]
        bitmap[w] = 0
        word_id[w] = -1


@njit(cache=True, nogil=True)
def _assign(keys, ids, row_of_id, max_points, max_voxels, gy, gz, coords, counts, slot_of):
    """Voxel rows in first-come order and each point's slot ``row * max_points + c`` (or -1).

    Returns:
        ``(M, num_dropped, num_overflow)``.
    """
    m = 0
    num_dropped = 0
    num_overflow = 0
    for i in range(keys.shape[0]):
        vid = ids[i]
        if vid < 0:
            num_dropped += 1
            slot_of[i] = -1
            continue
        row = row_of_id[vid]
        if row == -1:  # first point of this voxel
            if m < max_voxels:
                row = m
                key = keys[i]
                coords[m, 0] = key // (gy * gz)
                coords[m, 1] = (key // gz) % gy
                coords[m, 2] = key % gz
                m += 1
            else:
                row = -2  # past the budget: never stored
            row_of_id[vid] = row
        if row < 0:
            num_overflow += 1
            slot_of[i] = -1
            continue
        c = counts[row]
        if c >= max_points:
            num_overflow += 1
            slot_of[i] = -1
            continue
        counts[row] = c + 1
        slot_of[i] = row * max_points + c
    return m, num_dropped, num_overflow


@njit(cache=True, nogil=True, parallel=True)
def _scatter(points, slot_of, out):
    """``out[slot_of[i]] = points[i]`` for kept points (``out`` viewed ``[V * max_points, D]``)."""
    d = points.shape[1]
    for i in prange(points.shape[0]):
        s = slot_of[i]
        if s >= 0:
            for j in range(d):
                out[s, j] = points[i, j]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _means(out, counts, m, mean):
    """Per voxel row: the mean of its stored points (summed in input order) and zeros in its
    unused slots."""
    max_points, d = out.shape[1], out.shape[2]
    for r in prange(m):
        c = counts[r]
        for j in range(d):
            acc = out[r, 0, j]
            for k in range(1, c):
                acc += out[r, k, j]
            # float32 / int32 divides in float64 and rounds once more: the same float32 quotient
            mean[r, j] = acc / c
        for k in range(c, max_points):
            for j in range(d):
                out[r, k, j] = 0


class _KeyBitmap:
    """A bitmap over a grid's voxel keys plus a per-word id table, kept between calls (as
    spconv keeps its dense grid): allocating and first-touching them every call would cost
    more than the voxelization. Only the words a call touched are reset after it."""

    def __init__(self, num_keys: int) -> None:
        words = (num_keys + 63) // 64
        self.num_keys = num_keys
        self.bitmap = np.zeros(words, dtype=np.uint64)
        self.word_id = np.full(words, -1, dtype=np.int32)


_BITMAP: list[_KeyBitmap] = []  # the last grid's tables (one grid at a time)
_BITMAP_LOCK = threading.Lock()


def hard_voxelize(points, lo, size, upper, gy, gz, num_keys, max_points, max_voxels):
    """Hard voxelization of ``points [N, D]`` (float32 or float64, C-contiguous).

    Phases: voxel keys (parallel); bits set in a key bitmap, touched words numbered (serial,
    cache-friendly); a dense voxel id per point from its bitmap rank (parallel); voxel rows in
    first-come order and point slots (serial); points scattered into their slots and the means
    (parallel). The same outputs as the one-pass rule in :mod:`.voxelize`'s docstring.

    Args:
        lo, size, upper: ``[3]`` in the points' dtype: ``pc_range[:3]``, ``voxel_size`` and
            ``grid - 1``; ``gy``, ``gz``: the grid's y and z sizes; num_keys: its voxel count.

    Returns:
        ``(out [M, max_points, D], coords [M, 3] int32, counts [M] int32, mean [M, D], M,
        num_dropped, num_overflow)``; ``mean`` is each voxel's sum of stored points (in input
        order) divided by its count.
    """
    n, d = points.shape
    capacity = min(n, max_voxels)
    # 32-bit index arrays where the sizes allow: half the memory traffic of the passes
    narrow = num_keys < 2**31 and n < 2**31 and capacity * max_points < 2**31
    index = np.int32 if narrow else np.int64
    keys = np.empty(n, dtype=index)
    _point_keys(points, lo, size, upper, gy, gz, keys)
    touched = np.empty(n, dtype=index)
    word_base = np.empty(n, dtype=index)
    ids = np.empty(n, dtype=index)
    with _BITMAP_LOCK:
        if not _BITMAP or _BITMAP[0].num_keys != num_keys:
            _BITMAP[:] = [_KeyBitmap(num_keys)]
        tables = _BITMAP[0]
        num_words, num_ids = _mark(keys, tables.bitmap, tables.word_id, touched, word_base)
        try:
            _voxel_ids(keys, tables.bitmap, tables.word_id, word_base, ids)
        finally:
            _clear(tables.bitmap, tables.word_id, touched, num_words)
    row_of_id = np.full(num_ids, -1, dtype=index)
    coords = np.empty((capacity, 3), dtype=np.int32)
    counts = np.zeros(capacity, dtype=np.int32)
    slot_of = np.empty(n, dtype=index)
    m, num_dropped, num_overflow = _assign(
        keys, ids, row_of_id, max_points, max_voxels, gy, gz, coords, counts, slot_of
    )
    # Every slot of the M rows is written (points or the zeros of _means); np.empty keeps the
    # pages of rows past M untouched.
    out = np.empty((capacity, max_points, d), dtype=points.dtype)
    _scatter(points, slot_of, out.reshape(-1, d))
    mean = np.empty((capacity, d), dtype=points.dtype)
    _means(out, counts, m, mean)
    return out[:m], coords[:m], counts[:m], mean[:m], m, num_dropped, num_overflow


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
