"""Numba CPU kernel for :func:`perception.ops.bev_pool` (the materialized-feature pool).

Point-order scatter, partitioned by cell: the cells are cut into one contiguous range per
thread holding about the same number of points (from the plan's CSR offsets); each thread
zeroes its range of the output (so it first-touches its own pages: on the project's VM two
threads faulting the same fresh huge pages are several times slower than one) and then walks
the points in input order, adding the rows whose cell it owns. The features are read in
storage order, about once in all (each thread skips the rows of the other ranges), instead of
gathered in cell order, and no two threads write the same row: no atomics, and each cell sums
its points in input order, as ``index_add_`` does, whatever the thread count.
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
