"""BEV pooling (BEVFusion's interval reduction): sum frustum-point features into BEV cells.

Conventions:
    * ``coords [..., 4]`` int ``(batch, z, x, y)`` cell indices of each point in a grid
      ``(Z, X, Y)``; the output is ``[B, C, Z, X, Y]``, each cell the sum of its points'
      features. Points with a z/x/y index outside the grid are dropped; a batch index outside
      ``[0, batch_size)`` is an error.
    * The output's memory format is ``torch.channels_last_3d`` (cells-major, channels
      innermost): that is the layout the sparse product writes, and it saves a 40 MB transpose
      at BEVFusion's size. Its shape is ``[B, C, Z, X, Y]``; call ``.contiguous()`` if a
      consumer needs the default layout.

How (the fast path): the geometry alone gives a :class:`BEVPoolPlan` -- kept points sorted
by cell (stable), CSR interval offsets over *all* cells and, for camera frustums, the same
by pixel. Pooling is then a CSR sparse matrix product ``cells x points @ feats``, parallel
over cells, with no atomics and no sort; on CPU with numba, :func:`bev_pool` instead walks the
points in storage order, each thread adding the rows of its own range of cells
(:mod:`._bev_pool_numba`): the features are read once, sequentially, not gathered. The fused :func:`bev_pool_depth` never builds the
``[Ncam*D*H*W, C]`` frustum tensor: its matrix is ``cells x pixels`` whose entries are the
gathered depth probabilities, times the context ``[pixels, C]``; its backward is the
transposed product (context) and a sampled dense-dense product (depth).

Plans depend only on geometry (calibration and augmentation): build them once and reuse them
with a :class:`BEVPoolPlanCache` owned by the module that pools (never global).

The kernels are ``torch.library`` custom ops in the ``perception`` namespace with fake
(shape-only) implementations and registered autograd, so ``torch.compile``/``torch.export``
see one op each. They are written in device-generic PyTorch (CSR matmul, ``sampled_addmm``),
so they run on CUDA tensors as is; a dedicated kernel can be slotted in per device with
``<op>.register_kernel("cuda", fn)`` -- the only dispatch point. Plain references live in
:mod:`perception.ops.bev_pool_reference`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

import torch

from . import _triton
from ._autocast import float32_under_autocast
from ._geometry import as_grid, check_float_tensor, check_int_tensor
from ._impl import Impl, ImplTrace, check_impl, record, unavailable

__all__ = [
    "BEVPoolPlan",
    "BEVPoolPlanCache",
    "bev_pool",
    "bev_pool_depth",
    "build_bev_pool_plan",
    "PLAN_IMPLS",
]


@dataclass(frozen=True)
class BEVPoolPlan:
    """Geometry-derived indices for pooling, reusable while calibration/augmentation hold.

    ``K`` kept points of ``N``; ``cells = B * Z * X * Y`` (row-major over ``(b, z, x, y)``).
    Index tensors are int32 (CSR products are fastest with 32-bit indices) unless a size
    needs 64 bits.

    Attributes:
        batch_size, grid: ``B`` and ``(Z, X, Y)``.
        num_points: ``N``, the number of points the plan was built for.
        frustum_shape: ``(Ncam, D, H, W)`` when built from ``[Ncam, D, H, W, 4]`` coords
            (enables :func:`bev_pool_depth`), else None.
        cell_offsets: ``[cells + 1]`` CSR row offsets: the kept points of cell ``k`` are
            ``point_index[cell_offsets[k]:cell_offsets[k + 1]]``.
        point_index: ``[K]`` the kept points' flat indices sorted by cell (stable).
        point_rows: ``[N + 1]`` CSR offsets of the transposed matrix (points x cells): row
            ``i`` holds one entry if point ``i`` is kept, none if dropped.
        point_cell: ``[K]`` the cell of each kept point, in point order.
        For frustums, the fused matrix ``cells x pixels`` in canonical CSR form (columns
        sorted and unique in each row, as cuSPARSE requires): a (cell, pixel) *pair* merges
        the depth bins of one pixel that fall in one cell.
        point_pair: ``[K]`` the pair of each ``point_index`` entry.
        pair_offsets: ``[cells + 1]`` CSR offsets of the pairs, cell-major.
        pair_pixel: ``[P]`` the pixel ``(n * H + h) * W + w`` of each pair.
        pair_by_pixel: ``[P]`` the pairs in pixel-major order (for the transposed matrix).
        pixel_pair_offsets: ``[Ncam * H * W + 1]`` CSR offsets of the pixel-major pairs.
        pixel_pair_cell: ``[P]`` the cell of each ``pair_by_pixel`` entry.
    """

    batch_size: int
    grid: tuple[int, int, int]
    num_points: int
    frustum_shape: tuple[int, int, int, int] | None
    cell_offsets: torch.Tensor
    point_index: torch.Tensor
    point_rows: torch.Tensor
    point_cell: torch.Tensor
    point_pair: torch.Tensor | None = None
    pair_offsets: torch.Tensor | None = None
    pair_pixel: torch.Tensor | None = None
    pair_by_pixel: torch.Tensor | None = None
    pixel_pair_offsets: torch.Tensor | None = None
    pixel_pair_cell: torch.Tensor | None = None

    def fused_indices(self) -> list[torch.Tensor]:
        """The index tensors the fused op takes, in its argument order."""
        if self.point_pair is None:
            raise ValueError("plan must be built from frustum coords [Ncam, D, H, W, 4]")
        return [
            self.point_index, self.point_pair, self.pair_offsets, self.pair_pixel,
            self.pair_by_pixel, self.pixel_pair_offsets, self.pixel_pair_cell,
        ]  # fmt: skip

    @property
    def num_cells(self) -> int:
        return self.batch_size * math.prod(self.grid)

    @property
    def num_kept(self) -> int:
        return self.point_index.shape[0]

    @property
    def device(self) -> torch.device:
        return self.point_index.device


def _index_dtype(*sizes: int) -> torch.dtype:
    return torch.int32 if max(sizes, default=0) < 2**31 - 1 else torch.int64


def _offsets(counts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[R]`` counts -> ``[R + 1]`` CSR offsets."""
    offsets = torch.zeros(counts.shape[0] + 1, dtype=dtype, device=counts.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return offsets


def _cell_of_points(
    coords: torch.Tensor, batch_size: int, grid: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``coords [N, 4]`` -> ``cell [N]`` int64 (``cells`` where dropped), ``kept [N]`` bool."""
    z_, x_, y_ = grid
    c = coords.to(torch.int64)
    batch = c[:, 0]
    if batch.numel() and (int(batch.min()) < 0 or int(batch.max()) >= batch_size):
        raise ValueError(
            f"coords batch index must lie in [0, batch_size={batch_size}), got "
            f"[{int(batch.min())}, {int(batch.max())}]"
        )
    upper = torch.tensor(grid, device=c.device)
    kept = ((c[:, 1:] >= 0) & (c[:, 1:] < upper)).all(dim=1)
    cell = ((batch * z_ + c[:, 1]) * x_ + c[:, 2]) * y_ + c[:, 3]
    num_cells = batch_size * z_ * x_ * y_
    return cell.masked_fill_(~kept, num_cells), kept


def check_bev_coords(
    coords: torch.Tensor, batch_size: int, grid: Sequence[int]
) -> tuple[int, tuple[int, int, int]]:
    """Validates ``coords [..., 4]`` int, ``batch_size`` and ``grid``; returns them normalized."""
    check_int_tensor(coords, "coords")
    if coords.dim() < 2 or coords.shape[-1] != 4:
        raise ValueError(f"coords must be [..., 4] (batch, z, x, y), got {tuple(coords.shape)}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size), as_grid(grid)


PLAN_IMPLS = ("auto", "torch", "numba")
"""The values ``impl=`` of :func:`build_bev_pool_plan` accepts."""


def build_bev_pool_plan(
    coords: torch.Tensor,
    batch_size: int,
    grid: Sequence[int],
    *,
    impl: Impl = "auto",
    trace: ImplTrace | None = None,
) -> BEVPoolPlan:
    """Sorts the points by cell once; the result serves :func:`bev_pool` and, for frustums,
    :func:`bev_pool_depth`.

    Args:
        coords: ``[N, 4]`` or ``[Ncam, D, H, W, 4]`` int ``(batch, z, x, y)`` cell indices
            (for frustums: of every camera, depth bin and feature pixel; ``Ncam`` counts
            batch x cameras). Points outside the grid are dropped.
        batch_size: ``B``; every batch index must lie in ``[0, B)``.
        grid: ``(Z, X, Y)`` cells.
        impl: ``"auto"`` (numba's counting sorts for CPU coords where numba is importable,
            else torch), ``"torch"`` (torch's sorts, any device) or ``"numba"``
            (:mod:`._bev_plan_numba`); both build the same plan, element for element.
        trace: records the path taken.

    Returns:
        A :class:`BEVPoolPlan` on ``coords``' device.
    """
    batch_size, grid = check_bev_coords(coords, batch_size, grid)
    check_impl("build_bev_pool_plan", impl, PLAN_IMPLS)
    numba_ok = coords.device.type == "cpu" and _plan_kernels() is not None
    if impl == "numba" and not numba_ok:
        raise unavailable(
            "build_bev_pool_plan", impl, f"it needs CPU coords and numba, got {coords.device}"
        )
    if impl == "auto":  # (under torch.compile: torch's sorts, which it can trace)
        impl = "numba" if numba_ok and not torch.compiler.is_compiling() else "torch"
    record(trace, "build_bev_pool_plan", impl)
    build = _plan_indices_numba if impl == "numba" else _plan_indices_torch
    return BEVPoolPlan(
        batch_size=batch_size,
        grid=grid,
        num_points=coords.reshape(-1, 4).shape[0],
        frustum_shape=tuple(coords.shape[:-1]) if coords.dim() == 5 else None,  # type: ignore[arg-type]
        **build(coords, batch_size, grid),
    )


def _plan_indices_torch(
    coords: torch.Tensor, batch_size: int, grid: tuple[int, int, int]
) -> dict[str, torch.Tensor]:
    """The plan's index tensors (`BEVPoolPlan`'s fields by name) by torch's sorts."""
    frustum_shape = tuple(coords.shape[:-1]) if coords.dim() == 5 else None
    flat = coords.reshape(-1, 4)
    n = flat.shape[0]
    num_cells = batch_size * math.prod(grid)
    cell, kept = _cell_of_points(flat, batch_size, grid)
    itype = _index_dtype(n + 1, num_cells + 1)
    # Stable sort by cell; dropped points carry the key `num_cells` and sort last.
    key = cell.to(itype)
    sorted_cell, order = torch.sort(key, stable=True)
    num_kept = int(kept.sum())
    point_index = order[:num_kept].to(itype)
    cell_counts = torch.bincount(sorted_cell[:num_kept].to(torch.int64), minlength=num_cells)
    cell_offsets = _offsets(cell_counts, itype)
    point_rows = _offsets(kept.to(itype), itype)
    point_cell = cell[kept].to(itype)
    extra: dict[str, torch.Tensor] = {}
    if frustum_shape is not None:
        ncam, d, h, w = frustum_shape
        num_pixels = ncam * h * w
        # pixel of each flat frustum index (n, d, h, w) -> (n * H + h) * W + w
        pixel = torch.arange(num_pixels, device=coords.device).view(ncam, 1, h, w)
        pixel = pixel.expand(ncam, d, h, w).reshape(-1)
        kept_cell = sorted_cell[:num_kept].to(torch.int64)  # [K] cell of each point_index
        pair_key = kept_cell * num_pixels + pixel.index_select(0, point_index)
        pair_key, point_pair = torch.unique(pair_key, sorted=True, return_inverse=True)
        pair_cell, pair_pixel = pair_key // num_pixels, pair_key % num_pixels  # [P]
        pair_by_pixel = torch.argsort(pair_pixel * num_cells + pair_cell)
        extra = {
            "point_pair": point_pair.to(itype),
            "pair_offsets": _offsets(torch.bincount(pair_cell, minlength=num_cells), itype),
            "pair_pixel": pair_pixel.to(itype),
            "pair_by_pixel": pair_by_pixel.to(itype),
            "pixel_pair_offsets": _offsets(torch.bincount(pair_pixel, minlength=num_pixels), itype),
            "pixel_pair_cell": pair_cell.index_select(0, pair_by_pixel).to(itype),
        }
    return dict(cell_offsets=cell_offsets, point_index=point_index, point_rows=point_rows,
                point_cell=point_cell, **extra)  # fmt: skip


def _plan_kernels() -> ModuleType | None:
    """:mod:`._bev_plan_numba`, or None where numba is not importable (imported on first use)."""
    try:
        from . import _bev_plan_numba
    except ImportError:
        return None
    return _bev_plan_numba


def _plan_indices_numba(
    coords: torch.Tensor, batch_size: int, grid: tuple[int, int, int]
) -> dict[str, torch.Tensor]:
    """The plan's index tensors by counting sorts (:mod:`._bev_plan_numba`)."""
    kernels = _plan_kernels()
    frustum_shape = tuple(coords.shape[:-1]) if coords.dim() == 5 else None
    flat = coords.reshape(-1, 4).contiguous()
    n = flat.shape[0]
    num_cells = batch_size * math.prod(grid)
    itype = _index_dtype(n + 1, num_cells + 1)
    cell = torch.empty(n, dtype=torch.int64)
    num_kept, lo, hi = kernels.cells_of(flat.numpy(), batch_size, *grid, cell.numpy())
    if n and (lo < 0 or hi >= batch_size):
        raise ValueError(
            f"coords batch index must lie in [0, batch_size={batch_size}), got [{lo}, {hi}]"
        )
    cell_offsets = torch.empty(num_cells + 1, dtype=itype)
    point_index = torch.empty(num_kept, dtype=itype)
    point_rows = torch.empty(n + 1, dtype=itype)
    point_cell = torch.empty(num_kept, dtype=itype)
    kernels.sort_by_cell(
        cell.numpy(), num_cells, cell_offsets.numpy(), point_index.numpy(),
        point_rows.numpy(), point_cell.numpy(),
    )  # fmt: skip
    extra: dict[str, torch.Tensor] = {}
    if frustum_shape is not None:
        ncam, d, h, w = frustum_shape
        names = ("point_pair", "pair_offsets", "pair_pixel", "pair_by_pixel",
                 "pixel_pair_offsets", "pixel_pair_cell")  # fmt: skip
        arrays = kernels.frustum_pairs(cell.numpy(), point_index.numpy(), num_cells, ncam, d, h, w)
        extra = {k: torch.from_numpy(a).to(itype) for k, a in zip(names, arrays)}
    return dict(cell_offsets=cell_offsets, point_index=point_index, point_rows=point_rows,
                point_cell=point_cell, **extra)  # fmt: skip


class BEVPoolPlanCache:
    """Keeps the last plan and returns it while the geometry it was built from is unchanged.

    The key is a set of geometry tensors (e.g. camera intrinsics, camera-to-ego, image and BEV
    augmentation matrices: whatever the frustum coordinates are computed from), compared by
    value (shape, dtype, device and every element), plus ``batch_size`` and ``grid``. Owned by
    the module that pools; one cache holds one plan.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._geometry: tuple[torch.Tensor, ...] = ()
        self._plan: BEVPoolPlan | None = None
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self._key, self._geometry, self._plan = None, (), None

    def _matches(self, geometry: tuple[torch.Tensor, ...], key: tuple) -> bool:
        if self._plan is None or key != self._key:
            return False
        return all(torch.equal(a, b) for a, b in zip(geometry, self._geometry))

    def get(
        self,
        geometry: Sequence[torch.Tensor],
        coords: torch.Tensor | Callable[[], torch.Tensor],
        batch_size: int,
        grid: Sequence[int],
    ) -> BEVPoolPlan:
        """The cached plan if ``geometry`` is unchanged, else a new one built from ``coords``.

        Args:
            geometry: the tensors the frustum coordinates depend on (any shapes).
            coords: ``[N, 4]`` / ``[Ncam, D, H, W, 4]`` int cell coordinates, or a function
                returning them (called only on a miss, so their computation is skipped too).
            batch_size, grid: as :func:`build_bev_pool_plan`.
        """
        geometry = tuple(g.detach() for g in geometry)
        key = (
            int(batch_size),
            tuple(int(v) for v in grid),
            tuple((tuple(g.shape), g.dtype, g.device) for g in geometry),
        )
        if self._matches(geometry, key):
            self.hits += 1
            return self._plan  # type: ignore[return-value]
        self.misses += 1
        built = coords() if callable(coords) else coords
        plan = build_bev_pool_plan(built, batch_size, grid)
        self._key, self._geometry, self._plan = key, tuple(g.clone() for g in geometry), plan
        return plan


# --------------------------------------------------------------------------------------------
# Kernels (custom ops). Sparse CSR tensors are built inside the ops from dense index tensors.


def _csr(
    offsets: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(offsets, cols, values, size=size, check_invariants=False)


def _bev_empty(
    like: torch.Tensor, batch_size: int, grid: Sequence[int], channels: int
) -> torch.Tensor:
    """A ``[B, C, Z, X, Y]`` channels-last-3d tensor of zeros (``[B, Z, X, Y, C]`` storage)."""
    z_, x_, y_ = grid
    return like.new_zeros(batch_size, z_, x_, y_, channels).permute(0, 4, 1, 2, 3)


def _cells_to_bev(cells: torch.Tensor, batch_size: int, grid: Sequence[int]) -> torch.Tensor:
    """``[cells, C]`` -> ``[B, C, Z, X, Y]`` view (channels-last-3d)."""
    z_, x_, y_ = grid
    return cells.view(batch_size, z_, x_, y_, cells.shape[1]).permute(0, 4, 1, 2, 3)


def _bev_to_cells(grad: torch.Tensor) -> torch.Tensor:
    """``[B, C, Z, X, Y]`` (any layout) -> ``[cells, C]`` contiguous."""
    c = grad.shape[1]
    return grad.permute(0, 2, 3, 4, 1).reshape(-1, c).contiguous()


@functools.cache
def _numba_kernels() -> ModuleType | None:
    """:mod:`._bev_pool_numba`, or None where numba is not importable (imported on first use)."""
    try:
        from . import _bev_pool_numba
    except ImportError:
        return None
    return _bev_pool_numba


@torch._dynamo.assume_constant_result
def _numba_importable() -> bool:
    """Whether the numba kernels load (a constant to ``torch.compile``, which would otherwise
    trace the cached import)."""
    return _numba_kernels() is not None


IMPLS = ("auto", "torch", "numba", "triton", "reference")
"""The values ``impl=`` of :func:`bev_pool` accepts; :func:`bev_pool_depth` takes all but
"reference" (its plan does not keep the coordinates the reference needs)."""


def _choose_pool_impl(op: str, feats: torch.Tensor, impl: str, allowed: tuple[str, ...]) -> str:
    """The path ``impl`` resolves to for ``feats``: ``"auto"`` takes numba for float32/float64
    CPU features where numba is importable, triton for CUDA features where it is importable,
    else torch (torch's CSR product, device-generic); an explicit ``impl`` that cannot run
    raises :class:`._impl.ImplUnavailable` (``"triton"`` runs on CPU tensors only under
    ``TRITON_INTERPRET=1``, for the tests)."""
    check_impl(op, impl, allowed)
    numba_ok = (
        feats.device.type == "cpu"
        and feats.dtype in (torch.float32, torch.float64)
        and _numba_importable()
    )
    if impl == "auto":
        if numba_ok:
            return "numba"
        return "triton" if feats.device.type == "cuda" and _triton.available(feats) else "torch"
    if impl == "numba" and not numba_ok:
        raise unavailable(
            op, impl, f"it needs float32/float64 CPU features and numba, got {feats.dtype} "
            f"on {feats.device}"
        )  # fmt: skip
    if impl == "triton" and not _triton.available(feats):
        raise unavailable(
            op, impl, f"it needs triton and CUDA features (or TRITON_INTERPRET=1), got "
            f"{feats.device}"
        )  # fmt: skip
    return impl


@torch.library.custom_op("perception::bev_pool_csr", mutates_args=())
def _bev_pool_csr(
    feats: torch.Tensor,
    cell_offsets: torch.Tensor,
    point_index: torch.Tensor,
    point_rows: torch.Tensor,
    point_cell: torch.Tensor,
    batch_size: int,
    grid: list[int],
    impl: str,
) -> torch.Tensor:
    """``feats [N, C]`` -> ``[B, C, Z, X, Y]``: CSR (cells x points, ones) @ feats (``impl``
    "torch": torch's sparse product; ``"triton"``: :func:`._triton.csr_spmm`), or the same sums by
    a point-order scatter partitioned by cell (``"numba"``, :mod:`._bev_pool_numba`)."""
    n, c = feats.shape
    num_cells = cell_offsets.shape[0] - 1
    if point_index.shape[0] == 0 or c == 0:
        return _bev_empty(feats, batch_size, grid, c)
    if impl == "numba":
        out = torch.from_numpy(
            _numba_kernels().pool(  # type: ignore[union-attr]
                feats.detach().contiguous().numpy(),
                cell_offsets.numpy(),
                point_rows.numpy(),
                point_cell.numpy(),
            )  # fmt: skip
        )
    elif impl == "triton":
        out = _triton.csr_spmm(cell_offsets, point_index, None, feats.detach().contiguous())
    else:
        ones = feats.new_ones(point_index.shape[0])
        out = _csr(cell_offsets, point_index, ones, (num_cells, n)) @ feats  # [cells, C]
    return _cells_to_bev(out, batch_size, grid)


@_bev_pool_csr.register_fake
def _(feats, cell_offsets, point_index, point_rows, point_cell, batch_size, grid, impl):
    return _bev_empty(feats, batch_size, grid, feats.shape[1])


@torch.library.custom_op("perception::bev_pool_csr_backward", mutates_args=())
def _bev_pool_csr_backward(
    grad_out: torch.Tensor, point_rows: torch.Tensor, point_cell: torch.Tensor
) -> torch.Tensor:
    """``grad_out [B, C, Z, X, Y]`` -> ``grad_feats [N, C]``: each kept point gathers its
    cell's gradient, dropped points get zeros (a CSR points x cells product)."""
    n = point_rows.shape[0] - 1
    grad_cells = _bev_to_cells(grad_out)  # [cells, C]
    if point_cell.shape[0] == 0 or grad_cells.shape[1] == 0:
        return grad_out.new_zeros(n, grad_cells.shape[1])
    ones = grad_cells.new_ones(point_cell.shape[0])
    return _csr(point_rows, point_cell, ones, (n, grad_cells.shape[0])) @ grad_cells


@_bev_pool_csr_backward.register_fake
def _(grad_out, point_rows, point_cell):
    return grad_out.new_empty(point_rows.shape[0] - 1, grad_out.shape[1])


def _bev_pool_setup(ctx, inputs, output) -> None:
    _, _, _, point_rows, point_cell, _, _, _ = inputs
    ctx.save_for_backward(point_rows, point_cell)


def _bev_pool_backward(ctx, grad_out):
    point_rows, point_cell = ctx.saved_tensors
    grad_feats = _bev_pool_csr_backward(grad_out, point_rows, point_cell)
    return grad_feats, None, None, None, None, None, None, None


_bev_pool_csr.register_autograd(_bev_pool_backward, setup_context=_bev_pool_setup)


def _pair_weights(
    depth: torch.Tensor, point_index: torch.Tensor, point_pair: torch.Tensor, num_pairs: int
) -> torch.Tensor:
    """``[P]`` fused-matrix entries: each (cell, pixel) pair's summed depth weights."""
    weights = depth.reshape(-1).index_select(0, point_index)  # [K]
    return weights.new_zeros(num_pairs).index_add_(0, point_pair, weights)


@torch.library.custom_op("perception::bev_pool_depth_csr", mutates_args=())
def _bev_pool_depth_csr(
    depth: torch.Tensor,
    context: torch.Tensor,
    point_index: torch.Tensor,
    point_pair: torch.Tensor,
    pair_offsets: torch.Tensor,
    pair_pixel: torch.Tensor,
    pair_by_pixel: torch.Tensor,
    pixel_pair_offsets: torch.Tensor,
    pixel_pair_cell: torch.Tensor,
    batch_size: int,
    grid: list[int],
    impl: str,
) -> torch.Tensor:
    """``depth [Ncam, D, H, W]``, ``context [Ncam, C, H, W]`` -> ``[B, C, Z, X, Y]``:
    CSR (cells x pixels, summed depth weights) @ context ``[pixels, C]`` (torch's sparse
    product, :func:`._triton.csr_spmm` for ``impl`` "triton", :func:`._bev_pool_numba.csr_spmm`
    for "numba")."""
    ncam, c, h, w = context.shape
    num_cells = pair_offsets.shape[0] - 1
    num_pairs = pair_pixel.shape[0]
    if num_pairs == 0 or c == 0:
        return _bev_empty(context, batch_size, grid, c)
    weights = _pair_weights(depth, point_index, point_pair, num_pairs)
    context_pix = context.permute(0, 2, 3, 1).reshape(ncam * h * w, c)  # [pixels, C]
    if impl == "triton":
        out = _triton.csr_spmm(pair_offsets, pair_pixel, weights, context_pix.contiguous())
    elif impl == "numba":
        out = torch.from_numpy(
            _numba_kernels().csr_spmm(  # type: ignore[union-attr]
                pair_offsets.numpy(),
                pair_pixel.numpy(),
                weights.detach().numpy(),
                context_pix.detach().contiguous().numpy(),
            )  # fmt: skip
        )
    else:
        out = _csr(pair_offsets, pair_pixel, weights, (num_cells, ncam * h * w)) @ context_pix
    return _cells_to_bev(out, batch_size, grid)


@_bev_pool_depth_csr.register_fake
def _(depth, context, *index_and_sizes):
    batch_size, grid = index_and_sizes[-3:-1]
    return _bev_empty(context, batch_size, grid, context.shape[1])


@torch.library.custom_op("perception::bev_pool_depth_csr_backward", mutates_args=())
def _bev_pool_depth_csr_backward(
    grad_out: torch.Tensor,
    depth: torch.Tensor,
    context: torch.Tensor,
    point_index: torch.Tensor,
    point_pair: torch.Tensor,
    pair_offsets: torch.Tensor,
    pair_pixel: torch.Tensor,
    pair_by_pixel: torch.Tensor,
    pixel_pair_offsets: torch.Tensor,
    pixel_pair_cell: torch.Tensor,
    impl: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. ``depth [Ncam, D, H, W]`` and ``context [Ncam, C, H, W]``.

    ``grad_context[pixel] = sum over its pairs of weight * grad_out[cell]`` (the transposed
    CSR, pixels x cells, @ grad cells); ``grad_depth[p] = <grad_out[cell(p)],
    context[pixel(p)]>``, evaluated once per pair (``sampled_addmm`` on the pair pattern) and
    handed to each of the pair's points.
    """
    ncam, c, h, w = context.shape
    num_pixels = ncam * h * w
    num_pairs = pair_pixel.shape[0]
    if num_pairs == 0 or c == 0:
        return torch.zeros_like(depth), torch.zeros_like(context)
    grad_cells = _bev_to_cells(grad_out)  # [cells, C]
    num_cells = grad_cells.shape[0]
    weights = _pair_weights(depth, point_index, point_pair, num_pairs)
    weights_by_pixel = weights.index_select(0, pair_by_pixel)
    context_pix = context.permute(0, 2, 3, 1).reshape(num_pixels, c)
    if impl == "triton":
        grad_context_pix = _triton.csr_spmm(
            pixel_pair_offsets, pixel_pair_cell, weights_by_pixel, grad_cells
        )
        pair_cell = torch.repeat_interleave(
            torch.arange(num_cells, device=grad_cells.device),
            pair_offsets.diff().to(torch.int64),
            output_size=num_pairs,
        )
        per_pair = _triton.sampled_dot(pair_cell, pair_pixel, grad_cells, context_pix.contiguous())
    elif impl == "numba":
        kernels = _numba_kernels()
        grad_context_pix = torch.from_numpy(
            kernels.csr_spmm(  # type: ignore[union-attr]
                pixel_pair_offsets.numpy(),
                pixel_pair_cell.numpy(),
                weights_by_pixel.detach().numpy(),
                grad_cells.detach().numpy(),
            )  # fmt: skip
        )
        per_pair = torch.from_numpy(
            kernels.sampled_dot(  # type: ignore[union-attr]
                pair_offsets.numpy(),
                pair_pixel.numpy(),
                grad_cells.detach().numpy(),
                context_pix.detach().contiguous().numpy(),
            )  # fmt: skip
        )
    else:
        transposed = _csr(
            pixel_pair_offsets, pixel_pair_cell, weights_by_pixel, (num_pixels, num_cells)
        )
        grad_context_pix = transposed @ grad_cells  # [pixels, C]
        pattern = _csr(
            pair_offsets, pair_pixel, weights.new_zeros(num_pairs), (num_cells, num_pixels)
        )
        per_pair = torch.sparse.sampled_addmm(
            pattern, grad_cells, context_pix.t(), beta=0.0
        ).values()
    grad_context = grad_context_pix.view(ncam, h, w, c).permute(0, 3, 1, 2).contiguous()
    grad_depth = torch.zeros(depth.numel(), dtype=depth.dtype, device=depth.device)
    grad_depth.index_copy_(0, point_index.to(torch.int64), per_pair.index_select(0, point_pair))
    return grad_depth.view_as(depth), grad_context


@_bev_pool_depth_csr_backward.register_fake
def _(grad_out, depth, context, *index_and_impl):
    return torch.empty_like(depth), torch.empty_like(context)


def _bev_pool_depth_setup(ctx, inputs, output) -> None:
    depth, context, *index, _, _, impl = inputs
    ctx.save_for_backward(depth, context, *index)
    ctx.impl = impl


def _bev_pool_depth_backward(ctx, grad_out):
    depth, context, *index = ctx.saved_tensors
    grad_depth, grad_context = _bev_pool_depth_csr_backward(
        grad_out, depth, context, *index, ctx.impl
    )
    return (grad_depth, grad_context) + (None,) * 10


_bev_pool_depth_csr.register_autograd(_bev_pool_depth_backward, setup_context=_bev_pool_depth_setup)


# --------------------------------------------------------------------------------------------
# Public functions.


def bev_pool(
    feats: torch.Tensor,
    coords: torch.Tensor | None,
    batch_size: int,
    grid: Sequence[int],
    plan: BEVPoolPlan | None = None,
    *,
    impl: Impl = "auto",
    trace: ImplTrace | None = None,
) -> torch.Tensor:
    """Sums point features into a dense BEV grid.

    Args:
        feats: ``[N, C]`` float, one row per point (e.g. a frustum point's depth-weighted
            context feature).
        coords: ``[N, 4]`` int ``(batch, z, x, y)`` cell indices; may be None when ``plan`` is
            given (the plan already holds the geometry).
        batch_size: ``B``; a batch index outside ``[0, B)`` raises ValueError.
        grid: ``(Z, X, Y)`` cells; points outside it are dropped.
        plan: a plan from :func:`build_bev_pool_plan` (or a :class:`BEVPoolPlanCache`) for
            these coords; built here when None.
        impl: ``"numba"`` (CPU, float32/float64, numba importable: a point-order scatter
            partitioned by cell), ``"torch"`` (torch's CSR sparse product, any device),
            ``"triton"`` (:func:`._triton.csr_spmm`, CUDA), ``"reference"``
            (:func:`.bev_pool_reference.bev_pool_index_add`; needs ``coords``) or ``"auto"``
            (numba on CPU, triton on CUDA where importable, else torch). numba and triton sum
            each cell's points in input order.
        trace: an :class:`~perception.ops._impl.ImplTrace` that records the path taken.

    Returns:
        ``[B, C, Z, X, Y]`` (dtype of ``feats``, channels-last-3d memory format but for the
        reference), each cell the sum of its points' features, zeros where no point falls.
        Differentiable in ``feats``.
    """
    check_float_tensor(feats, "feats")
    if feats.dim() != 2:
        raise ValueError(f"feats must be [N, C], got {tuple(feats.shape)}")
    if plan is None:
        if coords is None:
            raise ValueError("coords must be given when plan is None")
        if coords.dim() != 2:
            raise ValueError(f"coords must be [N, 4] (batch, z, x, y), got {tuple(coords.shape)}")
        plan = build_bev_pool_plan(coords, batch_size, grid)
    _check_plan(plan, batch_size, grid)
    if coords is not None and coords.reshape(-1, coords.shape[-1]).shape[0] != feats.shape[0]:
        raise ValueError(f"coords must have N={feats.shape[0]} rows, got {tuple(coords.shape)}")
    if feats.shape[0] != plan.num_points:
        raise ValueError(
            f"feats must have the plan's N={plan.num_points} rows, got {feats.shape[0]}"
        )
    if feats.device != plan.device:
        raise ValueError(f"feats is on {feats.device}, the plan on {plan.device}")
    path = record(trace, "bev_pool", _choose_pool_impl("bev_pool", feats, impl, IMPLS))
    if path == "reference":
        if coords is None:
            raise unavailable("bev_pool", path, "the reference needs coords, not only a plan")
        from .bev_pool_reference import bev_pool_index_add

        return bev_pool_index_add(feats, coords, batch_size, grid)
    return _bev_pool_csr(
        feats, plan.cell_offsets, plan.point_index, plan.point_rows, plan.point_cell,
        plan.batch_size, list(plan.grid), path,
    )  # fmt: skip


def bev_pool_depth(
    depth: torch.Tensor,
    context: torch.Tensor,
    plan: BEVPoolPlan,
    *,
    impl: Impl = "auto",
    trace: ImplTrace | None = None,
) -> torch.Tensor:
    """Fused lift-and-pool (BEVPoolv2): ``bev_pool(depth[:, :, None] * context[:, None])``
    without building the ``[Ncam * D * H * W, C]`` frustum features.

    Args:
        depth: ``[Ncam, D, H, W]`` float, per-pixel depth-bin weights (usually a softmax
            over D); ``Ncam`` = batch x cameras, in the order of the plan's frustum.
        context: ``[Ncam, C, H, W]`` float, per-pixel context features (same dtype).
        plan: built from the frustum cell coordinates ``[Ncam, D, H, W, 4]``
            ``(batch, z, x, y)`` (:func:`build_bev_pool_plan`).
        impl: ``"numba"`` (CPU, float32/float64: :mod:`._bev_pool_numba`), ``"torch"``
            (torch's sparse products, any device), ``"triton"`` (the kernels of
            :mod:`._triton`: CUDA) or ``"auto"`` (numba on CPU, triton on CUDA where
            importable, else torch). The reference is
            :func:`.bev_pool_reference.bev_pool_depth_reference` (it takes the coordinates).
        trace: an :class:`~perception.ops._impl.ImplTrace` that records the path taken.

    Returns:
        ``[B, C, Z, X, Y]`` (channels-last-3d memory format); differentiable in both
        ``depth`` and ``context``.
    """
    check_float_tensor(depth, "depth")
    check_float_tensor(context, "context")
    if plan.frustum_shape is None or plan.point_pair is None:
        raise ValueError("plan must be built from frustum coords [Ncam, D, H, W, 4]")
    ncam, d, h, w = plan.frustum_shape
    if tuple(depth.shape) != (ncam, d, h, w):
        raise ValueError(
            f"depth must be [Ncam, D, H, W] = {plan.frustum_shape}, got {tuple(depth.shape)}"
        )
    if context.dim() != 4 or (context.shape[0], context.shape[2], context.shape[3]) != (ncam, h, w):
        raise ValueError(
            f"context must be [Ncam={ncam}, C, H={h}, W={w}], got {tuple(context.shape)}"
        )
    if depth.dtype != context.dtype:
        raise ValueError(
            f"depth and context must share a dtype, got {depth.dtype} and {context.dtype}"
        )
    if depth.device != plan.device or context.device != plan.device:
        raise ValueError(f"depth/context must be on the plan's device {plan.device}")
    path = _choose_pool_impl("bev_pool_depth", context, impl, IMPLS[:-1])
    record(trace, "bev_pool_depth", path)
    return _bev_pool_depth_csr(
        depth, context, *plan.fused_indices(), plan.batch_size, list(plan.grid), path
    )


def _check_plan(plan: BEVPoolPlan, batch_size: int, grid: Sequence[int]) -> None:
    if not isinstance(plan, BEVPoolPlan):
        raise ValueError(f"plan must be a BEVPoolPlan, got {type(plan).__name__}")
    if plan.batch_size != batch_size or plan.grid != tuple(int(g) for g in grid):
        raise ValueError(
            f"plan was built for batch_size={plan.batch_size}, grid={plan.grid}; "
            f"got batch_size={batch_size}, grid={tuple(grid)}"
        )


float32_under_autocast(_bev_pool_csr)
float32_under_autocast(_bev_pool_csr_backward)
float32_under_autocast(_bev_pool_depth_csr)
float32_under_autocast(_bev_pool_depth_csr_backward)
