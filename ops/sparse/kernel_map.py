"""Coordinate hashing and kernel maps for sparse 3-D convolution.

Conventions (shared by the whole ``perception.ops.sparse`` package):

- coordinates are ``[N, 4]`` integers ``(batch, x, y, z)`` in stride-1 voxel units; a tensor at
  stride ``s`` (3 ints) has ``x % s[0] == 0`` etc.
- a kernel of size ``K = (kx, ky, kz)`` and dilation ``d`` has the offsets
  ``(k - c) * d`` per axis for ``k in range(kx)`` with centre ``c = (kx - 1) // 2``, in units of
  the input stride; offsets are flattened row-major (x slowest, z fastest), the same order as the
  spatial dims of a dense ``torch.nn.Conv3d`` weight ``[out, in, kx, ky, kz]``. This matches a
  dense convolution with padding ``c * d`` per axis.
- a kernel map is a neighbour table ``nbr [N_out, K]`` (int64): ``nbr[j, k]`` is the input row
  read by output row ``j`` at offset ``k``, or ``N_in`` where that input is not active; plus its
  transpose ``nbr_t [N_in, K]``: the output row that reads input ``i`` at offset ``k``, or
  ``N_out``. Index ``N_in`` / ``N_out`` points at an appended zero row, so gathers need no mask.

Hashing: a :class:`CoordIndex` per coordinate set. On CPU, where numba is importable, a column
index probed by a parallel numba loop (:mod:`._numba`); otherwise (CUDA, no
numba) a two-level dense table (a column table over ``(batch, x, y)`` and a per-column table
over ``z``; two gathers per lookup, on CUDA one triton kernel for all offsets,
:func:`.._triton.dense_lookup`) or, when the extent makes those tables too large, sorted
int64 keys with ``torch.searchsorted``. Kernel offsets form a product of per-axis offsets, so one
column lookup serves all ``kz`` offsets. The torch layouts are the reference of the column index.
"""

from __future__ import annotations

import functools
from types import ModuleType

import numpy as np
import torch

from .. import _triton
from .._impl import check_impl, unavailable

Triple = tuple[int, int, int]


def as_triple(value: int | tuple[int, ...] | list[int], name: str) -> Triple:
    """``3 -> (3, 3, 3)``; a 3-sequence of positive ints is returned as a tuple."""
    if isinstance(value, int):
        value = (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3 or any(v < 1 for v in value):
        raise ValueError(f"{name} must be a positive int or 3 positive ints, got {value}")
    return value  # type: ignore[return-value]


@functools.cache
def _numba_module() -> ModuleType | None:
    """:mod:`._numba`, or None where numba is not importable (imported on first use)."""
    try:
        from . import _numba
    except ImportError:
        return None
    return _numba


def numba_kernels(device: torch.device) -> ModuleType | None:
    """The numba kernels for tensors on ``device`` (CPU only), or None (CUDA tensors, numba not
    importable). Their thread count is numba's, the caller's to set
    (:func:`perception.runtime.set_cpu_threads`)."""
    if device.type != "cpu":
        return None
    return _numba_module()


def kernel_offsets(kernel_size: Triple, dilation: Triple) -> torch.Tensor:
    """Offsets of a kernel, in units of the input stride.

    Returns:
        ``[K, 3]`` int64, ``K = kx * ky * kz``, row-major over ``(kx, ky, kz)``.
    """
    axes = [
        (torch.arange(k, dtype=torch.int64) - (k - 1) // 2) * d
        for k, d in zip(kernel_size, dilation)
    ]
    grid = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grid], dim=1)


class KernelMap:
    """Neighbour tables of one convolution (see the module docstring).

    Attributes:
        nbr: ``[N_out, K]`` int64, input row per (output, offset), ``N_in`` where missing.
        nbr_t: ``[N_in, K]`` int64, output row per (input, offset), ``N_out`` where missing.
            Only a backward or a transposed conv reads it, so it may be given as None and is
            then built on first use: for a submanifold map with a symmetric kernel
            (``symmetric``) ``nbr`` with the offsets reversed, else ``nbr`` transposed.
        num_in: ``N_in``.
        num_out: ``N_out``.
    """

    def __init__(
        self,
        nbr: torch.Tensor,
        nbr_t: torch.Tensor | None,
        num_in: int,
        num_out: int,
        pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        *,
        symmetric: bool = False,
    ) -> None:
        self.nbr = nbr
        self._nbr_t = nbr_t
        self._symmetric = symmetric
        self.num_in = num_in
        self.num_out = num_out
        self._pairs = pairs

    def __repr__(self) -> str:
        return f"KernelMap(num_in={self.num_in}, num_out={self.num_out}, K={self.nbr.shape[1]})"

    @property
    def nbr_t(self) -> torch.Tensor:
        if self._nbr_t is None:
            if self._symmetric:
                # Submanifold with a symmetric kernel: offset K-1-k is offset k negated.
                self._nbr_t = self.nbr.flip(1)
            else:
                kernels = numba_kernels(self.nbr.device)
                self._nbr_t = (
                    _transpose_table(self.nbr, self.num_in)
                    if kernels is None
                    else torch.from_numpy(kernels.transpose_table(self.nbr.numpy(), self.num_in))
                )
        return self._nbr_t

    def transposed(self) -> KernelMap:
        """The map of the transposed convolution: inputs and outputs swap roles."""
        return KernelMap(self.nbr_t, self.nbr, self.num_out, self.num_in)

    def pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per kernel offset ``(in_idx [M_k] int64, out_idx [M_k] int64)`` of the active pairs."""
        if self._pairs is None:
            pairs = []
            for k in range(self.nbr.shape[1]):
                column = self.nbr[:, k]
                out_idx = torch.nonzero(column < self.num_in).squeeze(1)
                pairs.append((column[out_idx], out_idx))
            self._pairs = pairs
        return self._pairs

    @property
    def num_pairs(self) -> int:
        """Number of active (input, output, offset) triples."""
        return int((self.nbr < self.num_in).sum())


def _axis_queries(
    base: torch.Tensor, offs: torch.Tensor, stride: int, lo: int, ext: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-axis grid index of ``base + offs`` and whether it is a site of the indexed set's grid.

    Offset-major layout (``[k, M]``) keeps the long axis innermost, so the broadcasting integer
    arithmetic below vectorizes.

    Args:
        base: ``[M]`` int coordinates (stride-1 units); offs: ``[k]`` int64 offsets.

    Returns:
        ``[k, M]`` grid index relative to ``lo`` (clamped into range) and ``[k, M]`` bool.
    """
    q = base.to(dtype).unsqueeze(0) + offs.to(dtype).unsqueeze(1)
    if stride == 1:
        g = q - lo
        valid = (g >= 0) & (g < ext)
    else:
        g = torch.div(q, stride, rounding_mode="floor") - lo
        valid = (q % stride == 0) & (g >= 0) & (g < ext)
    return g.clamp_(0, ext - 1), valid


class CoordIndex:
    """Looks up rows of one coordinate set (unique rows, multiples of ``stride``).

    Three layouts, chosen by :func:`make_coord_index`:

    - ``"columns"`` (CPU tensors, numba importable): an occupancy bitmap over the ``(batch, x,
      y)`` columns with per-word prefix counts (a column's id is its rank), a z occupancy bit
      mask per column and the rows listed column by column (:func:`._numba.build_columns`); lookups in a parallel numba loop.
    - ``"dense"``: a two-level table, a dense column table over ``(batch, x, y)`` giving a column
      id, then a dense ``[num_columns + 1, Z]`` table of row ids. Lookups are two gathers, no
      search. Used when both tables are small (LiDAR scenes: a few tens of MB at stride 1).
    - ``"sorted"``: sorted int64 keys and ``torch.searchsorted``, for any extent.

    Missing sites map to ``num_rows`` (the appended zero row of a gather).
    """

    def __init__(self, coords: torch.Tensor, stride: Triple, layout: str) -> None:
        self.num_rows = coords.shape[0]
        self.stride = stride
        self.layout = layout
        device = coords.device
        c = coords.to(torch.int64)
        self.device = device
        if self.num_rows == 0:
            self.lo, self.ext, self.batches = [0, 0, 0], [1, 1, 1], 0
            return
        grid = torch.stack([c[:, 1 + a] // stride[a] for a in range(3)], dim=1)
        lo = grid.min(0).values.tolist()
        hi = grid.max(0).values.tolist()
        self.lo = lo
        self.ext = [h - l_ + 1 for h, l_ in zip(hi, lo)]
        self.batches = int(c[:, 0].max()) + 1
        ex, ey, ez = self.ext
        gx, gy, gz = (grid[:, a] - lo[a] for a in range(3))
        if layout == "columns":
            kernels = numba_kernels(device)
            if kernels is None:
                raise ValueError("the 'columns' coordinate index needs CPU tensors and numba")
            self._geometry = [np.asarray(v, dtype=np.int64) for v in (stride, lo, self.ext)]
            words = (self.batches * ex * ey + 63) // 64
            occupied = np.zeros(words, dtype=np.uint64)
            word_prefix = np.empty(words, dtype=np.int32)
            col_mask = np.zeros((self.num_rows, (ez + 63) // 64), dtype=np.uint64)
            col_start = np.empty(self.num_rows + 1, dtype=np.int32)
            row_table = np.empty(self.num_rows, dtype=np.int32)
            self._tables = (occupied, word_prefix, col_mask, col_start, row_table)
            kernels.build_columns(coords.numpy(), *self._geometry, *self._tables)
            return
        rows = torch.arange(self.num_rows, device=device)
        if layout == "dense":
            colkey = (c[:, 0] * ex + gx) * ey + gy
            # Rows sorted by (column, z); each column owns the z span [zlo, zlo + zext) of a
            # compact row table, so the tables stay cache sized for thin LiDAR columns.
            order = torch.argsort(colkey * ez + gz)
            columns, col_of_row, counts = torch.unique_consecutive(
                colkey[order], return_inverse=True, return_counts=True
            )
            gz_sorted = gz[order]
            ends = torch.cumsum(counts, 0)
            zlo = gz_sorted[ends - counts]
            zext = gz_sorted[ends - 1] - zlo + 1
            self.num_columns = columns.shape[0]
            self.column_table = torch.full(
                (self.batches * ex * ey,), self.num_columns, dtype=torch.int32, device=device
            )
            self.column_table[columns] = torch.arange(
                self.num_columns, dtype=torch.int32, device=device
            )
            zero = torch.zeros(1, dtype=torch.int64, device=device)
            span_start = torch.cumsum(torch.cat([zero, zext]), 0)  # [num_columns + 1]
            # Per column (start, zlo, zext); the extra last column is empty (zext 0).
            self.col_start = span_start.to(torch.int32)
            self.col_zlo = torch.cat([zlo, zero]).to(torch.int32)
            self.col_zext = torch.cat([zext, zero]).to(torch.int32)
            # One extra entry at the end: the "missing" row id.
            self.row_table = torch.full(
                (int(span_start[-1]) + 1,), self.num_rows, dtype=torch.int64, device=device
            )
            self.row_table[span_start[col_of_row] + gz_sorted - zlo[col_of_row]] = rows[order]
        else:
            keys = ((c[:, 0] * ex + gx) * ey + gy) * ez + gz
            self.sorted_keys, self.order = torch.sort(keys)

    def lookup(
        self,
        base: torch.Tensor,
        x_offs: torch.Tensor,
        y_offs: torch.Tensor,
        z_offs: torch.Tensor,
        impl: str = "auto",
    ) -> torch.Tensor:
        """Rows at ``base + (dx, dy, dz)`` for the product of the per-axis offsets.

        Args:
            base: ``[M, 4]`` int ``(batch, x, y, z)`` in stride-1 units.
            x_offs, y_offs, z_offs: ``[kx]``, ``[ky]``, ``[kz]`` int64 offsets, stride-1 units.
            impl: for the "dense" layout, ``"triton"`` (one kernel,
                :func:`.._triton.dense_lookup`: CUDA, or CPU under triton's interpreter),
                ``"torch"`` (chunks of torch ops) or ``"auto"`` (triton on CUDA where it is
                importable); the other layouts have one implementation each.

        Returns:
            ``[M, kx * ky * kz]`` int64 row ids, offsets row-major (x slowest), ``num_rows``
            where the site is not in the set.
        """
        check_impl("CoordIndex.lookup", impl, ("auto", "torch", "triton"))
        m = base.shape[0]
        kx, ky, kz = x_offs.numel(), y_offs.numel(), z_offs.numel()
        if self.num_rows == 0 or m == 0:
            return torch.full(
                (m, kx * ky * kz), self.num_rows, dtype=torch.int64, device=base.device
            )
        if self.layout == "columns":
            kernels = numba_kernels(base.device)
            out = torch.from_numpy(kernels.filled((m, kx * ky * kz), np.int64, self.num_rows))
            kernels.lookup_columns(
                base.numpy(),
                x_offs.numpy(),
                y_offs.numpy(),
                z_offs.numpy(),
                *self._geometry,
                self.batches,
                *self._tables,
                out.numpy(),
            )
            return out
        if self.layout == "dense" and impl != "torch":
            use_triton = _triton.available(base) and (
                impl == "triton" or base.device.type == "cuda"
            )
            if impl == "triton" and not use_triton:
                raise unavailable(
                    "CoordIndex.lookup", impl, "it needs CUDA (or TRITON_INTERPRET=1) and triton"
                )
            if use_triton:
                return _triton.dense_lookup(
                    base,
                    [x_offs, y_offs, z_offs],
                    (list(self.stride), self.lo, self.ext),
                    self.batches,
                    (
                        self.column_table,
                        self.col_start,
                        self.col_zlo,
                        self.col_zext,
                        self.row_table,
                    ),
                    self.num_rows,
                )
        out = torch.empty((m, kx * ky * kz), dtype=torch.int64, device=base.device)
        # Chunks keep the temporaries small: cache resident, and reused by the allocator instead
        # of being freshly page-faulted on every call (which dominated the unchunked version).
        # On a GPU each chunk costs a few dozen kernel launches: there, large chunks.
        chunk = self.chunk_rows if base.device.type == "cpu" else self.chunk_rows_gpu
        for start in range(0, m, chunk):
            end = min(start + chunk, m)
            out[start:end] = self._lookup_chunk(base[start:end], x_offs, y_offs, z_offs).t()
        return out

    def trilinear(
        self, points: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``[N, 8]`` int64 and renormalized weights ``[N, 8]`` (``dtype``) of the
        trilinear corners of ``points [N, 4]`` float (stride-1 units) in one numba pass
        (:func:`._numba.trilinear_columns`; the convention of :mod:`..point_voxel`). "columns"
        layout only."""
        kernels = self._columns_kernels("trilinear")
        n = points.shape[0]
        rows = torch.empty((n, 8), dtype=torch.int64)
        weights = torch.empty((n, 8), dtype=dtype)
        if n:
            pts = points.detach().contiguous().numpy()
            consts = np.array([0.5, 1.0], dtype=pts.dtype)
            kernels.trilinear_columns(
                pts, consts, *self._columns_args(), self.num_rows, rows.numpy(), weights.numpy()
            )
        return rows, weights

    def point_rows(self, points: torch.Tensor) -> torch.Tensor:
        """``[N]`` int64 row of the voxel ``floor(p / stride) * stride`` each point of ``points
        [N, 4]`` float (stride-1 units) falls in, ``num_rows`` where absent, in one numba pass
        (:func:`._numba.point_rows_columns`). "columns" layout only."""
        kernels = self._columns_kernels("point_rows")
        rows = torch.empty(points.shape[0], dtype=torch.int64)
        if points.shape[0]:
            kernels.point_rows_columns(
                points.detach().contiguous().numpy(), *self._columns_args(), self.num_rows,
                rows.numpy(),
            )  # fmt: skip
        return rows

    def _columns_kernels(self, name: str) -> ModuleType:
        if self.layout != "columns":
            raise ValueError(f"CoordIndex.{name} needs the 'columns' layout, not {self.layout!r}")
        return numba_kernels(self.device)

    def _columns_args(self) -> tuple:
        """The geometry and tables of a "columns" index, as its kernels take them."""
        if self.num_rows == 0:  # no tables: every site is absent
            empty = np.zeros(1, dtype=np.uint64)
            tables = (empty, np.zeros(1, np.int32), np.zeros((1, 1), np.uint64),
                      np.zeros(2, np.int32), np.zeros(1, np.int32))  # fmt: skip
            return (*(np.asarray(v, dtype=np.int64) for v in (self.stride, self.lo, self.ext)),
                    0, *tables)  # fmt: skip
        return (*self._geometry, self.batches, *self._tables)

    chunk_rows = 8192
    chunk_rows_gpu = 1 << 18

    def _lookup_chunk(
        self,
        base: torch.Tensor,
        x_offs: torch.Tensor,
        y_offs: torch.Tensor,
        z_offs: torch.Tensor,
    ) -> torch.Tensor:
        """Rows for a chunk, offset-major: ``[K, M]`` int64."""
        m = base.shape[0]
        kx, ky, kz = x_offs.numel(), y_offs.numel(), z_offs.numel()
        # Dense tables have < 2**31 entries (see make_coord_index), so int32 arithmetic is exact.
        dtype = torch.int32 if self.layout == "dense" else torch.int64
        ex, ey, ez = self.ext
        qx, vx = _axis_queries(base[:, 1], x_offs, self.stride[0], self.lo[0], ex, dtype)
        qy, vy = _axis_queries(base[:, 2], y_offs, self.stride[1], self.lo[1], ey, dtype)
        qz, vz = _axis_queries(base[:, 3], z_offs, self.stride[2], self.lo[2], ez, dtype)
        b = base[:, 0].to(dtype)
        vb = b < self.batches
        b = b.clamp(max=self.batches - 1)
        # [kx, ky, M] column keys and validity.
        colkey = (b * ex + qx.view(kx, 1, m)) * ey + qy.view(1, ky, m)
        valid = (vb & vx.view(kx, 1, m) & vy.view(1, ky, m)).view(kx, ky, 1, m)
        valid = valid & vz.view(1, 1, kz, m)  # [kx, ky, kz, M]
        if self.layout == "dense":
            # index_select: several times faster than advanced indexing for 1-D gathers.
            col = self.column_table.index_select(0, colkey.view(-1))  # [kx * ky * M]
            start = self.col_start.index_select(0, col).view(kx, ky, 1, m)
            zlo = self.col_zlo.index_select(0, col).view(kx, ky, 1, m)
            zext = self.col_zext.index_select(0, col).view(kx, ky, 1, m)
            dz = qz.view(1, 1, kz, m) - zlo
            valid = valid & (dz >= 0) & (dz < zext)
            idx = torch.where(valid, start + dz, self.row_table.numel() - 1)
            rows = self.row_table.index_select(0, idx.view(-1))
        else:
            keys = (colkey.view(kx, ky, 1, m) * ez + qz.view(1, 1, kz, m)).view(-1)
            pos = torch.searchsorted(self.sorted_keys, keys).clamp_(max=self.num_rows - 1)
            found = (self.sorted_keys.index_select(0, pos) == keys) & valid.view(-1)
            rows = torch.where(found, self.order.index_select(0, pos), self.num_rows)
        return rows.view(kx * ky * kz, m)


def make_coord_index(
    coords: torch.Tensor, stride: Triple, layout: str = "auto", max_table: int = 1 << 26
) -> CoordIndex:
    """A :class:`CoordIndex` of ``coords [N, 4]``; ``layout`` "auto" picks, for CPU tensors
    where numba is importable, "columns" when its column bitmap and z masks stay under
    ``max_table * 8`` bits each; elsewhere "dense" when its tables stay
    under ``max_table`` entries, else "sorted"."""
    if layout not in ("auto", "columns", "dense", "sorted"):
        raise ValueError(f"unknown coordinate index layout {layout!r}")
    if layout == "auto" and numba_kernels(coords.device) is not None and coords.shape[0]:
        c = coords.to(torch.int64)
        ext = [int(c[:, 1 + a].max() - c[:, 1 + a].min()) // stride[a] + 1 for a in range(3)]
        batches = int(c[:, 0].max()) + 1
        words = (ext[2] + 63) // 64
        if max(batches * ext[0] * ext[1], coords.shape[0] * words * 64) <= max_table * 8:
            layout = "columns"
    if layout == "auto":
        layout = "sorted"
        if coords.shape[0]:
            c = coords.to(torch.int64)
            ext = [int(c[:, 1 + a].max() - c[:, 1 + a].min()) // stride[a] + 1 for a in range(3)]
            batches = int(c[:, 0].max()) + 1
            # The row table is at most N * Z entries.
            if batches * ext[0] * ext[1] <= max_table and coords.shape[0] * ext[2] <= max_table:
                layout = "dense"
    return CoordIndex(coords, stride, layout)


def _transpose_table(nbr: torch.Tensor, num_in: int) -> torch.Tensor:
    """``nbr [N_out, K]`` -> ``nbr_t [N_in, K]`` (each (input, offset) has at most one output)."""
    num_out, k = nbr.shape
    nbr_t = torch.full((num_in * k,), num_out, dtype=torch.int64, device=nbr.device)
    out_idx, k_idx = torch.nonzero(nbr < num_in, as_tuple=True)
    nbr_t[nbr[out_idx, k_idx] * k + k_idx] = out_idx
    return nbr_t.view(num_in, k)


def axis_offsets(kernel_size: Triple, dilation: Triple, unit: Triple) -> list[torch.Tensor]:
    """Per-axis kernel offsets ``(k - c) * d * unit`` as three ``[k_a]`` int64 tensors."""
    return [
        (torch.arange(k, dtype=torch.int64) - (k - 1) // 2) * d * u
        for k, d, u in zip(kernel_size, dilation, unit)
    ]


def build_kernel_map(
    in_index: CoordIndex,
    out_index: CoordIndex,
    in_coords: torch.Tensor,
    out_coords: torch.Tensor,
    kernel_size: Triple,
    dilation: Triple,
    in_stride: Triple,
) -> KernelMap:
    """Neighbour tables of a convolution from ``in_coords`` to ``out_coords``.

    Output ``j`` reads the input at ``out_coords[j] + offset_k * in_stride``; the transposed
    table is looked up the other way (``in_coords[i] - offset_k * in_stride`` in the outputs),
    which avoids scattering the forward table.

    Args:
        in_index, out_index: indexes of ``in_coords [N_in, 4]`` and ``out_coords [N_out, 4]``.
        kernel_size, dilation: of the convolution; in_stride: stride of the input tensor.
    """
    device = in_coords.device
    offs = [o.to(device) for o in axis_offsets(kernel_size, dilation, in_stride)]
    nbr = in_index.lookup(out_coords, *offs)
    if in_index is out_index and all(k % 2 == 1 for k in kernel_size):
        # nbr with the offsets reversed, built when a backward asks for it
        return KernelMap(nbr, None, in_coords.shape[0], out_coords.shape[0], symmetric=True)
    nbr_t = out_index.lookup(in_coords, *[-o.flip(0) for o in offs]).flip(1)
    return KernelMap(nbr, nbr_t, in_coords.shape[0], out_coords.shape[0])


def downsample_coords(
    coords: torch.Tensor,
    in_stride: Triple,
    kernel_size: Triple,
    stride: Triple,
    dilation: Triple,
) -> torch.Tensor:
    """Output sites of a strided convolution: every site whose window holds an active input.

    Args:
        coords: ``[N, 4]`` int32/int64, multiples of ``in_stride``.

    Returns:
        ``[M, 4]`` int32, unique, sorted by (batch, x, y, z), spatial parts multiples of
        ``in_stride * stride`` and non-negative (as a dense conv with padding ``c * d``).
    """
    if coords.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.int32, device=coords.device)
    keys, _, _, hi = _strided_pairs(coords, in_stride, kernel_size, stride, dilation)
    out_stride: Triple = tuple(a * b for a, b in zip(in_stride, stride))  # type: ignore[assignment]
    return _sites_from_keys(torch.unique(keys), hi, out_stride)


def _strided_pairs(
    coords: torch.Tensor,
    in_stride: Triple,
    kernel_size: Triple,
    stride: Triple,
    dilation: Triple,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Every (input, offset) pair of a strided conv that lands on an output site.

    Input ``i`` at grid index ``g`` (input-stride units) is read at offset ``o`` by the output
    at grid index ``(g - o) / stride`` when that is a non-negative integer: enumerating these
    from the input side gives the output sites and the whole kernel map at once, with no
    coordinate lookups.

    Args:
        coords: ``[N, 4]`` int32/int64, multiples of ``in_stride``, ``N > 0``.

    Returns:
        ``keys [P]`` int64 output-site keys (row-major over ``(batch, x, y, z)`` in output-grid
        units, so sorting them sorts the sites), ``in_idx [P]`` int64, ``k_idx [P]`` int64
        (pairs ordered by offset), and the key radix ``[hx, hy, hz]``.
    """
    n = coords.shape[0]
    c = coords.to(torch.int64)
    cand, valid = [], []
    for a in range(3):
        grid = c[:, 1 + a] // in_stride[a]  # [N] in input-grid units
        offs = (torch.arange(kernel_size[a], device=c.device) - (kernel_size[a] - 1) // 2) * (
            dilation[a]
        )
        j = grid.unsqueeze(0) - offs.unsqueeze(1)  # [k_a, N]: output grid index * stride
        valid.append((j % stride[a] == 0) & (j >= 0))
        cand.append(torch.div(j, stride[a], rounding_mode="floor").clamp_(min=0))
    kx, ky, kz = kernel_size
    hi = [int(cand[a].max()) + 1 for a in range(3)]
    # [kx, ky, kz, N] validity and keys, offset-major so the selected pairs come out by offset.
    mask = valid[0].view(kx, 1, 1, n) & valid[1].view(1, ky, 1, n) & valid[2].view(1, 1, kz, n)
    flat = torch.nonzero(mask.view(-1)).squeeze(1)  # [P] = k * N + i
    k_idx = torch.div(flat, n, rounding_mode="floor")
    in_idx = flat - k_idx * n
    ix = torch.div(k_idx, ky * kz, rounding_mode="floor")
    iy = torch.div(k_idx, kz, rounding_mode="floor") % ky
    iz = k_idx % kz
    # cand[a] is [k_a, N]: the flat index of (offset component, input) is comp * N + input.
    jx = cand[0].view(-1)[ix * n + in_idx]
    jy = cand[1].view(-1)[iy * n + in_idx]
    jz = cand[2].view(-1)[iz * n + in_idx]
    keys = ((c[:, 0][in_idx] * hi[0] + jx) * hi[1] + jy) * hi[2] + jz
    return keys, in_idx, k_idx, hi


def _sites_from_keys(keys: torch.Tensor, hi: list[int], out_stride: Triple) -> torch.Tensor:
    """Output-grid keys (see :func:`_strided_pairs`) -> ``[M, 4]`` int32 coordinates."""
    z = keys % hi[2]
    rest = torch.div(keys, hi[2], rounding_mode="floor")
    y = rest % hi[1]
    rest = torch.div(rest, hi[1], rounding_mode="floor")
    x = rest % hi[0]
    b = torch.div(rest, hi[0], rounding_mode="floor")
    return torch.stack([b, x * out_stride[0], y * out_stride[1], z * out_stride[2]], dim=1).to(
        torch.int32
    )


def build_strided_kernel_map(
    coords: torch.Tensor,
    in_stride: Triple,
    kernel_size: Triple,
    stride: Triple,
    dilation: Triple,
    impl: str = "auto",
    transpose: bool = True,
) -> tuple[torch.Tensor, KernelMap]:
    """Output sites and kernel map of a strided conv, in one pass over the input pairs.

    Args:
        transpose: build the transposed table in the same pass (numba path); without it the
            map makes it on first use (only a backward or a transposed conv needs it).
        impl: ``"numba"`` (CPU: a column index of the sites,
            :func:`._numba.strided_map_columns`), ``"torch"`` (vectorized enumeration +
            ``torch.unique``; the reference, and the CUDA path) or ``"auto"`` (numba where it
            can run).

    Returns:
        ``out_coords [M, 4]`` int32 (as :func:`downsample_coords`) and the :class:`KernelMap`
        from ``coords [N, 4]`` to them.
    """
    check_impl("build_strided_kernel_map", impl, ("auto", "torch", "numba"))
    kernels = numba_kernels(coords.device) if impl != "torch" else None
    if impl == "numba" and kernels is None:
        raise unavailable("build_strided_kernel_map", impl, "it needs CPU coordinates and numba")
    device = coords.device
    k = kernel_size[0] * kernel_size[1] * kernel_size[2]
    num_in = coords.shape[0]
    out_stride: Triple = tuple(a * b for a, b in zip(in_stride, stride))  # type: ignore[assignment]
    if num_in == 0:
        out = torch.zeros((0, 4), dtype=torch.int32, device=device)
        empty = torch.zeros((0, k), dtype=torch.int64, device=device)
        return out, KernelMap(empty, empty.clone(), 0, 0)
    if kernels is not None:
        geometry = [
            np.asarray(v, dtype=np.int64) for v in (in_stride, kernel_size, stride, dilation)
        ]
        out, nbr, nbr_t = kernels.strided_map_columns(coords.numpy(), *geometry, transpose)
        nbr_t = None if nbr_t is None else torch.from_numpy(nbr_t)
        kmap = KernelMap(torch.from_numpy(nbr), nbr_t, num_in, nbr.shape[0])
        return torch.from_numpy(out), kmap
    keys, in_idx, k_idx, hi = _strided_pairs(coords, in_stride, kernel_size, stride, dilation)
    sites, out_idx = torch.unique(keys, return_inverse=True)  # sorted
    num_out = sites.shape[0]
    nbr = torch.full((num_out * k,), num_in, dtype=torch.int64, device=device)
    nbr[out_idx * k + k_idx] = in_idx  # each (output, offset) has at most one input
    nbr_t = torch.full((num_in * k,), num_out, dtype=torch.int64, device=device)
    nbr_t[in_idx * k + k_idx] = out_idx
    counts = torch.bincount(k_idx, minlength=k).tolist()
    pairs = list(zip(in_idx.split(counts), out_idx.split(counts)))
    kmap = KernelMap(nbr.view(num_out, k), nbr_t.view(num_in, k), num_in, num_out, pairs)
    return _sites_from_keys(sites, hi, out_stride), kmap


def build_kernel_map_reference(
    in_coords: torch.Tensor, out_coords: torch.Tensor, offsets: torch.Tensor
) -> KernelMap:
    """Plain-Python oracle for :func:`build_kernel_map` (a dict of coordinates; tiny inputs)."""
    lookup = {tuple(row): i for i, row in enumerate(in_coords.tolist())}
    num_in, num_out, k = in_coords.shape[0], out_coords.shape[0], offsets.shape[0]
    nbr = torch.full((num_out, k), num_in, dtype=torch.int64)
    for j, (b, x, y, z) in enumerate(out_coords.tolist()):
        for o, (dx, dy, dz) in enumerate(offsets.tolist()):
            nbr[j, o] = lookup.get((b, x + dx, y + dy, z + dz), num_in)
    nbr = nbr.to(in_coords.device)
    return KernelMap(nbr, _transpose_table(nbr, num_in), num_in, num_out)


def downsample_coords_reference(
    coords: torch.Tensor,
    in_stride: Triple,
    kernel_size: Triple,
    stride: Triple,
    dilation: Triple,
) -> torch.Tensor:
    """Plain-Python oracle for :func:`downsample_coords`."""
    out = set()
    offs = kernel_offsets(kernel_size, dilation).tolist()
    out_stride = [in_stride[a] * stride[a] for a in range(3)]
    for b, *xyz in coords.tolist():
        for off in offs:
            o = [xyz[a] - off[a] * in_stride[a] for a in range(3)]
            if all(o[a] >= 0 and o[a] % out_stride[a] == 0 for a in range(3)):
                out.add((b, *o))
    rows = sorted(out)
    return torch.tensor(rows, dtype=torch.int32).view(-1, 4).to(coords.device)
