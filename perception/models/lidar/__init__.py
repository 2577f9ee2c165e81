"""LiDAR branch: points -> voxels -> SPVConv encoder -> LiDAR BEV map ``[B, C, X, Y]``."""

from .spvconv import SparseConvBlock, SparseResidualBlock, SPVConvEncoder
from .voxelize import VoxelizedPoints, voxelize_points

__all__ = [
    "SPVConvEncoder",
    "SparseConvBlock",
    "SparseResidualBlock",
    "VoxelizedPoints",
    "voxelize_points",
]
