"""Custom operators: voxelization, sparse 3-D convolution, point<->voxel transforms, BEV pooling, BEV NMS.

Each op has a plain-PyTorch reference (the test oracle) and, where it pays, a faster path chosen
at call time: every op takes ``impl=`` in one vocabulary (:data:`Impl`: "auto", "torch",
"numba", "triton", "reference"; see :mod:`perception.ops._impl`) and records the path it took in
an :class:`ImplTrace` passed as ``trace=``.
"""

from ._impl import IMPLS as IMPLS
from ._impl import Impl as Impl
from ._impl import ImplTrace as ImplTrace
from ._impl import ImplUnavailable as ImplUnavailable
from .bev_pool import BEVPoolPlan as BEVPoolPlan
from .bev_pool import BEVPoolPlanCache as BEVPoolPlanCache
from .bev_pool import bev_pool as bev_pool
from .bev_pool import bev_pool_depth as bev_pool_depth
from .bev_pool import build_bev_pool_plan as build_bev_pool_plan
from .nms import batched_circle_nms as batched_circle_nms
from .nms import batched_nms_bev as batched_nms_bev
from .nms import bev_iou as bev_iou
from .nms import circle_nms as circle_nms
from .nms import nms_bev as nms_bev
from .point_voxel import point_to_voxel as point_to_voxel
from .point_voxel import voxel_to_point as voxel_to_point
from .sparse import Conv3d as SparseConv3d  # noqa: F401 - public re-export
from .sparse import SparseTensor as SparseTensor
from .voxelize import BatchVoxels as BatchVoxels
from .voxelize import Voxels as Voxels
from .voxelize import dynamic_voxelize as dynamic_voxelize
from .voxelize import voxelize as voxelize
from .voxelize import voxelize_batch as voxelize_batch
