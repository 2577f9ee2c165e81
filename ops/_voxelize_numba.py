"""Numba CPU kernels for :mod:`.voxelize`.

Each point's voxel index is ``floor((p - lo) / size)`` computed in the points' dtype (the
arrays ``lo``, ``size`` and ``upper = grid - 1`` come in that dtype), the arithmetic of
:func:`perception.ops._geometry.point_voxel_coords`, so both paths agree bit for bit on which
voxel a point falls in and which points are dropped. Voxel keys are linear, ``(x * Y + y) * Z +
z``; voxel rows are numbered in the order their first point appears in the input.

- Hard voxelization (:func:`hard_voxelize`): a bitmap over the grid's keys, kept between calls,
  gives every voxel a dense id by rank, so only the first-come numbering and the per-voxel slot
  counting run serially (one pass over the points' ids); keys, ids, the per-row gather of points and the means run in
  parallel. Its scratch arrays are kept between calls with the bitmap.
- Dynamic voxelization (:func:`dynamic_voxelize`): one pass with an open-addressing table
  ``[C, 2]`` (linear probing, power-of-two capacity C, at most half full) of pairs
  ``(key + 1, row)`` (0 marks an empty slot, so a zeroed array is an empty table); int32 where
  the keys fit (half the cache footprint: the probes are most of the time), else int64.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import get_num_threads, njit, prange

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


@njit(cache=True, nogil=True, parallel=True)
def _mark(keys, bitmap, word_id, touched, word_base, part_words, part_ids):
    """Sets each key's bit and numbers the touched 64-key words, in parallel over ``P`` ranges
    of words (``P = touched.shape[0]``; part ``p`` scans every key and handles those in its
    range, so no two threads write one word). Within a part, words are numbered in first-touch
    order. ``word_id[w]`` becomes word ``w``'s number, ``touched[p, t]`` part ``p``'s ``t``-th
    word, ``word_base[word_id[w]]`` the number of voxels in the words numbered before ``w``;
    ``part_words`` / ``part_ids`` ``[P + 1]`` the parts' first word number and first voxel id.
    Returns ``(touched words, voxels)``."""
    parts, capacity = touched.shape
    num_words_total = bitmap.shape[0]
    for p in prange(parts):
        w_lo = num_words_total * p // parts
        w_hi = num_words_total * (p + 1) // parts
        count = 0
        for i in range(keys.shape[0]):
            key = keys[i]
            if key < 0:
                continue
            w = key >> 6
            if w < w_lo or w >= w_hi:
                continue
            if word_id[w] < 0:
                word_id[w] = count  # part-local for now
                touched[p, count] = w
                count += 1
            bitmap[w] |= np.uint64(1) << np.uint64(key & 63)
        voxels = 0
        for t in range(count):
            voxels += popcount(bitmap[touched[p, t]])
        part_words[p + 1] = count
        part_ids[p + 1] = voxels
    part_words[0] = 0
    part_ids[0] = 0
    for p in range(parts):
        part_words[p + 1] += part_words[p]
        part_ids[p + 1] += part_ids[p]
    for p in prange(parts):
        first = part_words[p]
        total = part_ids[p]
        for t in range(part_words[p + 1] - first):
            w = touched[p, t]
            word_id[w] += first
            word_base[first + t] = total
            total += popcount(bitmap[w])
    return part_words[parts], part_ids[parts]


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
def _clear(bitmap, word_id, touched, part_words):
    """Resets the touched words of the persistent tables."""
    for p in prange(touched.shape[0]):
        for t in range(part_words[p + 1] - part_words[p]):
            w = touched[p, t]
            bitmap[w] = 0
            word_id[w] = -1


@njit(cache=True, nogil=True)
def _assign(ids, row_of_id, max_points, max_voxels, counts, point_of_slot):
    """Voxel rows in first-come order; ``point_of_slot[row * max_points + c]`` = the input index
    of row ``row``'s ``c``-th stored point (``c < counts[row]``; other entries are not written).
    The rows' coordinates are decoded later, in parallel, from their first points' keys.

    Returns:
        ``(M, num_dropped, num_overflow)``.
    """
    m = 0
    num_dropped = 0
    num_overflow = 0
    for i in range(ids.shape[0]):
        vid = ids[i]
        if vid < 0:
            num_dropped += 1
            continue
        row = row_of_id[vid]
        if row == -1:  # first point of this voxel
            if m < max_voxels:
                row = m
                counts[m] = 0
                m += 1
            else:
                row = -2  # past the budget: never stored
            row_of_id[vid] = row
        if row < 0:
            num_overflow += 1
            continue
        c = counts[row]
        if c >= max_points:
            num_overflow += 1
            continue
        counts[row] = c + 1
        point_of_slot[row * max_points + c] = i
    return m, num_dropped, num_overflow


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _fill(points, keys, point_of_slot, counts, gy, gz, out, mean, coords):
    """Per voxel row, in parallel over tiles of rows: its stored points gathered in input
    order, zeros in its unused slots, their mean (summed in input order) and its coordinates
    (decoded from its first point's key); each row of ``out`` is written once, front to back."""
    m, max_points, d = out.shape
    flat = out.reshape(m, max_points * d)
    tile = 64
    for t in prange((m + tile - 1) // tile):
        for r in range(t * tile, min(m, (t + 1) * tile)):
            c = counts[r]
            base = r * max_points
            i = point_of_slot[base]
            key = keys[i]
            coords[r, 0] = key // (gy * gz)
            coords[r, 1] = (key // gz) % gy
            coords[r, 2] = key % gz
            for j in range(d):
                v = points[i, j]
                flat[r, j] = v
                mean[r, j] = v
            for k in range(1, c):
                i = point_of_slot[base + k]
                for j in range(d):
                    v = points[i, j]
                    flat[r, k * d + j] = v
                    mean[r, j] += v
            for j in range(d):
                # float32 / int32 divides in float64 and rounds once more: the same float32
                # quotient as torch's
                mean[r, j] = mean[r, j] / c
            flat[r, c * d :] = 0


class _Tables:
    """A bitmap over a grid's voxel keys plus a per-word id table, kept between calls (as
    spconv keeps its dense grid): allocating and first-touching them every call would cost
    more than the voxelization. Only the words a call touched are reset after it. Also the
    per-point and per-slot scratch arrays of the last call (grown on demand, kept up to
    :data:`KEEP_SCRATCH` points): fresh ones would be first-touched, page by page, every call."""

    def __init__(self, num_keys: int) -> None:
        words = (num_keys + 63) // 64
        self.num_keys = num_keys
        self.bitmap = np.zeros(words, dtype=np.uint64)
        self.word_id = np.full(words, -1, dtype=np.int32)
        self.scratch: dict[tuple[str, type], np.ndarray] = {}

    def scratch_array(self, name: str, size: int, dtype: type) -> np.ndarray:
        """A ``[size]`` array of ``dtype`` with unspecified contents, reused between calls."""
        if size > KEEP_SCRATCH:
            return np.empty(size, dtype=dtype)
        array = self.scratch.get((name, dtype))
        if array is None or array.shape[0] < size:
            array = np.zeros(max(size, 1), dtype=dtype)  # zeros: touched once, here
            self.scratch[(name, dtype)] = array
        return array[:size]


KEEP_SCRATCH = 4_000_000
"""Scratch arrays up to this many entries are kept between calls (16 MB each at int32)."""
_BITMAP: list[_Tables] = []  # the last grid's tables (one grid at a time)
_BITMAP_LOCK = threading.Lock()


def hard_voxelize(
    points, lo, size, upper, gy, gz, num_keys, max_points, max_voxels, parts: int | None = None
):
    """Hard voxelization of ``points [N, D]`` (float32 or float64, C-contiguous).

    Phases: voxel keys (parallel); bits set in a key bitmap and touched words numbered
    (parallel over ranges of words); a dense voxel id per point from its bitmap rank
    (parallel); voxel rows in first-come order and each row's stored points (serial); per row,
    its points gathered, its padding zeroed, its mean and coordinates (parallel). The same
    outputs as the one-pass rule in :mod:`.voxelize`'s docstring.

    Args:
        lo, size, upper: ``[3]`` in the points' dtype: ``pc_range[:3]``, ``voxel_size`` and
            ``grid - 1``; ``gy``, ``gz``: the grid's y and z sizes; num_keys: its voxel count.
        parts: ranges of words the bitmap pass splits into (default: numba's thread count);
            the outputs do not depend on it.

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
    counts = np.empty(capacity, dtype=np.int32)
    parts = max(1, min(get_num_threads(), 64)) if parts is None else parts
    part_words = np.empty(parts + 1, dtype=np.int64)
    part_ids = np.empty(parts + 1, dtype=np.int64)
    with _BITMAP_LOCK:  # the tables and the scratch arrays are shared
        if not _BITMAP or _BITMAP[0].num_keys != num_keys:
            _BITMAP[:] = [_Tables(num_keys)]
        tables = _BITMAP[0]
        keys = tables.scratch_array("keys", n, index)
        # a part's touched words: at most its keys and at most its range's words
        per_part = max(1, min(n, tables.bitmap.shape[0] // parts + 1))
        touched = tables.scratch_array("touched", parts * per_part, index).reshape(parts, -1)
        word_base = tables.scratch_array("word_base", n, index)
        ids = tables.scratch_array("ids", n, index)
        _point_keys(points, lo, size, upper, gy, gz, keys)
        _, num_ids = _mark(
            keys, tables.bitmap, tables.word_id, touched, word_base, part_words, part_ids
        )
        try:
            _voxel_ids(keys, tables.bitmap, tables.word_id, word_base, ids)
        finally:
            _clear(tables.bitmap, tables.word_id, touched, part_words)
        row_of_id = tables.scratch_array("row_of_id", num_ids, index)
        row_of_id[:] = -1
        point_of_slot = tables.scratch_array("point_of_slot", capacity * max_points, index)
        m, num_dropped, num_overflow = _assign(
            ids, row_of_id, max_points, max_voxels, counts, point_of_slot
        )
        out = np.empty((m, max_points, d), dtype=points.dtype)
        mean = np.empty((m, d), dtype=points.dtype)
        coords = np.empty((m, 3), dtype=np.int32)
        _fill(points, keys, point_of_slot, counts, gy, gz, out, mean, coords)
    return out, coords, counts[:m], mean, m, num_dropped, num_overflow


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
