"""SPVConv LiDAR encoder: sparse voxel branch + point branch -> height compression -> LiDAR BEV.

The voxel branch is a SECOND/BEVFusion-style sparse encoder (a submanifold stem, then stages of
one strided conv and residual submanifold blocks, x2 in the ground plane per stage); the point
branch is SPVCNN's (Tang et al., "Searching Efficient 3D Architectures with Sparse Point-Voxel
Convolution", ECCV 2020): a per-point MLP that, after the stem and after every stage, reads the
voxel features at each point by trilinear devoxelization and writes its own features back to
the voxels by scatter-mean. The points keep full resolution, so fine geometry lost by the
downsampling voxels survives into the deeper layers.

Height compression folds the remaining height cells into channels (SECOND's
HeightCompression) and a 1x1 conv - BN - ReLU maps them to ``out_channels``. Output: a dense
BEV map ``[B, C, X', Y']`` on the :class:`~perception.models.bev_grid.BEVGrid`
of ``point_range`` / ``voxel_size`` at stride ``2 ** len(stage_channels)`` (x along dim 2, y
along dim 3, cell ``(0, 0)`` at the range minimum; LiDAR frame, docs/frames.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from perception.models.bev_grid import BEVGrid
from perception.ops.point_voxel import point_to_voxel, voxel_to_point
from perception.ops.sparse import BatchNorm, Conv3d, ReLU, SparseTensor, height_compression

from .voxelize import NUM_OFFSET_CHANNELS, voxelize_points


class SparseConvBlock(nn.Sequential):
    """Sparse conv - BN - ReLU (a submanifold conv at stride 1)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int | tuple[int, int, int] = 1,
        deterministic: bool = False,
    ) -> None:
        super().__init__(
            Conv3d(in_channels, out_channels, kernel_size, stride, deterministic=deterministic),
            BatchNorm(out_channels),
            ReLU(inplace=True),
        )


class SparseResidualBlock(nn.Module):
    """Two submanifold conv3-BN with an identity shortcut, then ReLU (ResNet basic block)."""

    bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))  # each BN right after its conv (deploy/fold.py)

    def __init__(self, channels: int, *, deterministic: bool = False) -> None:
        super().__init__()
        self.conv1 = Conv3d(channels, channels, 3, deterministic=deterministic)
        self.bn1 = BatchNorm(channels)
        self.conv2 = Conv3d(channels, channels, 3, deterministic=deterministic)
        self.bn2 = BatchNorm(channels)

    def forward(self, x: SparseTensor) -> SparseTensor:
        """``feats [N, C]`` -> ``[N, C]`` on the same coordinates."""
        y = torch.relu(self.bn1(self.conv1(x)).feats)  # [N, C]
        y = self.bn2(self.conv2(x.replace_feats(y))).feats  # [N, C]
        return x.replace_feats(torch.relu(y + x.feats))


def _point_mlp(in_channels: int, out_channels: int) -> nn.Sequential:
    """Per-point Linear - BN - ReLU on ``[N, C_in]`` -> ``[N, C_out]``."""
    return nn.Sequential(
        nn.Linear(in_channels, out_channels, bias=False),
        nn.BatchNorm1d(out_channels),
        nn.ReLU(inplace=True),
    )


class SPVConvEncoder(nn.Module):
    """Points of a batch -> LiDAR BEV map ``[B, out_channels, X', Y']``.

    Args:
        in_channels: point columns after the batch index, the first three ``(x, y, z)`` m
            (``Batch.points``: 5, with intensity and time_lag). Each point also gets its offset
            from its voxel's centre, so the first layers see ``in_channels + 3`` features.
        stem_channels: width of the stride-1 submanifold stem.
        stage_channels: width of each stage; stage ``i`` halves the ground-plane resolution, so
            the output stride is ``2 ** len(stage_channels)`` (3 stages: x8, as BEVFusion).
        stage_blocks: residual submanifold blocks per stage (after its strided conv).
        z_strides: per stage, 1 or 2: the strided conv's stride (and kernel) along height.
        point_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` m, LiDAR frame; whole
            voxels per axis, and ``X``, ``Y`` voxels divisible by the output stride.
        voxel_size: ``(dx, dy, dz)`` m of the stride-1 voxels.
        out_channels: channels of the BEV map.
        deterministic: passed to every sparse conv (bitwise reproducible on every device).

    Attributes:
        grid: the :class:`BEVGrid` of the output map.
        bev_height: height cells folded into channels by the height compression.
    """

    def __init__(
        self,
        *,
        in_channels: int = 5,
        stem_channels: int = 16,
        stage_channels: Sequence[int] = (32, 64, 128),
        stage_blocks: Sequence[int] = (1, 1, 1),
        z_strides: Sequence[int] = (2, 2, 2),
        point_range: tuple[float, float, float, float, float, float] = (
            -54.0,
            -54.0,
            -5.0,
            54.0,
            54.0,
            3.0,
        ),
        voxel_size: tuple[float, float, float] = (0.075, 0.075, 0.2),
        out_channels: int = 256,
        deterministic: bool = False,
    ) -> None:
        super().__init__()
        stage_channels = tuple(int(c) for c in stage_channels)
        stage_blocks = tuple(int(n) for n in stage_blocks)
        z_strides = tuple(int(s) for s in z_strides)
        if in_channels < 3:
            raise ValueError(f"in_channels must be >= 3 (x, y, z first), got {in_channels}")
        if not stage_channels:
            raise ValueError("SPVConvEncoder needs at least one stage")
        if len(stage_blocks) != len(stage_channels) or len(z_strides) != len(stage_channels):
            raise ValueError(
                "stage_channels, stage_blocks and z_strides must have one entry per stage, got "
                f"{len(stage_channels)}, {len(stage_blocks)}, {len(z_strides)}"
            )
        if any(s not in (1, 2) for s in z_strides):
            raise ValueError(f"z_strides must be 1 or 2 per stage, got {z_strides}")
        if any(n < 0 for n in stage_blocks):
            raise ValueError(f"stage_blocks must be >= 0, got {stage_blocks}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.grid = BEVGrid(
            point_range=tuple(float(v) for v in point_range),  # type: ignore[arg-type]
            voxel_size=tuple(float(v) for v in voxel_size),  # type: ignore[arg-type]
            stride=2 ** len(stage_channels),
        )
        self.bev_height = math.ceil(self.grid.voxel_shape[2] / math.prod(z_strides))

        feat_channels = in_channels + NUM_OFFSET_CHANNELS
        self.stem = SparseConvBlock(feat_channels, stem_channels, deterministic=deterministic)
        stages = []
        prev = stem_channels
        for channels, blocks, sz in zip(stage_channels, stage_blocks, z_strides):
            # Kernel = stride: every output voxel is the union of its children, so it always
            # holds points and the point->voxel write-back reaches every voxel.
            stages.append(
                nn.Sequential(
                    SparseConvBlock(
                        prev,
                        channels,
                        kernel_size=(2, 2, sz),
                        stride=(2, 2, sz),
                        deterministic=deterministic,
                    ),
                    *(
                        SparseResidualBlock(channels, deterministic=deterministic)
                        for _ in range(blocks)
                    ),
                )
            )
            prev = channels
        self.stages = nn.ModuleList(stages)
        # Point branch: one MLP per fusion (after the stem, then after every stage), each
        # taking the previous point features to the width of the voxels it is fused with.
        widths = (stem_channels, *stage_channels)
        self.point_mlps = nn.ModuleList(
            _point_mlp(c_in, c_out) for c_in, c_out in zip((feat_channels, *widths[:-1]), widths)
        )
        self.to_bev = nn.Sequential(
            # 1x1: a learned mix of the height cells per BEV cell. A 3x3 here would cost ~9x
            # (48 GFLOP at 640 -> 256 channels on nuScenes' 180 x 180); the BEV decoder that
            # follows has the spatial context.
            nn.Conv2d(prev * self.bev_height, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    @property
    def bev_shape(self) -> tuple[int, int]:
        """``(X', Y')`` of the output map (cells of ``voxel_size * 2 ** num_stages``)."""
        return self.grid.shape

    @property
    def output_stride(self) -> int:
        """Ground-plane downsampling from the stride-1 voxels to the BEV map."""
        return self.grid.stride

    def forward(
        self, points: torch.Tensor, batch_size: int, lidar_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encodes the batch's points into a BEV map.

        Args:
            points: ``[P, 1 + in_channels]`` float, ``(batch index, x, y, z, ...)``, LiDAR
                frame, m (``Batch.points``). Non-finite points and points outside
                ``point_range`` are dropped.
            batch_size: ``B``.
            lidar_mask: ``[B]`` bool or None (``Batch.lidar_mask``); samples marked False are
                treated as having no points.

        Returns:
            ``[B, out_channels, X', Y']`` float32, ``(X', Y') = bev_shape``; all zeros for a
            sample without points.
        """
        if points.dim() != 2 or points.shape[1] != 1 + self.in_channels:
            raise ValueError(
                f"points must be [P, {1 + self.in_channels}], got {tuple(points.shape)}"
            )
        inputs = voxelize_points(
            points,
            batch_size=batch_size,
            point_range=self.grid.point_range,
            voxel_size=self.grid.voxel_size,
            lidar_mask=lidar_mask,
        )
        coords = inputs.point_coords  # [N, 4] float, stride-1 voxel units
        x = self.stem(inputs.voxels)  # feats [M0, C0], stride 1
        z = inputs.point_feats  # [N, D + 3]
        x, z = self._fuse(x, z, coords, self.point_mlps[0])
        for stage, mlp in zip(self.stages, self.point_mlps[1:]):
            x = stage(x)  # feats [M_i, C_i], stride 2 ** (i + 1) in x and y
            x, z = self._fuse(x, z, coords, mlp)
        X, Y = self.bev_shape
        bev = height_compression(x, (X, Y, self.bev_height), batch_size)  # [B, C * Z', X, Y]
        bev = self.to_bev(bev)  # [B, out_channels, X, Y]
        return bev * inputs.present.to(bev.dtype)[:, None, None, None]

    @staticmethod
    def _fuse(
        x: SparseTensor, z: torch.Tensor, coords: torch.Tensor, mlp: nn.Module
    ) -> tuple[SparseTensor, torch.Tensor]:
        """One point-voxel fusion (SPVCNN).

        Args:
            x: voxels, ``feats [M, C]``. z: point features ``[N, C_prev]``.
            coords: ``[N, 4]`` float point coordinates, stride-1 voxel units.

        Returns:
            Voxels ``[M, C]`` plus the scatter-mean of the new point features, and the new point
            features ``[N, C]``: the previous ones through ``mlp`` plus the voxel features
            devoxelized (trilinear) at the points.
        """
        z = mlp(z) + voxel_to_point(x, coords)  # [N, C]
        x = x.replace_feats(x.feats + point_to_voxel(z, coords, x).feats)  # [M, C]
        return x, z
