"""Plain-PyTorch reference sparse convolution: the test oracle (tiny inputs only).

Kernel maps come from a Python dict of coordinates, output sites from a Python set, and the
compute is one differentiable ``index_add`` per kernel offset; nothing is shared with the fast
path except the documented conventions of :mod:`.kernel_map`.
"""

from __future__ import annotations

import torch

from .kernel_map import (
    Triple,
    as_triple,
    build_kernel_map_reference,
    downsample_coords_reference,
    kernel_offsets,
)


def conv3d_reference(
    feats: torch.Tensor,
    coords: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    in_stride: int | Triple = 1,
    kernel_size: int | Triple = 3,
    stride: int | Triple = 1,
    dilation: int | Triple = 1,
    transposed: bool = False,
    out_coords: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference sparse conv on raw tensors.

    Args:
        feats: ``[N_in, C_in]`` float; coords: ``[N_in, 4]`` int (batch, x, y, z).
        weight: ``[K, C_in, C_out]`` (layout of :func:`.functional.conv3d`); bias ``[C_out]``.
        in_stride: stride of the input tensor.
        transposed: a transposed strided conv needs ``out_coords`` (the coordinates at stride
            ``in_stride / stride`` it upsamples onto).

    Returns:
        ``(out_feats [N_out, C_out], out_coords [N_out, 4] int32)``.
    """
    in_stride = as_triple(in_stride, "in_stride")
    kernel_size = as_triple(kernel_size, "kernel_size")
    stride = as_triple(stride, "stride")
    dilation = as_triple(dilation, "dilation")
    offsets = kernel_offsets(kernel_size, dilation)
    coords = coords.to(torch.int32)
    if transposed:
        if stride == (1, 1, 1):
            out_coords = coords
            fine_stride = in_stride
        else:
            if out_coords is None:
                raise ValueError("a transposed strided reference conv needs out_coords")
            out_coords = out_coords.to(torch.int32)
            fine_stride = tuple(a // b for a, b in zip(in_stride, stride))
        # The downsampling map from out_coords (fine) to coords (coarse), used transposed.
        kmap = build_kernel_map_reference(out_coords, coords, offsets * torch.tensor(fine_stride))
        pairs = kmap.pairs()
        out = feats.new_zeros(out_coords.shape[0], weight.shape[2])
        for k, (fine_idx, coarse_idx) in enumerate(pairs):
            out = out.index_add(0, fine_idx, feats[coarse_idx] @ weight[k])
    else:
        if stride == (1, 1, 1):
            out_coords = coords
        else:
            out_coords = downsample_coords_reference(
                coords, in_stride, kernel_size, stride, dilation
            )
        kmap = build_kernel_map_reference(coords, out_coords, offsets * torch.tensor(in_stride))
        out = feats.new_zeros(out_coords.shape[0], weight.shape[2])
        for k, (in_idx, out_idx) in enumerate(kmap.pairs()):
            out = out.index_add(0, out_idx, feats[in_idx] @ weight[k])
    if bias is not None:
        out = out + bias
    return out, out_coords
