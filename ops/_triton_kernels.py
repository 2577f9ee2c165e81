"""The triton kernels behind :mod:`._triton` (imported on first use: importing triton costs
~0.2 s, and CPU runs never need it)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _csr_spmm_kernel(
    offsets, cols, values, dense, out, C,
    HAS_VALUES: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    start = tl.load(offsets + row).to(tl.int64)
    end = tl.load(offsets + row + 1).to(tl.int64)
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    for p in range(start, end):
        col = tl.load(cols + p).to(tl.int64)
        x = tl.load(dense + col * C + c, mask=cmask, other=0.0).to(ACC)
        if HAS_VALUES:
            x = x * tl.load(values + p).to(ACC)
        acc += x
    tl.store(out + row.to(tl.int64) * C + c, acc.to(out.dtype.element_ty), mask=cmask)


@triton.jit
def _sampled_dot_kernel(
    rows, cols, a, b, out, P, C,
    ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < P
    r = tl.load(rows + p, mask=pmask, other=0).to(tl.int64)
    q = tl.load(cols + p, mask=pmask, other=0).to(tl.int64)
    acc = tl.zeros([BLOCK_P], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        m = pmask[:, None] & (c < C)[None, :]
        x = tl.load(a + r[:, None] * C + c[None, :], mask=m, other=0.0).to(ACC)
        y = tl.load(b + q[:, None] * C + c[None, :], mask=m, other=0.0).to(ACC)
        acc += tl.sum(x * y, axis=1)
    tl.store(out + p, acc.to(out.dtype.element_ty), mask=pmask)


@triton.jit
def _sparse_conv_kernel(
    feats, weight, nbr, out, n_out, n_in, c_in, c_out, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    outs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < n_out
    omask = outs < c_out
    rows64 = rows.to(tl.int64)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(K):
        idx = tl.load(nbr + rows64 * K + k, mask=rmask, other=n_in).to(tl.int64)
        active = idx < n_in
        for c0 in range(0, c_in, BLOCK_K):
            cs = c0 + tl.arange(0, BLOCK_K)
            cmask = cs < c_in
            x = tl.load(
                feats + idx[:, None] * c_in + cs[None, :],
                mask=active[:, None] & cmask[None, :],
                other=0.0,
            )
            w = tl.load(
                weight + (k * c_in + cs[:, None]).to(tl.int64) * c_out + outs[None, :],
                mask=cmask[:, None] & omask[None, :],
                other=0.0,
            )
            acc += tl.dot(x, w, input_precision="ieee")
    tl.store(
        out + rows64[:, None] * c_out + outs[None, :],
        acc.to(out.dtype.element_ty),
        mask=rmask[:, None] & omask[None, :],
    )


@triton.jit
def _edge(poly, rows, mask, K: tl.constexpr, ACC: tl.constexpr):
    """Edge ``K`` of each row's quadrilateral ``poly [P, 4, 2]``: its start corner (x, y) and
    its end, corner ``K + 1``, in ACC."""
    x0 = tl.load(poly + rows * 8 + 2 * K, mask=mask, other=0.0).to(ACC)
    y0 = tl.load(poly + rows * 8 + 2 * K + 1, mask=mask, other=0.0).to(ACC)
    x1 = tl.load(poly + rows * 8 + 2 * ((K + 1) % 4), mask=mask, other=0.0).to(ACC)
    y1 = tl.load(poly + rows * 8 + 2 * ((K + 1) % 4) + 1, mask=mask, other=0.0).to(ACC)
    return x0, y0, x1, y1


@triton.jit
def _edges_inside(
    poly, clip, rows, mask, EPS: tl.constexpr, KEEP_SHARED: tl.constexpr, ACC: tl.constexpr
):
    """Sum over the edges of ``poly`` of the part of ``x dy - y dx`` along the piece of the
    edge inside ``clip`` (both counter-clockwise, convex): the piece is the edge's parameter
    range ``[lo, hi]`` left of every edge of ``clip``. An edge on a line of ``clip`` (both ends
    within EPS) counts whole when running the same way and KEEP_SHARED, else not at all: the
    shared boundary is then counted once over both polygons."""
    total = tl.zeros(rows.shape, dtype=ACC)
    for i in tl.static_range(4):
        p0x, p0y, p1x, p1y = _edge(poly, rows, mask, i, ACC)
        dx = p1x - p0x
        dy = p1y - p0y
        lo = tl.zeros(rows.shape, dtype=ACC)
        hi = lo + 1.0
        dead = rows < 0  # all False
        for j in tl.static_range(4):
            q0x, q0y, q1x, q1y = _edge(clip, rows, mask, j, ACC)
            ex = q1x - q0x
            ey = q1y - q0y
            s0 = ex * (p0y - q0y) - ey * (p0x - q0x)  # > 0: left of the clip edge (inside)
            s1 = ex * (p1y - q0y) - ey * (p1x - q0x)
            tol = EPS * (ex * ex + ey * ey)
            shared = (tl.abs(s0) <= tol) & (tl.abs(s1) <= tol)
            if KEEP_SHARED:
                dead = dead | (shared & (dx * ex + dy * ey <= 0))
            else:
                dead = dead | shared
            free = ~shared
            dead = dead | (free & (s0 < 0) & (s1 < 0))
            cross = free & ((s0 < 0) != (s1 < 0))
            t = s0 / tl.where(cross, s0 - s1, 1.0)
            lo = tl.where(cross & (s0 < 0), tl.maximum(lo, t), lo)
            hi = tl.where(cross & (s1 < 0), tl.minimum(hi, t), hi)
        keep = ~dead & (hi > lo)
        ax = p0x + lo * dx
        ay = p0y + lo * dy
        bx = p0x + hi * dx
        by = p0y + hi * dy
        total += tl.where(keep, ax * by - bx * ay, 0.0)
    return total


@triton.jit
def _intersection_area_kernel(
    poly, clip, out, P, EPS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr
):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = rows < P
    rows64 = rows.to(tl.int64)
    twice = _edges_inside(poly, clip, rows64, mask, EPS, True, ACC)
    twice += _edges_inside(clip, poly, rows64, mask, EPS, False, ACC)
    area = tl.maximum(0.5 * twice, 0.0)
    tl.store(out + rows64, area.to(out.dtype.element_ty), mask=mask)


# (`bounds`, not `params`: triton's compiled launcher binds the arguments into a local dict
# named `params`, so an argument of that name reaches the kernel as that dict.)
@triton.jit
def _voxel_keys_kernel(
    points, bounds, keys, N, D, GY, GZ, SENTINEL, F64: tl.constexpr, BLOCK: tl.constexpr
):  # fmt: skip
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < N
    row = points + i.to(tl.int64) * D
    valid = mask
    key = tl.zeros([BLOCK], dtype=tl.int64)
    for axis in tl.static_range(3):
        lo = tl.load(bounds + axis)
        size = tl.load(bounds + 3 + axis)
        upper = tl.load(bounds + 6 + axis)
        p = tl.load(row + axis, mask=mask, other=0.0)
        # IEEE-rounded division (a bare float32 `/` may compile to an approximate one on the
        # GPU; float64's is exact): the same voxel as torch's (p - lo) / size on a boundary
        if F64:
            c = tl.floor((p - lo) / size)
        else:
            c = tl.floor(tl.math.div_rn(p - lo, size))
        valid = valid & (c >= 0) & (c <= upper)  # NaN fails both, inf the second
        c = tl.where(valid, c, 0.0).to(tl.int64)
        if axis == 0:
            key = c
        elif axis == 1:
            key = key * GY + c
        else:
            key = key * GZ + c
    for j in range(3, D):
        v = tl.load(row + j, mask=mask, other=0.0)
        valid = valid & ((v - v) == 0)  # finite: inf - inf and NaN - NaN are NaN
    key = tl.where(valid, key, SENTINEL)
    tl.store(keys + i, key.to(keys.dtype.element_ty), mask=mask)


@triton.jit
def _axis_grid(base, off, stride, lo, ext):
    """Grid index (relative to ``lo``) of ``base + off`` on an axis, and whether it is a site."""
    q = base + off
    # C-style `//` and `%` in triton; a multiple of `stride` divides exactly either way
    g = q // stride - lo
    valid = (q % stride == 0) & (g >= 0) & (g < ext)
    return g, valid


@triton.jit
def _dense_lookup_kernel(
    base, x_offs, y_offs, z_offs, column_table, col_start, col_zlo, col_zext, row_table, out,
    M, KY, KZ, SX, SY, SZ, LX, LY, LZ, EX, EY, EZ, BATCHES, MISSING,
    BLOCK: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    k = tl.program_id(1)
    K = tl.num_programs(1)
    mask = i < M
    row = base + i.to(tl.int64) * 4
    b = tl.load(row, mask=mask, other=0).to(tl.int64)
    ox = tl.load(x_offs + k // (KY * KZ))
    oy = tl.load(y_offs + (k // KZ) % KY)
    oz = tl.load(z_offs + k % KZ)
    gx, vx = _axis_grid(tl.load(row + 1, mask=mask, other=0).to(tl.int64), ox, SX, LX, EX)
    gy, vy = _axis_grid(tl.load(row + 2, mask=mask, other=0).to(tl.int64), oy, SY, LY, EY)
    gz, vz = _axis_grid(tl.load(row + 3, mask=mask, other=0).to(tl.int64), oz, SZ, LZ, EZ)
    valid = mask & vx & vy & vz & (b >= 0) & (b < BATCHES)
    colkey = (b * EX + gx) * EY + gy
    col = tl.load(column_table + colkey, mask=valid, other=0).to(tl.int64)
    start = tl.load(col_start + col, mask=valid, other=0).to(tl.int64)
    dz = gz - tl.load(col_zlo + col, mask=valid, other=0)
    valid = valid & (dz >= 0) & (dz < tl.load(col_zext + col, mask=valid, other=0))
    found = tl.load(row_table + start + dz, mask=valid, other=MISSING)
    tl.store(out + i.to(tl.int64) * K + k, tl.where(valid, found, MISSING), mask=mask)
