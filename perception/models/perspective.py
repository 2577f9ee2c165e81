"""Perspective supervision: a class label for every camera feature cell, from the 3-D boxes
projected into the image, and a small head that predicts it from the image features.

A camera branch trained from scratch learns what objects look like only through the BEV
detection loss, after the depth lift has spread each pixel along its ray; a loss in the image
plane (BEVFormer v2's perspective supervision, FCOS3D-style auxiliary heads) reaches the
backbone directly, with a label on every cell an object covers. Training only: nothing of it
runs at inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import global_mean_normaliser
from ..structures import Boxes3D

NEAR = 0.1  # m: the near plane the boxes are clipped against before projecting
# every pair of a box's 8 corners: where a box crosses the near plane, the crossings of these
# segments span the clipped box's outline (edges among them; diagonals fall inside)
_PAIRS = torch.combinations(torch.arange(8), 2)  # [28, 2]


def project_box_rects(corners: torch.Tensor, image_from_lidar: torch.Tensor) -> torch.Tensor:
    """Image-plane bounding rectangles of boxes clipped to the part in front of each camera.

    Args:
        corners: `[K, 8, 3]` box corners in the (augmented) LiDAR frame.
        image_from_lidar: `[N, 4, 4]` LiDAR point -> (u*d, v*d, d, 1) per camera.
    Returns:
        `[N, K, 5]` (u_min, v_min, u_max, v_max, near depth); near depth is inf where no part
        of the box lies in front of the camera.
    """
    homogeneous = torch.cat([corners, torch.ones_like(corners[..., :1])], dim=-1)  # [K, 8, 4]
    projected = torch.einsum("nij,kcj->nkci", image_from_lidar, homogeneous)[..., :3]
    first, second = projected[:, :, _PAIRS[:, 0]], projected[:, :, _PAIRS[:, 1]]  # [N, K, 28, 3]
    d1, d2 = first[..., 2:], second[..., 2:]
    crosses = (d1 - NEAR) * (d2 - NEAR) < 0
    t = ((NEAR - d1) / torch.where(crosses, d2 - d1, torch.ones_like(d1))).clamp(0, 1)
    crossing = first + t * (second - first)  # on the near plane where `crosses`
    points = torch.cat([projected, crossing], dim=2)  # [N, K, 36, 3]
    valid = torch.cat([projected[..., 2] >= NEAR, crosses[..., 0]], dim=2)  # [N, K, 36]
    depth = points[..., 2].clamp(min=NEAR)
    u, v = points[..., 0] / depth, points[..., 1] / depth
    inf = torch.full_like(u, float("inf"))
    u_min = torch.where(valid, u, inf).amin(-1)
    v_min = torch.where(valid, v, inf).amin(-1)
    u_max = torch.where(valid, u, -inf).amax(-1)
    v_max = torch.where(valid, v, -inf).amax(-1)
    near = torch.where(valid, depth, inf).amin(-1)
    return torch.stack([u_min, v_min, u_max, v_max, near], dim=-1)


def perspective_labels(
    boxes: tuple[Boxes3D, ...],
    labels: tuple[torch.Tensor, ...],
    image_from_lidar: torch.Tensor,
    *,
    feature_shape: tuple[int, int],
    feature_stride: int,
    background: int,
    surface_depth: torch.Tensor | None = None,
    occlusion_margin: float = 2.0,
) -> torch.Tensor:
    """`[B*Ncam, fH, fW]` int64 class of the nearest box whose projection overlaps each
    feature cell, `background` where none does.

    Args:
        boxes, labels: per sample, the ground-truth boxes (augmented LiDAR frame) and classes.
        image_from_lidar: `[B, Ncam, 4, 4]`, as the view transform's.
        feature_shape: `(fH, fW)`; a cell spans `feature_stride` pixels each way.
        background: the label of cells no box covers.
        surface_depth: optional `[B*Ncam, fH, fW]` depth (m) of the nearest LiDAR point in each
            cell (inf where none): a cell whose surface lies more than `occlusion_margin` in front
            of its box's nearest point shows something else (a wall, a pole), so it is background.
    """
    B, N = image_from_lidar.shape[:2]
    f_h, f_w = feature_shape
    device = image_from_lidar.device
    out = torch.full((B * N, f_h, f_w), background, dtype=torch.long, device=device)
    left = torch.arange(f_w, device=device, dtype=image_from_lidar.dtype) * feature_stride
    top = torch.arange(f_h, device=device, dtype=image_from_lidar.dtype) * feature_stride
    for b in range(B):
        if not len(boxes[b]):
            continue
        rects = project_box_rects(boxes[b].corners().to(image_from_lidar), image_from_lidar[b])
        u_min, v_min, u_max, v_max, near = rects.unbind(-1)  # [N, K] each
        cols = (u_max[..., None] >= left) & (u_min[..., None] < left + feature_stride)
        rows = (v_max[..., None] >= top) & (v_min[..., None] < top + feature_stride)
        cover = rows[..., :, None] & cols[..., None, :] & torch.isfinite(near)[..., None, None]
        near = near[..., None, None].expand_as(cover)
        key = torch.where(cover, near, torch.full_like(near, float("inf")))
        nearest, index = key.min(dim=1)  # [N, fH, fW]
        found = torch.isfinite(nearest)
        if surface_depth is not None:
            surface = surface_depth[b * N : (b + 1) * N]
            found &= ~(surface < nearest - occlusion_margin)
        cls = labels[b].to(device)[index]
        out[b * N : (b + 1) * N] = torch.where(found, cls, torch.full_like(cls, background))
    return out


class PerspectiveHead(nn.Module):
    """Image features `[B*Ncam, C, fH, fW]` -> per-cell class logits (classes + background);
    `loss` is the weighted cross entropy against `perspective_labels`, averaged over the
    cells of present cameras (over the global batch under torchrun)."""

    def __init__(self, in_channels: int, num_classes: int, loss_weight: float):
        super().__init__()
        self.num_classes = num_classes
        self.loss_weight = loss_weight
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, num_classes + 1, 1),
        )

    def loss(
        self, features: torch.Tensor, target: torch.Tensor, present: torch.Tensor
    ) -> torch.Tensor:
        """`target` `[B*Ncam, fH, fW]` (background = `num_classes`); `present` `[B*Ncam]` bool."""
        cells = present[:, None, None].expand_as(target)
        # every process reaches the all-reduce under torchrun, with or without cameras of its own
        normaliser = global_mean_normaliser(cells.sum().float(), min_value=1)
        if not bool(present.any()):  # zero, with a (zero) gradient for every parameter
            return sum(p.sum() for p in self.parameters()) * 0.0 + features.sum() * 0.0
        # missing cameras stay out of the BatchNorm statistics too
        logits = self.net(features[present])  # [P, K+1, fH, fW]
        loss = F.cross_entropy(logits.float(), target[present], reduction="sum")
        return self.loss_weight * loss / normaliser
