"""Point <-> voxel transforms of SPVConv: scatter-mean into voxels, trilinear back to points.

Conventions: point coordinates are ``[N, 4]`` float ``(batch, x, y, z)`` in stride-1 voxel units
(metres minus the range origin, divided by the voxel size). A voxel with coordinates ``c`` at
stride ``s`` covers ``[c, c + s)`` per axis and its centre is ``c + s / 2``; a point falls in
voxel ``floor(p / s) * s``. Interpolation weights are trilinear in the distance to the centres
of the 8 surrounding voxels; neighbours that are not active drop out and the remaining weights
are renormalized to sum to 1 (all 8 missing: zeros). Both transforms are differentiable in the
features (coordinates are not differentiated).

Paths (``impl=``, the vocabulary of :mod:`perception.ops._impl`) differ in the weighted
scatter-add that both transforms need (the mean's sums; the interpolation's gradient):
``"numba"`` (CPU, float32/float64: one parallel pass, :func:`.sparse._numba.weighted_scatter_add`;
the points' rows and weights too come from one parallel pass over a "columns" coordinate index,
:func:`.sparse._numba.trilinear_columns` and ``point_rows_columns``, instead of torch arithmetic
and a lookup),
``"triton"`` (CUDA: a CSR product after a stable sort of the targets,
:func:`._triton.scatter_add_rows`), ``"torch"`` (one ``index_add_`` per column, any device),
``"reference"`` (the brute-force loops at the end of this module) and ``"auto"``: numba where it
can run, else triton on CUDA, else torch. All but ``index_add_`` on CUDA (atomics) are
deterministic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _triton
from ._impl import Impl, ImplTrace, check_impl, record, unavailable
from .sparse.kernel_map import Triple, as_triple, numba_kernels
from .sparse.tensor import SparseCache, SparseTensor

IMPLS = ("auto", "torch", "numba", "triton", "reference")
"""The values ``impl=`` accepts (see the module docstring)."""


def _choose_impl(op: str, feats: torch.Tensor, impl: str) -> str:
    """The path ``impl`` resolves to for features like ``feats`` (see the module docstring);
    an explicit ``impl`` that cannot run raises :class:`._impl.ImplUnavailable`."""
    check_impl(op, impl, IMPLS)
    numba_ok = (
        feats.dtype in (torch.float32, torch.float64) and numba_kernels(feats.device) is not None
    )
    triton_ok = _triton.available(feats)
    if impl == "numba" and not numba_ok:
        raise unavailable(
            op, impl, f"it needs float32/float64 CPU features and numba, got {feats.dtype} "
            f"on {feats.device}"
        )  # fmt: skip
    if impl == "triton" and not triton_ok:
        raise unavailable(op, impl, "it needs CUDA features and triton (or TRITON_INTERPRET=1)")
    if impl != "auto":
        return impl
    if numba_ok:
        return "numba"
    return "triton" if feats.device.type == "cuda" and triton_ok else "torch"


def _scatter_add(
    out: torch.Tensor,
    rows: torch.Tensor,
    src: torch.Tensor,
    weights: torch.Tensor | None,
    impl: str,
) -> torch.Tensor:
    """``out[rows[i, k]] += weights[i, k] * src[i]`` (weights 1 when None), in place, by the
    path ``impl`` ("numba", "triton" or "torch"; see the module docstring).

    Args:
        out: ``[M, C]``; rows: ``[N, K]`` int64; src: ``[N, C]``; weights: ``[N, K]`` or None.
    """
    if src.shape[0] == 0:
        return out
    if impl == "numba":
        if weights is None:
            weights = src.new_ones(rows.shape)
        # One channel range per thread, at least 32 channels each: every task walks all the
        # points (random rows of `out`), so narrower splits cost more than they share out.
        tasks = max(1, min(torch.get_num_threads(), src.shape[1] // 32))
        kernels = numba_kernels(out.device)
        args = (
            src.detach().contiguous().numpy(),
            rows.contiguous().numpy(),
            weights.detach().contiguous().numpy(),
        )
        if tasks == 1:  # no parallel region to start
            kernels.scatter_channels(*args, 0, src.shape[1], out.numpy())
        else:
            kernels.weighted_scatter_add(*args, tasks, out.numpy())
        return out
    if impl == "triton":
        return _triton.scatter_add_rows(out, rows, src.detach(), weights)
    for k in range(rows.shape[1]):
        term = src if weights is None else src * weights[:, k : k + 1]
        out.index_add_(0, rows[:, k], term)
    return out


def _check_points(point_feats: torch.Tensor, point_coords: torch.Tensor) -> None:
    if point_coords.dim() != 2 or point_coords.shape[1] != 4:
        raise ValueError(f"point_coords must be [N, 4], got {tuple(point_coords.shape)}")
    if not point_coords.is_floating_point():
        raise ValueError("point_coords must be floating point (batch, x, y, z)")
    if point_feats is not None and (
        point_feats.dim() != 2 or point_feats.shape[0] != point_coords.shape[0]
    ):
        raise ValueError(
            f"point_feats must be [N={point_coords.shape[0]}, C], got {tuple(point_feats.shape)}"
        )
    if point_coords.shape[0] and bool((point_coords < 0).any()):
        raise ValueError("point_coords must be non-negative")


def _fused(path: str, index, point_coords: torch.Tensor) -> bool:
    """Whether the numba path finds the points' rows in one fused pass over a "columns" index
    (:meth:`.sparse.kernel_map.CoordIndex.trilinear`, ``.point_rows``) instead of the torch
    arithmetic and a lookup."""
    return (
        path == "numba"
        and index.layout == "columns"
        and point_coords.dtype in (torch.float32, torch.float64)
        and point_coords.device.type == "cpu"
    )


def _voxel_of(point_coords: torch.Tensor, stride: Triple) -> torch.Tensor:
    """``[N, 4]`` float -> ``[N, 4]`` int64 voxel coordinates at ``stride``."""
    s = torch.tensor(stride, dtype=point_coords.dtype, device=point_coords.device)
    xyz = torch.floor(point_coords[:, 1:] / s).to(torch.int64) * s.to(torch.int64)
    return torch.cat([point_coords[:, :1].to(torch.int64), xyz], dim=1)


def _unique_rows(voxels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.unique(voxels, dim=0, return_inverse=True)` for non-negative int64 ``[N, 4]``,
    through one mixed-radix int64 key per row (a 1-D sort; `dim=0` unbinds rows one by one
    and is ~50x slower on CPU). Rows come out sorted by (batch, x, y, z)."""
    if voxels.shape[0] == 0:
        return voxels, voxels.new_zeros(0)
    extent = voxels.amax(0) + 1  # [4]
    if float(extent.double().prod()) >= 2**62:
        return torch.unique(voxels, dim=0, return_inverse=True)
    radix = torch.ones_like(extent)
    radix[:3] = torch.flip(torch.cumprod(torch.flip(extent[1:], [0]), 0), [0])
    keys = (voxels * radix).sum(1)
    unique_keys, rows = torch.unique(keys, sorted=True, return_inverse=True)
    unique = torch.empty(unique_keys.shape[0], 4, dtype=voxels.dtype, device=voxels.device)
    rest = unique_keys
    for axis in range(3, -1, -1):
        unique[:, axis] = rest % extent[axis]
        rest = torch.div(rest, extent[axis], rounding_mode="floor")
    return unique, rows


def point_to_voxel(
    point_feats: torch.Tensor,
    point_coords: torch.Tensor,
    target: int | tuple[int, int, int] | SparseTensor,
    *,
    impl: Impl = "auto",
    trace: ImplTrace | None = None,
) -> SparseTensor:
    """Average point features per voxel.

    Args:
        point_feats: ``[N, C]`` float.
        point_coords: ``[N, 4]`` float ``(batch, x, y, z)``, stride-1 voxel units.
        target: a stride (int or 3 ints): the output holds every voxel with at least one point
            (coords sorted by (batch, x, y, z), a fresh cache); or a :class:`SparseTensor`: the
            output has exactly its coordinates, stride and cache (voxels without points get
            zeros; points outside its voxels are ignored).
        impl: one of :data:`IMPLS` (see the module docstring).
        trace: an :class:`~perception.ops._impl.ImplTrace` that records the path taken.

    Returns:
        SparseTensor with ``feats [M, C]`` (dtype of ``point_feats``), the mean per voxel.
    """
    _check_points(point_feats, point_coords)
    path = record(trace, "point_to_voxel", _choose_impl("point_to_voxel", point_feats, impl))
    if isinstance(target, SparseTensor):
        stride = target.stride
        index = target.cache.index(target.coord_id)
        if _fused(path, index, point_coords):  # one pass
            rows = index.point_rows(point_coords)  # [N], M where missing
        else:
            voxels = _voxel_of(point_coords, stride)
            zero = torch.zeros(1, dtype=torch.int64, device=voxels.device)
            rows = index.lookup(voxels, zero, zero, zero).squeeze(1)  # [N], M where missing
        num_voxels = len(target)
    else:
        stride = as_triple(target, "stride")
        voxels = _voxel_of(point_coords, stride)
        unique, rows = _unique_rows(voxels)
        num_voxels = unique.shape[0]
    if path == "reference":
        voxel_coords = target.coords if isinstance(target, SparseTensor) else unique
        mean = point_to_voxel_reference(point_feats, point_coords, voxel_coords, stride)
    else:
        mean = _ScatterMean.apply(point_feats, rows, num_voxels, path)
    if isinstance(target, SparseTensor):
        return target.replace_feats(mean)
    # Coordinates made here are valid by construction (unique rows of non-negative multiples of
    # the stride), so they skip the constructor's checks (~3 ms at 165k voxels on 2 CPU cores).
    coords = unique.to(torch.int32)
    cache = SparseCache()
    return SparseTensor(mean, coords, stride, cache=cache, _coord_id=cache.register(coords, stride))


def _corner_weights(
    point_coords: torch.Tensor, stride: Triple
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower corner voxel ``[N, 4]`` int64 and trilinear weights ``[N, 8]`` (x slowest)."""
    s = torch.tensor(stride, dtype=point_coords.dtype, device=point_coords.device)
    u = point_coords[:, 1:] / s - 0.5  # in voxel-centre units
    base = torch.floor(u)
    frac = u - base  # [N, 3]
    w = torch.stack([1 - frac, frac], dim=2)  # [N, 3, 2]
    weights = w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]
    corner = base.to(torch.int64) * s.to(torch.int64)
    corner = torch.cat([point_coords[:, :1].to(torch.int64), corner], dim=1)
    return corner, weights.reshape(-1, 8)


class _ScatterMean(torch.autograd.Function):
    """``mean[v] = sum of point_feats[i] with rows[i] == v / their count`` for ``v < num_voxels``
    (``rows[i] == num_voxels`` drops point ``i``); backward: each point gets its voxel's gradient
    divided by the count."""

    @staticmethod
    def forward(
        ctx, point_feats: torch.Tensor, rows: torch.Tensor, num_voxels: int, impl: str
    ) -> torch.Tensor:
        counts = torch.bincount(rows, minlength=num_voxels + 1)[:num_voxels]
        inv = 1.0 / counts.clamp(min=1).to(point_feats.dtype)  # [M]
        sums = point_feats.new_zeros(num_voxels + 1, point_feats.shape[1])
        _scatter_add(sums, rows.unsqueeze(1), point_feats, None, impl)
        ctx.save_for_backward(rows, inv)
        return sums[:num_voxels].mul_(inv.unsqueeze(1))  # in place: no second [M, C] array

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, inv = ctx.saved_tensors
        scaled = torch.cat([grad * inv.unsqueeze(1), grad.new_zeros(1, grad.shape[1])])
        return scaled.index_select(0, rows), None, None, None


class _WeightedGather(torch.autograd.Function):
    """``out[n] = sum_k weights[n, k] * src[rows[n, k]]`` without an ``[N, K, C]``
    intermediate: forward is one fused `embedding_bag`; backward is one weighted scatter-add
    (:func:`_scatter_add` by the path ``impl``; `embedding_bag`'s own dense backward sorts all
    N*K rows and is ~20x slower on CPU).
    `weights` take no gradient (they come from coordinates)."""

    @staticmethod
    def forward(
        ctx, src: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor, impl: str
    ) -> torch.Tensor:
        ctx.save_for_backward(rows, weights)
        ctx.num_rows = src.shape[0]
        ctx.impl = impl
        return F.embedding_bag(rows, src, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, weights = ctx.saved_tensors
        grad_src = grad.new_zeros(ctx.num_rows, grad.shape[1])
        return _scatter_add(grad_src, rows, grad, weights, ctx.impl), None, None, None


def voxel_to_point(
    x: SparseTensor,
    point_coords: torch.Tensor,
    *,
    impl: Impl = "auto",
    trace: ImplTrace | None = None,
) -> torch.Tensor:
    """Trilinear interpolation of voxel features at points.

    Args:
        x: sparse tensor with ``feats [M, C]`` at stride ``s``.
        point_coords: ``[N, 4]`` float ``(batch, x, y, z)``, stride-1 voxel units.
        impl: one of :data:`IMPLS` (see the module docstring; the forward is one
            ``embedding_bag`` on every path but the reference, the paths differ in the backward).
        trace: an :class:`~perception.ops._impl.ImplTrace` that records the path taken.

    Returns:
        ``[N, C]`` (dtype of ``x.feats``): weighted sum over the active voxels among the 8 whose
        centres surround the point, weights renormalized over those present; zeros where none is.
    """
    _check_points(None, point_coords)  # type: ignore[arg-type]
    path = record(trace, "voxel_to_point", _choose_impl("voxel_to_point", x.feats, impl))
    if path == "reference":
        return voxel_to_point_reference(x.feats, x.coords, x.stride, point_coords)
    n = point_coords.shape[0]
    c = x.feats.shape[1]
    if n == 0:
        return x.feats.new_zeros(0, c)
    index = x.cache.index(x.coord_id)
    if _fused(path, index, point_coords):  # corners, lookup, weights: one pass
        rows, weights = index.trilinear(point_coords, x.feats.dtype)
    else:
        corner, weights = _corner_weights(point_coords, x.stride)
        offs = [torch.tensor([0, s], dtype=torch.int64, device=corner.device) for s in x.stride]
        rows = index.lookup(corner, *offs)  # [N, 8], M where missing
        weights = torch.where(rows < len(x), weights.to(x.feats.dtype), 0.0)
        total = weights.sum(1, keepdim=True)
        weights = weights / torch.where(total > 0, total, 1.0)
    src = torch.cat([x.feats, x.feats.new_zeros(1, c)])
    return _WeightedGather.apply(src, rows, weights, path)


def point_to_voxel_reference(
    point_feats: torch.Tensor,
    point_coords: torch.Tensor,
    voxel_coords: torch.Tensor,
    stride: int | tuple[int, int, int],
) -> torch.Tensor:
    """Brute-force scatter-mean onto given voxels: ``[M, C]`` for ``voxel_coords [M, 4]``."""
    s = (0, *as_triple(stride, "stride"))  # per column of the coordinates
    rows = []
    for v in voxel_coords.tolist():
        members = [
            i
            for i, p in enumerate(point_coords.tolist())
            if int(p[0]) == v[0] and all(int(p[a] // s[a]) * s[a] == v[a] for a in (1, 2, 3))
        ]
        if members:
            rows.append(point_feats[members].mean(0))
        else:
            rows.append(point_feats.new_zeros(point_feats.shape[1]))
    return torch.stack(rows) if rows else point_feats.new_zeros(0, point_feats.shape[1])


def voxel_to_point_reference(
    voxel_feats: torch.Tensor,
    voxel_coords: torch.Tensor,
    stride: int | tuple[int, int, int],
    point_coords: torch.Tensor,
) -> torch.Tensor:
    """Brute-force trilinear interpolation (the docstring convention of this module)."""
    s = as_triple(stride, "stride")
    lookup = {tuple(v): i for i, v in enumerate(voxel_coords.tolist())}
    out = []
    for p in point_coords.tolist():
        u = [p[a + 1] / s[a] - 0.5 for a in range(3)]
        base = [int(torch.floor(torch.tensor(v)).item()) for v in u]
        terms, total = [], 0.0
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    key = (
                        int(p[0]),
                        (base[0] + dx) * s[0],
                        (base[1] + dy) * s[1],
                        (base[2] + dz) * s[2],
                    )
                    w = 1.0
                    for a, d in enumerate((dx, dy, dz)):
                        f = u[a] - base[a]
                        w *= f if d else 1 - f
                    if key in lookup:
                        terms.append((w, lookup[key]))
                        total += w
        acc = voxel_feats.new_zeros(voxel_feats.shape[1])
        for w, i in terms:
            acc = acc + (w / total) * voxel_feats[i] if total > 0 else acc
        out.append(acc)
    return torch.stack(out) if out else voxel_feats.new_zeros(0, voxel_feats.shape[1])
