"""BEV non-maximum suppression: rotated-box IoU, rotated NMS and CenterPoint's circle NMS.

Box convention (nuScenes / LiDAR frame, metres and radians): ``boxes [N, 5]`` float
``(x, y, w, l, yaw)``: centre ``(x, y)``, ``w`` the extent across the heading, ``l`` the
extent along it, ``yaw`` the heading angle from +x, counter-clockwise. Rows of a 7/9-column
box tensor map here as ``boxes[:, [0, 1, 3, 4, 6]]`` when they are ``(x, y, z, w, l, h, yaw)``.

Greedy suppression order: scores descending, ties broken by the lower input index (a stable
sort). A box is suppressed by a kept, higher-ranked box of the same group when their BEV IoU
exceeds ``iou_threshold`` (as torchvision's ``nms``), or for circle NMS when the centre
distance is at most ``radius``.

The fast path is vectorized PyTorch (device-generic): pairwise IoU by Sutherland-Hodgman
clipping of one rectangle by the other's four edges with fixed-size (8-vertex) polygon
buffers, no Python loop over pairs; on CUDA (where triton is importable) the pairwise
intersection areas come from one triton kernel instead (:func:`._triton.intersection_area`).
The greedy pass runs on the host over the boolean overlap matrix, as torchvision's CUDA NMS
does with its bit mask. ``bev_iou`` is the
``perception::bev_iou`` custom op (a device kernel can be registered on it). The shapely
reference is :mod:`perception.ops.nms_reference`.

``impl=`` (the vocabulary of :mod:`perception.ops._impl`): the rotated ops take ``"torch"`` (the
clipping above), ``"triton"`` (the intersection kernel), ``"reference"`` (shapely) or
``"auto"`` (triton for CUDA boxes where it is importable, else torch); circle NMS, one
vectorized path, takes ``"torch"``, ``"reference"`` or ``"auto"`` (torch).
"""

from __future__ import annotations

import numpy as np
import torch

from . import _triton
from ._autocast import float32_under_autocast
from ._geometry import check_float_tensor, check_int_tensor
from ._impl import Impl, ImplTrace, check_impl, record, unavailable

__all__ = [
    "batched_circle_nms",
    "batched_nms_bev",
    "bev_iou",
    "box_corners",
    "circle_nms",
    "nms_bev",
]

_MAX_VERTICES = 8  # a rectangle clipped by 4 half-planes has at most 8 vertices
_PAIR_CHUNK = 1 << 16  # pairs per vectorized chunk (bounds temporary memory to ~20 MB)


def _check_boxes(boxes: torch.Tensor, name: str) -> None:
    check_float_tensor(boxes, name)
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"{name} must be [N, 5] (x, y, w, l, yaw), got {tuple(boxes.shape)}")


def _check_scores(scores: torch.Tensor, n: int) -> None:
    check_float_tensor(scores, "scores")
    if scores.shape != (n,):
        raise ValueError(f"scores must be [N={n}], got {tuple(scores.shape)}")


def _check_idxs(idxs: torch.Tensor, n: int) -> None:
    check_int_tensor(idxs, "idxs")
    if idxs.shape != (n,):
        raise ValueError(f"idxs must be [N={n}], got {tuple(idxs.shape)}")


def box_corners(boxes: torch.Tensor) -> torch.Tensor:
    """``boxes [N, 5]`` ``(x, y, w, l, yaw)`` -> ``[N, 4, 2]`` BEV corners, counter-clockwise,
    starting at front-right (metres, same frame as the boxes)."""
    x, y, w, l, yaw = boxes.unbind(dim=1)
    cos, sin = torch.cos(yaw), torch.sin(yaw)
    along = torch.tensor([0.5, 0.5, -0.5, -0.5], dtype=boxes.dtype, device=boxes.device)
    across = torch.tensor([-0.5, 0.5, 0.5, -0.5], dtype=boxes.dtype, device=boxes.device)
    a = along * l[:, None]  # [N, 4] along the heading
    c = across * w[:, None]  # [N, 4] to the left of the heading
    cx = x[:, None] + a * cos[:, None] - c * sin[:, None]
    cy = y[:, None] + a * sin[:, None] + c * cos[:, None]
    return torch.stack([cx, cy], dim=2)


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _intersection_area(poly: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
    """Area of ``poly ∩ clip`` for P pairs of convex quadrilaterals.

    Args:
        poly: ``[P, 4, 2]``, clip: ``[P, 4, 2]``, both counter-clockwise.

    Returns:
        ``[P]`` intersection areas.
    """
    p = poly.shape[0]
    device = poly.device
    verts = poly.new_zeros(p, _MAX_VERTICES, 2)
    verts[:, :4] = poly
    count = torch.full((p,), 4, dtype=torch.int64, device=device)
    slot = torch.arange(_MAX_VERTICES, device=device)
    for edge in range(4):  # Sutherland-Hodgman: clip by each edge of `clip` (fixed 4 steps)
        a = clip[:, edge][:, None]  # [P, 1, 2]
        b = clip[:, (edge + 1) % 4][:, None]
        valid = slot < count[:, None]  # [P, V]
        nxt = torch.where(slot + 1 < count[:, None], slot + 1, 0)  # cyclic successor
        side = _cross(b - a, verts - a)  # [P, V], >= 0: inside (left of a->b)
        side_next = torch.gather(side, 1, nxt)
        verts_next = torch.gather(verts, 1, nxt[..., None].expand(p, _MAX_VERTICES, 2))
        inside, inside_next = side >= 0, side_next >= 0
        crossing = valid & (inside != inside_next)
        t = side / torch.where(crossing, side - side_next, torch.ones_like(side))
        hit = verts + t[..., None] * (verts_next - verts)
        cand = torch.stack([verts, hit], dim=2).reshape(p, 2 * _MAX_VERTICES, 2)
        keep = torch.stack([valid & inside, crossing], dim=2).reshape(p, 2 * _MAX_VERTICES)
        pos = torch.cumsum(keep, dim=1) - 1
        # kept candidates go to their compacted slot; the rest to a trash slot
        pos = torch.where(keep, pos.clamp(max=_MAX_VERTICES), _MAX_VERTICES)
        out = poly.new_zeros(p, _MAX_VERTICES + 1, 2)
        out.scatter_(1, pos[..., None].expand(p, 2 * _MAX_VERTICES, 2), cand)
        verts = out[:, :_MAX_VERTICES]
        count = keep.sum(dim=1).clamp(max=_MAX_VERTICES)
    valid = slot < count[:, None]
    nxt = torch.where(slot + 1 < count[:, None], slot + 1, 0)
    verts_next = torch.gather(verts, 1, nxt[..., None].expand(p, _MAX_VERTICES, 2))
    area = 0.5 * (_cross(verts, verts_next) * valid).sum(dim=1)
    return area.clamp(min=0)


IMPLS = ("auto", "torch", "triton", "reference")
"""The values ``impl=`` of the rotated-box ops accepts."""
CIRCLE_IMPLS = ("auto", "torch", "reference")
"""The values ``impl=`` of the circle NMS ops accepts."""


def _choose_impl(op: str, boxes: torch.Tensor, impl: str) -> str:
    """The path ``impl`` resolves to for ``boxes`` (see the module docstring); an explicit
    ``"triton"`` that cannot run raises :class:`._impl.ImplUnavailable`."""
    check_impl(op, impl, IMPLS)
    if impl == "auto":
        return "triton" if boxes.device.type == "cuda" and _triton.available(boxes) else "torch"
    if impl == "triton" and not _triton.available(boxes):
        raise unavailable(
            op, impl, f"it needs CUDA boxes and triton (or TRITON_INTERPRET=1), got {boxes.device}"
        )
    return impl


def _pair_iou(a: torch.Tensor, b: torch.Tensor, impl: str) -> torch.Tensor:
    """Elementwise BEV IoU of ``a [P, 5]`` and ``b [P, 5]`` -> ``[P]``.

    ``impl``: "torch" (the vectorized clipping above, any device) or "triton"
    (:func:`._triton.intersection_area`: CUDA, or CPU under triton's interpreter).
    """
    check_impl("_pair_iou", impl, ("torch", "triton"))
    area = _triton.intersection_area if impl == "triton" else _intersection_area
    if a.shape[0] == 0:
        return a.new_zeros(0)
    # Work relative to a's centre: keeps float32 precise for boxes far from the origin.
    origin = torch.zeros_like(a)
    origin[:, :2] = a[:, :2]
    out = []
    for start in range(0, a.shape[0], _PAIR_CHUNK):
        ca = a[start : start + _PAIR_CHUNK] - origin[start : start + _PAIR_CHUNK]
        cb = b[start : start + _PAIR_CHUNK] - origin[start : start + _PAIR_CHUNK]
        inter = area(box_corners(ca), box_corners(cb))
        union = ca[:, 2] * ca[:, 3] + cb[:, 2] * cb[:, 3] - inter
        out.append(inter / union.clamp(min=torch.finfo(a.dtype).tiny))
    return torch.cat(out)


@torch.library.custom_op("perception::bev_iou", mutates_args=())
def _bev_iou_op(boxes_a: torch.Tensor, boxes_b: torch.Tensor, impl: str) -> torch.Tensor:
    """``[N, 5]``, ``[M, 5]`` -> ``[N, M]``; only pairs whose circumscribed circles meet are
    clipped (by ``impl``, "torch" or "triton"), the rest are exactly 0."""
    n, m = boxes_a.shape[0], boxes_b.shape[0]
    out = boxes_a.new_zeros(n, m)
    if n == 0 or m == 0:
        return out
    radius_a = 0.5 * torch.hypot(boxes_a[:, 2], boxes_a[:, 3])
    radius_b = 0.5 * torch.hypot(boxes_b[:, 2], boxes_b[:, 3])
    near = (
        torch.cdist(boxes_a[:, :2], boxes_b[:, :2], compute_mode="donot_use_mm_for_euclid_dist")
        <= radius_a[:, None] + radius_b[None]
    )
    i, j = torch.nonzero(near, as_tuple=True)
    out[i, j] = _pair_iou(boxes_a.index_select(0, i), boxes_b.index_select(0, j), impl)
    return out


@_bev_iou_op.register_fake
def _(boxes_a, boxes_b, impl):
    return boxes_a.new_empty(boxes_a.shape[0], boxes_b.shape[0])


def bev_iou(
    boxes_a: torch.Tensor,
    boxes_b: torch.Tensor,
    *,
    impl: Impl = "auto",
    trace: ImplTrace | None = None,
) -> torch.Tensor:
    """Pairwise BEV (rotated rectangle) IoU.

    Args:
        boxes_a: ``[N, 5]`` float ``(x, y, w, l, yaw)``; boxes_b: ``[M, 5]``, same dtype.
        impl: one of :data:`IMPLS` (see the module docstring).
        trace: an :class:`~perception.ops._impl.ImplTrace` that records the path taken.

    Returns:
        ``[N, M]`` IoU in ``[0, 1]`` (dtype of the boxes). Zero-area boxes give IoU 0.
    """
    _check_boxes(boxes_a, "boxes_a")
    _check_boxes(boxes_b, "boxes_b")
    if boxes_a.dtype != boxes_b.dtype:
        raise ValueError(
            f"boxes_a and boxes_b must share a dtype, got {boxes_a.dtype}, {boxes_b.dtype}"
        )
    path = record(trace, "bev_iou", _choose_impl("bev_iou", boxes_a, impl))
    if path == "reference":
        from .nms_reference import bev_iou_reference

        return bev_iou_reference(boxes_a, boxes_b).to(boxes_a.device)
    return _bev_iou_op(boxes_a, boxes_b, path)


def _greedy(order: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
    """Greedy pass on the host. ``overlap [N, N]`` bool in ``order`` rank (only ``j > i``
    entries matter); returns the kept input indices, best first."""
    mask = overlap.cpu().numpy()
    removed = np.zeros(mask.shape[0], dtype=bool)
    kept = []
    for i in range(mask.shape[0]):  # over boxes, not pairs; each step is one vector OR
        if removed[i]:
            continue
        kept.append(i)
        removed |= mask[i]
    kept_rank = torch.as_tensor(kept, dtype=torch.int64, device=order.device)
    return order.index_select(0, kept_rank)


def _sorted(scores: torch.Tensor) -> torch.Tensor:
    return torch.sort(scores, descending=True, stable=True).indices


def _nms_bev(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor | None,
    iou_threshold: float,
    impl: str,
) -> torch.Tensor:
    """Greedy rotated NMS by the path ``impl`` ("torch", "triton" or "reference")."""
    if impl == "reference":
        from .nms_reference import nms_bev_reference

        return nms_bev_reference(boxes, scores, iou_threshold, idxs).to(boxes.device)
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = _sorted(scores)
    b = boxes.index_select(0, order)
    # Candidate pairs (i ranked before j, same group) whose circumscribed circles meet.
    radius = 0.5 * torch.hypot(b[:, 2], b[:, 3])
    dist = torch.cdist(b[:, :2], b[:, :2], compute_mode="donot_use_mm_for_euclid_dist")
    cand = dist <= radius[:, None] + radius[None]
    cand = torch.triu(cand, diagonal=1)
    if idxs is not None:
        g = idxs.index_select(0, order)
        cand &= g[:, None] == g[None]
    i, j = torch.nonzero(cand, as_tuple=True)
    iou = _pair_iou(b.index_select(0, i), b.index_select(0, j), impl)
    overlap = torch.zeros(n, n, dtype=torch.bool, device=boxes.device)
    overlap[i, j] = iou > iou_threshold
    return _greedy(order, overlap)


def nms_bev(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    *,
    impl: Impl = "auto",
    trace: ImplTrace | None = None,
) -> torch.Tensor:
    """Rotated-box NMS in BEV.

    Args:
        boxes: ``[N, 5]`` float ``(x, y, w, l, yaw)`` (metres, radians).
        scores: ``[N]`` float.
        iou_threshold: suppress boxes whose IoU with a kept, higher-scored box is above this.
        impl: one of :data:`IMPLS` (see the module docstring).
        trace: an :class:`~perception.ops._impl.ImplTrace` that records the path taken.

    Returns:
        ``[K]`` int64 indices of the kept boxes, by descending score.
    """
    _check_boxes(boxes, "boxes")
    _check_scores(scores, boxes.shape[0])
    path = record(trace, "nms_bev", _choose_impl("nms_bev", boxes, impl))
    return _nms_bev(boxes, scores, None, float(iou_threshold), path)


def batched_nms_bev(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    iou_threshold: float,
    *,
    impl: Impl = "auto",
    trace: ImplTrace | None = None,
) -> torch.Tensor:
    """:func:`nms_bev` per group: boxes with different ``idxs [N]`` int (sample or class)
    never suppress each other. Returns ``[K]`` int64 kept indices by descending score.
    ``impl``, ``trace``: as :func:`nms_bev`."""
    _check_boxes(boxes, "boxes")
    _check_scores(scores, boxes.shape[0])
    _check_idxs(idxs, boxes.shape[0])
    path = record(trace, "batched_nms_bev", _choose_impl("batched_nms_bev", boxes, impl))
    return _nms_bev(boxes, scores, idxs, float(iou_threshold), path)


def _circle_nms(
    centers: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor | None,
    radius: float,
    impl: str,
) -> torch.Tensor:
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0, got {radius!r}")
    if impl == "reference":
        from .nms_reference import circle_nms_reference

        return circle_nms_reference(centers, scores, radius, idxs).to(centers.device)
    n = centers.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=centers.device)
    order = _sorted(scores)
    c = centers.index_select(0, order)
    dx = c[:, 0, None] - c[None, :, 0]  # [N, N]
    dy = c[:, 1, None] - c[None, :, 1]
    # exact squared distances, the same float operations as summing the squared [N, N, 2]
    # differences, without that tensor; no triu: the greedy pass only reads row i's
    # entries j > i for boxes still undecided (j <= i are decided already)
    overlap = dx * dx + dy * dy <= radius * radius
    if idxs is not None:
        g = idxs.index_select(0, order)
        overlap &= g[:, None] == g[None]
    return _greedy(order, overlap)


def _check_centers(centers: torch.Tensor) -> None:
    check_float_tensor(centers, "centers")
    if centers.dim() != 2 or centers.shape[1] != 2:
        raise ValueError(f"centers must be [N, 2] (x, y), got {tuple(centers.shape)}")


def _choose_circle_impl(op: str, impl: str) -> str:
    check_impl(op, impl, CIRCLE_IMPLS)
    return "torch" if impl == "auto" else impl


def circle_nms(
    centers: torch.Tensor,
    scores: torch.Tensor,
    radius: float,
    *,
    impl: Impl = "auto",
    trace: ImplTrace | None = None,
) -> torch.Tensor:
    """CenterPoint's circle NMS: suppress centres within ``radius`` of a kept, higher one.

    Args:
        centers: ``[N, 2]`` float ``(x, y)`` in metres.
        scores: ``[N]`` float.
        radius: metres; a centre at distance ``<= radius`` is suppressed. CenterPoint's
            ``min_radius`` settings are compared with the *squared* distance: pass
            ``sqrt(min_radius)`` to reproduce them.
        impl: one of :data:`CIRCLE_IMPLS` (see the module docstring).
        trace: an :class:`~perception.ops._impl.ImplTrace` that records the path taken.

    Returns:
        ``[K]`` int64 kept indices by descending score.
    """
    _check_centers(centers)
    _check_scores(scores, centers.shape[0])
    path = record(trace, "circle_nms", _choose_circle_impl("circle_nms", impl))
    return _circle_nms(centers, scores, None, float(radius), path)


def batched_circle_nms(
    centers: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    radius: float,
    *,
    impl: Impl = "auto",
    trace: ImplTrace | None = None,
) -> torch.Tensor:
    """:func:`circle_nms` per group of ``idxs [N]`` int; returns ``[K]`` int64 indices.
    ``impl``, ``trace``: as :func:`circle_nms`."""
    _check_centers(centers)
    _check_scores(scores, centers.shape[0])
    _check_idxs(idxs, centers.shape[0])
    path = record(trace, "batched_circle_nms", _choose_circle_impl("batched_circle_nms", impl))
    return _circle_nms(centers, scores, idxs, float(radius), path)


float32_under_autocast(_bev_iou_op)
