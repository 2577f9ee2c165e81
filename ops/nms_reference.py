"""Brute-force references for BEV NMS, with shapely polygons (the test oracles).

Same conventions as :mod:`perception.ops.nms`: ``(x, y, w, l, yaw)`` boxes, scores sorted
descending with ties broken by the lower index, IoU strictly above the threshold suppresses.
Python loops over pairs; meant for small inputs.
"""

from __future__ import annotations

import math

import torch
from shapely.geometry import Polygon


def _polygon(box: list[float]) -> Polygon:
    x, y, w, l, yaw = box
    cos, sin = math.cos(yaw), math.sin(yaw)
    corners = []
    for a, c in ((0.5, -0.5), (0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5)):
        corners.append((x + a * l * cos - c * w * sin, y + a * l * sin + c * w * cos))
    return Polygon(corners)


def bev_iou_reference(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """``[N, 5]``, ``[M, 5]`` -> ``[N, M]`` BEV IoU (dtype of ``boxes_a``)."""
    pa = [_polygon(b) for b in boxes_a.double().tolist()]
    pb = [_polygon(b) for b in boxes_b.double().tolist()]
    out = torch.zeros(len(pa), len(pb), dtype=torch.float64)
    for i, a in enumerate(pa):
        for j, b in enumerate(pb):
            inter = a.intersection(b).area
            union = a.area + b.area - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out.to(boxes_a.dtype)


def _order(scores: torch.Tensor) -> list[int]:
    return sorted(range(scores.shape[0]), key=lambda i: (-float(scores[i]), i))


def nms_bev_reference(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    idxs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy rotated NMS, one shapely intersection per compared pair; ``[K]`` int64."""
    polys = [_polygon(b) for b in boxes.double().tolist()]
    kept: list[int] = []
    for i in _order(scores):
        suppressed = False
        for k in kept:
            if idxs is not None and int(idxs[k]) != int(idxs[i]):
                continue
            inter = polys[i].intersection(polys[k]).area
            union = polys[i].area + polys[k].area - inter
            if union > 0 and inter / union > iou_threshold:
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return torch.tensor(kept, dtype=torch.int64)


def circle_nms_reference(
    centers: torch.Tensor,
    scores: torch.Tensor,
    radius: float,
    idxs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy circle NMS with Python loops; ``[K]`` int64."""
    pts = centers.tolist()
    kept: list[int] = []
    for i in _order(scores):
        if not any(
            (idxs is None or int(idxs[k]) == int(idxs[i]))
            and (pts[i][0] - pts[k][0]) ** 2 + (pts[i][1] - pts[k][1]) ** 2 <= radius * radius
            for k in kept
        ):
            kept.append(i)
    return torch.tensor(kept, dtype=torch.int64)
