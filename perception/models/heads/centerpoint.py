"""A CenterPoint-style 3-D detection head on a BEV map (Yin et al., "Center-based 3D Object
Detection and Tracking", as BEVFusion's CenterHead uses it).

The head reads `[B, C, X, Y]` (x along dim 2, y along dim 3; see `bev_grid.py`). Per task group
it predicts a class heatmap and, at every cell, the regressions of `targets.REGRESSION_CHANNELS`
plus attribute logits. Boxes come out in the frame of the map: the augmented LiDAR frame of the
batch; `undo_lidar_aug` takes them back to the keyframe LiDAR frame `Detections` promise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from perception.ops import circle_nms, nms_bev
from perception.structures import (
    ATTRIBUTE_NAMES,
    CLASS_NAMES,
    VALID_ATTRIBUTES,
    Batch,
    Boxes3D,
    Detections,
)

from ...distributed import global_mean_normaliser
from ..bev_grid import BEVGrid
from .losses import attribute_loss, gaussian_focal_loss, weighted_l1_loss
from .targets import NUM_REGRESSION, TargetConfig, TaskTargets, build_targets, decode_boxes
from .tasks import NUSCENES_TASKS, CircleNMS, DetectionTask, RotatedNMS

_HEATMAP_INIT_BIAS = -2.19  # sigmoid -> 0.1: CenterNet's prior for rare positives


@dataclass(frozen=True)
class LossWeights:
    """Weights of the head's losses (CenterPoint nuScenes: heatmap 1, bbox 0.25, velocity
    channels 0.2). Every named loss the head returns already carries its weight."""

    heatmap: float = 1.0
    bbox: float = 0.25
    attribute: float = 0.2
    direction: float = 0.2  # SECOND's weight of its direction classifier
    # the 8 cells around each centre also learn the box and direction, at this weight relative
    # to the centre (0: the centre only, CenterPoint); offsets are taken from each cell
    neighbours: float = 0.0
    # per REGRESSION_CHANNELS: offset (2), z, log size (3), sin/cos 2 yaw, v_long, v_lat
    code_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)

    def __post_init__(self) -> None:
        if len(self.code_weights) != NUM_REGRESSION:
            raise ValueError(f"code_weights needs {NUM_REGRESSION} values")
        if not 0.0 <= self.neighbours <= 1.0:
            raise ValueError(f"neighbours must be in [0, 1], got {self.neighbours}")


@dataclass(frozen=True)
class DecodeConfig:
    """How heatmap peaks become detections (CenterPoint nuScenes: 1000 peaks, 83 kept, 0.1)."""

    score_threshold: float = 0.1
    pre_max_size: int = 1000  # top-K peaks per sample and task before NMS
    post_max_size: int = 83  # detections kept per sample and task after NMS
    # > 1: keep only heatmap cells that are the maximum of their k x k window (CenterNet's
    # peak extraction) before top-K; 1: off (CenterPoint relies on NMS alone).
    local_max_kernel: int = 1


@dataclass(frozen=True)
class TaskOutput:
    """One task's raw predictions, `[B, ., X, Y]` on the head's grid."""

    heatmap: torch.Tensor  # [B, n, X, Y] class logits
    offset: torch.Tensor  # [B, 2, X, Y] centre offset in the cell, cells
    height: torch.Tensor  # [B, 1, X, Y] centre z, m
    size: torch.Tensor  # [B, 3, X, Y] log (w, l, h), m
    rotation: torch.Tensor  # [B, 2, X, Y] the axis: (sin 2 yaw, cos 2 yaw)
    velocity: torch.Tensor  # [B, 2, X, Y] (v_long, v_lat), m/s, in the box's frame
    attribute: torch.Tensor | None  # [B, len(ATTRIBUTE_NAMES), X, Y] logits; None: no branch
    # [B, 1, X, Y] logit of direction 1 along the axis (`targets.direction_targets`); None:
    # direction 0 everywhere
    direction: torch.Tensor | None = None

    def regression(self) -> torch.Tensor:
        """`[B, NUM_REGRESSION, X, Y]` in `REGRESSION_CHANNELS` order."""
        return torch.cat([self.offset, self.height, self.size, self.rotation, self.velocity], 1)


def _branch(
    in_channels: int, head_channels: int, out_channels: int, num_convs: int, bias: float = 0.0
) -> nn.Sequential:
    """(num_convs - 1) x conv3x3-BN-ReLU, then a conv3x3 to `out_channels` (CenterPoint's
    SeparateHead branch)."""
    layers: list[nn.Module] = []
    ch = in_channels
    for _ in range(num_convs - 1):
        layers += [
            nn.Conv2d(ch, head_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True),
        ]
        ch = head_channels
    final = nn.Conv2d(ch, out_channels, 3, padding=1, bias=True)
    nn.init.constant_(final.bias, bias)
    layers.append(final)
    return nn.Sequential(*layers)


class TaskHead(nn.Module):
    """One task's branches on the shared map."""

    def __init__(
        self,
        *,
        in_channels: int,
        head_channels: int,
        num_classes: int,
        with_attributes: bool,
        num_convs: int = 2,
    ):
        super().__init__()

        def b(out: int, bias: float = 0.0) -> nn.Sequential:
            return _branch(in_channels, head_channels, out, num_convs, bias)

        self.heatmap = b(num_classes, _HEATMAP_INIT_BIAS)
        self.offset = b(2)
        self.height = b(1)
        self.size = b(3)
        self.rotation = b(2)
        self.velocity = b(2)
        self.attribute = b(len(ATTRIBUTE_NAMES)) if with_attributes else None
        self.direction = b(1)

    def forward(self, x: torch.Tensor) -> TaskOutput:
        """`[B, in_channels, X, Y]` -> `TaskOutput`."""
        return TaskOutput(
            heatmap=self.heatmap(x),
            offset=self.offset(x),
            height=self.height(x),
            size=self.size(x),
            rotation=self.rotation(x),
            velocity=self.velocity(x),
            attribute=None if self.attribute is None else self.attribute(x),
            direction=self.direction(x),
        )


def _gather(maps: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`[B, C, X, Y]` maps at flat cells `[B, M]` -> `[B, M, C]`."""
    B, C = maps.shape[:2]
    flat = maps.reshape(B, C, -1)  # [B, C, X*Y]
    return flat.gather(2, indices[:, None, :].expand(B, C, -1)).transpose(1, 2)


class CenterPointHead(nn.Module):
    """Shared conv3x3-BN-ReLU, then one `TaskHead` per task group.

    Args:
        in_channels: channels of the decoder's map.
        grid: the grid of that map (its `stride` included); boxes are placed on it.
        tasks: the task groups (default: CenterPoint's nuScenes grouping, circle NMS).
        shared_channels: channels of the shared conv.
        head_channels: channels inside each branch.
        num_head_convs: convs per branch (the last one predicts).
        targets: target drawing settings.
        loss_weights: loss weights.
        decode: peak extraction, thresholds and NMS sizes.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        grid: BEVGrid,
        tasks: Sequence[DetectionTask] = NUSCENES_TASKS,
        shared_channels: int = 64,
        head_channels: int = 64,
        num_head_convs: int = 2,
        targets: TargetConfig = TargetConfig(),  # noqa: B008 (frozen, immutable)
        loss_weights: LossWeights = LossWeights(),  # noqa: B008
        decode: DecodeConfig = DecodeConfig(),  # noqa: B008
    ):
        super().__init__()
        if not tasks:
            raise ValueError("CenterPointHead needs at least one task")
        self.grid = grid
        self.tasks = tuple(tasks)
        self.target_config = targets
        self.loss_weights = loss_weights
        self.decode_config = decode
        self.shared = nn.Sequential(
            nn.Conv2d(in_channels, shared_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(shared_channels),
            nn.ReLU(inplace=True),
        )
        self.task_heads = nn.ModuleList(
            TaskHead(
                in_channels=shared_channels,
                head_channels=head_channels,
                num_classes=len(t.class_names),
                with_attributes=t.has_attributes,
                num_convs=num_head_convs,
            )
            for t in self.tasks
        )
        # [num classes, num attributes] bool: which attributes each class may take
        valid = torch.tensor(
            [[a in VALID_ATTRIBUTES[c] for a in ATTRIBUTE_NAMES] for c in CLASS_NAMES]
        )
        self.register_buffer("valid_attributes", valid, persistent=False)
        self.register_buffer(
            "code_weights", torch.tensor(loss_weights.code_weights), persistent=False
        )

    def forward(self, x: torch.Tensor) -> list[TaskOutput]:
        """`[B, in_channels, X, Y]` (X, Y = `grid.shape`) -> one `TaskOutput` per task."""
        if tuple(x.shape[2:]) != self.grid.shape:
            raise ValueError(f"map is {tuple(x.shape[2:])}, the head's grid {self.grid.shape}")
        shared = self.shared(x)  # [B, shared_channels, X, Y]
        return [head(shared) for head in self.task_heads]

    # ---- training -------------------------------------------------------------------------

    def build_targets(
        self,
        gt_boxes: Sequence[Boxes3D],
        gt_labels: Sequence[torch.Tensor],
        gt_attributes: Sequence[torch.Tensor],
    ) -> list[TaskTargets]:
        """Per task targets for boxes in the (augmented) LiDAR frame of the map."""
        return build_targets(
            gt_boxes,
            gt_labels,
            gt_attributes,
            grid=self.grid,
            tasks=self.tasks,
            config=self.target_config,
        )

    def loss(
        self,
        outputs: Sequence[TaskOutput],
        gt_boxes: Sequence[Boxes3D],
        gt_labels: Sequence[torch.Tensor],
        gt_attributes: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Named weighted scalar losses whose sum is the head's training loss.

        Args:
            outputs: `forward`'s output.
            gt_boxes: per sample `[M_b]` boxes in the (augmented) LiDAR frame (`Batch.gt_boxes`).
            gt_labels: per sample `[M_b]` int64 into CLASS_NAMES.
            gt_attributes: per sample `[M_b]` int64 into ATTRIBUTE_NAMES, -1 for none.

        Returns:
            `heatmap/task{t}` (focal, / objects), `bbox/task{t}` (code-weighted L1, / objects)
            and `dir/task{t}` (binary cross-entropy of the heading's direction along its axis,
            / objects) for every task, and `attr/task{t}` (cross-entropy) for tasks with
            attributes.
        """
        targets = self.build_targets(gt_boxes, gt_labels, gt_attributes)
        return self.loss_from_targets(outputs, targets)

    def loss_from_targets(
        self, outputs: Sequence[TaskOutput], targets: Sequence[TaskTargets]
    ) -> dict[str, torch.Tensor]:
        """`loss` given targets already built.

        Under `torchrun`, inside `perception.engine.global_batch()`, the object counts the
        losses are divided by are those of the global batch (see `global_mean_normaliser`),
        so that DDP's averaged gradient is the one-process gradient on the global batch.
        """
        w = self.loss_weights
        # per task: heatmap centres, real objects, objects with an attribute
        counts = torch.stack(
            [
                torch.stack(
                    [
                        tgt.heatmap.eq(1).float().sum(),
                        tgt.num_objects,
                        torch.where(tgt.mask, tgt.attributes >= 0, False).sum().float(),
                    ]
                )
                for tgt in targets
            ]
        )  # [T, 3]
        num_pos = global_mean_normaliser(counts[:, 0], min_value=1)
        num_objects = global_mean_normaliser(counts[:, 1], eps=1e-4)
        num_attributes = global_mean_normaliser(counts[:, 2], min_value=1)
        losses: dict[str, torch.Tensor] = {}
        for t, (out, tgt) in enumerate(zip(outputs, targets)):
            losses[f"heatmap/task{t}"] = w.heatmap * gaussian_focal_loss(
                out.heatmap, tgt.heatmap, normalizer=num_pos[t]
            )
            regression = out.regression()  # [B, NUM_REGRESSION, X, Y]
            code_weights = self.code_weights.to(regression)
            bbox = regression.new_zeros(())
            direction = regression.new_zeros(())
            for (di, dj), cell_weight in self._supervised_cells():
                indices, inside = self._shift(tgt.indices, di, dj)  # [B, M] each
                mask = tgt.mask & inside
                target = tgt.regression
                if di or dj:  # the centre's offset as seen from the shifted cell
                    target = target - torch.tensor(
                        [di, dj] + [0] * (NUM_REGRESSION - 2), dtype=target.dtype
                    ).to(target.device)
                reg = _gather(regression, indices)  # [B, M, NUM_REGRESSION]
                bbox = bbox + cell_weight * weighted_l1_loss(reg, target, mask, code_weights, 1.0)
                if out.direction is not None:
                    logit = _gather(out.direction, indices)[..., 0]  # [B, M]
                    bce = F.binary_cross_entropy_with_logits(
                        logit.float(), tgt.direction, reduction="none"
                    )
                    direction = direction + cell_weight * (bce * mask.float()).sum()
            total_weight = sum(cw for _, cw in self._supervised_cells())
            losses[f"bbox/task{t}"] = w.bbox * bbox / (num_objects[t] * total_weight)
            if out.direction is not None:
                losses[f"dir/task{t}"] = w.direction * direction / (num_objects[t] * total_weight)
            if out.attribute is not None:
                logits = _gather(out.attribute, tgt.indices)  # [B, M, A]
                attrs = torch.where(tgt.mask, tgt.attributes, torch.full_like(tgt.attributes, -1))
                losses[f"attr/task{t}"] = w.attribute * attribute_loss(
                    logits, attrs, normalizer=num_attributes[t]
                )
        return losses

    def _supervised_cells(self) -> list[tuple[tuple[int, int], float]]:
        """`((di, dj), weight)` of the cells around a centre that the box losses train."""
        cells = [((0, 0), 1.0)]
        if self.loss_weights.neighbours > 0:
            cells += [
                ((di, dj), self.loss_weights.neighbours)
                for di in (-1, 0, 1)
                for dj in (-1, 0, 1)
                if di or dj
            ]
        return cells

    def _shift(self, indices: torch.Tensor, di: int, dj: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat cells `[B, M]` moved by `(di, dj)` -> (clamped flat cells, inside the map)."""
        X, Y = self.grid.shape
        i, j = indices // Y + di, indices % Y + dj
        inside = (i >= 0) & (i < X) & (j >= 0) & (j < Y)
        return i.clamp(0, X - 1) * Y + j.clamp(0, Y - 1), inside

    # ---- inference ------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, outputs: Sequence[TaskOutput], tokens: Sequence[str]) -> list[Detections]:
        """Detections per sample in the frame of the map (the augmented LiDAR frame).

        Per task: sigmoid heatmap, optional local-maximum filter, top-K peaks over classes
        and cells, boxes from the regressions at the peaks, score threshold, class-agnostic
        NMS of the task's kind, at most `post_max_size`. Attributes: the argmax over the
        attributes valid for the predicted class, -1 for classes that have none.

        Args:
            outputs: `forward`'s output.
            tokens: the samples' tokens (`Batch.tokens`), B of them.

        Returns:
            B `Detections`, sorted by score within each task.
        """
        cfg = self.decode_config
        B = len(tokens)
        X, Y = self.grid.shape
        per_sample: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in range(B)]
        for task, out in zip(self.tasks, outputs):
            heat = torch.sigmoid(out.heatmap.float())  # [B, n, X, Y]
            if cfg.local_max_kernel > 1:
                k = cfg.local_max_kernel
                peak = F.max_pool2d(heat, k, stride=1, padding=k // 2)  # [B, n, X, Y]
                heat = heat * (peak == heat)
            n = heat.shape[1]
            K = min(cfg.pre_max_size, n * X * Y)
            scores, flat = heat.reshape(B, -1).topk(K, dim=1)  # [B, K]
            local = flat // (X * Y)  # [B, K] class within the task
            cell = flat % (X * Y)  # [B, K] i * Y + j
            cells = torch.stack([cell // Y, cell % Y], dim=-1)  # [B, K, 2]
            reg = _gather(out.regression().float(), cell)  # [B, K, NUM_REGRESSION]
            direction = (
                None if out.direction is None else _gather(out.direction.float(), cell)[..., 0]
            )  # [B, K] logits
            labels = torch.tensor(task.labels, device=heat.device)[local]  # [B, K] global
            if out.attribute is not None:
                attr_logits = _gather(out.attribute.float(), cell)  # [B, K, A]
                valid = self.valid_attributes[labels]  # [B, K, A]
                attr = attr_logits.masked_fill(~valid, float("-inf")).argmax(-1)
                attrs = torch.where(valid.any(-1), attr, torch.full_like(attr, -1))  # [B, K]
            else:
                attrs = torch.full_like(labels, -1)
            for b in range(B):
                keep = scores[b] > cfg.score_threshold  # [K]
                s, lab, att = scores[b][keep], labels[b][keep], attrs[b][keep]
                boxes = decode_boxes(
                    cells[b][keep],
                    reg[b][keep],
                    self.grid,
                    None if direction is None else direction[b][keep],
                )  # [k, 9]
                kept = self._nms(task, boxes, s)[: cfg.post_max_size]
                per_sample[b].append((boxes[kept], s[kept], lab[kept], att[kept]))
        detections = []
        for b, token in enumerate(tokens):
            boxes, scores, labels, attrs = (torch.cat(parts) for parts in zip(*per_sample[b]))
            detections.append(Detections(token, Boxes3D(boxes), scores, labels, attrs))
        return detections

    def _nms(self, task: DetectionTask, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Indices of `boxes [k, 9]` kept by the task's NMS, by descending score."""
        if boxes.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long, device=boxes.device)
        if isinstance(task.nms, CircleNMS):
            kept = circle_nms(boxes[:, 0:2], scores, task.nms.radius)
        elif isinstance(task.nms, RotatedNMS):
            kept = nms_bev(boxes[:, [0, 1, 3, 4, 6]], scores, task.nms.iou_threshold)
        else:
            raise TypeError(f"unknown NMS {task.nms!r}")
        return kept.long()

    def predict(self, outputs: Sequence[TaskOutput], batch: Batch) -> list[Detections]:
        """`decode`, then back to each sample's un-augmented keyframe LiDAR frame."""
        return undo_lidar_aug(self.decode(outputs, batch.tokens), batch.lidar_aug)


def undo_lidar_aug(detections: Sequence[Detections], lidar_aug: torch.Tensor) -> list[Detections]:
    """Maps detections from the augmented LiDAR frame (`new = lidar_aug @ old`) back to the
    keyframe LiDAR frame.

    Args:
        detections: B per-sample detections in the augmented frame.
        lidar_aug: `[B, 4, 4]` float, `Batch.lidar_aug`.

    Returns:
        B `Detections`, boxes transformed by `inverse(lidar_aug[b])` (centre, heading,
        velocity and, for a scaling augmentation, size); scores, labels, attributes unchanged.
    """
    if len(detections) != lidar_aug.shape[0]:
        raise ValueError(f"{len(detections)} detections but {lidar_aug.shape[0]} matrices")
    inverse = torch.linalg.inv(lidar_aug.double())  # [B, 4, 4]
    return [
        Detections(d.sample_token, d.boxes.transform(inv), d.scores, d.labels, d.attributes)
        for d, inv in zip(detections, inverse)
    ]
