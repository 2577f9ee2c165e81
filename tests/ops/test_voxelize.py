"""Voxelization: vectorized path vs the Python-loop reference, budgets, drops, spconv."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from perception.ops import dynamic_voxelize, voxelize, voxelize_batch
from perception.ops._impl import ImplTrace, ImplUnavailable
from perception.ops.voxelize_reference import dynamic_voxelize_reference, voxelize_reference
from tests.ops.harness import DEVICES, assert_ran, needs_triton

# the module (perception.ops.voxelize the attribute is the function)
voxelize_module = importlib.import_module("perception.ops.voxelize")
PC_RANGE = (-4.0, -4.0, -2.0, 4.0, 4.0, 2.0)

HAS_NUMBA = voxelize_module._numba_kernels() is not None
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="numba not importable")
# (device, impl): every path voxelize can take ("triton" on CPU: under triton's interpreter)
DEVICE_IMPLS = [
    pytest.param("cpu", "numba", marks=needs_numba, id="cpu-numba"),
    pytest.param("cpu", "torch", id="cpu-torch"),
    pytest.param("cpu", "triton", id="cpu-triton"),
    pytest.param("cpu", "reference", id="cpu-reference"),
    pytest.param("cuda", "torch", marks=pytest.mark.cuda, id="cuda-torch"),
    pytest.param("cuda", "triton", marks=pytest.mark.cuda, id="cuda-triton"),
]
CPU_IMPLS = [pytest.param("numba", marks=needs_numba), "torch"]


def make_points(n: int, d: int = 4, seed: int = 0, bad: bool = True) -> torch.Tensor:
    """``[n, d]`` float32 points, ~20% outside PC_RANGE, plus a few non-finite rows."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, d, generator=g)
    pts[:, :3] = (pts[:, :3] - 0.5) * torch.tensor([9.0, 9.0, 4.4])
    # cluster half the points so voxels overflow
    half = n // 2
    pts[:half, :3] = pts[:half, :3] * 0.1
    if bad and n >= 8:
        pts[1, 0] = float("nan")
        pts[3, 2] = float("inf")
        pts[5, d - 1] = float("nan")  # a non-finite feature column also drops the point
        pts[7, 1] = -float("inf")
    return pts


def assert_same_voxels(a, b) -> None:
    """Bitwise equal except ``mean``: its last bit depends on the summation order (the numba
    path adds a voxel's points in input order, torch's ``sum`` in its own order)."""
    assert torch.equal(a.coords.cpu(), b.coords.cpu())
    assert torch.equal(a.num_points.cpu(), b.num_points.cpu())
    assert torch.equal(a.points.cpu(), b.points.cpu())
    torch.testing.assert_close(a.mean.cpu(), b.mean.cpu())
    assert a.mean.dtype == a.points.dtype == b.points.dtype
    assert a.num_dropped == b.num_dropped
    assert a.num_overflow == b.num_overflow
    assert a.coords.dtype == torch.int32 and a.num_points.dtype == torch.int32


def sequential_mean(v) -> torch.Tensor:
    """Each voxel's stored points added in input order, divided by the count (``[M, D]``)."""
    acc = torch.zeros_like(v.mean)
    for t in range(v.points.shape[1]):
        acc += v.points[:, t]  # padding rows are zeros: adding them changes nothing
    return acc / v.num_points.clamp(min=1).to(v.points.dtype)[:, None]


GRID = [(0.5, 5, 10_000), (0.25, 3, 40), ((0.4, 0.3, 0.5), 1, 100_000), (1.0, 64, 7)]


@pytest.mark.parametrize("device,impl", DEVICE_IMPLS)
@pytest.mark.parametrize("n", [0, 1, 9, 300, 3000])
@pytest.mark.parametrize("voxel_size,max_points,max_voxels", GRID)
def test_voxelize_matches_reference(device, impl, n, voxel_size, max_points, max_voxels):
    if impl == "triton":
        needs_triton(device)
    pts = make_points(n, seed=n)
    trace = ImplTrace()
    fast = voxelize(
        pts.to(device), voxel_size, PC_RANGE, max_points, max_voxels, impl=impl, trace=trace
    )
    ref = voxelize_reference(pts, voxel_size, PC_RANGE, max_points, max_voxels)
    assert_same_voxels(fast, ref)
    assert fast.points.device.type == device
    assert_ran(trace, impl)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [0, 1, 9, 300, 3000])
@pytest.mark.parametrize("voxel_size,max_points,max_voxels", GRID)
def test_numba_matches_torch(dtype, n, voxel_size, max_points, max_voxels):
    pts = make_points(n, seed=n + 7).to(dtype)
    fast = voxelize(pts, voxel_size, PC_RANGE, max_points, max_voxels, impl="numba")
    torch_path = voxelize(pts, voxel_size, PC_RANGE, max_points, max_voxels, impl="torch")
    assert_same_voxels(fast, torch_path)
    assert fast.points.dtype == dtype
    assert torch.equal(fast.mean, sequential_mean(fast))  # the numba path's summation order


@needs_numba
@pytest.mark.parametrize("max_points,max_voxels", [(10, 120_000), (3, 2_000), (1, 50)])
def test_numba_matches_torch_on_lidar_sweeps(max_points, max_voxels):
    pts = lidar_like(30_000, seed=max_voxels)
    voxel_size, pc_range = (0.075, 0.075, 0.2), (-30.0, -30.0, -3.0, 30.0, 30.0, 1.0)
    fast = voxelize(pts, voxel_size, pc_range, max_points, max_voxels, impl="numba")
    torch_path = voxelize(pts, voxel_size, pc_range, max_points, max_voxels, impl="torch")
    assert_same_voxels(fast, torch_path)
    assert fast.num_dropped > 0 and fast.num_overflow > 0


@needs_numba
@pytest.mark.parametrize("cloud", ["lidar", "dense"])
@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_numba_bitmap_parts_do_not_change_the_output(parts, cloud):
    """The bitmap pass splits the grid's words into ``parts`` ranges (one per thread by
    default); any split gives the torch path's voxels. "dense" fills every voxel of an 8^3 grid
    (8 bitmap words), so every range boundary has keys on both sides."""
    kernels = voxelize_module._numba_kernels()
    if cloud == "lidar":
        pts = lidar_like(30_000, seed=parts)
        voxel_size, pc_range = (0.075, 0.075, 0.2), (-30.0, -30.0, -3.0, 30.0, 30.0, 1.0)
    else:
        pts = torch.rand(4_000, 4, generator=torch.Generator().manual_seed(parts)) * 8
        voxel_size, pc_range = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0, 8.0, 8.0, 8.0)
    np_pts = pts.numpy()
    geometry = voxelize_module._numba_geometry(np_pts, voxel_size, pc_range)
    out, coords, counts, mean, m, dropped, overflow = kernels.hard_voxelize(
        np_pts, *geometry, 5, 8_000, parts=parts
    )
    want = voxelize(pts, voxel_size, pc_range, 5, 8_000, impl="torch")
    assert m == want.coords.shape[0]
    assert (dropped, overflow) == (want.num_dropped, want.num_overflow)
    assert torch.equal(torch.from_numpy(out), want.points)
    assert torch.equal(torch.from_numpy(coords), want.coords)
    assert torch.equal(torch.from_numpy(counts), want.num_points)
    assert torch.equal(torch.from_numpy(mean), want.mean)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_voxel_keys_match_torch(device, dtype, monkeypatch):
    """The triton path (the torch path with its keys from the triton kernel (CUDA; CPU under triton's interpreter):
    the same voxels and drops as torch's arithmetic, boundary and non-finite points included."""
    needs_triton(device)
    triton_ops = importlib.import_module("perception.ops._triton")
    calls = []
    kernel = triton_ops.voxel_keys
    monkeypatch.setattr(triton_ops, "voxel_keys", lambda *a: calls.append(1) or kernel(*a))
    pts = make_points(3000, d=5, seed=4).to(dtype)
    # points exactly on voxel faces and on the range's min and max faces
    pts[10:20, :3] = torch.tensor([PC_RANGE[0], 0.0, PC_RANGE[5]], dtype=dtype)
    pts[20:30, :3] = torch.tensor([0.5, -0.25, PC_RANGE[2]], dtype=dtype)
    pts, want, trace = pts.to(device), {}, ImplTrace()
    for impl in ("torch", "triton"):
        want[impl] = (
            voxelize(pts, 0.25, PC_RANGE, 4, 500, impl=impl, trace=trace),
            dynamic_voxelize(pts, 0.25, PC_RANGE, impl=impl, trace=trace),
        )
    assert [impl for _, impl in trace.calls] == ["torch", "torch", "triton", "triton"]
    assert len(calls) == 2
    assert_same_voxels(want["triton"][0], want["torch"][0])
    for a, b in zip(want["triton"][1], want["torch"][1], strict=True):
        assert a == b if isinstance(a, int) else torch.equal(a, b)


@pytest.mark.parametrize("impl", CPU_IMPLS + ["auto"])
def test_grid_beyond_int32_keys(impl):
    # 1 mm voxels: 8000 x 8000 x 4000 keys need int64 (the numba table too); the numba hard
    # voxelization's bitmap does not take such a grid: "auto" takes torch, "numba" refuses
    pts = make_points(400, seed=5)
    trace = ImplTrace()
    if impl == "numba":
        with pytest.raises(ImplUnavailable, match="voxelize: impl='numba' cannot run.*bitmap"):
            voxelize(pts, 0.001, PC_RANGE, 2, 300, impl=impl)
    else:
        fast = voxelize(pts, 0.001, PC_RANGE, 2, 300, impl=impl, trace=trace)
        assert_same_voxels(fast, voxelize_reference(pts, 0.001, PC_RANGE, 2, 300))
        assert_ran(trace, "torch", "voxelize")
    p2v, coords, dropped = dynamic_voxelize(pts, 0.001, PC_RANGE, impl=impl, trace=trace)
    r_p2v, r_coords, r_dropped = dynamic_voxelize_reference(pts, 0.001, PC_RANGE)
    assert torch.equal(p2v, r_p2v) and torch.equal(coords, r_coords) and dropped == r_dropped
    assert_ran(trace, "numba" if HAS_NUMBA and impl != "torch" else "torch", "dynamic_voxelize")


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_non_contiguous_points(impl):
    wide = make_points(2000, d=6, seed=4)
    pts = wide[:, :4]  # a column slice: not contiguous
    fast = voxelize(pts, 0.25, PC_RANGE, 4, 500, impl=impl)
    assert_same_voxels(fast, voxelize_reference(pts.contiguous(), 0.25, PC_RANGE, 4, 500))


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_dropped_counts_nonfinite_and_out_of_range(impl):
    pts = torch.tensor(
        [
            [0.1, 0.1, 0.1, 1.0],  # kept
            [float("nan"), 0.0, 0.0, 1.0],  # NaN coordinate
            [0.0, float("inf"), 0.0, 1.0],  # inf coordinate
            [0.0, 0.0, 0.0, float("nan")],  # NaN feature
            [4.0, 0.0, 0.0, 1.0],  # exactly on x_max: outside
            [-4.0, -4.0, -2.0, 1.0],  # exactly on the min corner: inside
            [0.0, 0.0, -2.01, 1.0],  # below z_min
            [1e30, 0.0, 0.0, 1.0],  # far away
        ]
    )
    v = voxelize(pts, 0.5, PC_RANGE, 4, 100, impl=impl)
    assert v.num_dropped == 6
    assert v.num_overflow == 0
    assert v.coords.tolist() == [[8, 8, 4], [0, 0, 0]]
    point_to_voxel, coords, dropped = dynamic_voxelize(pts, 0.5, PC_RANGE, impl=impl)
    assert dropped == 6
    assert point_to_voxel.tolist() == [0, -1, -1, -1, -1, 1, -1, -1]
    assert torch.equal(coords, v.coords)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_max_points_keeps_first_points_in_input_order(impl):
    pts = torch.tensor([[0.1 * i, 0.1, 0.1, float(i)] for i in range(5)])  # one voxel of 1 m
    v = voxelize(pts, 1.0, PC_RANGE, 3, 10, impl=impl)
    assert v.num_points.tolist() == [3]
    assert v.points[0, :, 3].tolist() == [0.0, 1.0, 2.0]
    assert v.num_overflow == 2
    torch.testing.assert_close(v.mean, pts[:3].mean(dim=0, keepdim=True))


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_max_voxels_keeps_first_come_voxels(impl):
    # voxels first seen in the order c, a, b, a, d: budget 2 keeps c and a
    x = [3.5, -3.5, 0.5, -3.4, 1.5]
    pts = torch.tensor([[xi, 0.0, 0.0] for xi in x])
    v = voxelize(pts, 1.0, PC_RANGE, 10, 2, impl=impl)
    assert v.coords[:, 0].tolist() == [7, 0]
    assert v.num_points.tolist() == [1, 2]
    assert v.num_overflow == 2 and v.num_dropped == 0


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_deterministic(impl):
    pts = make_points(5000, seed=3)
    a = voxelize(pts, 0.25, PC_RANGE, 4, 500, impl=impl)
    b = voxelize(pts.clone(), 0.25, PC_RANGE, 4, 500, impl=impl)
    assert_same_voxels(a, b)
    assert torch.equal(a.mean, b.mean)


@pytest.mark.parametrize("device,impl", DEVICE_IMPLS)
@pytest.mark.parametrize("n", [0, 1, 200, 4000])
@pytest.mark.parametrize("voxel_size", [0.3, (1.0, 0.5, 2.0)])
def test_dynamic_voxelize_matches_reference(device, impl, n, voxel_size):
    if impl == "triton":
        needs_triton(device)
    pts = make_points(n, seed=n + 1)
    trace = ImplTrace()
    p2v, coords, dropped = dynamic_voxelize(
        pts.to(device), voxel_size, PC_RANGE, impl=impl, trace=trace
    )
    r_p2v, r_coords, r_dropped = dynamic_voxelize_reference(pts, voxel_size, PC_RANGE)
    assert torch.equal(p2v.cpu(), r_p2v)
    assert torch.equal(coords.cpu(), r_coords)
    assert dropped == r_dropped
    assert p2v.dtype == torch.int64 and coords.dtype == torch.int32
    # unlimited hard voxelization gives the same voxel rows
    hard = voxelize(pts.to(device), voxel_size, PC_RANGE, max(n, 1), max(n, 1), impl=impl)
    assert torch.equal(hard.coords.cpu(), r_coords)
    assert_ran(trace, impl)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_empty_input(impl):
    v = voxelize(torch.zeros(0, 5), 0.1, PC_RANGE, 10, 100, impl=impl)
    assert v.points.shape == (0, 10, 5) and v.coords.shape == (0, 3)
    assert v.num_points.shape == (0,) and v.mean.shape == (0, 5) and v.num_dropped == 0
    assert v.coords.dtype == v.num_points.dtype == torch.int32 and v.num_overflow == 0
    p2v, coords, dropped = dynamic_voxelize(torch.zeros(0, 3), 0.1, PC_RANGE, impl=impl)
    assert p2v.shape == (0,) and coords.shape == (0, 3) and dropped == 0


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_voxelize_batch_adds_batch_column(impl):
    clouds = [make_points(500, seed=1), make_points(0), make_points(300, d=4, seed=2)]
    out = voxelize_batch(clouds, 0.5, PC_RANGE, 4, 200, impl=impl)
    singles = [voxelize_reference(c, 0.5, PC_RANGE, 4, 200) for c in clouds]
    assert out.coords.shape[1] == 4
    expected = torch.cat(
        [
            torch.cat([torch.full_like(s.coords[:, :1], b), s.coords], 1)
            for b, s in enumerate(singles)
        ]
    )
    assert torch.equal(out.coords, expected)
    assert torch.equal(out.points, torch.cat([s.points for s in singles]))
    assert out.num_dropped == tuple(s.num_dropped for s in singles)
    assert out.num_overflow == tuple(s.num_overflow for s in singles)


def test_default_path_on_cpu_is_numba_where_importable():
    trace = ImplTrace()
    pts = make_points(300, seed=2)
    voxelize(pts, 0.5, PC_RANGE, 4, 100, trace=trace)
    dynamic_voxelize(pts, 0.5, PC_RANGE, trace=trace)
    assert_ran(trace, "numba" if HAS_NUMBA else "torch")
    # paths numba cannot take: autograd, float16
    trace = ImplTrace()
    voxelize(pts.clone().requires_grad_(True), 0.5, PC_RANGE, 4, 100, trace=trace)
    voxelize(pts.half(), 0.5, PC_RANGE, 4, 100, trace=trace)
    voxelize(pts, 0.5, PC_RANGE, 4, 100, impl="torch", trace=trace)
    assert_ran(trace, "torch")


@pytest.mark.parametrize(
    "points,impl,match",
    [
        (torch.zeros(4, 3), "cuda", r"voxelize: impl must be one of \('auto', 'torch', "),
        (torch.zeros(4, 3), None, "impl must be one of"),
        (torch.zeros(4, 3, dtype=torch.float16), "numba", "float32/float64 CPU"),
        (torch.zeros(4, 3, requires_grad=True), "numba", "without autograd"),
        (torch.zeros(4, 3, dtype=torch.float16), "triton", "impl='triton' cannot run here"),
    ],
)
def test_bad_impl(points, impl, match):
    with pytest.raises(ValueError, match=match):
        voxelize(points, 0.1, PC_RANGE, 2, 10, impl=impl)


def test_triton_without_cuda_or_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ImplUnavailable, match="dynamic_voxelize: impl='triton' cannot run here"):
        dynamic_voxelize(torch.zeros(4, 3), 0.1, PC_RANGE, impl="triton")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(points=torch.zeros(4, 3, dtype=torch.int64)), "points"),
        (dict(points=torch.zeros(4, 2)), "points"),
        (dict(points=torch.zeros(4)), "points"),
        (dict(voxel_size=0.0), "voxel_size"),
        (dict(voxel_size=(0.1, 0.1)), "voxel_size"),
        (dict(pc_range=(0, 0, 0, -1, 1, 1)), "pc_range"),
        (dict(max_points_per_voxel=0), "max_points_per_voxel"),
        (dict(max_voxels=0), "max_voxels"),
    ],
)
def test_bad_input(kwargs, match):
    args = dict(
        points=torch.zeros(4, 3), voxel_size=0.1, pc_range=PC_RANGE, max_points_per_voxel=2,
        max_voxels=10,
    )  # fmt: skip
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        voxelize(**args)


def lidar_like(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r = 1 + 50 * torch.rand(n, generator=g) ** 2
    a = 2 * math.pi * torch.rand(n, generator=g)
    z = -1.8 + 3 * torch.rand(n, generator=g) ** 3
    return torch.stack([r * a.cos(), r * a.sin(), z, torch.rand(n, generator=g)], dim=1)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("max_points,max_voxels", [(5, 20_000), (2, 3_000)])
def test_matches_spconv_point_to_voxel(seed, max_points, max_voxels):
    spconv_utils = pytest.importorskip("spconv.pytorch.utils", reason="spconv not installed")
    pts = lidar_like(30_000, seed)
    voxel_size, pc_range = (0.2, 0.2, 0.4), (-40.0, -40.0, -3.0, 40.0, 40.0, 1.0)
    ours = voxelize(pts, voxel_size, pc_range, max_points, max_voxels)
    gen = spconv_utils.PointToVoxel(
        vsize_xyz=list(voxel_size), coors_range_xyz=list(pc_range), num_point_features=4,
        max_num_voxels=max_voxels, max_num_points_per_voxel=max_points,
    )  # fmt: skip
    voxels, coords_zyx, num_points = gen(pts)
    assert torch.equal(ours.coords, coords_zyx.flip(1).to(torch.int32))  # spconv: (z, y, x)
    assert torch.equal(ours.num_points, num_points.to(torch.int32))
    assert torch.equal(ours.points, voxels)
