"""Sparse conv against dense torch convs, the plain reference, gradcheck, caching, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from perception.ops._impl import ImplTrace, ImplUnavailable
from perception.ops.sparse import (
    Conv3d,
    SparseCache,
    SparseTensor,
    conv3d,
    conv3d_reference,
    functional,
)
from perception.ops.sparse.kernel_map import (
    build_kernel_map,
    build_kernel_map_reference,
    build_strided_kernel_map,
    downsample_coords,
    downsample_coords_reference,
    kernel_offsets,
    make_coord_index,
    numba_kernels,
)
from tests.ops.harness import DEVICES, assert_parity, assert_ran, needs_triton

# the compute variants (functional.VARIANTS); each test runs each through functional._conv3d
VARIANTS = ["gather", "scatter", "rows", "tiles", "triton"]
HAVE_NUMBA = numba_kernels(torch.device("cpu")) is not None
HAVE_TILES = HAVE_NUMBA and functional._tiles_importable()
# the triton kernel runs on CPU tensors under triton's interpreter (tests/conftest.py sets it)
HAVE_TRITON = functional._triton.importable() and (
    torch.cuda.is_available() or functional._triton.interpreting()
)


@pytest.fixture
def variant(request):
    """One compute variant of the fast path (by default the op picks by estimated cost),
    skipped where it cannot run here; tests pass it as ``impl`` to ``functional._conv3d``,
    which raises rather than falls back where the variant cannot run."""
    if request.param == "rows" and not HAVE_NUMBA:
        pytest.skip("the 'rows' variant needs numba, which is not importable")
    if request.param == "tiles" and not HAVE_TILES:
        pytest.skip("the 'tiles' variant needs numba and scipy, which are not importable")
    if request.param == "triton" and not HAVE_TRITON:
        pytest.skip("the 'triton' variant needs triton (and CUDA, or TRITON_INTERPRET=1)")
    return request.param


def skip_float64_triton(variant: str) -> None:
    if variant == "triton":
        pytest.skip("the triton kernel takes float32/float16/bfloat16 (this test is float64)")


def conv(x, weight, variant, **kwargs):
    """``functional._conv3d`` of ``variant``, asserting that variant's backend ran."""
    trace = ImplTrace()
    y = functional._conv3d(x, weight, kwargs.pop("bias", None), impl=variant, trace=trace, **kwargs)
    assert_ran(trace, functional.VARIANTS[variant])
    return y


GRID = 10  # dense grid side; inputs stay GRID - MARGIN away from the far border
MARGIN = 3


def random_coords(n: int, batch: int, seed: int, stride: int = 1, grid: int = GRID) -> torch.Tensor:
    """``[<=n, 4]`` int32 unique coordinates in ``[0, grid - MARGIN)``, multiples of stride."""
    g = torch.Generator().manual_seed(seed)
    side = (grid - MARGIN) // stride
    b = torch.randint(0, batch, (n,), generator=g)
    xyz = torch.randint(0, side, (n, 3), generator=g) * stride
    return torch.unique(torch.cat([b[:, None], xyz], 1), dim=0).to(torch.int32)


def dense_weight_to_sparse(w: torch.Tensor) -> torch.Tensor:
    """nn.Conv3d weight ``[out, in, kx, ky, kz]`` -> ``[K, in, out]``."""
    return w.permute(2, 3, 4, 1, 0).reshape(-1, w.shape[1], w.shape[0])


def scatter_dense(feats, coords, batch, stride=1):
    dense = feats.new_zeros(batch, feats.shape[1], GRID, GRID, GRID)
    c = coords.long()
    dense[c[:, 0], :, c[:, 1] // stride, c[:, 2] // stride, c[:, 3] // stride] = feats
    return dense


def read_dense(dense, coords, stride):
    c = coords.long()
    return dense[c[:, 0], :, c[:, 1] // stride, c[:, 2] // stride, c[:, 3] // stride]


@pytest.mark.parametrize("kernel", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("channels", [(1, 3), (4, 8)])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_conv_matches_dense(kernel, stride, dilation, channels, batch, variant):
    skip_float64_triton(variant)
    c_in, c_out = channels
    coords = random_coords(60, batch, seed=kernel * 100 + stride * 10 + dilation)
    feats = torch.randn(coords.shape[0], c_in, dtype=torch.float64, requires_grad=True)
    w_dense = torch.randn(c_out, c_in, kernel, kernel, kernel, dtype=torch.float64)
    w_dense.requires_grad_(True)
    weight = dense_weight_to_sparse(w_dense)

    x = SparseTensor(feats, coords)
    y = conv(x, weight, variant, kernel_size=kernel, stride=stride, dilation=dilation)
    pad = (kernel - 1) // 2 * dilation
    dense_out = F.conv3d(
        scatter_dense(feats, coords, batch), w_dense, stride=stride, padding=pad, dilation=dilation
    )
    # Output sites: the input sites (stride 1) or every site whose window holds an input.
    if stride == 1:
        assert torch.equal(y.coords, coords)
    else:
        assert y.stride == (stride,) * 3
        in_mask = scatter_dense(torch.ones(coords.shape[0], 1, dtype=torch.float64), coords, batch)
        covered = F.conv3d(
            in_mask,
            torch.ones(1, 1, kernel, kernel, kernel, dtype=torch.float64),
            stride=stride,
            padding=pad,
            dilation=dilation,
        )
        expected = torch.nonzero(covered[:, 0] > 0)
        got = y.coords.long().clone()
        got[:, 1:] //= stride
        assert torch.equal(got, expected)  # both sorted by (b, x, y, z)
    expected_feats = read_dense(dense_out, y.coords, stride)
    torch.testing.assert_close(y.feats, expected_feats)

    upstream = torch.randn_like(y.feats)
    grads = torch.autograd.grad((y.feats * upstream).sum(), [feats, w_dense])
    ref_grads = torch.autograd.grad((expected_feats * upstream).sum(), [feats, w_dense])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_transposed_matches_dense(kernel, dilation, batch, variant):
    """Down (stride 2) then up (transposed) lands on the input sites = dense ConvTranspose3d."""
    skip_float64_triton(variant)
    coords = random_coords(60, batch, seed=7 * kernel + dilation)
    x = SparseTensor(torch.randn(coords.shape[0], 2, dtype=torch.float64), coords)
    down = conv(
        x,
        torch.randn(kernel**3, 2, 3, dtype=torch.float64),
        variant,
        kernel_size=kernel,
        stride=2,
        dilation=dilation,
    )
    feats = down.feats.detach().requires_grad_(True)
    down_leaf = down.replace_feats(feats)
    w_t = torch.randn(3, 4, kernel, kernel, kernel, dtype=torch.float64, requires_grad=True)
    weight = w_t.permute(2, 3, 4, 0, 1).reshape(-1, 3, 4)
    up = conv(
        down_leaf, weight, variant, kernel_size=kernel, stride=2, dilation=dilation, transposed=True
    )
    assert torch.equal(up.coords, coords) and up.stride == (1, 1, 1)
    pad = (kernel - 1) // 2 * dilation
    dense_in = scatter_dense(feats, down.coords, batch, stride=2)
    dense_out = F.conv_transpose3d(dense_in, w_t, stride=2, padding=pad, dilation=dilation)
    # Pad to GRID: the transposed output may be shorter than the grid at the far border.
    dense_out = F.pad(dense_out, [0, GRID - dense_out.shape[-1]] * 3)
    expected = read_dense(dense_out, coords, 1)
    torch.testing.assert_close(up.feats, expected)
    upstream = torch.randn_like(expected)
    grads = torch.autograd.grad((up.feats * upstream).sum(), [feats, w_t])
    ref_grads = torch.autograd.grad((expected * upstream).sum(), [feats, w_t])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def _fast_conv(feats, coords, weight, kernel_size, stride, dilation, impl="auto", trace=None):
    y = functional._conv3d(
        SparseTensor(feats, coords),
        weight,
        None,
        kernel_size=kernel_size,
        stride=stride,
        dilation=dilation,
        impl=impl,
        trace=trace,
    )
    return y.feats, y.coords


def _ref_conv(feats, coords, weight, kernel_size, stride, dilation):
    return conv3d_reference(
        feats, coords, weight, kernel_size=kernel_size, stride=stride, dilation=dilation
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [0, 1, 80])
@pytest.mark.parametrize("kernel_size", [3, (3, 1, 2)])
@pytest.mark.parametrize("stride", [1, 2, (2, 2, 1)])
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_fast_path_matches_reference(device, n, kernel_size, stride, variant):
    if device == "cuda" and variant in ("rows", "tiles"):
        pytest.skip("the numba variants run on CPU tensors")
    coords = random_coords(n, 2, seed=n + 1, grid=14).to(device)
    k = 27 if kernel_size == 3 else 6
    inputs = {
        "feats": torch.randn(coords.shape[0], 5, device=device),
        "coords": coords,
        "weight": torch.randn(k, 5, 7, device=device),
        "kernel_size": kernel_size,
        "stride": stride,
        "dilation": 1,
    }
    # A single voxel may have no output site (odd y under a 1-wide window with stride 2).
    nonempty = _ref_conv(**inputs)[0].shape[0] > 0
    grads = ["feats", "weight"] if nonempty else []
    assert_parity(
        _fast_conv, _ref_conv, inputs, grad_inputs=grads, impl=variant,
        ran=functional.VARIANTS[variant],
    )  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["auto", "torch", "numba", "triton", "reference"])
def test_public_impls_match_reference(device, impl):
    """``conv3d(impl=...)``, the public vocabulary, against the reference; "auto" takes numba
    on CPU (where importable) and triton on CUDA (where importable)."""
    if impl == "triton":
        needs_triton(device)
    if impl == "numba" and (device != "cpu" or not HAVE_NUMBA):
        pytest.skip("the numba kernels run on CPU tensors, where numba is importable")
    coords = random_coords(60, 2, seed=6, grid=14).to(device)
    inputs = {
        "feats": torch.randn(coords.shape[0], 4, device=device),
        "coords": coords,
        "weight": torch.randn(27, 4, 5, device=device),
        "kernel_size": 3,
        "stride": 2,
        "dilation": 1,
    }
    if device == "cpu":
        auto = "numba" if HAVE_NUMBA else "torch"
    else:
        auto = "triton" if HAVE_TRITON else "torch"

    def public(feats, coords, weight, kernel_size, stride, dilation, impl, trace):
        y = conv3d(
            SparseTensor(feats, coords), weight, kernel_size=kernel_size, stride=stride,
            dilation=dilation, impl=impl, trace=trace,
        )  # fmt: skip
        return y.feats, y.coords

    ran = auto if impl == "auto" else impl
    assert_parity(public, _ref_conv, inputs, grad_inputs=["feats", "weight"], impl=impl, ran=ran)


def test_unavailable_impl_raises_instead_of_falling_back(monkeypatch):
    coords = random_coords(30, 1, seed=2)
    x = SparseTensor(torch.randn(coords.shape[0], 2, dtype=torch.float64), coords)
    with pytest.raises(ValueError, match=r"sparse_conv3d: impl must be one of \('auto', "):
        conv3d(x, torch.randn(27, 2, 2, dtype=torch.float64), impl="tiles")
    with pytest.raises(ImplUnavailable, match="impl='triton' cannot run here"):
        conv3d(x, torch.randn(27, 2, 2, dtype=torch.float64), impl="triton")  # float64
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # no interpreter: no triton on CPU tensors
    with pytest.raises(ImplUnavailable, match="impl='triton' cannot run here"):
        conv3d(x.replace_feats(x.feats.float()), torch.randn(27, 2, 2), impl="triton")
    with pytest.raises(ImplUnavailable, match="impl='numba' cannot run here"):
        conv3d(x.replace_feats(x.feats.bfloat16()), torch.randn(27, 2, 2), impl="numba")
    with pytest.raises(ValueError, match="impl must be one of"):
        Conv3d(2, 2, impl="rows")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 2])
def test_triton_kernel_runs_forward_and_backward(device, stride, monkeypatch):
    """impl="triton" really runs its kernel (forward and input gradient) and matches the
    reference."""
    needs_triton(device)
    calls = []
    kernel = functional._triton.sparse_conv
    monkeypatch.setattr(functional._triton, "sparse_conv", lambda *a: calls.append(1) or kernel(*a))
    coords = random_coords(80, 2, seed=9, grid=14).to(device)
    inputs = {
        "feats": torch.randn(coords.shape[0], 5, device=device),
        "coords": coords,
        "weight": torch.randn(27, 5, 7, device=device),
        "kernel_size": 3,
        "stride": stride,
        "dilation": 1,
    }
    assert_parity(_fast_conv, _ref_conv, inputs, grad_inputs=["feats", "weight"], impl="triton")
    assert len(calls) >= 2  # forward, and the input gradient of the backward


LAYOUTS = ["dense", "sorted"] + (["columns"] if HAVE_NUMBA else [])
STRIDED_IMPLS = ["torch"] + (["numba"] if HAVE_NUMBA else [])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("in_stride", [1, 2])
@pytest.mark.parametrize("conv", [(3, 1, 1), (3, 2, 1), (2, 2, 1), (3, 2, 2), (3, 1, 2)])
def test_kernel_map_matches_reference(layout, in_stride, conv):
    kernel, stride, dilation = ((c,) * 3 for c in conv)
    s3 = (in_stride,) * 3
    coords = random_coords(200, 3, seed=5, stride=in_stride, grid=24)
    out = downsample_coords(coords, s3, kernel, stride, dilation) if stride[0] > 1 else coords
    if stride[0] > 1:
        assert torch.equal(out, downsample_coords_reference(coords, s3, kernel, stride, dilation))
    out_stride = tuple(a * b for a, b in zip(s3, stride))
    in_index = make_coord_index(coords, s3, layout)
    out_index = in_index if stride[0] == 1 else make_coord_index(out, out_stride, layout)
    kmap = build_kernel_map(in_index, out_index, coords, out, kernel, dilation, s3)
    offsets = kernel_offsets(kernel, dilation) * in_stride
    ref = build_kernel_map_reference(coords, out, offsets)
    assert torch.equal(kmap.nbr, ref.nbr)
    assert torch.equal(kmap.nbr_t, ref.nbr_t)
    if stride[0] > 1:
        # The one-pass builders the cache uses for strided convs: same sites, tables and pairs.
        for impl in STRIDED_IMPLS:
            sites, strided = build_strided_kernel_map(
                coords, s3, kernel, stride, dilation, impl=impl
            )
            assert torch.equal(sites, out), impl
            assert torch.equal(strided.nbr, ref.nbr) and torch.equal(strided.nbr_t, ref.nbr_t)
            for (i, o), (ref_i, ref_o) in zip(strided.pairs(), ref.pairs()):
                assert torch.equal(i, ref_i) and torch.equal(o, ref_o)


@pytest.mark.parametrize("device", DEVICES)
def test_im2col_chunks_sum_to_one_product(device, monkeypatch):
    """The im2col GEMMs in chunks of rows (CPU-sized, GPU-sized, tiny) equal one product."""
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(50, 3, generator=g, dtype=torch.float64).to(device)
    nbr = torch.randint(0, 51, (40, 27), generator=g).to(device)  # 50: missing
    weight = torch.randn(27 * 3, 5, generator=g, dtype=torch.float64).to(device)
    grad_out = torch.randn(40, 5, generator=g, dtype=torch.float64).to(device)
    cols = torch.cat([feats, feats.new_zeros(1, 3)])[nbr].reshape(40, 27 * 3)
    for elems in (1 << 20, 200):
        monkeypatch.setattr(functional, "_CHUNK_ELEMS", elems)
        monkeypatch.setattr(functional, "_CHUNK_ELEMS_GPU", elems)
        assert functional._chunk_rows(feats.device, 27 * 3) == max(1, elems // 81)
        torch.testing.assert_close(functional._gather_gemm(feats, weight, nbr), cols @ weight)
        torch.testing.assert_close(
            functional._im2col_t_gemm(feats, nbr, grad_out), cols.t() @ grad_out
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 2])
def test_dense_lookup_triton_matches_torch(device, stride):
    """The one-kernel lookup of the dense index against its torch path and the sorted index:
    queries off the stride, outside the extent, in a missing batch, over tall columns."""
    needs_triton(device)
    g = torch.Generator().manual_seed(3)
    n = 500
    xyz = torch.stack(
        [torch.randint(0, 6, (n,), generator=g), torch.randint(-4, 5, (n,), generator=g),
         torch.randint(0, 90, (n,), generator=g)], 1,
    ) * stride  # fmt: skip
    b = torch.randint(0, 3, (n, 1), generator=g)
    coords = torch.unique(torch.cat([b, xyz], 1), dim=0).to(torch.int32).to(device)
    s3 = (stride,) * 3
    dense = make_coord_index(coords, s3, "dense")
    sorted_ = make_coord_index(coords, s3, "sorted")
    extra = torch.tensor([[0, -stride, 0, 0], [5, 0, 0, 0], [1, 1, 1, 1], [2, 100, -50, 7]])
    queries = torch.cat([coords.long().cpu(), extra, extra + 1]).to(device)
    offs = [
        torch.tensor([-stride, 0, stride]).to(device),
        torch.tensor([0, 1, stride]).to(device),
        torch.arange(-3, 4).to(device),
    ]
    ours = dense.lookup(queries, *offs, impl="triton")
    assert ours.dtype == torch.int64 and ours.shape == (queries.shape[0], 3 * 3 * 7)
    assert torch.equal(ours, dense.lookup(queries, *offs, impl="torch"))
    assert torch.equal(ours, sorted_.lookup(queries, *offs))
    assert (ours < len(coords)).any() and (ours == len(coords)).any()
    assert dense.lookup(queries[:0], *offs, impl="triton").shape == (0, 63)


@pytest.mark.skipif(not HAVE_NUMBA, reason="the column index needs numba, not importable here")
@pytest.mark.parametrize("stride", [1, 2])
def test_column_index_tall_columns(stride):
    """z extents over 64 cells (several mask words per column), negative and far-off queries."""
    g = torch.Generator().manual_seed(2)
    n = 400
    xyz = (
        torch.stack(
            [
                torch.randint(0, 4, (n,), generator=g),
                torch.randint(0, 3, (n,), generator=g),
                torch.randint(0, 150, (n,), generator=g),
            ],
            1,
        )
        * stride
    )
    b = torch.randint(0, 2, (n, 1), generator=g)
    coords = torch.unique(torch.cat([b, xyz], 1), dim=0).to(torch.int32)
    s3 = (stride,) * 3
    columns = make_coord_index(coords, s3, "columns")
    sorted_ = make_coord_index(coords, s3, "sorted")
    queries = torch.cat([coords.long(), torch.tensor([[0, -stride, 0, 0], [5, 0, 0, 0]])])
    offs = [torch.tensor([-stride, 0, stride]), torch.tensor([0, stride]), torch.arange(-3, 4)]
    assert torch.equal(columns.lookup(queries, *offs), sorted_.lookup(queries, *offs))
    sites, strided = build_strided_kernel_map(coords, s3, (3, 3, 3), (2, 2, 2), (1, 1, 1), "numba")
    ref_sites, ref = build_strided_kernel_map(coords, s3, (3, 3, 3), (2, 2, 2), (1, 1, 1), "torch")
    assert torch.equal(sites, ref_sites)
    assert torch.equal(strided.nbr, ref.nbr) and torch.equal(strided.nbr_t, ref.nbr_t)


@pytest.mark.parametrize("fill", [0.0, 0.05, 0.3, 1.0])
@pytest.mark.parametrize("channels", [(5, 16), (32, 64), (64, 64)])
def test_pairs_match_table(fill, channels):
    """The per-offset pairs of the scatter variant are the table's active entries, in order."""
    g = torch.Generator().manual_seed(int(fill * 100) + channels[0])
    num_in, num_out, k = 50, 40, 27
    nbr = torch.randint(0, num_in, (num_out, k), generator=g)
    nbr[torch.rand(num_out, k, generator=g) >= fill] = num_in
    pairs = functional._pairs(nbr, num_in)
    assert len(pairs) == k
    for o, (in_idx, out_idx) in enumerate(pairs):
        expected_out = torch.nonzero(nbr[:, o] < num_in).squeeze(1)
        assert torch.equal(out_idx, expected_out) and torch.equal(in_idx, nbr[expected_out, o])
    impl = functional._select_variant("auto", torch.device("cpu"), False, fill, *channels)
    if HAVE_TILES:  # fastest at every fill of the benchmark stack
        assert impl == "tiles"
        return
    # A full table is never worth per-pair work; an empty one never worth im2col.
    sparse_variant = "rows" if HAVE_NUMBA else "scatter"
    assert impl == {0.0: sparse_variant, 1.0: "gather"}.get(fill, impl)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_gradcheck(stride, transposed, variant):
    skip_float64_triton(variant)
    coords = random_coords(12, 2, seed=3, grid=8)
    feats = torch.randn(coords.shape[0], 2, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(27, 2, 3, dtype=torch.float64, requires_grad=True)
    x = SparseTensor(feats.detach(), coords)
    if transposed and stride == 2:
        x = conv(x, torch.randn(27, 2, 2, dtype=torch.float64), variant, stride=2)

    def fn(f, w):
        return conv(x.replace_feats(f), w, variant, stride=stride, transposed=transposed).feats

    f0 = torch.randn(len(x), 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (f0, weight))


def test_kernel_map_cache_is_reused():
    coords = random_coords(100, 2, seed=1)
    x = SparseTensor(torch.randn(coords.shape[0], 4), coords)
    w = torch.randn(27, 4, 4)
    y = conv3d(x, w)
    assert x.cache.num_builds == 1
    z = conv3d(y, w)  # same coordinates, same parameters: reuse
    assert y.cache is x.cache and z.cache is x.cache
    assert x.cache.num_builds == 1 and x.cache.num_hits == 1
    conv3d(z, w, dilation=2)  # new parameters: one more build
    assert x.cache.num_builds == 2


def test_independent_tensors_do_not_share_caches():
    coords = random_coords(50, 1, seed=2)
    a = SparseTensor(torch.randn(coords.shape[0], 2), coords)
    b = SparseTensor(torch.randn(coords.shape[0], 2), coords)
    assert isinstance(a.cache, SparseCache) and a.cache is not b.cache
    conv3d(a, torch.randn(27, 2, 2))
    assert a.cache.num_builds == 1 and b.cache.num_builds == 0


def test_transposed_without_matching_downsample_raises():
    coords = random_coords(30, 1, seed=4, stride=2)
    x = SparseTensor(torch.randn(coords.shape[0], 2), coords, stride=2)
    with pytest.raises(ValueError, match="matching downsampling"):
        conv3d(x, torch.randn(27, 2, 2), stride=2, transposed=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_deterministic_is_bitwise_reproducible(device, stride, variant):
    if device == "cuda" and variant in ("rows", "tiles"):
        pytest.skip("the numba variants run on CPU tensors")
    if device == "cuda" and variant == "scatter":
        pytest.skip("index_add_ uses atomics on CUDA: deterministic=True refuses 'scatter'")
    coords = random_coords(300, 2, seed=9, grid=20).to(device)
    feats = torch.randn(coords.shape[0], 16, device=device)
    weight = torch.randn(27, 16, 16, device=device)
    results = []
    for _ in range(2):
        f = feats.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        y = conv(SparseTensor(f, coords), w, variant, stride=stride, deterministic=True)
        y.feats.square().sum().backward()
        results.append((y.feats.detach(), f.grad, w.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("transposed", [False, True])
def test_empty_input(stride, transposed):
    x = SparseTensor(torch.zeros(0, 3), torch.zeros(0, 4, dtype=torch.int32))
    if transposed and stride == 2:
        x = conv3d(x, torch.randn(27, 3, 3), stride=2)
    w = torch.randn(27, 3, 5, requires_grad=True)
    y = conv3d(x, w, stride=stride, transposed=transposed)
    assert y.feats.shape == (0, 5) and y.coords.shape == (0, 4)
    y.feats.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SparseTensor(torch.zeros(2, 3), torch.zeros(2, 4)), "int32 or int64"),
        (
            lambda: SparseTensor(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int32)),
            r"\[N, 4\]",
        ),
        (lambda: SparseTensor(torch.zeros(3, 3), torch.zeros(2, 4, dtype=torch.int32)), "length"),
        (lambda: SparseTensor(torch.zeros(1, 3), torch.tensor([[0, -1, 0, 0]])), "non-negative"),
        (
            lambda: SparseTensor(torch.zeros(1, 3), torch.tensor([[0, 1, 0, 0]]), stride=2),
            "multiples",
        ),
        (
            lambda: conv3d(
                SparseTensor(torch.zeros(1, 3), torch.zeros(1, 4, dtype=torch.int32)),
                torch.zeros(27, 4, 2),
            ),
            "channels",
        ),
        (
            lambda: conv3d(
                SparseTensor(torch.zeros(1, 3), torch.zeros(1, 4, dtype=torch.int32)),
                torch.zeros(8, 3, 2),
            ),
            "weight must be",
        ),
    ],
)
def test_bad_input_raises(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_custom_op_is_registered_with_fake():
    op = torch.ops.perception.sparse_conv.default
    feats = torch.randn(5, 2)
    weight = torch.randn(27, 2, 3)
    nbr = torch.full((4, 27), 5, dtype=torch.int64)
    nbr_t = torch.full((5, 27), 4, dtype=torch.int64)
    for variant in ("gather", "scatter") + (("rows",) if HAVE_NUMBA else ()):
        torch.library.opcheck(op, (feats, weight, nbr, nbr_t, variant))


def test_low_precision_features_take_a_torch_variant():
    """The numba "rows" variant is float32/float64 only: bfloat16 features use a torch one."""
    coords = random_coords(80, 1, seed=4)
    cpu = torch.device("cpu")
    assert functional._select_variant("auto", cpu, False, 0.0, 4, 4, torch.bfloat16) in (
        "gather",
        "scatter",
    )
    feats = torch.randn(coords.shape[0], 4)
    weight = torch.randn(27, 4, 4)
    y = conv3d(SparseTensor(feats.bfloat16(), coords), weight.bfloat16())
    ref = conv3d(SparseTensor(feats, coords), weight)
    assert y.feats.dtype == torch.bfloat16
    torch.testing.assert_close(y.feats.float(), ref.feats, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("impl", ["numba", "torch"])
def test_strided_map_without_transpose_builds_it_on_first_use(impl):
    """A forward without autograd skips the transposed table; asked for later, it is the same."""
    if impl == "numba" and not HAVE_NUMBA:
        pytest.skip("the numba strided map needs numba, which is not importable")
    coords = random_coords(60, 2, seed=7)
    args = (coords, (1, 1, 1), (3, 3, 3), (2, 2, 2), (1, 1, 1))
    out_full, full = build_strided_kernel_map(*args, impl=impl)
    out_lazy, lazy = build_strided_kernel_map(*args, impl=impl, transpose=False)
    assert torch.equal(out_lazy, out_full) and torch.equal(lazy.nbr, full.nbr)
    assert torch.equal(lazy.nbr_t, full.nbr_t)


def test_maps_built_without_autograd_serve_a_later_backward():
    """Maps first built under no_grad (no transposed tables) give the same gradients, through
    strided, submanifold and transposed layers, as maps built for training."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        Conv3d(3, 4, 3, stride=2), Conv3d(4, 4, 3), Conv3d(4, 3, 3, stride=2, transposed=True)
    )
    coords = random_coords(80, 2, seed=8)
    feats = torch.randn(coords.shape[0], 3)

    def grads(x: SparseTensor) -> list[torch.Tensor]:
        net.zero_grad()
        net(x).feats.square().sum().backward()
        return [p.grad.clone() for p in net.parameters()]

    warm = SparseTensor(feats, coords)
    with torch.no_grad():
        net(warm)
    reused = grads(warm)
    fresh = grads(SparseTensor(feats, coords))
    for a, b in zip(reused, fresh):
        assert torch.equal(a, b)
