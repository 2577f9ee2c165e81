"""Numba CPU kernels for the sparse package: coordinate index, kernel maps, convolution.

Used by :mod:`.kernel_map` (layout ``"columns"``, strided maps) and :mod:`.functional` (variant
``"rows"``) on CPU tensors when numba is importable; the torch code stays the reference and the
fallback.

- **Column index** (:func:`build_columns`): LiDAR voxels are thin columns, so a set is indexed
  by an occupancy bitmap over its ``(batch, x, y)`` columns (one bit each, with per-word prefix
  counts: a column's id is its rank), a z bit mask per occupied column and the rows listed column
  by column. Every table stays cache sized (the bitmap of a 1440 x 1440 grid is 256 KB), which
  is what makes lookups fast: a dense id table or a hash misses the cache on every probe.
- **Strided kernel map** (:func:`strided_map_columns`): the output sites are marked in the same
  structure by two serial passes over the (input, offset) pairs; ranks in it give the output
  rows already sorted by ``(batch, x, y, z)`` (the order of
  :func:`.kernel_map.downsample_coords`) and a parallel pass fills both neighbour tables.
- **Row convolution**: output stationary, ``out[j] = sum_k feats[nbr[j, k]] @ W[k]`` over the
  active neighbours only, one output row per iteration of a parallel loop: no scatter, no
  atomics, and a fixed summation order (bitwise reproducible for any thread count). The weight
  gradient sums per fixed block of output rows, then adds the blocks in order.

The parallel kernels write into arrays the caller allocated (see :func:`filled`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Output rows per block of the weight-gradient reduction: fixed, so the summation order (and the
# result, bit for bit) does not depend on the thread count.
GRAD_BLOCK_ROWS = 8192


def filled(shape: tuple[int, ...], dtype, value) -> np.ndarray:
    """A new array of ``value``, its pages touched by one thread.

    Output arrays of the parallel kernels come from here: numpy maps large arrays on huge pages,
    and on the project's VM two threads first-touching the same fresh huge pages were ~8x
    slower than one thread touching them all first (36 ms against 5 ms for 35 MB).
    """
    return np.full(shape, value, dtype=dtype)


@njit(cache=True, nogil=True, inline="always")
def _grid(q, stride, lo, ext):
    """Grid index of stride-1 coordinate ``q`` in a set of the given ``stride``, ``lo``, ``ext``
    (one axis), or -1 when ``q`` is not a site of that grid or falls outside it."""
    if stride == 1:
        g = q - lo
    else:
        if q % stride != 0:
            return -1
        g = q // stride - lo
    if g < 0 or g >= ext:
        return -1
    return g


@njit(cache=True, nogil=True, inline="always")
def popcount(x):
    """Set bits of a uint64 (SWAR; numba has no portable popcount intrinsic)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(cache=True, nogil=True, inline="always")
def _rank_in_column(col_mask, col, gz):
    """``(occupied, rank)`` of z cell ``gz`` in column ``col``: whether it is occupied and the
    number of occupied cells below it."""
    word = gz >> 6
    bit = np.uint64(1) << np.uint64(gz & 63)
    if not (col_mask[col, word] & bit):
        return False, 0
    rank = popcount(col_mask[col, word] & (bit - np.uint64(1)))
    for w in range(word):
        rank += popcount(col_mask[col, w])
    return True, rank


@njit(cache=True, nogil=True, inline="always")
def _column_id(occupied, word_prefix, ckey):
    """Rank of column ``ckey`` among the occupied columns, or -1 when it is empty."""
    word = ckey >> 6
    bit = np.uint64(1) << np.uint64(ckey & 63)
    bits = occupied[word]
    if not (bits & bit):
        return -1
    return np.int64(word_prefix[word]) + popcount(bits & (bit - np.uint64(1)))


@njit(cache=True, nogil=True)
def build_columns(coords, stride, lo, ext, occupied, word_prefix, col_mask, col_start, row_table):
    """Column index of ``coords [N, 4]``, every table small enough to stay in cache.

    Columns are the ``(batch, x, y)`` cells, keyed ``(batch * ext[0] + gx) * ext[1] + gy``:
    ``occupied`` holds one bit per column key and ``word_prefix[w]`` the occupied columns in
    words before ``w``, so a column's id is its rank among the occupied columns (sorted order).
    ``col_mask[c]`` is the bit mask of column ``c``'s occupied z cells (``W = ceil(ext[2] /
    64)`` words; z cell ``g`` is bit ``g % 64`` of word ``g // 64``) and ``row_table`` lists the
    rows column by column in z order from ``col_start[c]``.

    Args:
        occupied: ``[ceil(keys / 64)]`` uint64 zeros; word_prefix: same length, int32;
        col_mask: ``[N, W]`` uint64 zeros; col_start: ``[N + 1]`` int32; row_table: ``[N]``
        int32.

    Returns:
        The number of columns.
    """
    n = coords.shape[0]
    ckeys = np.empty(n, dtype=np.int64)
    for i in range(n):
        gx = coords[i, 1] // stride[0] - lo[0]
        gy = coords[i, 2] // stride[1] - lo[1]
        ckey = (np.int64(coords[i, 0]) * ext[0] + gx) * ext[1] + gy
        ckeys[i] = ckey
        occupied[ckey >> 6] |= np.uint64(1) << np.uint64(ckey & 63)
    total = 0
    for w in range(occupied.shape[0]):
        word_prefix[w] = total
        total += popcount(occupied[w])
    num_cols = total
    cols = np.empty(n, dtype=np.int64)
    for i in range(n):
        c = _column_id(occupied, word_prefix, ckeys[i])
        cols[i] = c
        gz = coords[i, 3] // stride[2] - lo[2]
        col_mask[c, gz >> 6] |= np.uint64(1) << np.uint64(gz & 63)
    total = 0
    for c in range(num_cols):
        col_start[c] = total
        for w in range(col_mask.shape[1]):
            total += popcount(col_mask[c, w])
    col_start[num_cols] = total
    for i in range(n):
        gz = coords[i, 3] // stride[2] - lo[2]
        _, rank = _rank_in_column(col_mask, cols[i], gz)
        row_table[col_start[cols[i]] + rank] = i
    return num_cols


@njit(cache=True, nogil=True, parallel=True)
def lookup_columns(
    base,
    x_offs,
    y_offs,
    z_offs,
    stride,
    lo,
    ext,
    batches,
    occupied,
    word_prefix,
    col_mask,
    col_start,
    row_table,
    out,
):
    """``out[j, (a * ky + b) * kz + c]`` = row at ``base[j] + (x_offs[a], y_offs[b], z_offs[c])``
    in a column index (:func:`build_columns`); entries of absent sites are left as they are.

    Args:
        base: ``[M, 4]`` int32/int64 ``(batch, x, y, z)``, stride-1 units.
        x_offs, y_offs, z_offs: int64 offsets in stride-1 units.
        stride, lo, ext: ``[3]`` int64 of the indexed set; batches: its batch count.
        occupied .. row_table: the index's tables.
        out: ``[M, K]`` int64, prefilled by the caller with the missing value (by one thread,
        :func:`filled`: on the project's VM that is faster than the two threads of this loop
        first-touching a fresh array).
    """
    kx, ky, kz = x_offs.shape[0], y_offs.shape[0], z_offs.shape[0]
    sx, sy, sz = stride[0], stride[1], stride[2]
    for j in prange(base.shape[0]):
        b = np.int64(base[j, 0])
        if b < 0 or b >= batches:
            continue
        x, y, z = np.int64(base[j, 1]), np.int64(base[j, 2]), np.int64(base[j, 3])
        for a in range(kx):
            gx = _grid(x + x_offs[a], sx, lo[0], ext[0])
            if gx < 0:
                continue
            for bb in range(ky):
                gy = _grid(y + y_offs[bb], sy, lo[1], ext[1])
                if gy < 0:
                    continue
                col = _column_id(occupied, word_prefix, (b * ext[0] + gx) * ext[1] + gy)
                if col < 0:
                    continue
                start = np.int64(col_start[col])
                for c in range(kz):
                    gz = _grid(z + z_offs[c], sz, lo[2], ext[2])
                    if gz < 0:
                        continue
                    present, rank = _rank_in_column(col_mask, col, gz)
                    if present:
                        out[j, (a * ky + bb) * kz + c] = row_table[start + rank]


@njit(cache=True, nogil=True, inline="always")
def _column_row(
    b, x, y, z, stride, lo, ext, batches, occupied, word_prefix, col_mask, col_start, row_table
):
    """Row of the site ``(b, x, y, z)`` (stride-1 units) in a column index, or -1."""
    if b < 0 or b >= batches:
        return -1
    gx = _grid(x, stride[0], lo[0], ext[0])
    gy = _grid(y, stride[1], lo[1], ext[1])
    gz = _grid(z, stride[2], lo[2], ext[2])
    if gx < 0 or gy < 0 or gz < 0:
        return -1
    col = _column_id(occupied, word_prefix, (b * ext[0] + gx) * ext[1] + gy)
    if col < 0:
        return -1
    present, rank = _rank_in_column(col_mask, col, gz)
    if not present:
        return -1
    return np.int64(row_table[np.int64(col_start[col]) + rank])


@njit(cache=True, nogil=True, parallel=True)
def trilinear_columns(
    points,
    consts,
    stride,
    lo,
    ext,
    batches,
    occupied,
    word_prefix,
    col_mask,
    col_start,
    row_table,
    missing,
    rows,
    weights,
):
    """Trilinear corners of every point in a column index (:func:`build_columns`), in one pass:
    the fused form of ``point_voxel._corner_weights``, the index lookup and the renormalization.

    Point ``j`` at ``p`` (stride-1 units) lies between the centres of the 8 voxels with lower
    corner ``(floor(p / s - 1/2) + d) * s``, ``d`` in ``{0, 1}^3`` (x slowest); the weight of a
    corner is the product of ``1 - f`` or ``f`` per axis (``f`` the fraction past the lower
    centre), computed in the points' dtype as the torch path does; corners not in the set get
    row ``missing`` and weight 0, the rest are divided by their sum (all missing: all 0).

    Args:
        points: ``[N, 4]`` float ``(batch, x, y, z)``; consts: ``[2]`` of the points' dtype,
            ``(0.5, 1.0)`` (so that the arithmetic stays in that dtype).
        stride, lo, ext: ``[3]`` int64 of the indexed set; batches: its batch count.
        occupied .. row_table: the index's tables; missing: the row of absent corners.
        rows: ``[N, 8]`` int64, weights ``[N, 8]`` float, written.
    """
    half = consts[0]
    one = consts[1]
    sx, sy, sz = stride[0], stride[1], stride[2]
    fx, fy, fz = points.dtype.type(sx), points.dtype.type(sy), points.dtype.type(sz)
    for j in prange(points.shape[0]):
        b = np.int64(points[j, 0])
        ux = points[j, 1] / fx - half
        uy = points[j, 2] / fy - half
        uz = points[j, 3] / fz - half
        bx, by, bz = np.floor(ux), np.floor(uy), np.floor(uz)
        tx, ty, tz = ux - bx, uy - by, uz - bz
        cx, cy, cz = np.int64(bx) * sx, np.int64(by) * sy, np.int64(bz) * sz
        total = weights.dtype.type(0.0)
        for k in range(8):
            rows[j, k] = missing
            weights[j, k] = 0.0
        if b < 0 or b >= batches:
            continue
        gz0 = _grid(cz, sz, lo[2], ext[2])
        gz1 = _grid(cz + sz, sz, lo[2], ext[2])
        for dx in range(2):
            gx = _grid(cx + dx * sx, sx, lo[0], ext[0])
            if gx < 0:
                continue
            wx = tx if dx else one - tx
            for dy in range(2):
                gy = _grid(cy + dy * sy, sy, lo[1], ext[1])
                if gy < 0:
                    continue
                col = _column_id(occupied, word_prefix, (b * ext[0] + gx) * ext[1] + gy)
                if col < 0:
                    continue
                start = np.int64(col_start[col])
                wxy = wx * (ty if dy else one - ty)
                for dz in range(2):
                    gz = gz1 if dz else gz0
                    if gz < 0:
                        continue
                    present, rank = _rank_in_column(col_mask, col, gz)
                    if not present:
                        continue
                    k = (dx * 2 + dy) * 2 + dz
                    w = weights.dtype.type(wxy * (tz if dz else one - tz))
                    rows[j, k] = row_table[start + rank]
                    weights[j, k] = w
                    total += w
        if total > 0:
            for k in range(8):
                weights[j, k] = weights[j, k] / total


@njit(cache=True, nogil=True, parallel=True)
def point_rows_columns(
    points,
    stride,
    lo,
    ext,
    batches,
    occupied,
    word_prefix,
    col_mask,
    col_start,
    row_table,
    missing,
    rows,
):
    """Row of the voxel each point falls in (``floor(p / s) * s`` per axis, in the points'
    dtype), ``missing`` where that voxel is not in the set; ``rows [N]`` int64, written."""
    sx, sy, sz = stride[0], stride[1], stride[2]
    fx, fy, fz = points.dtype.type(sx), points.dtype.type(sy), points.dtype.type(sz)
    for j in prange(points.shape[0]):
        r = _column_row(
            np.int64(points[j, 0]),
            np.int64(np.floor(points[j, 1] / fx)) * sx,
            np.int64(np.floor(points[j, 2] / fy)) * sy,
            np.int64(np.floor(points[j, 3] / fz)) * sz,
            stride,
            lo,
            ext,
            batches,
            occupied,
            word_prefix,
            col_mask,
            col_start,
            row_table,
        )
        rows[j] = missing if r < 0 else r


@njit(cache=True, nogil=True, inline="always")
def _output_cell(g, k, ksize, dilation, stride):
    """Output grid index reading input grid index ``g`` at kernel position ``k`` (one axis),
    or -1 when there is none (``g - offset`` negative or not a multiple of the stride)."""
    j = g - (k - (ksize - 1) // 2) * dilation
    if j < 0 or j % stride != 0:
        return -1
    return j // stride


@njit(cache=True, nogil=True)
def _strided_columns(coords, in_stride, ksize, stride, dilation, hi, occupied, word_prefix):
    """Passes 1-2 of :func:`strided_map_columns`; returns ``(col_mask, col_start, M)``."""
    n = coords.shape[0]
    kx, ky, kz = ksize[0], ksize[1], ksize[2]
    for i in range(n):
        b = np.int64(coords[i, 0])
        g0 = np.int64(coords[i, 1]) // in_stride[0]
        g1 = np.int64(coords[i, 2]) // in_stride[1]
        for a in range(kx):
            jx = _output_cell(g0, a, kx, dilation[0], stride[0])
            if jx < 0:
                continue
            for bb in range(ky):
                jy = _output_cell(g1, bb, ky, dilation[1], stride[1])
                if jy < 0:
                    continue
                ckey = (b * hi[0] + jx) * hi[1] + jy
                occupied[ckey >> 6] |= np.uint64(1) << np.uint64(ckey & 63)
    total = 0
    for w in range(occupied.shape[0]):
        word_prefix[w] = total
        total += popcount(occupied[w])
    num_cols = total
    col_mask = np.zeros((num_cols, (hi[2] + 63) // 64), dtype=np.uint64)
    for i in range(n):
        b = np.int64(coords[i, 0])
        g0 = np.int64(coords[i, 1]) // in_stride[0]
        g1 = np.int64(coords[i, 2]) // in_stride[1]
        g2 = np.int64(coords[i, 3]) // in_stride[2]
        for a in range(kx):
            jx = _output_cell(g0, a, kx, dilation[0], stride[0])
            if jx < 0:
                continue
            for bb in range(ky):
                jy = _output_cell(g1, bb, ky, dilation[1], stride[1])
                if jy < 0:
                    continue
                col = _column_id(occupied, word_prefix, (b * hi[0] + jx) * hi[1] + jy)
                for c in range(kz):
                    jz = _output_cell(g2, c, kz, dilation[2], stride[2])
                    if jz >= 0:
                        col_mask[col, jz >> 6] |= np.uint64(1) << np.uint64(jz & 63)
    col_start = np.empty(num_cols + 1, dtype=np.int64)
    total = 0
    for c in range(num_cols):
        col_start[c] = total
        for w in range(col_mask.shape[1]):
            total += popcount(col_mask[c, w])
    col_start[num_cols] = total
    return col_mask, col_start, total


@njit(cache=True, nogil=True, parallel=True)
def _strided_tables(
    coords,
    in_stride,
    ksize,
    stride,
    dilation,
    hi,
    occupied,
    word_prefix,
    col_mask,
    col_start,
    nbr,
    nbr_t,
    with_transpose,
):
    """Pass 3 of :func:`strided_map_columns`: the neighbour tables (prefilled with the missing
    values; ``nbr_t`` only ``with_transpose``), parallel over inputs."""
    kx, ky, kz = ksize[0], ksize[1], ksize[2]
    for i in prange(coords.shape[0]):
        b = np.int64(coords[i, 0])
        g0 = np.int64(coords[i, 1]) // in_stride[0]
        g1 = np.int64(coords[i, 2]) // in_stride[1]
        g2 = np.int64(coords[i, 3]) // in_stride[2]
        for a in range(kx):
            jx = _output_cell(g0, a, kx, dilation[0], stride[0])
            if jx < 0:
                continue
            for bb in range(ky):
                jy = _output_cell(g1, bb, ky, dilation[1], stride[1])
                if jy < 0:
                    continue
                col = _column_id(occupied, word_prefix, (b * hi[0] + jx) * hi[1] + jy)
                for c in range(kz):
                    jz = _output_cell(g2, c, kz, dilation[2], stride[2])
                    if jz < 0:
                        continue
                    _, rank = _rank_in_column(col_mask, col, jz)
                    row = col_start[col] + rank
                    k = (a * ky + bb) * kz + c
                    if with_transpose:
                        nbr_t[i, k] = row
                    nbr[row, k] = i  # each (output, offset) has exactly one input


@njit(cache=True, nogil=True)
def _strided_coords(occupied, col_mask, col_start, hi, out_stride, out):
    """Output coordinates ``[M, 4]`` (stride-1 units), column by column in z order."""
    col = 0
    for w in range(occupied.shape[0]):
        bits = occupied[w]
        while bits:
            low = bits & (~bits + np.uint64(1))
            ckey = w * 64 + popcount(low - np.uint64(1))
            bits ^= low
            b = ckey // (hi[0] * hi[1])
            jx = (ckey // hi[1]) % hi[0]
            jy = ckey % hi[1]
            row = col_start[col]
            for jz in range(hi[2]):
                if col_mask[col, jz >> 6] & (np.uint64(1) << np.uint64(jz & 63)):
                    out[row, 0] = b
                    out[row, 1] = jx * out_stride[0]
                    out[row, 2] = jy * out_stride[1]
                    out[row, 3] = jz * out_stride[2]
                    row += 1
            col += 1


def strided_map_columns(coords, in_stride, ksize, stride, dilation, with_transpose=True):
    """Output sites and both neighbour tables of a strided convolution, through a column index
    of the output sites (bitmap + per-column z masks, as :func:`build_columns`): two serial
    passes over the (input, offset) pairs mark the sites, a parallel pass fills the tables.

    Args:
        coords: ``[N, 4]`` int32/int64 numpy, ``N > 0``, multiples of ``in_stride``.
        in_stride, ksize, stride, dilation: ``[3]`` int64 numpy.

        with_transpose: also fill ``nbr_t`` (else it is None; :func:`transpose_table` makes it
            later where a backward or a transposed conv needs it).

    Returns:
        ``(out_coords [M, 4] int32 sorted by (batch, x, y, z), nbr [M, K], nbr_t [N, K])``.
    """
    n = coords.shape[0]
    k = int(ksize.prod())
    grid_max = coords[:, 1:].max(0).astype(np.int64) // in_stride
    min_off = -((ksize - 1) // 2) * dilation
    hi = (grid_max - min_off) // stride + 1
    batches = int(coords[:, 0].max()) + 1
    words = (batches * int(hi[0]) * int(hi[1]) + 63) // 64
    occupied = np.zeros(words, dtype=np.uint64)
    word_prefix = np.empty(words, dtype=np.int64)
    col_mask, col_start, m = _strided_columns(
        coords, in_stride, ksize, stride, dilation, hi, occupied, word_prefix
    )
    nbr = filled((m, k), np.int64, n)
    nbr_t = filled((n, k), np.int64, m) if with_transpose else np.empty((0, k), np.int64)
    _strided_tables(
        coords,
        in_stride,
        ksize,
        stride,
        dilation,
        hi,
        occupied,
        word_prefix,
        col_mask,
        col_start,
        nbr,
        nbr_t,
        with_transpose,
    )
    out = np.empty((m, 4), np.int32)
    _strided_coords(occupied, col_mask, col_start, hi, in_stride * stride, out)
    return out, nbr, (nbr_t if with_transpose else None)


@njit(cache=True, nogil=True, parallel=True)
def _transpose_columns(nbr, num_in, nbr_t):
    n_out, k_total = nbr.shape
    for k in prange(k_total):
        for j in range(n_out):
            i = nbr[j, k]
            if i < num_in:
                nbr_t[i, k] = j


def transpose_table(nbr, num_in):
    """``nbr [N_out, K]`` -> ``nbr_t [N_in, K]`` (``N_out`` where missing), parallel over the
    offsets (each (input, offset) has at most one output, so no two writes collide)."""
    nbr_t = filled((num_in, nbr.shape[1]), np.int64, nbr.shape[0])
    _transpose_columns(nbr, num_in, nbr_t)
    return nbr_t


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def conv_rows(feats, weight, nbr, num_in, out):
    """``out[j] = sum_k feats[nbr[j, k]] @ weight[k]`` over active ``nbr[j, k] < num_in``.

    Args:
        feats: ``[N_in, C_in]``; weight: ``[K, C_in, C_out]``; nbr: ``[N_out, K]`` int64;
        out: ``[N_out, C_out]`` (overwritten). Same float dtype throughout.
    """
    k_total = nbr.shape[1]
    c_in = feats.shape[1]
    c_out = weight.shape[2]
    for j in prange(nbr.shape[0]):
        for o in range(c_out):
            out[j, o] = 0
        for k in range(k_total):
            i = nbr[j, k]
            if i >= num_in:
                continue
            for c in range(c_in):
                f = feats[i, c]
                for o in range(c_out):
                    out[j, o] += f * weight[k, c, o]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def grad_weight_rows(feats, nbr, num_in, grad_out, partial):
    """Per block of :data:`GRAD_BLOCK_ROWS` output rows,
    ``partial[blk, k] = sum_j feats[nbr[j, k]]^T grad_out[j]``; the caller sums the blocks in
    order.

    Args:
        partial: ``[num_blocks, K, C_in, C_out]`` zeros.
    """
    n_out, k_total = nbr.shape
    c_in = feats.shape[1]
    c_out = grad_out.shape[1]
    for blk in prange(partial.shape[0]):
        start = blk * GRAD_BLOCK_ROWS
        end = min(start + GRAD_BLOCK_ROWS, n_out)
        for j in range(start, end):
            for k in range(k_total):
                i = nbr[j, k]
                if i >= num_in:
                    continue
                for c in range(c_in):
                    f = feats[i, c]
                    for o in range(c_out):
                        partial[blk, k, c, o] += f * grad_out[j, o]


@njit(cache=True, nogil=True, error_model="numpy")
def scatter_channels(src, rows, weights, c0, c1, out):
    """``out[rows[i, k], c0:c1] += weights[i, k] * src[i, c0:c1]`` for every ``i, k``, in
    order (one thread). Row slices keep the channel loop vectorized: indexing ``out[r, c]``
    inside a parallel region measured ~4x slower."""
    n, k_total = rows.shape
    for i in range(n):
        s = src[i, c0:c1]
        for k in range(k_total):
            o = out[rows[i, k], c0:c1]
            w = weights[i, k]
            for c in range(s.shape[0]):
                o[c] += w * s[c]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def weighted_scatter_add(src, rows, weights, num_tasks, out):
    """``out[rows[i, k]] += weights[i, k] * src[i]`` for every ``i, k``.

    Parallel over ``num_tasks`` contiguous channel ranges (one per thread): each task runs every
    ``(i, k)`` in order on its own channels (:func:`scatter_channels`), so rows shared by many
    points need no atomics, and every channel sums in the same order however the channels are
    split: the result is bitwise the same for any ``num_tasks``.

    Args:
        src: ``[N, C]``; rows: ``[N, K]`` int64 in ``[0, len(out))``; weights: ``[N, K]`` (the
        dtype of ``src``); num_tasks: ``1 .. C``; out: ``[M, C]``, accumulated into.
    """
    c_total = src.shape[1]
    for task in prange(num_tasks):
        c0 = task * c_total // num_tasks
        c1 = (task + 1) * c_total // num_tasks
        scatter_channels(src, rows, weights, c0, c1, out)


# Output rows per tile of the "tiles" convolution: the tile's accumulator, gathered inputs and
# products ([rows, C] each) stay in L2 for the channel counts of LiDAR backbones.
TILE_ROWS = 256


@njit(cache=True, nogil=True, inline="always")
def _tile_pairs(nbr, j0, rows, num_in, count, where, source):
    """The active pairs of table rows ``j0 .. j0 + rows - 1`` listed per offset, from one pass
    over those rows in storage order: ``where[k, :count[k]]`` the rows (tile-relative),
    ``source[k, :count[k]]`` their inputs."""
    count[:] = 0
    for jj in range(rows):
        for k in range(nbr.shape[1]):
            i = nbr[j0 + jj, k]
            if i < num_in:
                m = count[k]
                where[k, m] = jj
                source[k, m] = i
                count[k] = m + 1


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def conv_tiles(feats, weight, nbr, num_in, out, tile_rows=TILE_ROWS):
    """``out[j] = sum_k feats[nbr[j, k]] @ weight[k]`` over active ``nbr[j, k] < num_in``, by
    tiles of :data:`TILE_ROWS` output rows (parallel over tiles): the tile's table rows are read
    once (in storage order), listing its active pairs per offset; per offset, the active inputs
    are gathered into a dense block, multiplied by ``weight[k]`` with one BLAS GEMM and the
    products added into the tile's accumulator. Only active pairs are multiplied, at BLAS
    speed; nothing leaves the cache until the tile is written. Each row sums its offsets in
    order ``k = 0 .. K-1``: the result does not depend on the thread count.

    Args:
        feats: ``[N_in, C_in]``; weight: ``[K, C_in, C_out]`` C-contiguous; nbr: ``[N_out, K]``
        int64; out: ``[N_out, C_out]`` (overwritten). Same float dtype throughout.
    """
    n_out, k_total = nbr.shape
    c_in = feats.shape[1]
    c_out = weight.shape[2]
    num_tiles = (n_out + tile_rows - 1) // tile_rows
    for tile in prange(num_tiles):
        j0 = tile * tile_rows
        rows = min(tile_rows, n_out - j0)
        acc = np.zeros((rows, c_out), dtype=out.dtype)
        gathered = np.empty((rows, c_in), dtype=feats.dtype)
        product = np.empty((rows, c_out), dtype=out.dtype)
        count = np.empty(k_total, dtype=np.int64)
        where = np.empty((k_total, rows), dtype=np.int32)
        source = np.empty((k_total, rows), dtype=np.int64)
        _tile_pairs(nbr, j0, rows, num_in, count, where, source)
        for k in range(k_total):
            m = count[k]
            if m == 0:
                continue
            for p in range(m):
                i = source[k, p]
                for c in range(c_in):
                    gathered[p, c] = feats[i, c]
            np.dot(gathered[:m], weight[k], product[:m])
            for p in range(m):
                jj = where[k, p]
                for o in range(c_out):
                    acc[jj, o] += product[p, o]
        for jj in range(rows):
            for o in range(c_out):
                out[j0 + jj, o] = acc[jj, o]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def grad_weight_tiles(feats, nbr, num_in, grad_out, partial):
    """Per block of :data:`GRAD_BLOCK_ROWS` output rows (parallel over blocks),
    ``partial[blk, k] = sum_j feats[nbr[j, k]]^T grad_out[j]``: per offset and tile of
    :data:`TILE_ROWS` rows, the active inputs and their output gradients are gathered into
    dense blocks and multiplied with one BLAS GEMM. The caller sums the blocks in order.

    Args:
        partial: ``[num_blocks, K, C_in, C_out]`` zeros.
    """
    n_out, k_total = nbr.shape
    c_in = feats.shape[1]
    c_out = grad_out.shape[1]
    for blk in prange(partial.shape[0]):
        gathered = np.empty((TILE_ROWS, c_in), dtype=feats.dtype)
        grads = np.empty((TILE_ROWS, c_out), dtype=grad_out.dtype)
        product = np.empty((c_in, c_out), dtype=grad_out.dtype)
        count = np.empty(k_total, dtype=np.int64)
        where = np.empty((k_total, TILE_ROWS), dtype=np.int32)
        source = np.empty((k_total, TILE_ROWS), dtype=np.int64)
        start = blk * GRAD_BLOCK_ROWS
        end = min(start + GRAD_BLOCK_ROWS, n_out)
        for j0 in range(start, end, TILE_ROWS):
            rows = min(TILE_ROWS, end - j0)
            _tile_pairs(nbr, j0, rows, num_in, count, where, source)
            for k in range(k_total):
                m = count[k]
                if m == 0:
                    continue
                for p in range(m):
                    i = source[k, p]
                    jj = where[k, p]
                    for c in range(c_in):
                        gathered[p, c] = feats[i, c]
                    for o in range(c_out):
                        grads[p, o] = grad_out[j0 + jj, o]
                np.dot(gathered[:m].T, grads[:m], product)
                for c in range(c_in):
                    for o in range(c_out):
                        partial[blk, k, c, o] += product[c, o]
