"""Cross-modal BEV distillation: a camera student learns from a frozen LiDAR-only teacher.

BEVDistill (Chen et al., ICLR 2023) and DistillBEV (Wang et al., ICCV 2023): a trained LiDAR
model knows, for every BEV cell, what the camera branch should produce. On each training batch
the teacher (`train.teacher`, eval mode, no gradient) reads the batch's LiDAR and the student
adds, each at its weight of `model.distill` (`DistillConfig`; docs/distillation.md):

    distill/feature/<point>  dense feature imitation: the student's map at `point` through a
                             1x1 adapter against the teacher's map there, squared error per
                             cell (mean over channels), foreground-weighted mean over cells
    distill/response         the teacher's heatmaps as soft targets: binary KL divergence
                             KL(sigmoid(t) || sigmoid(s)) per class and cell (mean over
                             classes), foreground-weighted mean over cells, summed over tasks
    distill/instance         box regressions at the teacher's top-k heatmap peaks: L1 (mean
                             over channels) weighted by the peak's score, summed over tasks

Points (`BEVFeatures`): `camera_bev` the student's camera BEV (after the view transform)
against the teacher's LiDAR BEV, `fused` the fuser outputs, `decoder` the BEV decoder outputs.

Cell weights (DistillBEV's region decomposition, in one map): `background + foreground * f`,
`f = max(box, heat)` in [0, 1], `box` 1 on every cell a GT box covers (or lies within
`margin` m of; `foreground_mask`), `heat` the teacher's largest class probability at the cell.
Samples without LiDAR (no teacher) or without any camera (no student) weigh 0.

The teacher is held in a plain attribute (`object.__setattr__`), not as a submodule: it is not
in the student's `state_dict`, `parameters()` (so not in the optimizer) or `train()`; it
follows the student's `.to()`; every call puts it back in eval mode. Its forward time adds up
in `teacher_seconds` (the trainer's `Distill` hook logs it and keeps it out of the time budget).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..config.loader import ConfigError
from ..config.schema import DistillConfig
from ..structures import Batch, Boxes3D
from .bev_grid import BEVGrid
from .heads.centerpoint import TaskOutput

if TYPE_CHECKING:
    from .detector import BEVFusion

FEATURE_POINTS = ("camera_bev", "fused", "decoder")


@dataclass(frozen=True)
class BEVFeatures:
    """A detector's maps on one batch (`BEVFusion.stage_features`)."""

    camera_bev: torch.Tensor | None  # [B, C_cam, X, Y] the camera branch's output
    lidar_bev: torch.Tensor | None  # [B, C_lidar, X, Y] the LiDAR branch's output
    fused: torch.Tensor  # [B, C_fused, X, Y] the fuser's output
    decoded: torch.Tensor  # [B, C_dec, X', Y'] the BEV decoder's output (head grid)
    outputs: list[TaskOutput]  # the head's per-task maps on the head grid
    aux: dict[str, torch.Tensor]  # the branches' auxiliary losses


def describe_grid(grid: BEVGrid) -> str:
    """`64 x 64 cells of 1.6 x 1.6 m from (-51.2, -51.2) m`: a grid's plane, for messages."""
    (nx, ny), (cx, cy), (x0, y0) = grid.shape, grid.cell_size, grid.origin
    return f"{nx} x {ny} cells of {cx:g} x {cy:g} m from ({x0:g}, {y0:g}) m"


def same_plane(a: BEVGrid, b: BEVGrid) -> bool:
    """Whether two grids' maps cover the same cells (shape, cell size and origin; their
    heights and voxel sizes may differ: a camera and a LiDAR grid of one plane)."""
    close = all(
        abs(u - v) <= 1e-4 * max(1.0, abs(u), abs(v))
        for u, v in zip((*a.cell_size, *a.origin), (*b.cell_size, *b.origin), strict=True)
    )
    return a.shape == b.shape and close


def foreground_mask(boxes: Boxes3D, grid: BEVGrid, *, margin: float = 0.0) -> torch.Tensor:
    """`[X, Y]` float32 in {0, 1}: 1 on every cell of `grid` that a box covers in BEV or comes
    within `margin` m of (boxes in the grid's frame, `Boxes3D`: `l` along `yaw`).

    A cell counts when its centre lies in the box grown by `margin` plus half the cell's
    diagonal on every side: a superset of the cells the box overlaps, so even a box smaller
    than a cell marks the cell it lies in."""
    nx, ny = grid.shape
    t = boxes.tensor
    if len(boxes) == 0:
        return torch.zeros(nx, ny, device=t.device)
    centers = grid.cell_centers(dtype=t.dtype, device=t.device)  # [X, Y, 2]
    cx, cy = grid.cell_size
    grow = margin + 0.5 * (cx * cx + cy * cy) ** 0.5
    d = centers[None] - t[:, None, None, 0:2]  # [M, X, Y, 2]
    cos, sin = torch.cos(t[:, 6])[:, None, None], torch.sin(t[:, 6])[:, None, None]  # [M, 1, 1]
    along = d[..., 0] * cos + d[..., 1] * sin  # [M, X, Y] along the heading (l)
    across = -d[..., 0] * sin + d[..., 1] * cos  # [M, X, Y] to its left (w)
    w, length = t[:, 3, None, None], t[:, 4, None, None]
    inside = (along.abs() <= 0.5 * length + grow) & (across.abs() <= 0.5 * w + grow)
    return inside.any(0).float()


def _identity_adapter(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 1x1 conv starting as the identity (its `[out, in]` matrix the identity, truncated or
    zero-padded when the channel counts differ), zero bias."""
    conv = nn.Conv2d(in_channels, out_channels, 1)
    with torch.no_grad():
        nn.init.eye_(conv.weight.view(out_channels, in_channels))
        conv.bias.zero_()
    return conv


def _weighted_mean(error: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`sum(weight * error) / sum(weight)`, 0 when no cell weighs anything."""
    return (weight * error).sum() / weight.sum().clamp_min(1e-6)


class BEVDistiller(nn.Module):
    """The student side of the distillation: adapters, weights and the (unregistered) teacher.

    Args:
        config: the losses and their weights (`model.distill`).
        student_channels: per feature point, the student's channels there.
        grids: the student's `branch` grid (its camera BEV and fused maps) and `head` grid
            (the decoder's map and the head's outputs).
    """

    def __init__(
        self,
        *,
        config: DistillConfig,
        student_channels: Mapping[str, int],
        grids: Mapping[str, BEVGrid],
    ):
        super().__init__()
        self.config = config
        self.grids = {"branch": grids["branch"], "head": grids["head"]}
        points = config.feature_points if config.feature_weight > 0 else ()
        self.adapters = nn.ModuleDict(
            {
                p: _identity_adapter(
                    student_channels[p], config.teacher_channels.get(p, student_channels[p])
                )
                for p in points
            }
        )
        object.__setattr__(self, "_teacher", None)
        self.teacher_source: str | None = None  # where the teacher came from
        self.teacher_seconds = 0.0  # time spent in the teacher's forward, all calls

    # -- the teacher ---------------------------------------------------------------------

    @property
    def teacher(self) -> BEVFusion | None:
        return self._teacher  # type: ignore[attr-defined]

    def attach_teacher(self, teacher: BEVFusion, *, source: str = "the teacher") -> None:
        """Holds `teacher` (frozen, eval mode, on the adapters' device) after checking it: a
        LiDAR-only model on the student's grids with the channels the adapters map to.
        ValueError naming `source` otherwise."""
        if teacher.camera is not None or teacher.lidar is None:
            raise ValueError(
                f"{source}: a teacher must be LiDAR-only, this model has "
                f"{' + '.join(teacher.modalities)}"
            )
        for name, theirs in (("branch", teacher.lidar.grid), ("head", teacher.head.grid)):
            ours = self.grids[name]
            if not same_plane(ours, theirs):
                what = "BEV map" if name == "branch" else "head map"
                raise ValueError(
                    f"{source}: the teacher's {what} grid ({describe_grid(theirs)}) is not the "
                    f"student's ({describe_grid(ours)}): distillation needs one BEV grid"
                )
        teacher_channels = {
            "camera_bev": teacher.lidar.out_channels,
            "fused": teacher.fuser.out_channels,
            "decoder": teacher.decoder.out_channels,
        }
        for point, adapter in self.adapters.items():
            if adapter.out_channels != teacher_channels[point]:
                raise ValueError(
                    f"{source}: the teacher has {teacher_channels[point]} channels at {point}, "
                    f"the adapter maps to {adapter.out_channels} "
                    f"(set model.distill.teacher_channels.{point})"
                )
        for p in teacher.parameters():
            p.requires_grad_(False)
        device = next(iter(self.parameters()), None)
        if device is not None:
            teacher.to(device.device)
        object.__setattr__(self, "_teacher", teacher.eval())
        self.teacher_source = source

    def _apply(self, fn, *args, **kwargs):
        # `.to()`, `.cuda()`, `.double()` ... reach the teacher too (not a submodule)
        super()._apply(fn, *args, **kwargs)
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return self

    @torch.no_grad()
    def teacher_features(self, batch: Batch) -> BEVFeatures:
        """The teacher's maps on `batch` (eval mode, no gradient), timed into
        `teacher_seconds`."""
        teacher = self.teacher
        if teacher is None:
            raise RuntimeError("no teacher attached (BEVDistiller.attach_teacher)")
        teacher.eval()  # whatever was done to it since
        cuda = batch.points.is_cuda
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        features = teacher.stage_features(batch)
        if cuda:
            torch.cuda.synchronize()
        self.teacher_seconds += time.perf_counter() - start
        return features

    # -- the losses ----------------------------------------------------------------------

    def cell_weights(self, batch: Batch, teacher: BEVFeatures, grid: BEVGrid) -> torch.Tensor:
        """`[B, 1, X, Y]` on `grid`: `background + foreground * max(box, heat)`, 0 for samples
        without LiDAR or without any camera."""
        c = self.config
        heats = [o.heatmap.sigmoid().amax(1) for o in teacher.outputs]  # [B, X', Y'] each
        heat = torch.stack(heats).amax(0)  # [B, X', Y'] on the head grid
        if tuple(heat.shape[1:]) != grid.shape:
            heat = F.interpolate(heat[:, None], size=grid.shape, mode="nearest")[:, 0]
        boxes = torch.stack(
            [foreground_mask(b.to(heat.device), grid, margin=c.margin) for b in batch.gt_boxes]
        )  # [B, X, Y]
        weight = c.background + c.foreground * torch.maximum(boxes, heat.float())
        present = batch.lidar_mask & batch.camera_mask.any(dim=1)  # [B]
        return (weight * present[:, None, None].to(weight.dtype))[:, None]

    def losses(
        self, student: BEVFeatures, teacher: BEVFeatures, batch: Batch
    ) -> dict[str, torch.Tensor]:
        """The weighted losses (`distill/...`) of `student` against `teacher` on `batch`; each
        is 0 where the student's maps (through the adapters) equal the teacher's."""
        c = self.config
        out: dict[str, torch.Tensor] = {}
        maps = {
            "camera_bev": (student.camera_bev, teacher.lidar_bev, "branch"),
            "fused": (student.fused, teacher.fused, "branch"),
            "decoder": (student.decoded, teacher.decoded, "head"),
        }
        needed = {maps[point][2] for point in self.adapters}
        if c.response_weight > 0:
            needed.add("head")
        weights = {name: self.cell_weights(batch, teacher, self.grids[name]) for name in needed}
        for point, adapter in self.adapters.items():
            s, t, grid = maps[point]
            if s is None:  # the camera branch was skipped (LiDAR-first phase)
                continue
            error = (adapter(s) - t).pow(2).mean(1, keepdim=True)  # [B, 1, X, Y]
            out[f"distill/feature/{point}"] = c.feature_weight * _weighted_mean(
                error, weights[grid]
            )
        if c.response_weight > 0:
            total = 0.0
            for s, t in zip(student.outputs, teacher.outputs, strict=True):
                p = t.heatmap.sigmoid()
                # KL(p || q) of Bernoulli distributions: H(p, q) - H(p), exactly 0 where s == t
                kl = F.binary_cross_entropy_with_logits(
                    s.heatmap, p, reduction="none"
                ) - F.binary_cross_entropy_with_logits(t.heatmap, p, reduction="none")
                total = total + _weighted_mean(kl.mean(1, keepdim=True), weights["head"])
            out["distill/response"] = c.response_weight * total
        if c.instance_weight > 0:
            present = (batch.lidar_mask & batch.camera_mask.any(dim=1)).float()  # [B]
            total = 0.0
            for s, t in zip(student.outputs, teacher.outputs, strict=True):
                B = t.heatmap.shape[0]
                score = t.heatmap.sigmoid().amax(1).flatten(1)  # [B, X*Y]
                k = min(c.instance_topk, score.shape[1])
                peak, index = score.topk(k, dim=1)  # [B, k]
                s_reg = s.regression().flatten(2)  # [B, R, X*Y]
                t_reg = t.regression().flatten(2)
                gather = index[:, None].expand(B, s_reg.shape[1], k)  # [B, R, k]
                error = (s_reg.gather(2, gather) - t_reg.gather(2, gather)).abs().mean(1)
                total = total + _weighted_mean(error, peak * present[:, None])  # [B, k]
            out["distill/instance"] = c.instance_weight * total
        return out

    def forward(self, student: BEVFeatures, batch: Batch) -> dict[str, torch.Tensor]:
        """The teacher's maps on `batch`, then `losses` against `student`'s."""
        return self.losses(student, self.teacher_features(batch), batch)


def load_teacher(
    model: nn.Module, checkpoint: str | Path, *, field: str = "train.teacher"
) -> BEVFusion:
    """Loads the LiDAR-only checkpoint `checkpoint` (a checkpoint directory or a work dir) and
    attaches it, frozen, as the teacher of `model`'s distiller; returns the teacher.

    Raises `ConfigError` naming `field` and the file for a student without `model.distill`,
    a missing, corrupt or unreadable checkpoint, a teacher with a camera branch or without a
    LiDAR branch, or one on another BEV grid: never a random teacher."""
    from ..checkpoint import CheckpointError
    from .loading import load_model

    distiller = getattr(model, "distiller", None)
    if distiller is None:
        raise ConfigError(f"{field}: the student has no model.distill section to distil with")
    try:
        teacher, info = load_model(checkpoint)
    except (CheckpointError, ConfigError, OSError, ValueError) as exc:
        raise ConfigError(f"{field}: cannot load the teacher {checkpoint}: {exc}") from None
    try:
        distiller.attach_teacher(teacher, source=f"{field}: {info.path}")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    distiller.teacher_source = str(info.path)
    return teacher
