"""Plain references for BEV pooling: the LSS cumsum trick and a naive ``index_add_``.

The test oracles for :mod:`perception.ops.bev_pool` (same contract as
:func:`perception.ops.bev_pool`, but the output is in the default contiguous layout).
Gradients come from autograd through ordinary PyTorch ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .bev_pool import _cell_of_points, check_bev_coords


def _check(feats: torch.Tensor, coords: torch.Tensor, batch_size: int, grid: Sequence[int]):
    if not feats.is_floating_point() or feats.dim() != 2:
        raise ValueError(f"feats must be [N, C] float, got {tuple(feats.shape)} {feats.dtype}")
    batch_size, grid = check_bev_coords(coords, batch_size, grid)
    if coords.dim() != 2 or coords.shape[0] != feats.shape[0]:
        raise ValueError(f"coords must be [N={feats.shape[0]}, 4], got {tuple(coords.shape)}")
    return batch_size, grid


def _to_bev(cells: torch.Tensor, batch_size: int, grid: Sequence[int]) -> torch.Tensor:
    """``[cells, C]`` -> contiguous ``[B, C, Z, X, Y]``."""
    z_, x_, y_ = grid
    c = cells.shape[1]
    return cells.view(batch_size, z_, x_, y_, c).permute(0, 4, 1, 2, 3).contiguous()


def bev_pool_index_add(
    feats: torch.Tensor, coords: torch.Tensor, batch_size: int, grid: Sequence[int]
) -> torch.Tensor:
    """``index_add_`` of every kept point's features into its cell.

    Args:
        feats: ``[N, C]`` float; coords: ``[N, 4]`` int ``(batch, z, x, y)``.

    Returns:
        ``[B, C, Z, X, Y]`` contiguous.
    """
    batch_size, grid = _check(feats, coords, batch_size, grid)
    cell, kept = _cell_of_points(coords, batch_size, grid)
    num_cells = batch_size * grid[0] * grid[1] * grid[2]
    cells = feats.new_zeros(num_cells + 1, feats.shape[1])  # the last row collects dropped points
    cells = cells.index_add(0, cell, feats)
    return _to_bev(cells[:num_cells], batch_size, grid)


def bev_pool_cumsum(
    feats: torch.Tensor, coords: torch.Tensor, batch_size: int, grid: Sequence[int]
) -> torch.Tensor:
    """Lift-Splat-Shoot's cumsum trick: sort kept points by cell, cumulative-sum the
    features, take the sums at interval ends and difference them.

    Args:
        feats: ``[N, C]`` float; coords: ``[N, 4]`` int ``(batch, z, x, y)``.

    Returns:
        ``[B, C, Z, X, Y]`` contiguous.
    """
    batch_size, grid = _check(feats, coords, batch_size, grid)
    cell, kept = _cell_of_points(coords, batch_size, grid)
    num_cells = batch_size * grid[0] * grid[1] * grid[2]
    feats, cell = feats[kept], cell[kept]
    order = torch.argsort(cell)
    feats, cell = feats[order], cell[order]
    if cell.numel() == 0:  # nothing to sum; index_add keeps the (empty) autograd link
        zeros = feats.new_zeros(num_cells, feats.shape[1]).index_add(0, cell, feats)
        return _to_bev(zeros, batch_size, grid)
    csum = feats.cumsum(0)
    last = torch.ones_like(cell, dtype=torch.bool)
    last[:-1] = cell[1:] != cell[:-1]
    csum, cell = csum[last], cell[last]
    sums = torch.cat([csum[:1], csum[1:] - csum[:-1]])
    cells = feats.new_zeros(num_cells, feats.shape[1]).index_put((cell,), sums)
    return _to_bev(cells, batch_size, grid)


def bev_pool_depth_reference(
    depth: torch.Tensor,
    context: torch.Tensor,
    coords: torch.Tensor,
    batch_size: int,
    grid: Sequence[int],
) -> torch.Tensor:
    """Materializes ``depth[:, :, None] * context[:, None]`` and pools it with ``index_add_``.

    Args:
        depth: ``[Ncam, D, H, W]``; context: ``[Ncam, C, H, W]``;
        coords: ``[Ncam, D, H, W, 4]`` int ``(batch, z, x, y)``.

    Returns:
        ``[B, C, Z, X, Y]`` contiguous.
    """
    feats = depth[:, :, None] * context[:, None]  # [Ncam, D, C, H, W]
    feats = feats.permute(0, 1, 3, 4, 2).reshape(-1, context.shape[1])  # [Ncam*D*H*W, C]
    return bev_pool_index_add(feats, coords.reshape(-1, 4), batch_size, grid)
