"""Custom operators: voxelization, sparse 3-D convolution, point<->voxel transforms, BEV pooling, BEV NMS.

Each op has a plain-PyTorch reference (the test oracle) and, where it pays, a faster path chosen
at call time.
"""
from .point_voxel import point_to_voxel as point_to_voxel
from .point_voxel import voxel_to_point as voxel_to_point
from .sparse import Conv3d as SparseConv3d  # noqa: F401 - public re-export
from .sparse import SparseTensor as SparseTensor
