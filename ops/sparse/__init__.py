"""Sparse tensors and sparse 3-D convolution (torchsparse-style semantics, SPVConv's voxel branch).

Public API: :class:`SparseTensor`, :class:`SparseCache`, :func:`conv3d` (functional),
:func:`conv3d_reference` (the plain oracle), modules :class:`Conv3d`, :class:`BatchNorm`,
:class:`ReLU`, :class:`ToDense`, :class:`HeightCompression`, and :func:`to_dense`,
:func:`height_compression`.
"""

from .functional import conv3d
from .kernel_map import KernelMap
from .nn import BatchNorm, Conv3d, HeightCompression, ReLU, ToDense, height_compression, to_dense
from .reference import conv3d_reference
from .tensor import SparseCache, SparseTensor

__all__ = [
    "BatchNorm",
    "Conv3d",
    "HeightCompression",
    "KernelMap",
    "ReLU",
    "SparseCache",
    "SparseTensor",
    "ToDense",
    "conv3d",
    "conv3d_reference",
    "height_compression",
    "to_dense",
]
