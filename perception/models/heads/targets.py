"""CenterPoint training targets: Gaussian class heatmaps and regression targets at box centres.

Maps are `[B, C, X, Y]` on a `BEVGrid` (x along dim 2, y along dim 3); a cell's flat index is
`i * Y + j`. Boxes are `Boxes3D` in the (augmented) LiDAR frame the model sees.

Regression channels (`REGRESSION_CHANNELS`), per object at its centre cell `(i, j)`:
`(offset_x, offset_y)` the centre's position inside the cell in cells (in [0, 1)), `z` the
centre height (m), `log w, log l, log h` (m), `(sin 2 yaw, cos 2 yaw)`, and the velocity in
the box's own frame `(v_long, v_lat)` (m/s, along the heading and to its left).

Heading is split in two (SECOND's direction classifier): the box's axis as the doubled angle,
which a front/back-symmetric view can always learn (a plain `(sin yaw, cos yaw)` regression of
an object whose front and back look alike is pulled to `(0, 0)` by the L1 loss, i.e. to a
random angle), and a binary direction target saying which of the two headings along that axis
it is (`direction_targets`): 1 when the heading points away from `DIRECTION_OFFSET`'s half-plane.
The split's cut lies on the diagonals, away from the road-aligned headings most objects have.

Velocity in the box's frame: a vehicle moves along its heading, so once the heading is known the
velocity is one speed (`v_long`), which the scene's context tells (in a lane or parked at the
kerb) and the sweeps' motion blur measures; its direction comes from the heading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from perception.structures import Boxes3D

from ..bev_grid import BEVGrid
from .tasks import DetectionTask

REGRESSION_CHANNELS: tuple[str, ...] = (
    "offset_x",
    "offset_y",
    "z",
    "log_w",
    "log_l",
    "log_h",
    "sin_2yaw",
    "cos_2yaw",
    "v_long",
    "v_lat",
)
NUM_REGRESSION = len(REGRESSION_CHANNELS)
_MAX_LOG_SIZE = 10.0  # exp() of a wild prediction stays finite
# Direction 0: the heading lies within pi/2 of this angle (rad, LiDAR frame); 1: the other half.
DIRECTION_OFFSET = torch.pi / 4


@dataclass(frozen=True)
class TargetConfig:
    """How targets are drawn. CenterPoint nuScenes: 500 objects, min radius 2, overlap 0.1."""

    max_objects: int = 500  # per sample and task; further objects are dropped
    min_radius: int = 2  # cells
    gaussian_overlap: float = 0.1  # CenterNet's min_overlap


@dataclass(frozen=True)
class TaskTargets:
    """One task's targets for a batch; M = `TargetConfig.max_objects`, n the task's classes."""

    heatmap: torch.Tensor  # [B, n, X, Y] float32 in [0, 1], exactly 1 at object centres
    indices: torch.Tensor  # [B, M] int64 flat centre cell i * Y + j (0 where unused)
    mask: torch.Tensor  # [B, M] bool, True for a real object
    regression: torch.Tensor  # [B, M, NUM_REGRESSION] float32, REGRESSION_CHANNELS
    direction: torch.Tensor  # [B, M] float32 in {0, 1}, `direction_targets`
    labels: torch.Tensor  # [B, M] int64 class index within the task
    attributes: torch.Tensor  # [B, M] int64 index into ATTRIBUTE_NAMES, -1 for none

    @property
    def num_objects(self) -> torch.Tensor:
        """Scalar float: real objects in the batch."""
        return self.mask.sum().float()


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float) -> torch.Tensor:
    """CenterNet's radius (in the units of `height`, `width`): the largest centre shift that
    keeps a box of that size at IoU >= `min_overlap` with itself (CenterNet's formula as
    CenterPoint uses it, including its known approximation). Shapes broadcast."""
    o = min_overlap
    b1 = height + width
    c1 = width * height * (1 - o) / (1 + o)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - o) * width * height
    r2 = (b2 + torch.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * o
    b3 = -2 * o * (height + width)
    c3 = (o - 1) * width * height
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def gaussian_2d(radius: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """`[2r + 1, 2r + 1]` Gaussian with peak 1 at the centre, sigma = (2r + 1) / 6 (CenterNet)."""
    sigma = (2 * radius + 1) / 6
    d = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    g = torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma**2))
    g[g < torch.finfo(dtype).eps * g.max()] = 0
    return g


def draw_gaussian(heatmap: torch.Tensor, center: tuple[int, int], radius: int) -> None:
    """Draws a Gaussian of `radius` cells at integer `center` `(i, j)` into `heatmap` `[X, Y]`
    in place, keeping the elementwise maximum with what is there."""
    X, Y = heatmap.shape
    i, j = center
    g = gaussian_2d(radius, dtype=heatmap.dtype, device=heatmap.device)
    x0, x1 = max(i - radius, 0), min(i + radius + 1, X)
    y0, y1 = max(j - radius, 0), min(j + radius + 1, Y)
    if x0 >= x1 or y0 >= y1:
        return
    patch = g[x0 - i + radius : x1 - i + radius, y0 - j + radius : y1 - j + radius]
    torch.maximum(heatmap[x0:x1, y0:y1], patch, out=heatmap[x0:x1, y0:y1])


def encode_boxes(boxes: torch.Tensor, grid: BEVGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """`[M, 9]` boxes (LiDAR frame) -> (`[M, 2]` int64 centre cells `(i, j)`,
    `[M, NUM_REGRESSION]` regression targets). Cells may fall outside the map."""
    ij = grid.to_cells(boxes[:, 0:2])  # [M, 2] continuous cells
    cells = ij.floor()
    cos, sin = torch.cos(boxes[:, 6]), torch.sin(boxes[:, 6])  # [M] the heading
    v_long = boxes[:, 7] * cos + boxes[:, 8] * sin
    v_lat = -boxes[:, 7] * sin + boxes[:, 8] * cos
    reg = torch.cat(
        [
            ij - cells,  # [M, 2] offset in the cell
            boxes[:, 2:3],  # [M, 1] z
            boxes[:, 3:6].clamp_min(1e-6).log(),  # [M, 3] log (w, l, h)
            torch.sin(2 * boxes[:, 6:7]),  # the axis: the same for yaw and yaw + pi
            torch.cos(2 * boxes[:, 6:7]),
            torch.stack([v_long, v_lat], dim=1),  # [M, 2] velocity in the box's frame
        ],
        dim=1,
    )
    return cells.long(), reg


def direction_targets(yaw: torch.Tensor) -> torch.Tensor:
    """`[M]` yaw (rad) -> `[M]` float: 0 when the heading lies within pi/2 of
    `DIRECTION_OFFSET`, else 1."""
    return (torch.cos(yaw - DIRECTION_OFFSET) < 0).to(torch.float32)


def heading_from_axis(
    sin2: torch.Tensor, cos2: torch.Tensor, direction_logit: torch.Tensor | None
) -> torch.Tensor:
    """Yaw in [-pi, pi) from the axis `(sin 2 yaw, cos 2 yaw)` and the direction logit (> 0:
    direction 1; None: direction 0). Shapes broadcast."""
    axis = 0.5 * torch.atan2(sin2, cos2)  # one of the two headings along the axis
    # the heading along the axis that lies in direction 0's half-plane ...
    yaw = torch.where(torch.cos(axis - DIRECTION_OFFSET) < 0, axis + torch.pi, axis)
    if direction_logit is not None:  # ... turned round for direction 1
        yaw = torch.where(direction_logit > 0, yaw + torch.pi, yaw)
    return torch.remainder(yaw + torch.pi, 2 * torch.pi) - torch.pi


def decode_boxes(
    cells: torch.Tensor,
    regression: torch.Tensor,
    grid: BEVGrid,
    direction_logit: torch.Tensor | None = None,
) -> torch.Tensor:
    """Inverse of `encode_boxes`: `[K, 2]` cells `(i, j)`, `[K, NUM_REGRESSION]` regressions and
    `[K]` direction logits (None: direction 0) -> `[K, 9]` boxes `(x, y, z, w, l, h, yaw, vx,
    vy)` in the LiDAR frame of the map."""
    xy = grid.from_cells(cells.to(regression.dtype) + regression[:, 0:2])  # [K, 2]
    size = regression[:, 3:6].clamp(max=_MAX_LOG_SIZE).exp()  # [K, 3]
    yaw = heading_from_axis(regression[:, 6], regression[:, 7], direction_logit)  # [K]
    cos, sin = torch.cos(yaw), torch.sin(yaw)
    v_long, v_lat = regression[:, 8], regression[:, 9]
    velocity = torch.stack([v_long * cos - v_lat * sin, v_long * sin + v_lat * cos], dim=1)
    return torch.cat([xy, regression[:, 2:3], size, yaw[:, None], velocity], dim=1)


def build_targets(
    gt_boxes: Sequence[Boxes3D],
    gt_labels: Sequence[torch.Tensor],
    gt_attributes: Sequence[torch.Tensor],
    *,
    grid: BEVGrid,
    tasks: Sequence[DetectionTask],
    config: TargetConfig,
) -> list[TaskTargets]:
    """Targets for every task.

    Args:
        gt_boxes: per sample `[M_b]` boxes in the (augmented) LiDAR frame of the map.
        gt_labels: per sample `[M_b]` int64 index into CLASS_NAMES.
        gt_attributes: per sample `[M_b]` int64 index into ATTRIBUTE_NAMES, -1 for none.
        grid: the grid of the head's map (its stride included).
        tasks: the head's task groups; boxes of classes in none of them are ignored.
        config: radius and object-count settings.

    Returns:
        One `TaskTargets` per task. Boxes whose centre falls outside the map are ignored.
    """
    B = len(gt_boxes)
    X, Y = grid.shape
    M = config.max_objects
    cell_x, cell_y = grid.cell_size
    device = gt_boxes[0].tensor.device if B else torch.device("cpu")
    out = []
    for task in tasks:
        n = len(task.class_names)
        heatmap = torch.zeros(B, n, X, Y, device=device)
        indices = torch.zeros(B, M, dtype=torch.long, device=device)
        mask = torch.zeros(B, M, dtype=torch.bool, device=device)
        regression = torch.zeros(B, M, NUM_REGRESSION, device=device)
        direction = torch.zeros(B, M, device=device)
        labels = torch.zeros(B, M, dtype=torch.long, device=device)
        attributes = torch.full((B, M), -1, dtype=torch.long, device=device)
        task_labels = torch.tensor(task.labels, device=device)  # [n]
        for b in range(B):
            boxes = gt_boxes[b].tensor.to(device=device, dtype=torch.float32)  # [M_b, 9]
            match = gt_labels[b].to(device)[:, None] == task_labels[None]  # [M_b, n]
            cells, reg = encode_boxes(boxes, grid)
            keep = match.any(1) & grid.contains(cells)  # [M_b]
            keep_idx = keep.nonzero().flatten()[:M]
            k = keep_idx.numel()
            if k == 0:
                continue
            cells, reg = cells[keep_idx], reg[keep_idx]
            local = match[keep_idx].float().argmax(1)  # [k] class within the task
            radius = gaussian_radius(
                boxes[keep_idx, 3] / cell_x, boxes[keep_idx, 4] / cell_y, config.gaussian_overlap
            )  # [k] cells, from the footprint (w, l)
            radius = radius.floor().clamp_min(config.min_radius).long()
            for (i, j), c, r in zip(cells.tolist(), local.tolist(), radius.tolist()):
                draw_gaussian(heatmap[b, c], (i, j), r)
            indices[b, :k] = cells[:, 0] * Y + cells[:, 1]
            mask[b, :k] = True
            regression[b, :k] = reg
            direction[b, :k] = direction_targets(boxes[keep_idx, 6])
            labels[b, :k] = local
            attributes[b, :k] = gt_attributes[b].to(device)[keep_idx]
        out.append(TaskTargets(heatmap, indices, mask, regression, direction, labels, attributes))
    return out
