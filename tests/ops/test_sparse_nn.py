"""Sparse modules: Conv3d, BatchNorm, ReLU, to_dense, height compression, a small U-Net stack."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from perception.ops.sparse import (
    BatchNorm,
    Conv3d,
    HeightCompression,
    ReLU,
    SparseTensor,
    height_compression,
    to_dense,
)


def make_input(n: int = 80, channels: int = 4, seed: int = 0) -> SparseTensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randint(0, 8, (n, 3), generator=g)
    b = torch.randint(0, 2, (n, 1), generator=g)
    coords = torch.unique(torch.cat([b, xyz], 1), dim=0).to(torch.int32)
    return SparseTensor(torch.randn(coords.shape[0], channels, generator=g), coords)


def test_conv3d_module_matches_dense_with_bias():
    x = make_input()
    conv = Conv3d(4, 6, kernel_size=3, bias=True)
    y = conv(x)
    w = conv.weight.detach().reshape(3, 3, 3, 4, 6).permute(4, 3, 0, 1, 2)
    dense = F.conv3d(to_dense(x, (8, 8, 8), 2), w, conv.bias.detach(), padding=1)
    c = y.coords.long()
    torch.testing.assert_close(y.feats.detach(), dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]])


def test_batchnorm_and_relu_keep_coordinates():
    x = make_input()
    y = ReLU()(BatchNorm(4)(x))
    assert y.coord_id == x.coord_id and y.cache is x.cache
    assert (y.feats >= 0).all()
    ref = F.relu(F.batch_norm(x.feats, None, None, training=True))
    torch.testing.assert_close(y.feats, ref, atol=1e-5, rtol=1e-4)


def test_unet_stack_trains_and_upsamples_onto_input():
    x = make_input(200)
    stack = nn.Sequential(
        Conv3d(4, 8, 3),
        BatchNorm(8),
        ReLU(),
        Conv3d(8, 16, 3, stride=2),
        BatchNorm(16),
        ReLU(),
        Conv3d(16, 16, 3),
        Conv3d(16, 8, 3, stride=2, transposed=True),
    )
    y = stack(x)
    assert torch.equal(y.coords, x.coords) and y.stride == (1, 1, 1)
    y.feats.square().mean().backward()
    assert all(p.grad is not None for p in stack.parameters())


def test_to_dense_and_height_compression():
    x = make_input()
    dense = to_dense(x, (8, 8, 8))
    assert dense.shape == (2, 4, 8, 8, 8)
    c = x.coords.long()
    torch.testing.assert_close(dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]], x.feats)
    assert dense.abs().sum() == pytest.approx(x.feats.abs().sum().item(), rel=1e-5)
    bev = height_compression(x, (8, 8, 8))
    assert bev.shape == (2, 4 * 8, 8, 8)
    # channel c * Z + z holds feature c at height z
    b, xx, yy, zz = c[0].tolist()
    torch.testing.assert_close(bev[b, 2 * 8 + zz, xx, yy], x.feats[0, 2])
    assert torch.equal(HeightCompression((8, 8, 8))(x), bev)


def test_to_dense_at_stride_and_gradient():
    coords = torch.tensor([[0, 0, 2, 4], [1, 2, 0, 0]], dtype=torch.int32)
    feats = torch.randn(2, 3, requires_grad=True)
    x = SparseTensor(feats, coords, stride=2)
    dense = to_dense(x, (2, 2, 3))
    assert dense.shape == (2, 3, 2, 2, 3)
    torch.testing.assert_close(dense[0, :, 0, 1, 2], feats[0])
    dense.sum().backward()
    torch.testing.assert_close(feats.grad, torch.ones_like(feats))


def test_to_dense_errors_and_empty():
    x = make_input()
    with pytest.raises(ValueError, match="outside"):
        to_dense(x, (4, 4, 4))
    empty = SparseTensor(torch.zeros(0, 5), torch.zeros(0, 4, dtype=torch.int32))
    assert to_dense(empty, (3, 3, 3), 2).shape == (2, 5, 3, 3, 3)
    assert BatchNorm(5)(empty).feats.shape == (0, 5)
    assert Conv3d(5, 7)(empty).feats.shape == (0, 7)
