"""Numba CPU kernels for :func:`perception.ops.bev_pool` and :func:`perception.ops.bev_pool_depth`.

:func:`pool` (the materialized-feature pool):
Point-order scatter, partitioned by cell: the cells are cut into one contiguous range per
thread holding about the same number of points (from the plan's CSR offsets); each thread
zeroes its range of the output (so it first-touches its own pages: on the project's VM two
threads faulting the same fresh huge pages are several times slower than one) and then walks
the points in input order, adding the rows whose cell it owns. The features are read in
storage order, about once in all (each thread skips the rows of the other ranges), instead of
gathered in cell order, and no two threads write the same row: no atomics, and each cell sums
its points in input order, as ``index_add_`` does, whatever the thread count.

:func:`csr_spmm` and :func:`sampled_dot` (the fused pool, forward and backward): a CSR matrix
times a dense one, parallel over ranges of rows holding about the same number of entries, each
task zeroing (first-touching) its own rows; and one dot product per CSR entry.
"""

from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange


@njit(cache=True, nogil=True, parallel=True)
def _pool_points(feats, point_rows, point_cell, bounds, out):
    """``out[cell] = sum of feats[i]`` over the kept points ``i`` of ``cell``.

    ``point_rows [N + 1]``: CSR offsets (one entry for a kept point, none for a dropped one);
    ``point_cell [K]``: kept points' cells in point order; ``bounds [T + 1]``: the cell ranges;
    ``out [cells, C]``: written whole (zeros where no point falls).
    """
    n, c = feats.shape
    for t in prange(bounds.shape[0] - 1):
        first, last = bounds[t], bounds[t + 1]
        for cell in range(first, last):
            for j in range(c):
                out[cell, j] = 0
        for i in range(n):
            r = point_rows[i]
            if point_rows[i + 1] == r:
                continue
            cell = point_cell[r]
            if cell < first or cell >= last:
                continue
            for j in range(c):
                out[cell, j] += feats[i, j]


def pool(
    feats: np.ndarray, cell_offsets: np.ndarray, point_rows: np.ndarray, point_cell: np.ndarray
) -> np.ndarray:
    """``[cells, C]`` sums of ``feats [N, C]`` (C-contiguous) per cell of the plan."""
    num_cells = cell_offsets.shape[0] - 1
    num_kept = int(cell_offsets[-1])
    parts = max(1, min(get_num_threads(), num_cells))
    # cut where the running point count crosses k / parts of the kept points
    targets = (np.arange(1, parts, dtype=np.int64) * num_kept) // parts
    cuts = np.searchsorted(cell_offsets[1:], targets, side="left") + 1
    bounds = np.concatenate(([0], np.minimum(cuts, num_cells), [num_cells])).astype(np.int64)
    out = np.empty((num_cells, feats.shape[1]), dtype=feats.dtype)
    _pool_points(feats, point_rows, point_cell, bounds, out)
    return out


@njit(cache=True, nogil=True, parallel=True)
def _csr_rows(offsets, cols, values, dense, bounds, out):
    """``out[r] = sum_p values[p] * dense[cols[p]]`` over ``p in offsets[r]:offsets[r + 1]``,
    each task a contiguous range of rows (``bounds``) that it zeroes first (first touch)."""
    c = dense.shape[1]
    for t in prange(bounds.shape[0] - 1):
        for r in range(bounds[t], bounds[t + 1]):
            for j in range(c):
                out[r, j] = 0
            for p in range(offsets[r], offsets[r + 1]):
                v = values[p]
                q = cols[p]
                for j in range(c):
                    out[r, j] += v * dense[q, j]


def csr_spmm(
    offsets: np.ndarray, cols: np.ndarray, values: np.ndarray, dense: np.ndarray
) -> np.ndarray:
    """``[R, C]``: CSR ``(offsets [R + 1], cols, values)`` times ``dense [M, C]``, parallel over
    row ranges holding about the same number of entries; each row sums its entries in order."""
    num_rows = offsets.shape[0] - 1
    nnz = int(offsets[-1])
    parts = max(1, min(get_num_threads(), num_rows))
    targets = (np.arange(1, parts, dtype=np.int64) * nnz) // parts
    cuts = np.searchsorted(offsets[1:], targets, side="left") + 1
    bounds = np.concatenate(([0], np.minimum(cuts, num_rows), [num_rows])).astype(np.int64)
    out = np.empty((num_rows, dense.shape[1]), dtype=dense.dtype)
    _csr_rows(offsets, cols, values, dense, bounds, out)
    return out


# reassociation lets the dot product vectorize (a strict left-to-right float sum cannot)
@njit(cache=True, nogil=True, parallel=True, fastmath={"reassoc", "contract"})
def _sampled_dot(offsets, cols, a, b, out):
    """``out[p] = <a[r], b[cols[p]]>`` for the entries ``p`` of each CSR row ``r``."""
    c = a.shape[1]
    for r in prange(offsets.shape[0] - 1):
        for p in range(offsets[r], offsets[r + 1]):
            q = cols[p]
            acc = a[r, 0] * b[q, 0]  # c >= 1: callers return early for no channels
            for j in range(1, c):
                acc += a[r, j] * b[q, j]
            out[p] = acc


def sampled_dot(offsets: np.ndarray, cols: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[nnz]``: per entry ``p`` of CSR row ``r``, ``<a[r], b[cols[p]]>``."""
    out = np.empty(int(offsets[-1]), dtype=a.dtype)
    _sampled_dot(offsets, cols, a, b, out)
    return out
