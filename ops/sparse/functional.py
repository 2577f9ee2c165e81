"""Sparse 3-D convolution: gather - GEMM through neighbour tables, as a registered custom op.

The compute is "output stationary": for a chunk of output rows, gather the ``K`` neighbour
feature rows of each (missing neighbours read an appended zero row) into ``[rows, K * C_in]``
and multiply by the weight viewed as ``[K * C_in, C_out]``: one large GEMM per chunk, no
scatter, no atomics. The backward is the same operation on the transposed table
(``grad_in = gather(grad_out, nbr_t) @ W^T``) plus ``grad_W = im2col^T @ grad_out``. Every
reduction has a fixed order for fixed shapes, so results are bitwise reproducible run to run.

Where few neighbours are active (LiDAR layers fill 9-64% of the table) other variants do
far less work. On CPU with numba and scipy, ``"tiles"`` (:func:`._numba.conv_tiles`, the
default there): per tile of 256 output rows and per offset, the active inputs are gathered
into a dense block and multiplied with one BLAS GEMM, the products added into the tile's
accumulator: only active pairs are multiplied, at BLAS speed, and everything stays in cache.
Without scipy, ``"rows"`` (:func:`._numba.conv_rows`: output stationary over the active
neighbours only, one output row per iteration of a parallel loop, numba's own arithmetic);
without numba a per-offset gather - GEMM - ``index_add_``. On CUDA, the triton implicit GEMM
of :mod:`.._triton` where triton is importable. ``_select_variant`` is the one place that
chooses (by ``impl``, device, availability and estimated cost): ``impl=`` (the vocabulary of
:mod:`.._impl`) picks the backend, "torch" (gather or scatter), "numba" (tiles or rows),
"triton" or "reference" (:func:`.reference.conv3d_reference`), and the variant within a backend
goes by cost. Every CPU variant and the triton one are deterministic; on CUDA without triton,
``index_add_`` uses atomics, so ``deterministic=True`` forces the gather variant there.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch

from .. import _triton
from .._autocast import float32_under_autocast
from .._impl import Impl, ImplTrace, check_impl, record, unavailable
from .kernel_map import Triple, as_triple, numba_kernels
from .reference import conv3d_reference
from .tensor import SparseTensor

# Elements of one im2col chunk: 1M floats (4 MB) keeps the chunk cache resident on a CPU. On a
# GPU, where each chunk costs a gather and a GEMM launch, 32M (128 MB): the 6-layer benchmark
# stack's weight gradients took ~520 launches of each with 1M-element chunks (profile on an
# H200, benchmarks/HISTORY.md).
_CHUNK_ELEMS = 1 << 20
_CHUNK_ELEMS_GPU = 1 << 25


def _chunk_rows(device: torch.device, row_elems: int) -> int:
    """Rows of ``row_elems`` elements in one im2col chunk on ``device``."""
    elems = _CHUNK_ELEMS if device.type == "cpu" else _CHUNK_ELEMS_GPU
    return max(1, elems // max(1, row_elems))


def _padded(x: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` -> ``[N + 1, C]`` with a zero last row (the target of missing neighbours)."""
    return torch.cat([x, x.new_zeros(1, x.shape[1])])


def _gather_gemm(feats: torch.Tensor, weight_2d: torch.Tensor, nbr: torch.Tensor) -> torch.Tensor:
    """``out[j] = concat_k feats[nbr[j, k]] @ weight_2d``.

    Args:
        feats: ``[N_in, C_in]`` float; weight_2d: ``[K * C_in, C_out]``;
        nbr: ``[N_out, K]`` int64 with ``N_in`` for missing.

    Returns:
        ``[N_out, C_out]``.
    """
    num_out, k = nbr.shape
    c_in = feats.shape[1]
    out = feats.new_empty(num_out, weight_2d.shape[1])
    if num_out == 0:
        return out
    src = _padded(feats)
    rows = _chunk_rows(feats.device, k * c_in)
    for start in range(0, num_out, rows):
        end = min(start + rows, num_out)
        cols = src.index_select(0, nbr[start:end].reshape(-1)).view(end - start, k * c_in)
        torch.mm(cols, weight_2d, out=out[start:end])
    return out


def _im2col_t_gemm(feats: torch.Tensor, nbr: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """``sum_j im2col[j]^T grad_out[j]`` -> ``[K * C_in, C_out]`` (the weight gradient)."""
    num_out, k = nbr.shape
    c_in = feats.shape[1]
    grad_w = feats.new_zeros(k * c_in, grad_out.shape[1])
    if num_out == 0:
        return grad_w
    src = _padded(feats)
    rows = _chunk_rows(feats.device, k * c_in)
    for start in range(0, num_out, rows):
        end = min(start + rows, num_out)
        cols = src.index_select(0, nbr[start:end].reshape(-1)).view(end - start, k * c_in)
        grad_w.addmm_(cols.t(), grad_out[start:end])
    return grad_w


def _pairs(nbr: torch.Tensor, num_in: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per offset ``(in_idx, out_idx)`` int64 of the active entries of ``nbr [N_out, K]``."""
    num_out, k = nbr.shape
    by_offset = nbr.t().contiguous().view(-1)  # [K * N_out], entry k * N_out + j
    active = by_offset < num_in
    flat = torch.nonzero(active).squeeze(1)  # sorted: by offset, then output
    bounds = torch.searchsorted(flat, torch.arange(k + 1, device=nbr.device) * num_out)
    counts = bounds.diff().tolist()
    in_idx = by_offset.index_select(0, flat)
    return [
        (i, f - o * num_out)
        for o, (i, f) in enumerate(zip(in_idx.split(counts), flat.split(counts)))
    ]


def _scatter_conv(
    feats: torch.Tensor, weight: torch.Tensor, nbr: torch.Tensor, num_out_channels: int
) -> torch.Tensor:
    """Per offset gather - GEMM - ``index_add_``: ``out[j] += feats[i] @ weight[k]``.

    Work is proportional to the active pairs only. ``index_add_`` is sequential on CPU
    (deterministic); on CUDA it uses atomics (order not fixed).
    """
    out = feats.new_zeros(nbr.shape[0], num_out_channels)
    for k, (in_idx, out_idx) in enumerate(_pairs(nbr, feats.shape[0])):
        if in_idx.numel():
            out.index_add_(0, out_idx, feats.index_select(0, in_idx) @ weight[k])
    return out


def _scatter_grad_weight(
    feats: torch.Tensor, nbr: torch.Tensor, grad_out: torch.Tensor
) -> torch.Tensor:
    """``grad_W[k] = feats[in_k]^T @ grad_out[out_k]`` -> ``[K, C_in, C_out]``."""
    k = nbr.shape[1]
    grad_w = feats.new_zeros(k, feats.shape[1], grad_out.shape[1])
    for o, (in_idx, out_idx) in enumerate(_pairs(nbr, feats.shape[0])):
        if in_idx.numel():
            torch.mm(
                feats.index_select(0, in_idx).t(), grad_out.index_select(0, out_idx), out=grad_w[o]
            )
    return grad_w


def _numba_conv(
    feats: torch.Tensor, weight: torch.Tensor, nbr: torch.Tensor, variant: str
) -> torch.Tensor:
    """``out[j] = sum_k feats[nbr[j, k]] @ weight[k]`` (CPU) by :func:`._numba.conv_rows`
    (``variant`` "rows") or :func:`._numba.conv_tiles` ("tiles")."""
    kernels = numba_kernels(feats.device)
    feats = feats.detach().contiguous()
    out = torch.from_numpy(kernels.filled((nbr.shape[0], weight.shape[2]), feats.numpy().dtype, 0))
    if nbr.shape[0]:
        kernel = kernels.conv_tiles if variant == "tiles" else kernels.conv_rows
        with _one_blas_thread() if variant == "tiles" else contextlib.nullcontext():
            kernel(
                feats.numpy(),
                weight.detach().contiguous().numpy(),
                nbr.numpy(),
                feats.shape[0],
                out.numpy(),
            )
    return out


def _numba_grad_weight(
    feats: torch.Tensor, nbr: torch.Tensor, grad_out: torch.Tensor, variant: str
) -> torch.Tensor:
    """``grad_W[k] = sum_j feats[nbr[j, k]]^T grad_out[j]`` -> ``[K, C_in, C_out]`` (CPU), as
    per-block partial sums (:func:`._numba.grad_weight_rows` or, for "tiles",
    :func:`._numba.grad_weight_tiles`) added in block order."""
    kernels = numba_kernels(feats.device)
    num_out, k = nbr.shape
    blocks = max(1, -(-num_out // kernels.GRAD_BLOCK_ROWS))
    partial = feats.new_zeros(blocks, k, feats.shape[1], grad_out.shape[1])
    kernel = kernels.grad_weight_tiles if variant == "tiles" else kernels.grad_weight_rows
    with _one_blas_thread() if variant == "tiles" else contextlib.nullcontext():
        kernel(
            feats.detach().contiguous().numpy(),
            nbr.numpy(),
            feats.shape[0],
            grad_out.detach().contiguous().numpy(),
            partial.numpy(),
        )
    return partial.sum(0) if blocks > 1 else partial[0]


@functools.cache
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries (scanned once)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_blas_thread():
    """A context keeping BLAS single-threaded: the "tiles" kernels call it from every thread of
    numba's parallel loop, and a BLAS that spawned its own threads there would oversubscribe
    the cores."""
    return _blas_controller().limit(limits=1, user_api="blas")


IMPLS = ("auto", "torch", "numba", "triton", "reference")
"""The values ``impl=`` accepts (see the module docstring)."""
# The compute variants and the backend (``impl``) each belongs to.
VARIANTS = {
    "gather": "torch", "scatter": "torch", "rows": "numba", "tiles": "numba", "triton": "triton"
}  # fmt: skip
OP = "sparse_conv3d"


@functools.cache
def _tiles_importable() -> bool:
    """numba's ``np.dot`` needs scipy's BLAS; threadpoolctl keeps it single-threaded."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


def _select_variant(
    impl: str,
    device: torch.device,
    deterministic: bool,
    fill: float | Callable[[], float],
    c_in: int,
    c_out: int,
    dtype: torch.dtype = torch.float32,
) -> str:
    """The compute variant for ``impl`` ("auto", "torch", "numba", "triton", or a variant of
    :data:`VARIANTS` itself, which :func:`_conv3d` takes for tests): "triton" (implicit GEMM,
    :func:`.._triton.sparse_conv`: CUDA), "tiles" or "rows" (numba, CPU), "gather" (im2col
    GEMM) or "scatter" (per-offset ``index_add_``). An explicit backend or variant that cannot
    run raises :class:`.._impl.ImplUnavailable`.

    ``fill`` is the fraction of active entries of the neighbour table (or a function giving it,
    called only where the choice needs it). On CPU with numba and
    scipy, "tiles" (per tile of output rows and offset, a BLAS GEMM over the active pairs
    only, everything cache resident) was the fastest on every layer of the SECOND-like
    benchmark stack, 5 to 64 channels, fill 9% to 64% (benchmarks/HISTORY.md). Without scipy, the
    choice between "rows" and im2col is by estimated cost per table entry (ns, fitted on that
    stack): im2col pays a row gather for every entry and multiplies zeros at BLAS speed; "rows"
    pays only for active pairs but multiplies at numba's (slower) speed. Without numba the
    per-offset variant extracts the pairs (every entry) and pays a latency-bound gather and
    ``index_add_`` per active pair. Every CPU variant is deterministic. On CUDA, "auto" takes
    "triton" where triton is importable (float32/16, bfloat16; deterministic: no atomics), else
    the torch variants, ``deterministic`` forcing "gather" (``index_add_`` uses atomics there).
    """
    triton_ok = (
        _triton.importable()
        and (device.type == "cuda" or _triton.interpreting())
        and dtype in _triton.CONV_DTYPES
    )
    rows_ok = dtype in (torch.float32, torch.float64) and numba_kernels(device) is not None
    tiles_ok = rows_ok and _tiles_importable()
    needs = {
        "triton": (triton_ok, "it needs triton, CUDA (or TRITON_INTERPRET=1) and float32/16 or "
                   f"bfloat16 features, got {dtype} on {device}"),
        "numba": (rows_ok, f"it needs numba and float32/float64 CPU features, got {dtype} on "
                  f"{device}"),
        "rows": (rows_ok, "it needs numba and float32/float64 CPU features"),
        "tiles": (tiles_ok, "it needs numba, scipy, threadpoolctl and float32/float64 CPU "
                  "features"),
        "scatter": (not (deterministic and device.type == "cuda"),
                    "index_add_ uses atomics on CUDA, and deterministic=True was asked"),
    }  # fmt: skip
    ok, why = needs.get(impl, (True, ""))
    if not ok:
        raise unavailable(OP, impl, why)
    if impl in VARIANTS:
        return impl
    if impl == "numba":
        return "tiles" if tiles_ok else "rows"
    if impl == "auto":
        if device.type == "cuda" and triton_ok:
            return "triton"  # the triton implicit GEMM has no atomics: deterministic as it is
        if tiles_ok:
            return "tiles"
    if device.type == "cuda" and deterministic:
        return "gather"
    if callable(fill):
        fill = fill()
    if impl == "auto" and rows_ok:
        # Two threads, per table entry: im2col 3 + 0.011 * MACs, rows 8 + 0.05 * MACs per pair.
        macs = c_in * c_out
        return "rows" if fill * (8.0 + 0.05 * macs) < 3.0 + 0.011 * macs else "gather"
    macs = 0.02 * c_in * c_out
    gather = 5.0 + 1.0 * c_in + macs
    scatter = 5.0 + fill * (40.0 + 1.2 * (c_in + c_out) + macs)
    return "gather" if gather <= scatter else "scatter"


def _fill(nbr: torch.Tensor, num_in: int) -> float:
    """Fraction of active entries of ``nbr``."""
    # count_nonzero: a bool sum would first copy the mask to int64.
    return int(torch.count_nonzero(nbr < num_in)) / max(1, nbr.numel())


@torch.library.custom_op("perception::sparse_conv", mutates_args=())
def sparse_conv_op(
    feats: torch.Tensor,
    weight: torch.Tensor,
    nbr: torch.Tensor,
    nbr_t: torch.Tensor,
    variant: str,
) -> torch.Tensor:
    """Sparse convolution through a neighbour table.

    Args:
        feats: ``[N_in, C_in]`` float.
        weight: ``[K, C_in, C_out]`` float (same dtype as ``feats``).
        nbr: ``[N_out, K]`` int64, input row per (output, offset), ``N_in`` where missing.
        nbr_t: ``[N_in, K]`` int64, the transposed table (used by the backward).
        variant: the compute variant, one of :data:`VARIANTS` (:func:`_select_variant`).

    Returns:
        ``[N_out, C_out]`` float.
    """
    k, c_in, c_out = weight.shape
    if variant in ("rows", "tiles"):
        return _numba_conv(feats, weight, nbr, variant)
    if variant == "triton":
        return _triton.sparse_conv(feats.detach(), weight.detach(), nbr)
    if variant == "scatter":
        return _scatter_conv(feats, weight, nbr, c_out)
    return _gather_gemm(feats, weight.reshape(k * c_in, c_out), nbr)


@sparse_conv_op.register_fake
def _(feats, weight, nbr, nbr_t, variant):
    return feats.new_empty(nbr.shape[0], weight.shape[2])


@torch.library.custom_op("perception::sparse_conv_backward", mutates_args=())
def sparse_conv_backward_op(
    grad_out: torch.Tensor,
    feats: torch.Tensor,
    weight: torch.Tensor,
    nbr: torch.Tensor,
    nbr_t: torch.Tensor,
    variant: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`sparse_conv_op`: ``(grad_feats [N_in, C_in], grad_weight [K, C_in,
    C_out])`` for ``grad_out [N_out, C_out]``, by the forward's ``variant``."""
    k, c_in, c_out = weight.shape
    grad_out = grad_out.contiguous()
    # grad_in[i] = sum_k grad_out[nbr_t[i, k]] @ W[k]^T
    w_t = weight.transpose(1, 2).reshape(k * c_out, c_in)
    if variant in ("rows", "tiles"):
        grad_feats = _numba_conv(grad_out, weight.transpose(1, 2), nbr_t, variant)
        grad_weight = _numba_grad_weight(feats, nbr, grad_out, variant)
    elif variant == "triton":
        grad_feats = _triton.sparse_conv(grad_out, weight.detach().transpose(1, 2), nbr_t)
        grad_weight = _im2col_t_gemm(feats, nbr, grad_out).view(k, c_in, c_out)
    elif variant == "scatter":
        grad_feats = _scatter_conv(grad_out, weight.transpose(1, 2), nbr_t, c_in)
        grad_weight = _scatter_grad_weight(feats, nbr, grad_out)
    else:
        grad_feats = _gather_gemm(grad_out, w_t, nbr_t)
        grad_weight = _im2col_t_gemm(feats, nbr, grad_out).view(k, c_in, c_out)
    return grad_feats, grad_weight


@sparse_conv_backward_op.register_fake
def _(grad_out, feats, weight, nbr, nbr_t, variant):
    return feats.new_empty(feats.shape), weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output):
    feats, weight, nbr, nbr_t, variant = inputs
    ctx.save_for_backward(feats, weight, nbr, nbr_t)
    ctx.variant = variant


def _backward(ctx, grad_out):
    feats, weight, nbr, nbr_t = ctx.saved_tensors
    grad_feats, grad_weight = sparse_conv_backward_op(
        grad_out, feats, weight, nbr, nbr_t, ctx.variant
    )
    return grad_feats, grad_weight, None, None, None


sparse_conv_op.register_autograd(_backward, setup_context=_setup_context)


def conv3d(
    x: SparseTensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    kernel_size: int | Triple = 3,
    stride: int | Triple = 1,
    dilation: int | Triple = 1,
    transposed: bool = False,
    deterministic: bool = False,
    impl: Impl = "auto",
    trace: ImplTrace | None = None,
) -> SparseTensor:
    """Sparse 3-D convolution (torchsparse semantics).

    Args:
        x: input with ``feats [N_in, C_in]``.
        weight: ``[K, C_in, C_out]``, ``K = kx * ky * kz``, offsets row-major over
            ``(kx, ky, kz)`` (see :mod:`.kernel_map`). A dense ``nn.Conv3d`` weight ``w [C_out,
            C_in, kx, ky, kz]`` corresponds to ``w.permute(2, 3, 4, 1, 0).reshape(K, C_in,
            C_out)``; for transposed convs a dense ``nn.ConvTranspose3d`` weight ``[C_in, C_out,
            kx, ky, kz]`` to ``w.permute(2, 3, 4, 0, 1).reshape(K, C_in, C_out)``.
        bias: ``[C_out]`` or None.
        kernel_size, stride, dilation: ints or 3-tuples.
        transposed: upsample onto the coordinates of the strided conv (same kernel, stride,
            dilation) that produced ``x``; with stride 1 the transposed submanifold conv.
        deterministic: bitwise reproducible results on every device.
        impl: one of :data:`IMPLS` (see the module docstring).
        trace: an :class:`~perception.ops._impl.ImplTrace` that records the backend taken.

    Returns:
        Output with ``feats [N_out, C_out]``: stride 1 keeps ``x``'s coordinates; stride ``s``
        gives every site (multiple of the new stride) whose window holds an active input.
    """
    check_impl(OP, impl, IMPLS)
    return _conv3d(
        x, weight, bias, kernel_size=kernel_size, stride=stride, dilation=dilation,
        transposed=transposed, deterministic=deterministic, impl=impl, trace=trace,
    )  # fmt: skip


def _conv3d(
    x: SparseTensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    kernel_size: int | Triple = 3,
    stride: int | Triple = 1,
    dilation: int | Triple = 1,
    transposed: bool = False,
    deterministic: bool = False,
    impl: str = "auto",
    trace: ImplTrace | None = None,
) -> SparseTensor:
    """:func:`conv3d`, whose ``impl`` may also name a compute variant of :data:`VARIANTS`
    (tests run each one)."""
    kernel_size = as_triple(kernel_size, "kernel_size")
    stride = as_triple(stride, "stride")
    dilation = as_triple(dilation, "dilation")
    k = kernel_size[0] * kernel_size[1] * kernel_size[2]
    if weight.dim() != 3 or weight.shape[0] != k:
        raise ValueError(f"weight must be [K={k}, C_in, C_out], got {tuple(weight.shape)}")
    if x.feats.shape[1] != weight.shape[1]:
        raise ValueError(
            f"input has {x.feats.shape[1]} channels, the layer expects {weight.shape[1]}"
        )
    if transposed and stride != (1, 1, 1):
        out_stride = tuple(a // b for a, b in zip(x.stride, stride))
        if any(a % b for a, b in zip(x.stride, stride)):
            raise ValueError(f"transposed conv: stride {stride} does not divide {x.stride}")
    else:
        out_stride = tuple(a * b for a, b in zip(x.stride, stride))
    # Only a backward reads the transposed table: without one, an empty stand-in, and the map
    # does not build it.
    needs_grad = torch.is_grad_enabled() and (x.feats.requires_grad or weight.requires_grad)
    kmap, out_id = x.cache.kernel_map(
        x.coord_id, kernel_size, stride, dilation, transposed, transpose_table=needs_grad
    )
    out_coords = x.cache.coords(out_id)
    if impl == "reference":
        record(trace, OP, "reference")
        feats, ref_coords = conv3d_reference(
            x.feats, x.coords, weight.to(x.feats.dtype), in_stride=x.stride,
            kernel_size=kernel_size, stride=stride, dilation=dilation, transposed=transposed,
            out_coords=out_coords,
        )  # fmt: skip
        if not torch.equal(ref_coords.cpu(), out_coords.to(torch.int32).cpu()):
            raise RuntimeError("the reference conv's output sites differ from the kernel map's")
    else:
        c_in, c_out = weight.shape[1], weight.shape[2]
        # the op computes in float32 under autocast (float32_under_autocast below)
        autocast = torch.is_autocast_enabled(x.feats.device.type)
        dtype = torch.float32 if autocast else x.feats.dtype
        variant = _select_variant(
            impl, x.feats.device, deterministic, lambda: _fill(kmap.nbr, len(x)), c_in, c_out,
            dtype,
        )  # fmt: skip
        record(trace, OP, VARIANTS[variant])
        nbr_t = kmap.nbr_t if needs_grad else kmap.nbr[:0]
        feats = sparse_conv_op(x.feats, weight.to(x.feats.dtype), kmap.nbr, nbr_t, variant)
    if bias is not None:
        feats = feats + bias
    return SparseTensor(feats, out_coords, out_stride, cache=x.cache, _coord_id=out_id)


float32_under_autocast(sparse_conv_op)
float32_under_autocast(sparse_conv_backward_op)
