"""point_to_voxel / voxel_to_point against brute-force loops, gradients included."""

from __future__ import annotations

import importlib

import pytest
import torch

from perception.ops._impl import ImplTrace, ImplUnavailable
from perception.ops.point_voxel import (
    point_to_voxel,
    point_to_voxel_reference,
    voxel_to_point,
    voxel_to_point_reference,
)
from perception.ops.sparse import SparseTensor, conv3d
from tests.ops.harness import DEVICES, assert_parity, assert_ran, needs_triton

point_voxel_module = importlib.import_module("perception.ops.point_voxel")
triton_kernels = importlib.import_module("perception.ops._triton")


def random_points(n: int, batch: int, seed: int, extent: float = 6.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(0, batch, (n, 1), generator=g).double()
    return torch.cat([b, torch.rand(n, 3, generator=g, dtype=torch.float64) * extent], 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 40])
@pytest.mark.parametrize("stride", [1, 2])
def test_point_to_voxel_matches_loops(device, n, stride):
    coords = random_points(n, 2, seed=n + stride).to(device)
    feats = torch.randn(n, 3, dtype=torch.float64, device=device)

    def fast(point_feats, point_coords):
        x = point_to_voxel(point_feats, point_coords, stride)
        return x.feats, x.coords

    def ref(point_feats, point_coords):
        voxels = fast(point_feats.detach(), point_coords)[1]
        return point_to_voxel_reference(point_feats, point_coords, voxels, stride), voxels

    assert_parity(
        fast, ref, {"point_feats": feats, "point_coords": coords}, grad_inputs=["point_feats"]
    )


@pytest.mark.parametrize("stride", [1, 2])
def test_point_to_voxel_onto_target(stride):
    points = random_points(50, 2, seed=3)
    vox = point_to_voxel(torch.randn(50, 2, dtype=torch.float64), points, stride)
    # Drop a few target voxels and add one with no points.
    keep = vox.coords[::2]
    extra = torch.tensor([[1, 20 * stride, 20 * stride, 20 * stride]], dtype=torch.int32)
    target = SparseTensor(
        torch.zeros(keep.shape[0] + 1, 1, dtype=torch.float64), torch.cat([keep, extra]), stride
    )
    feats = torch.randn(50, 4, dtype=torch.float64, requires_grad=True)
    out = point_to_voxel(feats, points, target)
    assert out.coord_id == target.coord_id and out.cache is target.cache
    ref = point_to_voxel_reference(feats, points, target.coords, stride)
    torch.testing.assert_close(out.feats, ref)
    up = torch.randn_like(ref)
    g1 = torch.autograd.grad((out.feats * up).sum(), feats)[0]
    g2 = torch.autograd.grad((ref * up).sum(), feats)[0]
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 2, 4])
@pytest.mark.parametrize("density", [0.3, 1.0])
def test_voxel_to_point_matches_loops(device, stride, density):
    g = torch.Generator().manual_seed(stride)
    grid = torch.stack(torch.meshgrid(*[torch.arange(4)] * 3, indexing="ij"), -1).view(-1, 3)
    grid = grid[torch.rand(grid.shape[0], generator=g) < density]
    coords = torch.cat([torch.zeros(grid.shape[0], 1, dtype=torch.int64), grid * stride], 1)
    coords = torch.cat([coords, coords + torch.tensor([1, 0, 0, 0])]).to(torch.int32).to(device)
    feats = torch.randn(coords.shape[0], 3, dtype=torch.float64, device=device)
    points = random_points(30, 2, seed=11, extent=4.0 * stride).to(device)

    def fast(voxel_feats, point_coords):
        return voxel_to_point(SparseTensor(voxel_feats, coords, stride), point_coords)

    def ref(voxel_feats, point_coords):
        return voxel_to_point_reference(voxel_feats, coords, stride, point_coords)

    assert_parity(
        fast, ref, {"voxel_feats": feats, "point_coords": points}, grad_inputs=["voxel_feats"]
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["numba", "triton", "torch", "reference"])
def test_scatter_variants_match_loops(device, impl, monkeypatch):
    """Each path (the scatter of the point -> voxel means and of the devoxelization's
    gradient) against the loops: numba (CPU), triton (CUDA; CPU under triton's interpreter),
    torch's index_add_ (any), the reference (the loops themselves, any)."""
    if impl == "triton":
        needs_triton(device)
    if impl == "numba" and (
        device != "cpu" or point_voxel_module.numba_kernels(torch.device("cpu")) is None
    ):
        pytest.skip("the numba scatter runs on CPU where numba is importable")
    calls = []
    kernel = triton_kernels.scatter_add_rows
    monkeypatch.setattr(
        triton_kernels, "scatter_add_rows", lambda *a: calls.append(1) or kernel(*a)
    )
    trace = ImplTrace()
    points = random_points(60, 2, seed=5).to(device)
    feats = torch.randn(60, 9, dtype=torch.float64, device=device, requires_grad=True)
    vox = point_to_voxel(feats, points, 2, impl=impl, trace=trace)
    ref = point_to_voxel_reference(feats, points, vox.coords.to(torch.int64), 2)
    torch.testing.assert_close(vox.feats, ref)
    up = torch.randn_like(ref)
    torch.testing.assert_close(
        torch.autograd.grad((vox.feats * up).sum(), feats)[0],
        torch.autograd.grad((ref * up).sum(), feats)[0],
    )
    voxel_feats = vox.feats.detach().requires_grad_(True)
    at_points = voxel_to_point(vox.replace_feats(voxel_feats), points, impl=impl, trace=trace)
    want = voxel_to_point_reference(voxel_feats, vox.coords.to(torch.int64), 2, points)
    torch.testing.assert_close(at_points, want)
    up = torch.randn_like(want)
    torch.testing.assert_close(
        torch.autograd.grad((at_points * up).sum(), voxel_feats)[0],
        torch.autograd.grad((want * up).sum(), voxel_feats)[0],
    )
    assert_ran(trace, impl)
    assert [op for op, _ in trace.calls] == ["point_to_voxel", "voxel_to_point"]
    # the mean's forward and the devoxelization's backward scatter
    assert len(calls) == (2 if impl == "triton" else 0)


def test_auto_takes_numba_on_cpu_where_importable():
    trace = ImplTrace()
    points = random_points(30, 1, seed=2)
    vox = point_to_voxel(torch.randn(30, 3, dtype=torch.float64), points, 1, trace=trace)
    voxel_to_point(vox, points, trace=trace)
    point_to_voxel(torch.randn(30, 3, dtype=torch.float16), points, 1, trace=trace)
    have_numba = point_voxel_module.numba_kernels(torch.device("cpu")) is not None
    first = "numba" if have_numba else "torch"
    assert [impl for _, impl in trace.calls] == [first, first, "torch"]  # float16: torch


def test_unavailable_impl_raises(monkeypatch):
    points = random_points(10, 1, seed=2)
    half = torch.randn(10, 3, dtype=torch.float16)
    with pytest.raises(ImplUnavailable, match="point_to_voxel: impl='numba' cannot run here"):
        point_to_voxel(half, points, 1, impl="numba")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # no interpreter: no triton on CPU tensors
    vox = point_to_voxel(torch.randn(10, 3), points, 1)
    with pytest.raises(ImplUnavailable, match="voxel_to_point: impl='triton' cannot run here"):
        voxel_to_point(vox, points, impl="triton")
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'torch', 'numba'"):
        point_to_voxel(torch.randn(10, 3), points, 1, impl="index_add")


@pytest.mark.parametrize("stride", [(1, 2, 1), (2, 1, 4)])
def test_reference_takes_a_stride_per_axis(stride):
    points = random_points(40, 2, seed=8)
    feats = torch.randn(40, 2, dtype=torch.float64)
    trace = ImplTrace()
    fast = point_to_voxel(feats, points, stride)
    ref = point_to_voxel(feats, points, stride, impl="reference", trace=trace)
    torch.testing.assert_close(ref.feats, fast.feats)
    torch.testing.assert_close(
        voxel_to_point(fast, points, impl="reference", trace=trace), voxel_to_point(fast, points)
    )
    assert_ran(trace, "reference")


def test_voxel_to_point_at_voxel_centre_returns_that_voxel():
    coords = torch.tensor([[0, 0, 0, 0], [0, 2, 0, 0]], dtype=torch.int32)
    x = SparseTensor(torch.tensor([[1.0], [5.0]]), coords, stride=2)
    points = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 2.0, 1.0, 1.0], [0.0, 30.0, 30.0, 30.0]])
    out = voxel_to_point(x, points)
    torch.testing.assert_close(out, torch.tensor([[1.0], [3.0], [0.0]]))


def test_round_trip_through_a_conv():
    points = random_points(200, 2, seed=1, extent=10.0).float()
    feats = torch.randn(200, 4)
    vox = point_to_voxel(feats, points, 1)
    down = conv3d(vox, torch.randn(27, 4, 8), stride=2)
    back = voxel_to_point(down, points)
    assert back.shape == (200, 8)
    again = point_to_voxel(torch.randn(200, 8), points, down)
    assert again.coord_id == down.coord_id


def test_empty_and_bad_inputs():
    empty = point_to_voxel(torch.zeros(0, 3), torch.zeros(0, 4), 1)
    assert empty.feats.shape == (0, 3) and empty.coords.shape == (0, 4)
    assert voxel_to_point(empty, torch.zeros(0, 4)).shape == (0, 3)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        point_to_voxel(torch.zeros(2, 3), torch.zeros(2, 3), 1)
    with pytest.raises(ValueError, match="point_feats"):
        point_to_voxel(torch.zeros(3, 3), torch.zeros(2, 4), 1)
    with pytest.raises(ValueError, match="non-negative"):
        point_to_voxel(torch.zeros(1, 3), torch.tensor([[0.0, -1.0, 0.0, 0.0]]), 1)


def _lidar_like(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 points in stride-1 voxel units over a 64 x 64 x 20 grid, two samples, a quarter
    of them on exact voxel and centre boundaries (where floor and the weights are decided)."""
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(n, 3, generator=g) * torch.tensor([64.0, 64.0, 20.0])
    edge = torch.rand(n, generator=g) < 0.25
    xyz[edge] = torch.round(xyz[edge] * 2) / 2  # integers and half integers
    b = torch.randint(0, 2, (n, 1), generator=g).float()
    return torch.cat([b, xyz], 1), torch.randn(n, 5, generator=g)


@pytest.mark.skipif(
    point_voxel_module.numba_kernels(torch.device("cpu")) is None, reason="needs numba"
)
@pytest.mark.parametrize("stride", [(1, 1, 1), (2, 2, 2), (4, 4, 8), (8, 8, 8)])
def test_fused_numba_rows_equal_the_torch_arithmetic(stride, monkeypatch):
    """The numba path's one-pass rows and weights (`CoordIndex.trilinear`, `.point_rows`) give
    the torch path's results on float32 LiDAR-like points, boundaries included: the same rows,
    weights within float32 rounding, and the fused kernels are what ran."""
    points, feats = _lidar_like(4000, seed=sum(stride))
    kernel_map = importlib.import_module("perception.ops.sparse.kernel_map")
    ran = []
    for name in ("trilinear", "point_rows"):
        method = getattr(kernel_map.CoordIndex, name)
        monkeypatch.setattr(
            kernel_map.CoordIndex, name,
            lambda self, *a, _m=method, _n=name: ran.append(_n) or _m(self, *a),
        )  # fmt: skip
    vox = point_to_voxel(feats, points, stride, impl="torch")  # the voxels the points make
    sparse = vox.replace_feats(vox.feats[:, :3])
    # Every other voxel only, so that corners and points miss the set too.
    target = SparseTensor(sparse.feats[::2].contiguous(), sparse.coords[::2].contiguous(), stride)
    fast, slow = (voxel_to_point(target, points, impl=i) for i in ("numba", "torch"))
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    fast, slow = (point_to_voxel(feats, points, target, impl=i).feats for i in ("numba", "torch"))
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    index = target.cache.index(target.coord_id)
    assert index.layout == "columns" and ran == ["trilinear", "point_rows"]
    rows, weights = index.trilinear(points, torch.float32)
    corner, w = point_voxel_module._corner_weights(points, stride)
    offs = [torch.tensor([0, s]) for s in stride]
    want_rows = index.lookup(corner, *offs)
    assert torch.equal(rows, want_rows)
    w = torch.where(want_rows < len(target), w, 0.0)
    w = w / torch.where(w.sum(1, keepdim=True) > 0, w.sum(1, keepdim=True), 1.0)
    torch.testing.assert_close(weights, w, rtol=0, atol=2e-7)
    voxel = point_voxel_module._voxel_of(points, stride)
    zero = torch.zeros(1, dtype=torch.int64)
    assert torch.equal(index.point_rows(points), index.lookup(voxel, zero, zero, zero)[:, 0])
    assert (rows == len(target)).any() and (rows < len(target)).any()  # both cases occur


@pytest.mark.skipif(
    point_voxel_module.numba_kernels(torch.device("cpu")) is None, reason="needs numba"
)
def test_fused_numba_rows_of_an_empty_set_and_of_other_batches():
    """An empty set: every corner missing (weights 0); points of a batch the set lacks: the
    same; no points: empty results."""
    kernel_map = importlib.import_module("perception.ops.sparse.kernel_map")
    empty = kernel_map.CoordIndex(torch.zeros(0, 4, dtype=torch.int32), (2, 2, 2), "columns")
    points = torch.tensor([[0.0, 1.0, 1.0, 1.0], [5.0, 2.5, 3.0, 1.0]])
    rows, weights = empty.trilinear(points, torch.float64)
    assert torch.equal(rows, torch.zeros(2, 8, dtype=torch.int64)) and not weights.any()
    assert weights.dtype == torch.float64
    assert torch.equal(empty.point_rows(points), torch.zeros(2, dtype=torch.int64))
    one = kernel_map.CoordIndex(
        torch.tensor([[0, 0, 0, 0]], dtype=torch.int32), (2, 2, 2), "columns"
    )
    rows, weights = one.trilinear(points, torch.float32)
    assert rows[0].tolist().count(0) == 1 and weights[0].sum() == 1.0  # the one voxel, alone
    assert torch.equal(rows[1], torch.ones(8, dtype=torch.int64)) and not weights[1].any()
    assert one.point_rows(points).tolist() == [0, 1]
    assert one.trilinear(points[:0], torch.float32)[0].shape == (0, 8)
    with pytest.raises(ValueError, match="'columns' layout, not 'sorted'"):
        kernel_map.CoordIndex(torch.tensor([[0, 0, 0, 0]]), (1, 1, 1), "sorted").trilinear(
            points, torch.float32
        )
