"""BEV pooling: the numba, torch (CSR) and triton paths vs the cumsum trick and index_add_, plans, the
fused op."""

from __future__ import annotations

import importlib

import pytest
import torch

from perception.ops import BEVPoolPlanCache, bev_pool, bev_pool_depth, build_bev_pool_plan
from perception.ops._impl import ImplTrace, ImplUnavailable
from perception.ops.bev_pool_reference import (
    bev_pool_cumsum,
    bev_pool_depth_reference,
    bev_pool_index_add,
)
from tests.ops.harness import DEVICES, assert_parity, assert_ran, needs_triton

triton_kernels = importlib.import_module("perception.ops._triton")


def make_coords(shape: tuple[int, ...], batch_size: int, grid, seed: int = 0) -> torch.Tensor:
    """``[*shape, 4]`` int64 (batch, z, x, y); about a fifth fall outside the grid."""
    g = torch.Generator().manual_seed(seed)
    z_, x_, y_ = grid
    cols = [
        torch.randint(0, batch_size, shape, generator=g),
        torch.randint(-1, z_ + 1, shape, generator=g) if z_ > 1 else torch.zeros(shape, dtype=torch.int64),
        torch.randint(-2, x_ + 2, shape, generator=g),
        torch.randint(0, y_ + 1, shape, generator=g),
    ]  # fmt: skip
    return torch.stack(cols, dim=-1)


def pool_inputs(n, channels, batch_size, grid, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    return dict(
        feats=torch.randn(n, channels, generator=g, dtype=dtype).to(device),
        coords=make_coords((n,), batch_size, grid, seed).to(device),
        batch_size=batch_size,
        grid=grid,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["numba", "torch"])
@pytest.mark.parametrize("n", [0, 1, 40, 2000])
@pytest.mark.parametrize("channels", [1, 7, 64])
@pytest.mark.parametrize("batch_size,grid", [(1, (1, 8, 9)), (3, (2, 5, 4)), (2, (1, 30, 30))])
def test_bev_pool_matches_index_add(device, impl, n, channels, batch_size, grid):
    if impl == "numba" and device == "cuda":
        pytest.skip("the numba kernel is CPU only (CUDA tensors take the triton or torch path)")
    inputs = pool_inputs(n, channels, batch_size, grid, device)
    assert_parity(bev_pool, bev_pool_index_add, inputs, grad_inputs=["feats"], impl=impl)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_numba_pool_sums_in_input_order_for_any_thread_count(dtype, threads):
    """Each cell sums its points in input order, as index_add_ does: bitwise equal, whatever
    the thread count (the cells are cut into one range per thread)."""
    import numba

    inputs = pool_inputs(3000, 9, 2, (2, 7, 6), "cpu", dtype=dtype, seed=3)
    expected = bev_pool_index_add(**inputs)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        out = bev_pool(**inputs, impl="numba", trace=(trace := ImplTrace()))
    finally:
        numba.set_num_threads(before)
    assert torch.equal(out, expected)
    assert_ran(trace, "numba")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [0, 1, 300])
@pytest.mark.parametrize("channels", [1, 20])
@pytest.mark.parametrize("batch_size,grid", [(1, (1, 4, 5)), (2, (2, 3, 3))])
def test_bev_pool_triton_matches_index_add(device, n, channels, batch_size, grid, monkeypatch):
    """The triton kernel (CUDA; CPU under triton's interpreter) against index_add_."""
    csr_spmm = triton_kernels.csr_spmm
    needs_triton(device)
    inputs = pool_inputs(n, channels, batch_size, grid, device)
    calls = []
    monkeypatch.setattr(
        triton_kernels, "csr_spmm", lambda *a: calls.append(1) or csr_spmm(*a), raising=True
    )
    assert_parity(bev_pool, bev_pool_index_add, inputs, grad_inputs=["feats"], impl="triton")
    kept = build_bev_pool_plan(inputs["coords"], batch_size, grid).num_kept
    assert bool(calls) == (kept > 0)  # the kernel ran wherever there was something to pool


def test_bev_pool_impl_choice_and_errors(monkeypatch):
    inputs = pool_inputs(50, 4, 1, (1, 5, 5), "cpu")
    trace = ImplTrace()
    bev_pool(**inputs, trace=trace)
    assert_ran(trace, "numba")
    choose = importlib.import_module("perception.ops.bev_pool")._choose_pool_impl
    assert choose("bev_pool", inputs["feats"].half(), "auto", ("auto", "torch")) == "torch"
    with pytest.raises(ValueError, match=r"bev_pool: impl must be one of \('auto', 'torch', "):
        bev_pool(**inputs, impl="csr")
    with pytest.raises(ImplUnavailable, match="impl='numba' cannot run here: it needs float32"):
        bev_pool(**{**inputs, "feats": inputs["feats"].bfloat16()}, impl="numba")
    plan = build_bev_pool_plan(inputs["coords"], 1, (1, 5, 5))
    with pytest.raises(ImplUnavailable, match="the reference needs coords"):
        bev_pool(inputs["feats"], None, 1, (1, 5, 5), plan=plan, impl="reference")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # no interpreter: no triton on CPU tensors
    with pytest.raises(ImplUnavailable, match="impl='triton' cannot run here"):
        bev_pool(**inputs, impl="triton")


def test_bev_pool_reference_is_index_add():
    inputs = pool_inputs(300, 5, 2, (2, 5, 4), "cpu")
    assert_parity(
        bev_pool, bev_pool_index_add, inputs, grad_inputs=["feats"], impl="reference", atol=0
    )


@pytest.mark.parametrize("n", [0, 1, 40, 2000])
@pytest.mark.parametrize("batch_size,grid", [(1, (1, 8, 9)), (3, (2, 5, 4))])
def test_cumsum_matches_index_add(n, batch_size, grid):
    inputs = pool_inputs(n, 16, batch_size, grid, "cpu")
    assert_parity(bev_pool_cumsum, bev_pool_index_add, inputs, grad_inputs=["feats"])


def test_bev_pool_sums_and_drops():
    feats = torch.tensor([[1.0], [2.0], [4.0], [8.0], [16.0]])
    coords = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 0, 0, 2], [0, 0, 2, 0], [0, 1, 0, 0]])
    out = bev_pool(feats, coords, 2, (1, 2, 3))  # (0,0,2,0) and z=1 fall outside
    expected = torch.zeros(2, 1, 1, 2, 3)
    expected[0, 0, 0, 1, 1] = 3.0
    expected[1, 0, 0, 0, 2] = 4.0
    assert torch.equal(out, expected)
    assert out.shape == (2, 1, 1, 2, 3)


@pytest.mark.parametrize("n", [1, 30])
def test_bev_pool_gradcheck_float64(n):
    inputs = pool_inputs(n, 3, 2, (2, 3, 4), "cpu", dtype=torch.float64)
    feats = inputs.pop("feats").requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: bev_pool(f, **inputs), (feats,))


def test_plan_reuse_and_explicit_plan():
    coords = make_coords((500,), 2, (1, 10, 10))
    plan = build_bev_pool_plan(coords, 2, (1, 10, 10))
    feats = torch.randn(500, 5)
    expected = bev_pool_index_add(feats, coords, 2, (1, 10, 10))
    torch.testing.assert_close(bev_pool(feats, None, 2, (1, 10, 10), plan=plan), expected)
    with pytest.raises(ValueError, match="plan"):
        bev_pool(feats, None, 3, (1, 10, 10), plan=plan)
    with pytest.raises(ValueError, match="feats"):
        bev_pool(feats[:10], None, 2, (1, 10, 10), plan=plan)


def test_plan_cache_hits_and_misses():
    cache = BEVPoolPlanCache()
    intrinsics = torch.eye(3).repeat(6, 1, 1)
    cam_to_ego = torch.eye(4).repeat(6, 1, 1)
    calls = []

    def coords_fn(seed: int = 0):
        calls.append(seed)
        return make_coords((6, 4, 3, 5), 1, (1, 10, 10), seed)

    first = cache.get([intrinsics, cam_to_ego], coords_fn, 1, (1, 10, 10))
    again = cache.get([intrinsics.clone(), cam_to_ego.clone()], coords_fn, 1, (1, 10, 10))
    assert again is first and cache.hits == 1 and cache.misses == 1 and len(calls) == 1
    moved = cam_to_ego.clone()
    moved[0, 0, 3] += 0.5  # calibration changed: a new plan
    other = cache.get([intrinsics, moved], lambda: coords_fn(1), 1, (1, 10, 10))
    assert other is not first and cache.misses == 2 and calls == [0, 1]
    assert cache.get([intrinsics, moved], coords_fn, 1, (1, 10, 10)) is other
    # the same geometry with another grid or batch size is another plan
    assert cache.get([intrinsics, moved], coords_fn, 1, (1, 10, 11)) is not other
    # mutating a key tensor in place after the call does not fool the cache
    key = intrinsics.clone()
    plan = cache.get([key], coords_fn, 1, (1, 10, 10))
    key[0, 0, 0] = 2.0
    assert cache.get([key], coords_fn, 1, (1, 10, 10)) is not plan


def fused_inputs(ncam, d, h, w, channels, batch_size, grid, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    coords = make_coords((ncam, d, h, w), batch_size, grid, seed)
    return dict(
        depth=torch.rand(ncam, d, h, w, generator=g, dtype=dtype).softmax(dim=1).to(device),
        context=torch.randn(ncam, channels, h, w, generator=g, dtype=dtype).to(device),
        coords=coords.to(device),
        batch_size=batch_size,
        grid=grid,
    )


def fused(depth, context, coords, batch_size, grid, impl="auto", trace=None):
    plan = build_bev_pool_plan(coords, batch_size, grid)
    return bev_pool_depth(depth, context, plan, impl=impl, trace=trace)


def materialized(depth, context, coords, batch_size, grid):
    feats = (depth[:, :, None] * context[:, None]).permute(0, 1, 3, 4, 2)  # [Ncam, D, H, W, C]
    return bev_pool(feats.reshape(-1, context.shape[1]), coords.reshape(-1, 4), batch_size, grid)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["numba", "torch"])
@pytest.mark.parametrize("ncam,d,h,w", [(1, 1, 1, 1), (2, 5, 3, 4), (6, 12, 4, 6)])
@pytest.mark.parametrize("channels", [1, 16])
@pytest.mark.parametrize("batch_size,grid", [(1, (1, 12, 12)), (2, (2, 6, 5))])
def test_fused_matches_materialized(device, impl, ncam, d, h, w, channels, batch_size, grid):
    if impl == "numba" and device == "cuda":
        pytest.skip("the numba kernels are CPU only (CUDA tensors take triton or torch)")
    inputs = fused_inputs(ncam, d, h, w, channels, batch_size, grid, device)
    grads = ["depth", "context"]
    assert_parity(fused, materialized, inputs, grad_inputs=grads, impl=impl)
    assert_parity(fused, bev_pool_depth_reference, inputs, grad_inputs=grads, impl=impl)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ncam,d,h,w", [(1, 1, 1, 1), (2, 5, 3, 4)])
@pytest.mark.parametrize("channels", [1, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_triton_matches_reference(device, ncam, d, h, w, channels, dtype, monkeypatch):
    """The triton kernels of the fused pool (forward, context and depth gradients) against the
    plain reference (CUDA; CPU under triton's interpreter)."""
    needs_triton(device)
    inputs = fused_inputs(ncam, d, h, w, channels, 2, (2, 4, 3), device, dtype=dtype)
    calls = []
    for name in ("csr_spmm", "sampled_dot"):
        kernel = getattr(triton_kernels, name)
        monkeypatch.setattr(
            triton_kernels, name, lambda *a, k=kernel, n=name: calls.append(n) or k(*a)
        )

    assert_parity(
        fused, bev_pool_depth_reference, inputs, grad_inputs=["depth", "context"], impl="triton"
    )
    if build_bev_pool_plan(inputs["coords"], 2, (2, 4, 3)).num_kept:
        assert {"csr_spmm", "sampled_dot"} <= set(calls)  # forward and both gradients ran


def test_fused_plan_is_canonical_csr():
    # cuSPARSE needs sorted, duplicate-free columns in each row; check both fused matrices.
    coords = make_coords((3, 20, 4, 5), 1, (1, 6, 6))
    coords[:, :, :, :, 2:] = coords[:, :1, :, :, 2:]  # every depth bin of a pixel: one cell
    plan = build_bev_pool_plan(coords, 1, (1, 6, 6))
    for offsets, cols in [
        (plan.pair_offsets, plan.pair_pixel),
        (plan.pixel_pair_offsets, plan.pixel_pair_cell),
    ]:
        rows = torch.repeat_interleave(torch.arange(offsets.shape[0] - 1), offsets.diff().long())
        key = rows * 10_000 + cols.long()
        assert bool((key[1:] > key[:-1]).all())
    assert plan.pair_pixel.shape[0] < plan.num_kept  # duplicates were merged
    inputs = fused_inputs(3, 20, 4, 5, 4, 1, (1, 6, 6), "cpu")
    inputs["coords"] = coords
    assert_parity(fused, bev_pool_depth_reference, inputs, grad_inputs=["depth", "context"])


def test_fused_all_points_dropped():
    inputs = fused_inputs(2, 3, 2, 2, 4, 1, (1, 4, 4), "cpu")
    inputs["coords"][..., 2] = -1
    assert_parity(fused, bev_pool_depth_reference, inputs, grad_inputs=["depth", "context"])


def test_fused_gradcheck_float64():
    inputs = fused_inputs(2, 4, 2, 3, 3, 2, (1, 5, 5), "cpu", dtype=torch.float64)
    plan = build_bev_pool_plan(inputs["coords"], 2, (1, 5, 5))
    depth = inputs["depth"].requires_grad_(True)
    context = inputs["context"].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: bev_pool_depth(a, b, plan), (depth, context))


def test_custom_ops_opcheck():
    inputs = fused_inputs(2, 4, 2, 3, 3, 2, (1, 5, 5), "cpu")
    plan = build_bev_pool_plan(inputs["coords"], 2, (1, 5, 5))
    feats = torch.randn(plan.num_points, 3, requires_grad=True)
    for impl in ("numba", "torch"):
        torch.library.opcheck(
            torch.ops.perception.bev_pool_csr.default,
            (
                feats,
                plan.cell_offsets,
                plan.point_index,
                plan.point_rows,
                plan.point_cell,
                2,
                [1, 5, 5],
                impl,
            ),
        )
    depth = inputs["depth"].requires_grad_(True)
    context = inputs["context"].requires_grad_(True)
    torch.library.opcheck(
        torch.ops.perception.bev_pool_depth_csr.default,
        (depth, context, *plan.fused_indices(), 2, [1, 5, 5], "torch"),
    )
    torch.library.opcheck(
        torch.ops.perception.bev_pool_depth_csr.default,
        (depth, context, *plan.fused_indices(), 2, [1, 5, 5], "numba"),
    )


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: a.update(coords=a["coords"].float()), "coords"),
        (lambda a: a.update(coords=a["coords"][:, :3]), "coords"),
        (lambda a: a.update(coords=a["coords"][:5]), "coords"),
        (lambda a: a.update(feats=a["feats"].long()), "feats"),
        (lambda a: a.update(feats=a["feats"][:, 0]), "feats"),
        (lambda a: a.update(batch_size=1), "batch"),
        (lambda a: a.update(batch_size=0), "batch_size"),
        (lambda a: a.update(grid=(1, 0, 4)), "grid"),
        (lambda a: a.update(grid=(4, 4)), "grid"),
    ],
)
def test_bad_input(change, match):
    args = pool_inputs(50, 4, 3, (1, 4, 4), "cpu")
    change(args)
    with pytest.raises(ValueError, match=match):
        bev_pool(**args)


def test_fused_bad_input():
    inputs = fused_inputs(2, 3, 2, 2, 4, 1, (1, 4, 4), "cpu")
    plan = build_bev_pool_plan(inputs["coords"], 1, (1, 4, 4))
    with pytest.raises(ValueError, match="depth"):
        bev_pool_depth(inputs["depth"][:, :2], inputs["context"], plan)
    with pytest.raises(ValueError, match="context"):
        bev_pool_depth(inputs["depth"], inputs["context"][:, :, :1], plan)
    with pytest.raises(ValueError, match="dtype"):
        bev_pool_depth(inputs["depth"], inputs["context"].double(), plan)
    flat_plan = build_bev_pool_plan(inputs["coords"].reshape(-1, 4), 1, (1, 4, 4))
    with pytest.raises(ValueError, match="frustum"):
        bev_pool_depth(inputs["depth"], inputs["context"], flat_plan)


def test_torch_compile_sees_one_op():
    inputs = fused_inputs(2, 4, 2, 3, 3, 2, (1, 5, 5), "cpu")
    plan = build_bev_pool_plan(inputs["coords"], 2, (1, 5, 5))
    depth = inputs["depth"].requires_grad_(True)
    context = inputs["context"].requires_grad_(True)
    compiled = torch.compile(
        lambda d, c: bev_pool_depth(d, c, plan), backend="aot_eager", fullgraph=True
    )
    out = compiled(depth, context)
    out.sum().backward()
    torch.testing.assert_close(out, bev_pool_depth(depth.detach(), context.detach(), plan))
    assert depth.grad is not None and context.grad is not None


def _plan_fields(plan) -> dict:
    return {
        k: v
        for k, v in vars(plan).items()
        if k not in ("batch_size", "grid", "num_points", "frustum_shape")
    }


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize(
    "shape,batch_size,grid",
    [((0,), 1, (1, 4, 4)), ((1,), 1, (1, 4, 4)), ((500,), 3, (2, 5, 4)),
     ((2, 7, 3, 5), 1, (1, 6, 6)), ((4, 9, 2, 3), 2, (2, 5, 7)), ((3, 0, 2, 2), 1, (1, 3, 3))],
)  # fmt: skip
def test_numba_plan_is_the_torch_plan(dtype, shape, batch_size, grid):
    """The counting-sort plan equals the torch sorts' plan element for element (dtypes too),
    for flat points and frustums, with dropped points and several samples."""
    coords = make_coords(shape, batch_size, grid, seed=len(shape)).to(dtype)  # [*shape, 4]
    expected = build_bev_pool_plan(coords, batch_size, grid, impl="torch")
    got = build_bev_pool_plan(coords, batch_size, grid, impl="numba", trace=(trace := ImplTrace()))
    assert got.frustum_shape == expected.frustum_shape and got.num_points == expected.num_points
    a, b = _plan_fields(expected), _plan_fields(got)
    assert a.keys() == b.keys()
    for name in a:
        if a[name] is None:
            assert b[name] is None, name
            continue
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    assert trace.impls("build_bev_pool_plan") == {"numba"}
    trace = ImplTrace()
    build_bev_pool_plan(coords, batch_size, grid, trace=trace)
    assert trace.impls() == {"numba"}  # auto on CPU


@pytest.mark.parametrize("impl", ["torch", "numba"])
def test_plan_refuses_a_batch_index_outside_the_batch(impl):
    coords = make_coords((50,), 2, (1, 4, 4))
    coords[7, 0] = 2
    with pytest.raises(
        ValueError, match=r"batch index must lie in \[0, batch_size=2\), got \[0, 2\]"
    ):
        build_bev_pool_plan(coords, 2, (1, 4, 4), impl=impl)
    with pytest.raises(ValueError, match="impl must be one of"):
        build_bev_pool_plan(coords, 3, (1, 4, 4), impl="triton")
