"""Modules over SparseTensor: Conv3d, BatchNorm, ReLU, and dense / BEV conversions."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._impl import Impl, check_impl
from .functional import IMPLS, OP, conv3d
from .kernel_map import Triple, as_triple
from .tensor import SparseTensor


class Conv3d(nn.Module):
    """Sparse 3-D convolution (torchsparse semantics, see :func:`.functional.conv3d`).

    Args:
        in_channels, out_channels: feature widths.
        kernel_size, stride, dilation: ints or 3-tuples. Stride 1 is submanifold (output
            coordinates = input coordinates).
        transposed: upsample onto the coordinates of the matching strided conv.
        bias: add a learned ``[out_channels]`` bias.
        deterministic: bitwise reproducible results on every device.
        impl: how the layer computes, one of :data:`.functional.IMPLS` (default "auto").

    Attributes:
        weight: ``[K, in_channels, out_channels]``, ``K = kx * ky * kz`` offsets row-major.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Triple = 3,
        stride: int | Triple = 1,
        dilation: int | Triple = 1,
        transposed: bool = False,
        bias: bool = False,
        *,
        deterministic: bool = False,
        impl: Impl = "auto",
    ) -> None:
        super().__init__()
        check_impl(OP, impl, IMPLS)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = as_triple(kernel_size, "kernel_size")
        self.stride = as_triple(stride, "stride")
        self.dilation = as_triple(dilation, "dilation")
        self.transposed = transposed
        self.deterministic = deterministic
        self.impl = impl
        k = math.prod(self.kernel_size)
        self.weight = nn.Parameter(torch.empty(k, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = (self.out_channels if self.transposed else self.in_channels) * self.weight.shape[0]
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return conv3d(
            x,
            self.weight,
            self.bias,
            kernel_size=self.kernel_size,
            stride=self.stride,
            dilation=self.dilation,
            transposed=self.transposed,
            deterministic=self.deterministic,
            impl=self.impl,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, dilation={self.dilation}, transposed={self.transposed}, "
            f"bias={self.bias is not None}"
        )


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm over the voxels' features ``[N, C]`` (statistics over all active voxels)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        if len(x) == 0:
            return x
        return x.replace_feats(super().forward(x.feats))


class ReLU(nn.ReLU):
    """ReLU over the voxels' features."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace_feats(super().forward(x.feats))


def to_dense(
    x: SparseTensor, spatial_shape: tuple[int, int, int], batch_size: int | None = None
) -> torch.Tensor:
    """Scatter a sparse tensor into a dense grid (differentiable).

    Args:
        x: ``feats [N, C]`` at stride ``s``.
        spatial_shape: ``(X, Y, Z)`` of the grid, in units of the tensor stride (voxel
            ``coords // s``).
        batch_size: ``B``; the largest batch index + 1 when None.

    Returns:
        ``[B, C, X, Y, Z]`` with zeros where no voxel is active.

    Raises:
        ValueError: a voxel lies outside the grid.
    """
    gx, gy, gz = spatial_shape
    b_size = x.batch_size() if batch_size is None else batch_size
    c = x.feats.shape[1]
    coords = x.coords.to(torch.int64)
    if len(x):
        grid = torch.stack([coords[:, 1 + a] // x.stride[a] for a in range(3)], dim=1)
        limit = torch.tensor([gx, gy, gz], device=grid.device)
        if bool((grid >= limit).any()) or int(coords[:, 0].max()) >= b_size:
            raise ValueError(f"voxels outside the dense grid {spatial_shape} x batch {b_size}")
        flat = ((coords[:, 0] * gx + grid[:, 0]) * gy + grid[:, 1]) * gz + grid[:, 2]
    else:
        flat = coords.new_zeros(0)
    dense = x.feats.new_zeros(b_size * gx * gy * gz, c).index_copy(0, flat, x.feats)
    return dense.view(b_size, gx, gy, gz, c).permute(0, 4, 1, 2, 3).contiguous()


def height_compression(
    x: SparseTensor, spatial_shape: tuple[int, int, int], batch_size: int | None = None
) -> torch.Tensor:
    """BEV feature map from a sparse tensor: the ``Z`` axis is folded into channels.

    Returns:
        ``[B, C * Z, X, Y]``; channel ``c * Z + z`` holds feature ``c`` of height cell ``z``
        (as SECOND/OpenPCDet's HeightCompression: channel-major, then height).
    """
    dense = to_dense(x, spatial_shape, batch_size)  # [B, C, X, Y, Z]
    b, c, gx, gy, gz = dense.shape
    return dense.permute(0, 1, 4, 2, 3).reshape(b, c * gz, gx, gy)


class ToDense(nn.Module):
    """Module form of :func:`to_dense` for a fixed ``spatial_shape``."""

    def __init__(self, spatial_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.spatial_shape = tuple(spatial_shape)

    def forward(self, x: SparseTensor, batch_size: int | None = None) -> torch.Tensor:
        return to_dense(x, self.spatial_shape, batch_size)  # type: ignore[arg-type]


class HeightCompression(nn.Module):
    """Module form of :func:`height_compression` for a fixed ``spatial_shape``."""

    def __init__(self, spatial_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.spatial_shape = tuple(spatial_shape)

    def forward(self, x: SparseTensor, batch_size: int | None = None) -> torch.Tensor:
        return height_compression(x, self.spatial_shape, batch_size)  # type: ignore[arg-type]
