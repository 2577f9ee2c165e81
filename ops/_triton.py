"""Triton kernels for the CUDA paths of the ops.

- :func:`csr_spmm`: ``out[r] = sum_p values[p] * dense[cols[p]]`` over the entries ``p`` of CSR
  row ``r``; one program per (row, block of channels), no atomics: each output row is written
  by one program, its entries summed in CSR order. BEV pooling is this product three ways: the
  materialized pool (cells x points, values 1), the fused pool (cells x pixels, the summed depth
  weights) and the fused pool's context gradient (the transposed matrix).
- :func:`sampled_dot`: ``out[p] = <a[rows[p]], b[cols[p]]>`` per entry (the fused pool's depth
  gradient, evaluated once per (cell, pixel) pair).
- :func:`sparse_conv`: ``out[j] = sum_k feats[nbr[j, k]] @ weight[k]``, an implicit GEMM: per
  tile of output rows and output channels, the neighbours of each offset are gathered straight
  into ``tl.dot`` (missing ones load zeros); no atomics, so it is deterministic.
- :func:`scatter_add_rows`: ``out[rows[i, k]] += weights[i, k] * src[i]`` (point -> voxel
  scatter-mean, the devoxelization's gradient) as a CSR product after one stable sort of the
  targets: each output row summed by one program in input order, so deterministic (``index_add_``
  on CUDA uses atomics).
- :func:`voxel_keys`: each point's linear voxel key ``(x * Y + y) * Z + z`` or a sentinel
  (out of range, not finite), in one pass over the points (the torch path takes a dozen); the
  division is IEEE-rounded, so a point on a voxel boundary lands where torch puts it.
- :func:`dense_lookup`: rows of a dense two-level coordinate index at every (query, offset), in
  one launch (the torch path runs a few dozen small ops per chunk of queries, which on a GPU
  is launch bound: the devoxelization's and sparse conv's kernel-map lookups).
- :func:`intersection_area`: the area shared by two convex quadrilaterals per pair (the BEV IoU
  of rotated boxes), without a vertex buffer: by Green's theorem the area is the sum, over the
  edges of both, of ``x dy - y dx`` along the piece of the edge inside the other polygon, and
  that piece is one parameter interval clipped by the other's four half-planes; an edge lying
  on an edge of the other polygon counts once (the first polygon's, when both run the same
  way; neither, when they run opposite ways, as for boxes that only touch).

The kernels run on CUDA tensors where triton is importable. With ``TRITON_INTERPRET=1`` set
before the kernels are first used, triton's interpreter runs them on CPU tensors: that is how CI,
which has no GPU, tests them against the plain references (``tests/ops``); ``tools/gpu_check.sh``
runs the same tests compiled on a GPU. Matrix products use ``input_precision="ieee"`` (no TF32),
so float32 results match the references' float32 arithmetic up to summation order.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from types import ModuleType

import torch

__all__ = [
    "available",
    "csr_spmm",
    "dense_lookup",
    "importable",
    "intersection_area",
    "sampled_dot",
    "scatter_add_rows",
    "sparse_conv",
    "voxel_keys",
]

CONV_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def importable() -> bool:
    """Whether triton is installed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _kernels() -> ModuleType:
    from . import _triton_kernels

    return _triton_kernels


def interpreting() -> bool:
    """Whether triton runs kernels in its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(tensor: torch.Tensor) -> bool:
    """Whether the kernels can run on ``tensor``'s device: CUDA with triton importable, or any
    device under the interpreter."""
    if not importable():
        return False
    return tensor.device.type == "cuda" or interpreting()


def _acc_dtype(dtype: torch.dtype):
    tl = _kernels().tl
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block(n: int, lo: int = 16, hi: int = 128) -> int:
    """A power of two covering ``n`` within ``[lo, hi]``."""
    p = 1
    while p < n:
        p *= 2
    return max(lo, min(hi, p))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def csr_spmm(
    offsets: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor | None,
    dense: torch.Tensor,
) -> torch.Tensor:
    """``[R, C]``: row ``r`` sums ``values[p] * dense[cols[p]]`` (values 1 when None) over
    ``p in offsets[r]:offsets[r + 1]``.

    Args:
        offsets: ``[R + 1]`` int CSR offsets; cols: ``[nnz]`` int; values: ``[nnz]`` or None;
        dense: ``[M, C]`` float, contiguous.
    """
    num_rows, c = offsets.shape[0] - 1, dense.shape[1]
    out = dense.new_empty(num_rows, c)
    if num_rows == 0 or c == 0:
        return out.zero_()
    block_c = _block(c)
    grid = (num_rows, _cdiv(c, block_c))
    _kernels()._csr_spmm_kernel[grid](
        offsets, cols, dense if values is None else values, dense.contiguous(), out, c,
        HAS_VALUES=values is not None, ACC=_acc_dtype(dense.dtype), BLOCK_C=block_c,
    )  # fmt: skip
    return out


def sampled_dot(
    rows: torch.Tensor, cols: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """``[P]``: ``<a[rows[p]], b[cols[p]]>`` for each entry ``p`` (``a [R, C]``, ``b [M, C]``)."""
    num = rows.shape[0]
    out = a.new_empty(num)
    if num == 0:
        return out
    c = a.shape[1]
    block_p = 64
    _kernels()._sampled_dot_kernel[(_cdiv(num, block_p),)](
        rows, cols, a.contiguous(), b.contiguous(), out, num, c,
        ACC=_acc_dtype(a.dtype), BLOCK_P=block_p, BLOCK_C=_block(c, hi=64),
    )  # fmt: skip
    return out


def sparse_conv(feats: torch.Tensor, weight: torch.Tensor, nbr: torch.Tensor) -> torch.Tensor:
    """``[N_out, C_out]``: ``out[j] = sum_k feats[nbr[j, k]] @ weight[k]``, ``nbr[j, k] >=
    N_in`` marking a missing neighbour (float32 / float16 / bfloat16; accumulates in float32).

    Args:
        feats: ``[N_in, C_in]``; weight: ``[K, C_in, C_out]``; nbr: ``[N_out, K]`` int.
    """
    num_out, k = nbr.shape
    c_in, c_out = weight.shape[1], weight.shape[2]
    out = feats.new_empty(num_out, c_out)
    if num_out == 0 or c_out == 0:
        return out.zero_()
    block_m, block_n, block_k = 64, _block(c_out, hi=64), _block(c_in, hi=32)
    grid = (_cdiv(num_out, block_m), _cdiv(c_out, block_n))
    _kernels()._sparse_conv_kernel[grid](
        feats.contiguous(), weight.contiguous(), nbr.contiguous(), out,
        num_out, feats.shape[0], c_in, c_out, k,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )  # fmt: skip
    return out


def scatter_add_rows(
    out: torch.Tensor, rows: torch.Tensor, src: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    """``out[rows[i, k]] += weights[i, k] * src[i]`` (weights 1 when None), in place, through
    :func:`csr_spmm` over the (row, i) pairs sorted stably by row.

    Entries of weight 0 are dropped first (they add nothing to finite sums). Devoxelization
    sends every missing neighbour to one padding row with weight 0: over half of its ``8N``
    entries on a LiDAR scene (1.15M of 2.1M in the point<->voxel benchmark), which as one CSR
    row would be summed by a single program, serially.

    Args:
        out: ``[M, C]``; rows: ``[N, K]`` int, each in ``[0, M)``; src: ``[N, C]``;
        weights: ``[N, K]`` or None.
    """
    num_rows = out.shape[0]
    flat = rows.reshape(-1)
    entries = None  # kept positions in `flat` (all when None)
    if weights is not None:
        entries = torch.nonzero(weights.reshape(-1)).squeeze(1)
        flat = flat.index_select(0, entries)
    if flat.numel() == 0 or out.shape[1] == 0:
        return out
    order = torch.sort(flat, stable=True).indices
    picked = order if entries is None else entries.index_select(0, order)
    sources = torch.div(picked, rows.shape[1], rounding_mode="floor")
    counts = torch.bincount(flat, minlength=num_rows)
    offsets = torch.zeros(num_rows + 1, dtype=torch.int64, device=out.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    values = None if weights is None else weights.reshape(-1).index_select(0, picked)
    out += csr_spmm(offsets, sources, values, src.contiguous())
    return out


def dense_lookup(
    base: torch.Tensor,
    offsets: list[torch.Tensor],
    geometry: tuple[list[int], list[int], list[int]],
    batches: int,
    tables: tuple[torch.Tensor, ...],
    missing: int,
) -> torch.Tensor:
    """``[M, K]`` int64 rows of a two-level dense coordinate index (the "dense" layout of
    :class:`.sparse.kernel_map.CoordIndex`) at ``base + (dx, dy, dz)`` for the product of the
    per-axis offsets (x slowest), ``missing`` where the site is not in the set: one kernel
    launch instead of a few dozen torch ops per chunk of queries.

    Args:
        base: ``[M, 4]`` int ``(batch, x, y, z)``, stride-1 units; offsets: the ``[kx]``,
            ``[ky]``, ``[kz]`` int64 offsets; geometry: the index's ``stride``, ``lo``, ``ext``;
        tables: ``column_table``, ``col_start``, ``col_zlo``, ``col_zext``, ``row_table``.
    """
    m = base.shape[0]
    kx, ky, kz = (o.numel() for o in offsets)
    out = torch.empty((m, kx * ky * kz), dtype=torch.int64, device=base.device)
    if out.numel() == 0:
        return out
    (sx, sy, sz), (lx, ly, lz), (ex, ey, ez) = geometry
    block = 256
    _kernels()._dense_lookup_kernel[(_cdiv(m, block), kx * ky * kz)](
        base.contiguous(), *(o.contiguous() for o in offsets), *tables, out,
        m, ky, kz, sx, sy, sz, lx, ly, lz, ex, ey, ez, batches, missing,
        BLOCK=block,
    )  # fmt: skip
    return out


def intersection_area(poly: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
    """``[P]`` areas of ``poly[p] ∩ clip[p]`` for ``[P, 4, 2]`` counter-clockwise convex
    quadrilaterals (float32 / float64; float16 and bfloat16 are summed in float32)."""
    num = poly.shape[0]
    out = poly.new_empty(num)
    if num == 0:
        return out
    # an edge counts as lying on the other's edge line within this relative distance
    eps = 1e-12 if poly.dtype == torch.float64 else 1e-5
    block = 128
    _kernels()._intersection_area_kernel[(_cdiv(num, block),)](
        poly.contiguous(), clip.contiguous(), out, num,
        EPS=eps, ACC=_acc_dtype(poly.dtype), BLOCK=block,
    )  # fmt: skip
    return out


def voxel_keys(
    points: torch.Tensor, params: torch.Tensor, grid: tuple[int, int, int], dtype: torch.dtype
) -> torch.Tensor:
    """``[N]`` keys of ``dtype`` (int32 / int64) of ``points [N, D]``: ``(x * Y + y) * Z + z``
    for ``floor((p - lo) / size)`` within ``0 .. grid - 1`` with every column finite, else
    ``X * Y * Z``.

    Args:
        params: ``[9]`` in the points' dtype: ``lo`` (3), ``size`` (3), ``grid - 1`` (3).
    """
    num = points.shape[0]
    keys = torch.empty(num, dtype=dtype, device=points.device)
    if num == 0:
        return keys
    gx, gy, gz = grid
    block = 256
    _kernels()._voxel_keys_kernel[(_cdiv(num, block),)](
        points.contiguous(), params, keys, num, points.shape[1], gy, gz, gx * gy * gz,
        F64=points.dtype == torch.float64, BLOCK=block,
    )  # fmt: skip
    return keys
