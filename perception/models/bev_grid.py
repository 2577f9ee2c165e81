"""The bird's-eye-view grid every BEV tensor of the model lives on.

Convention (shared by the LiDAR encoder, the camera view transform, the fuser, the decoder and
the heads): a BEV feature map is `[B, C, X, Y]`: dim 2 indexes the LiDAR frame's x, dim 3 its y
(docs/frames.md). Cell `(i, j)` covers
`[x_min + i * cell_x, x_min + (i + 1) * cell_x) x [y_min + j * cell_y, y_min + (j + 1) * cell_y)`.
Note that this is *not* the image convention `[H, W] = [y, x]`; plotting a map with `imshow`
puts x down the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BEVGrid:
    """A BEV grid over `point_range` (LiDAR frame, m) at `voxel_size * stride` per cell.

    `voxel_size` is the finest (voxelization) resolution; `stride` the output stride of the map
    this grid describes relative to it (BEVFusion nuScenes: voxels of 0.075 m, stride 8 ->
    0.6 m cells, a 180 x 180 map over +-54 m).
    """

    point_range: tuple[float, float, float, float, float, float]  # (x0, y0, z0, x1, y1, z1)
    voxel_size: tuple[float, float, float]  # (dx, dy, dz) m
    stride: int = 1

    def __post_init__(self) -> None:
        r, v = self.point_range, self.voxel_size
        if len(r) != 6 or not (r[0] < r[3] and r[1] < r[4] and r[2] < r[5]):
            raise ValueError(f"point_range must be (x0, y0, z0, x1, y1, z1), got {r}")
        if len(v) != 3 or min(v) <= 0:
            raise ValueError(f"voxel_size must be 3 positive floats, got {v}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        for axis, n in zip("xyz", self.voxel_shape):
            k = "xyz".index(axis)
            if abs(n * v[k] - (r[k + 3] - r[k])) > 1e-4 * v[k]:
                raise ValueError(f"point_range along {axis} is not a whole number of voxels")
        for axis, n in zip("xy", self.voxel_shape[:2]):
            if n % self.stride:
                raise ValueError(f"{n} voxels along {axis} do not divide by stride {self.stride}")

    @property
    def voxel_shape(self) -> tuple[int, int, int]:
        """`(X, Y, Z)` voxels at `voxel_size` (stride 1)."""
        r, v = self.point_range, self.voxel_size
        return tuple(round((r[k + 3] - r[k]) / v[k]) for k in range(3))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int]:
        """`(X, Y)`: the map's size in cells at this grid's stride."""
        x, y, _ = self.voxel_shape
        return x // self.stride, y // self.stride

    @property
    def cell_size(self) -> tuple[float, float]:
        """`(cell_x, cell_y)` in m."""
        return self.voxel_size[0] * self.stride, self.voxel_size[1] * self.stride

    @property
    def origin(self) -> tuple[float, float]:
        """`(x0, y0)`: the corner of cell `(0, 0)` in m."""
        return self.point_range[0], self.point_range[1]

    def with_stride(self, stride: int) -> BEVGrid:
        """The same range and voxels at another output stride."""
        return BEVGrid(point_range=self.point_range, voxel_size=self.voxel_size, stride=stride)

    def cell_centers(
        self, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """`[X, Y, 2]` the (x, y) centre of every cell, LiDAR frame, m."""
        (nx, ny), (cx, cy), (x0, y0) = self.shape, self.cell_size, self.origin
        xs = x0 + (torch.arange(nx, dtype=dtype, device=device) + 0.5) * cx  # [X]
        ys = y0 + (torch.arange(ny, dtype=dtype, device=device) + 0.5) * cy  # [Y]
        return torch.stack(torch.meshgrid(xs, ys, indexing="ij"), dim=-1)  # [X, Y, 2]

    def to_cells(self, xy: torch.Tensor) -> torch.Tensor:
        """`[..., 2]` (x, y) in m -> `[..., 2]` continuous cell coordinates (cell `(i, j)` spans
        `[i, i + 1) x [j, j + 1)`)."""
        (cx, cy), (x0, y0) = self.cell_size, self.origin
        scale = xy.new_tensor([cx, cy])
        return (xy - xy.new_tensor([x0, y0])) / scale

    def from_cells(self, ij: torch.Tensor) -> torch.Tensor:
        """Inverse of `to_cells`: `[..., 2]` continuous cell coordinates -> (x, y) in m."""
        (cx, cy), (x0, y0) = self.cell_size, self.origin
        return ij * ij.new_tensor([cx, cy]) + ij.new_tensor([x0, y0])

    def contains(self, ij: torch.Tensor) -> torch.Tensor:
        """`[..., 2]` integer cell indices -> `[...]` bool, True inside the map."""
        nx, ny = self.shape
        return (ij[..., 0] >= 0) & (ij[..., 0] < nx) & (ij[..., 1] >= 0) & (ij[..., 1] < ny)
