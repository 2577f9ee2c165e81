"""Numba CPU kernels for :func:`perception.ops.build_bev_pool_plan`: the plan by counting sorts.

The torch path sorts the points by cell (a comparison sort of ``N`` keys) and, for frustums,
finds the unique (cell, pixel) pairs with ``torch.unique`` and ``argsort`` (two more sorts).
Cells and pixels are small integers, so every one of those orders is a counting sort here:
one pass to count, a prefix sum, one pass to place, each stable. The orders are those of the
torch path exactly (the same plan, element for element; a test checks it):

* ``point_index``: kept points by cell, in point order within a cell;
* pairs: unique (cell, pixel) sorted by cell then pixel (an LSD radix sort of the kept points:
  by pixel, then by cell, both stable), ``point_pair`` the pair of each ``point_index`` entry;
* ``pair_by_pixel``: the pairs by pixel then cell (a stable sort of the cell-major pairs by
  pixel).

Single-threaded: a counting sort's placing pass is a sequence of dependent increments, and
at BEVFusion's camera shape (2M frustum points) one thread already takes a fraction of the
torch path's sorts.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def cells_of(coords, batch_size, z_, x_, y_, cell):
    """``cell[i]`` = the flat cell of ``coords[i] (b, z, x, y)``, or ``batch_size * z_ * x_ *
    y_`` when it lies outside the grid. Returns (kept count, min batch, max batch)."""
    num_cells = batch_size * z_ * x_ * y_
    kept = 0
    lo, hi = 0, 0
    for i in range(coords.shape[0]):
        b, z, x, y = coords[i, 0], coords[i, 1], coords[i, 2], coords[i, 3]
        if i == 0:
            lo, hi = b, b
        else:
            lo, hi = min(lo, b), max(hi, b)
        if 0 <= z < z_ and 0 <= x < x_ and 0 <= y < y_ and 0 <= b < batch_size:
            cell[i] = ((b * z_ + z) * x_ + x) * y_ + y
            kept += 1
        else:
            cell[i] = num_cells
    return kept, lo, hi


@njit(cache=True, nogil=True)
def sort_by_cell(cell, num_cells, cell_offsets, point_index, point_rows, point_cell):
    """Fills the 1-D plan: ``cell_offsets [cells + 1]``, ``point_index [K]`` (kept points by
    cell, stable), ``point_rows [N + 1]`` (exclusive prefix count of kept points),
    ``point_cell [K]`` (kept points' cells, point order)."""
    n = cell.shape[0]
    cell_offsets[:] = 0
    r = 0
    for i in range(n):
        point_rows[i] = r
        c = cell[i]
        if c < num_cells:
            cell_offsets[c + 1] += 1
            point_cell[r] = c
            r += 1
    point_rows[n] = r
    for k in range(num_cells):
        cell_offsets[k + 1] += cell_offsets[k]
    cursor = cell_offsets[:-1].copy()
    for i in range(n):
        c = cell[i]
        if c < num_cells:
            point_index[cursor[c]] = i
            cursor[c] += 1


@njit(cache=True, nogil=True)
def frustum_pairs(cell, point_index, num_cells, cameras, depth, height, width):
    """The pairs of a frustum plan from ``cell [N]`` (N = Ncam * D * H * W, row-major) and the
    1-D plan's ``point_index``. Returns ``(point_pair [K], pair_offsets [cells + 1],
    pair_pixel [P], pair_by_pixel [P], pixel_pair_offsets [pixels + 1], pixel_pair_cell [P])``
    as int64 arrays."""
    n = cell.shape[0]
    plane = height * width
    num_pixels = cameras * plane
    k = point_index.shape[0]
    # LSD radix over the kept points: stable by pixel, then stable by cell
    pixel_start = np.zeros(num_pixels + 1, np.int64)
    for i in range(n):
        if cell[i] < num_cells:
            pixel_start[(i // (depth * plane)) * plane + i % plane + 1] += 1
    for p in range(num_pixels):
        pixel_start[p + 1] += pixel_start[p]
    by_pixel = np.empty(k, np.int64)
    for i in range(n):
        if cell[i] < num_cells:
            p = (i // (depth * plane)) * plane + i % plane
            by_pixel[pixel_start[p]] = i
            pixel_start[p] += 1
    cell_start = np.zeros(num_cells + 1, np.int64)
    for j in range(k):
        cell_start[cell[point_index[j]] + 1] += 1
    for c in range(num_cells):
        cell_start[c + 1] += cell_start[c]
    by_cell_pixel = np.empty(k, np.int64)
    for j in range(k):
        i = by_pixel[j]
        c = cell[i]
        by_cell_pixel[cell_start[c]] = i
        cell_start[c] += 1
    # unique (cell, pixel) runs -> pairs
    pair_of_point = np.empty(n, np.int64)
    pair_cell = np.empty(k, np.int64)
    pair_pixel = np.empty(k, np.int64)
    pairs = 0
    last_c, last_p = -1, -1
    for j in range(k):
        i = by_cell_pixel[j]
        c = cell[i]
        p = (i // (depth * plane)) * plane + i % plane
        if c != last_c or p != last_p:
            pair_cell[pairs] = c
            pair_pixel[pairs] = p
            pairs += 1
            last_c, last_p = c, p
        pair_of_point[i] = pairs - 1
    point_pair = np.empty(k, np.int64)
    for j in range(k):
        point_pair[j] = pair_of_point[point_index[j]]
    pair_offsets = np.zeros(num_cells + 1, np.int64)
    for q in range(pairs):
        pair_offsets[pair_cell[q] + 1] += 1
    for c in range(num_cells):
        pair_offsets[c + 1] += pair_offsets[c]
    # pairs by pixel (stable over the cell-major pairs: pixel, then cell)
    pixel_pair_offsets = np.zeros(num_pixels + 1, np.int64)
    for q in range(pairs):
        pixel_pair_offsets[pair_pixel[q] + 1] += 1
    for p in range(num_pixels):
        pixel_pair_offsets[p + 1] += pixel_pair_offsets[p]
    cursor = pixel_pair_offsets[:-1].copy()
    pair_by_pixel = np.empty(pairs, np.int64)
    pixel_pair_cell = np.empty(pairs, np.int64)
    for q in range(pairs):
        p = pair_pixel[q]
        pair_by_pixel[cursor[p]] = q
        pixel_pair_cell[cursor[p]] = pair_cell[q]
        cursor[p] += 1
    return (
        point_pair,
        pair_offsets,
        pair_pixel[:pairs].copy(),
        pair_by_pixel,
        pixel_pair_offsets,
        pixel_pair_cell,
    )
