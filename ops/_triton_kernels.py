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
