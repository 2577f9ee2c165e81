"""BEV NMS: rotated IoU vs shapely, rotated/circle NMS vs brute force, groups, edge cases."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from perception.ops import batched_circle_nms, batched_nms_bev, bev_iou, circle_nms, nms_bev
from perception.ops._impl import ImplTrace, ImplUnavailable
from perception.ops.nms_reference import (
    bev_iou_reference,
    circle_nms_reference,
    nms_bev_reference,
)
from tests.ops.harness import DEVICES, assert_parity, assert_ran, needs_triton

nms_module = importlib.import_module("perception.ops.nms")
triton_kernels = importlib.import_module("perception.ops._triton")


def random_boxes(n: int, spread: float = 6.0, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """``[n, 5]`` (x, y, w, l, yaw) boxes, 0.3-4 m sides, any yaw, crowded in ``spread`` m."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * spread + 40.0  # far from origin
    wl = 0.3 + 3.7 * torch.rand(n, 2, generator=g, dtype=torch.float64)
    yaw = (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * 4 * math.pi
    return torch.cat([xy, wl, yaw], dim=1).to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m", [(0, 3), (1, 1), (40, 30)])
def test_bev_iou_matches_shapely(device, seed, dtype, n, m):
    a = random_boxes(n, seed=seed, dtype=dtype)
    b = random_boxes(m, seed=seed + 100, dtype=dtype)
    out = bev_iou(a.to(device), b.to(device))
    assert out.shape == (n, m) and out.dtype == dtype
    atol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out.cpu(), bev_iou_reference(a, b), atol=atol, rtol=0)


@pytest.mark.parametrize(
    "a,b,expected",
    [
        ([0, 0, 2, 4, 0.3], [0, 0, 2, 4, 0.3], 1.0),  # identical
        ([0, 0, 2, 4, 0.0], [0, 0, 4, 2, math.pi / 2], 1.0),  # same rectangle, w/l swapped
        ([0, 0, 2, 4, 0.0], [0, 0, 2, 4, math.pi], 1.0),  # heading flipped
        ([0, 0, 2, 4, 0.0], [10, 0, 2, 4, 0.0], 0.0),  # disjoint
        ([0, 0, 2, 4, 0.0], [4, 0, 2, 4, 0.0], 0.0),  # touching edges
        ([0, 0, 2, 4, 0.0], [0, 0, 1, 2, 0.0], 0.25),  # contained
        ([0, 0, 2, 4, 0.0], [1, 0, 2, 4, 0.0], 6 / 10),  # shifted along the heading (x)
        ([0, 0, 2, 2, 0.0], [0, 0, 2, 2, math.pi / 4], None),  # octagon: shapely decides
        ([0, 0, 0, 4, 0.0], [0, 0, 2, 4, 0.0], 0.0),  # zero-area box
    ],
)
def test_bev_iou_special_cases(a, b, expected):
    a_t, b_t = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    out = bev_iou(a_t, b_t)
    ref = bev_iou_reference(a_t, b_t)
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=0)
    if expected is not None:
        assert out.item() == pytest.approx(expected, abs=1e-9)


SPECIAL_PAIRS = [
    ([0, 0, 2, 4, 0.3], [0, 0, 2, 4, 0.3]),  # identical: every edge shared, same way
    ([0, 0, 2, 4, 0.0], [0, 0, 4, 2, math.pi / 2]),  # the same rectangle, w/l swapped
    ([0, 0, 2, 4, 0.0], [0, 0, 2, 4, math.pi]),  # heading flipped
    ([0, 0, 2, 4, 0.0], [4, 0, 2, 4, 0.0]),  # touching: a shared edge, opposite ways
    ([0, 0, 2, 4, 0.0], [1, 0, 2, 4, 0.0]),  # shifted along the heading: two edges overlap
    ([0, 0, 2, 4, 0.0], [0, 0, 1, 2, 0.0]),  # contained
    ([0, 0, 2, 4, 0.0], [0, 0, 4, 1, 0.0]),  # a cross
    ([0, 0, 2, 2, 0.0], [0, 0, 2, 2, math.pi / 4]),  # octagon
    ([0, 0, 0, 4, 0.0], [0, 0, 2, 4, 0.0]),  # zero-area box
    ([0, 0, 2, 4, 0.7], [10, 3, 2, 4, 0.1]),  # far apart
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_iou_matches_torch_and_shapely(device, dtype, monkeypatch):
    """The triton intersection kernel (CUDA; CPU under triton's interpreter) against the torch
    clipping path and shapely, on crowded random pairs and the special cases above."""
    needs_triton(device)
    calls = []
    kernel = triton_kernels.intersection_area
    monkeypatch.setattr(
        triton_kernels, "intersection_area", lambda *a: calls.append(1) or kernel(*a)
    )
    a = torch.cat([random_boxes(300, seed=3), torch.tensor([p for p, _ in SPECIAL_PAIRS])])
    b = torch.cat([random_boxes(300, seed=4), torch.tensor([q for _, q in SPECIAL_PAIRS])])
    a, b = a.to(device, dtype), b.to(device, dtype)
    fast = nms_module._pair_iou(a, b, impl="triton")
    assert calls, "the triton kernel did not run"
    plain = nms_module._pair_iou(a, b, impl="torch")
    atol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(fast, plain, atol=atol, rtol=0)
    ref = torch.stack([bev_iou_reference(a[i : i + 1].cpu(), b[i : i + 1].cpu())[0, 0]
                       for i in range(a.shape[0])])  # fmt: skip
    torch.testing.assert_close(fast.cpu(), ref.to(dtype), atol=atol, rtol=0)
    assert (fast[:300] > 0).sum() > 50  # crowded: many pairs overlap


def test_pair_iou_bad_impl():
    a = random_boxes(2)
    with pytest.raises(ValueError, match="impl must be one of"):
        nms_module._pair_iou(a, a, impl="cupy")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["auto", "torch", "triton", "reference"])
def test_rotated_ops_take_each_impl(device, impl):
    """bev_iou, nms_bev and batched_nms_bev by each path against the shapely references;
    "auto" takes triton for CUDA boxes (where importable), torch elsewhere."""
    if impl == "triton":
        needs_triton(device)
    boxes = random_boxes(60, spread=5.0, seed=7)
    g = torch.Generator().manual_seed(7)
    scores, idxs = torch.rand(60, generator=g), torch.randint(0, 3, (60,), generator=g)
    cuda_auto = "triton" if triton_kernels.available(torch.empty(0, device=device)) else "torch"
    ran = {"auto": "torch" if device == "cpu" else cuda_auto}.get(impl, impl)

    def reference(boxes_a, boxes_b):
        return bev_iou_reference(boxes_a.cpu(), boxes_b.cpu()).to(device)

    pairs = {"boxes_a": boxes.to(device), "boxes_b": boxes[::2].to(device)}
    assert_parity(bev_iou, reference, pairs, impl=impl, ran=ran)
    trace = ImplTrace()
    kept = nms_bev(boxes.to(device), scores.to(device), 0.2, impl=impl, trace=trace)
    assert kept.tolist() == nms_bev_reference(boxes, scores, 0.2).tolist()
    kept = batched_nms_bev(*(t.to(device) for t in (boxes, scores, idxs)), 0.2, impl=impl,
                           trace=trace)  # fmt: skip
    assert kept.tolist() == nms_bev_reference(boxes, scores, 0.2, idxs=idxs).tolist()
    assert_ran(trace, ran)


@pytest.mark.parametrize("impl", ["auto", "torch", "reference"])
def test_circle_nms_takes_each_impl(impl):
    g = torch.Generator().manual_seed(3)
    centers, scores = torch.rand(80, 2, generator=g) * 10, torch.rand(80, generator=g)
    idxs = torch.randint(0, 2, (80,), generator=g)
    trace = ImplTrace()
    kept = circle_nms(centers, scores, 1.0, impl=impl, trace=trace)
    assert kept.tolist() == circle_nms_reference(centers, scores, 1.0).tolist()
    kept = batched_circle_nms(centers, scores, idxs, 1.0, impl=impl, trace=trace)
    assert kept.tolist() == circle_nms_reference(centers, scores, 1.0, idxs=idxs).tolist()
    assert_ran(trace, "torch" if impl == "auto" else impl)


def test_bad_or_unavailable_impl_raises(monkeypatch):
    boxes, scores = random_boxes(4), torch.rand(4)
    with pytest.raises(ValueError, match=r"circle_nms: impl must be one of \('auto', 'torch', 're"):
        circle_nms(boxes[:, :2], scores, 1.0, impl="triton")
    with pytest.raises(ValueError, match=r"nms_bev: impl must be one of \('auto', 'torch', 'tri"):
        nms_bev(boxes, scores, 0.5, impl="numba")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # no interpreter: no triton on CPU tensors
    with pytest.raises(ImplUnavailable, match="bev_iou: impl='triton' cannot run here"):
        bev_iou(boxes, boxes, impl="triton")


def test_box_convention_width_across_heading():
    # yaw 0: l along +x. Two boxes side by side in y overlap only if w (across) is large.
    a = torch.tensor([[0.0, 0.0, 1.0, 4.0, 0.0]])
    b = torch.tensor([[0.0, 1.5, 1.0, 4.0, 0.0]])
    assert bev_iou(a, b).item() == 0.0
    b_along = torch.tensor([[1.5, 0.0, 1.0, 4.0, 0.0]])
    assert bev_iou(a, b_along).item() == pytest.approx(2.5 / 5.5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [0, 1, 60, 250])
@pytest.mark.parametrize("iou_threshold", [0.0, 0.1, 0.5])
def test_nms_bev_matches_reference(device, n, iou_threshold):
    boxes = random_boxes(n, spread=3.0 + n / 10, seed=n)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(n))
    kept = nms_bev(boxes.to(device), scores.to(device), iou_threshold)
    assert kept.dtype == torch.int64 and kept.device.type == torch.device(device).type
    assert kept.tolist() == nms_bev_reference(boxes, scores, iou_threshold).tolist()


def test_nms_bev_ties_keep_lower_index_first():
    boxes = torch.tensor([[0.0, 0, 2, 4, 0], [0.1, 0, 2, 4, 0], [10.0, 0, 2, 4, 0]])
    scores = torch.tensor([0.5, 0.5, 0.5])
    assert nms_bev(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms_bev_reference(boxes, scores, 0.5).tolist() == [0, 2]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [0, 1, 80, 400])
@pytest.mark.parametrize("radius", [0.0, 0.5, 2.0])
def test_circle_nms_matches_reference(device, n, radius):
    g = torch.Generator().manual_seed(n)
    centers = torch.rand(n, 2, generator=g) * 20
    scores = torch.rand(n, generator=g)
    kept = circle_nms(centers.to(device), scores.to(device), radius)
    assert kept.tolist() == circle_nms_reference(centers, scores, radius).tolist()


@pytest.mark.parametrize("n", [50, 200])
@pytest.mark.parametrize("groups", [1, 3])
def test_batched_nms_matches_reference(n, groups):
    boxes = random_boxes(n, spread=4.0, seed=n + groups)
    g = torch.Generator().manual_seed(n)
    scores = torch.rand(n, generator=g)
    idxs = torch.randint(0, groups, (n,), generator=g)
    kept = batched_nms_bev(boxes, scores, idxs, 0.2)
    assert kept.tolist() == nms_bev_reference(boxes, scores, 0.2, idxs=idxs).tolist()
    centers = boxes[:, :2]
    kept = batched_circle_nms(centers, scores, idxs, 1.0)
    assert kept.tolist() == circle_nms_reference(centers, scores, 1.0, idxs=idxs).tolist()


def test_groups_never_suppress_each_other():
    box = torch.tensor([[0.0, 0.0, 2.0, 4.0, 0.2]])
    boxes = box.repeat(4, 1)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    idxs = torch.tensor([0, 1, 0, 1])
    assert batched_nms_bev(boxes, scores, idxs, 0.5).tolist() == [0, 1]
    assert nms_bev(boxes, scores, 0.5).tolist() == [0]
    assert batched_circle_nms(boxes[:, :2], scores, idxs, 1.0).tolist() == [0, 1]


def test_empty_inputs():
    empty = torch.zeros(0, 5)
    assert nms_bev(empty, torch.zeros(0), 0.5).shape == (0,)
    assert batched_nms_bev(empty, torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).shape == (
        0,
    )
    assert circle_nms(torch.zeros(0, 2), torch.zeros(0), 1.0).dtype == torch.int64
    assert bev_iou(empty, torch.zeros(3, 5)).shape == (0, 3)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: nms_bev(torch.zeros(3, 4), torch.zeros(3), 0.5), "boxes"),
        (lambda: nms_bev(torch.zeros(3, 5, dtype=torch.int64), torch.zeros(3), 0.5), "boxes"),
        (lambda: nms_bev(torch.zeros(3, 5), torch.zeros(2), 0.5), "scores"),
        (lambda: batched_nms_bev(torch.zeros(3, 5), torch.zeros(3), torch.zeros(3), 0.5), "idxs"),
        (lambda: bev_iou(torch.zeros(3, 5), torch.zeros(3, 7)), "boxes_b"),
        (lambda: circle_nms(torch.zeros(3, 3), torch.zeros(3), 1.0), "centers"),
        (lambda: circle_nms(torch.zeros(3, 2), torch.zeros(3), -1.0), "radius"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bev_iou_opcheck():
    a, b = random_boxes(6, seed=1), random_boxes(5, seed=2)
    torch.library.opcheck(torch.ops.perception.bev_iou.default, (a, b, "torch"))


def test_bev_iou_exports_as_one_op():
    class Iou(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return bev_iou(a, b)

    program = torch.export.export(Iou(), (random_boxes(4), random_boxes(3, seed=1)))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets == [torch.ops.perception.bev_iou.default]
