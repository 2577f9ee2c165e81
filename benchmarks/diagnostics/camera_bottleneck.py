"""Where the camera-only model's learning is slow: short runs with oracle inputs.

The camera-only tiny model's summed heatmap loss stays near 11-14 for thousands of steps where
the LiDAR-only model's falls to ~5 in a few hundred (benchmarks/HISTORY.md, "Camera only"). This trains
the camera-only model for a few hundred steps with the view transform's depth net given more and
more of the answer, beside the LiDAR-only model, and prints the heatmap loss along the way:

    camera        the model as configured (depth from pixels, supervised by LiDAR)
    depth         + the LiDAR depth of every feature cell as input (`lidar_depth_input`)
    depth+class   + the class of the object the cell's nearest LiDAR point lies in (or
                  background) as input: what the image should tell, given
    exact         + the depth distribution forced onto the LiDAR depth where a point
                  projects (a logit bias of 30 on its bin): features lifted exactly
    lidar         the LiDAR-only model, the reference

If `depth+class` learns as fast as `lidar`, the slow part is the image (semantics, depth); if
not, it is the lift into BEV (`exact` takes the depth net's learning out of it) or what follows. Training only (no test), the train world:

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/camera_bottleneck.py --variant depth+class \\
        --root data/synth-train --steps 400 --out outputs/camera_bottleneck
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from perception.config import load_config
from perception.datasets.pipeline import build_dataloader, build_dataset
from perception.engine import Trainer, build_hooks, seed_everything
from perception.models.bev_grid import BEVGrid
from perception.models.builder import build_model
from perception.structures import Batch
from perception.structures.classes import CLASS_NAMES

VARIANTS = ("camera", "depth", "depth+class", "exact", "lidar")
EXACT_LOGIT = 30.0
NUM_CLASSES = 10


def points_in_boxes(xyz: torch.Tensor, boxes, margin: float = 0.2) -> torch.Tensor:
    """`[P]` index of the box each point lies in (-1: none), boxes grown by `margin` m."""
    if not len(boxes):
        return torch.full((len(xyz),), -1, dtype=torch.long)
    center, size, yaw = boxes.center.float(), boxes.size.float(), boxes.yaw.float()
    d = xyz[:, None, :] - center[None]  # [P, N, 3]
    cos, sin = torch.cos(yaw), torch.sin(yaw)
    along = d[..., 0] * cos + d[..., 1] * sin  # box frame: x along the heading (length)
    across = -d[..., 0] * sin + d[..., 1] * cos
    inside = (
        (along.abs() <= size[:, 1] / 2 + margin)
        & (across.abs() <= size[:, 0] / 2 + margin)
        & (d[..., 2].abs() <= size[:, 2] / 2 + margin)
    )  # [P, N]
    index = inside.float().argmax(dim=1)
    return torch.where(inside.any(dim=1), index, torch.full_like(index, -1))


def nearest_point_boxes(view_transform, batch: Batch) -> torch.Tensor:
    """`[B*Ncam, fH, fW]` index (within its sample) of the box that the nearest LiDAR point
    projecting into each feature cell lies in; -1 for none, -2 where no point projects."""
    image_from_lidar = view_transform.image_from_lidar(batch)
    B, N = image_from_lidar.shape[:2]
    f_h, f_w = view_transform.frustum.shape[1:3]
    stride = view_transform.feature_stride
    nearest = torch.full((B * N * f_h * f_w,), float("inf"))
    boxes = torch.full((B * N * f_h * f_w,), -2, dtype=torch.long)
    for b in range(B):
        xyz = batch.points[batch.points[:, 0] == b, 1:4].float()
        if not len(xyz):
            continue
        box = points_in_boxes(xyz, batch.gt_boxes[b])
        homogeneous = torch.cat([xyz, torch.ones_like(xyz[:, :1])], 1)
        projected = torch.einsum("nij,pj->npi", image_from_lidar[b].float(), homogeneous)
        depth = projected[..., 2]
        uv = projected[..., :2] / depth.clamp(min=1e-3)[..., None]
        col = torch.floor(uv[..., 0] / stride).long()
        row = torch.floor(uv[..., 1] / stride).long()
        ok = (depth > 0.5) & (col >= 0) & (col < f_w) & (row >= 0) & (row < f_h)
        cam = torch.arange(N)[:, None].expand_as(col)
        flat = ((b * N + cam) * (f_h * f_w) + row * f_w + col)[ok]
        nearest.scatter_reduce_(0, flat, depth[ok], reduce="amin")
        is_nearest = depth[ok] == nearest[flat]
        boxes[flat[is_nearest]] = box.expand(N, -1)[ok][is_nearest]
    return boxes.view(B * N, f_h, f_w)


def cell_classes(view_transform, batch: Batch) -> torch.Tensor:
    """`[B*Ncam, fH, fW]` class of the box the nearest LiDAR point of each feature cell lies
    in; `NUM_CLASSES` for background or no point."""
    boxes = nearest_point_boxes(view_transform, batch)
    labels = torch.full_like(boxes, NUM_CLASSES)
    per_sample = boxes.shape[0] // len(batch.gt_labels)
    for b, sample_labels in enumerate(batch.gt_labels):
        cells = boxes[b * per_sample : (b + 1) * per_sample]
        hit = cells >= 0
        labels[b * per_sample : (b + 1) * per_sample][hit] = sample_labels[cells[hit]]
    return labels


def visibility(view_transform, loader, samples: int) -> list[dict]:
    """Per class, over the first `samples` samples: how many boxes, how many have LiDAR
    points, how many are the nearest surface of at least one camera ray (one ray per
    feature cell: what the lift can place on them), how many have their centre in some
    camera's image, and the mean LiDAR points and camera rays per box."""
    rows = [
        dict(boxes=0, lidar_boxes=0, ray_boxes=0, centre_in_image=0, points=0, rays=0)
        for _ in range(NUM_CLASSES)
    ]
    seen = 0
    for batch in loader:
        cells = nearest_point_boxes(view_transform, batch)
        image_from_lidar = view_transform.image_from_lidar(batch).float()
        width, height = view_transform.image_size
        per_sample = cells.shape[0] // len(batch.gt_labels)
        for b, labels in enumerate(batch.gt_labels):
            if seen == samples:
                return rows
            seen += 1
            boxes = batch.gt_boxes[b]
            if not len(boxes):
                continue
            xyz = batch.points[batch.points[:, 0] == b, 1:4].float()
            points = torch.bincount(
                (inside := points_in_boxes(xyz, boxes))[inside >= 0], minlength=len(boxes)
            )
            hit = cells[b * per_sample : (b + 1) * per_sample].flatten()
            rays = torch.bincount(hit[hit >= 0], minlength=len(boxes))
            centre = torch.cat([boxes.center.float(), torch.ones(len(boxes), 1)], 1)
            projected = torch.einsum("nij,kj->nki", image_from_lidar[b], centre)
            depth = projected[..., 2]
            uv = projected[..., :2] / depth.clamp(min=1e-3)[..., None]
            in_image = (
                (depth > 0.5)
                & (uv[..., 0] >= 0)
                & (uv[..., 0] < width)
                & (uv[..., 1] >= 0)
                & (uv[..., 1] < height)
            ).any(dim=0)
            for k, label in enumerate(labels.tolist()):
                row = rows[label]
                row["boxes"] += 1
                row["lidar_boxes"] += int(points[k] > 0)
                row["ray_boxes"] += int(rays[k] > 0)
                row["centre_in_image"] += int(in_image[k])
                row["points"] += int(points[k])
                row["rays"] += int(rays[k])
    return rows


class WithClassInput(nn.Module):
    """The depth net, reading the oracle class of every cell (one-hot) beside its input."""

    def __init__(self, depth_net: nn.Sequential, *, exact_depth: int = 0):
        super().__init__()
        first = depth_net[0][0]
        # exact_depth = D: the input's LiDAR one-hot depth (channels C..C+D, after the C feature
        # channels) is added to the D depth logits, times EXACT_LOGIT
        self.exact_depth = exact_depth
        self.features = first.in_channels - exact_depth
        depth_net[0][0] = nn.Conv2d(
            first.in_channels + NUM_CLASSES + 1, first.out_channels, 3, padding=1, bias=False
        )
        self.net = depth_net
        self.classes: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(self.classes, NUM_CLASSES + 1).permute(0, 3, 1, 2).to(x.dtype)
        out = self.net(torch.cat([x, one_hot], dim=1))
        if not self.exact_depth:
            return out
        D, C = self.exact_depth, self.features
        bias = EXACT_LOGIT * x[:, C : C + D]
        return torch.cat([out[:, :D] + bias, out[:, D:]], dim=1)


def conv_block(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    )


def split_height(view_transform, cells: int, z_range=(-5.0, 3.0)) -> None:
    """Pools the frustum into `cells` height cells over `z_range` (m) instead of one, stacked
    as channels for the BEV convolution (whose first layer is rebuilt to read them)."""
    grid = view_transform.grid
    r, v = grid.point_range, grid.voxel_size
    view_transform.grid = BEVGrid(
        point_range=(r[0], r[1], z_range[0], r[3], r[4], z_range[1]),
        voxel_size=(v[0], v[1], (z_range[1] - z_range[0]) / cells),
        stride=grid.stride,
    )
    first = view_transform.bev_conv[0][0]
    view_transform.bev_conv[0][0] = nn.Conv2d(
        view_transform.context_channels * cells, first.out_channels, 3, padding=1, bias=False
    )


def build(variant: str, overrides: list[str], bev_layers: int = 0, height_cells: int = 1):
    config_path = "configs/bevfusion_tiny_lidar.yaml"
    if variant != "lidar":
        config_path = "configs/bevfusion_tiny_camera.yaml"
        overrides = overrides + ["data.clip_frames=1", "model.camera.tsm_mode=off"]
    config = load_config(config_path, overrides)
    seed_everything(config.seed)
    model = build_model(config)
    if variant in ("depth", "depth+class", "exact"):
        # the camera-only schema refuses LiDAR depth input (no LiDAR at run time); the
        # fused config's camera branch has it and the same shapes otherwise
        fused = load_config("configs/bevfusion_tiny.yaml", overrides)
        model.camera = build_model(fused).camera
    if variant in ("depth+class", "exact"):
        view_transform = model.camera.view_transform
        exact = view_transform.num_depth if variant == "exact" else 0
        wrapper = WithClassInput(view_transform.depth_net, exact_depth=exact)
        view_transform.depth_net = wrapper

        def set_classes(module, args):
            with torch.no_grad():
                wrapper.classes = cell_classes(module, args[1])

        view_transform.register_forward_pre_hook(set_classes)
    if height_cells > 1:
        split_height(model.camera.view_transform, height_cells)
    if bev_layers:  # more spatial context on the lifted map before the shared decoder
        view_transform = model.camera.view_transform
        channels = view_transform.out_channels
        view_transform.bev_conv = nn.Sequential(
            view_transform.bev_conv, *(conv_block(channels) for _ in range(bev_layers))
        )
    return config, model


def print_visibility(config, model, samples: int, overrides: list[str]) -> None:
    if model.camera is None:
        raise SystemExit("--visibility needs a camera variant (the rays are the camera's)")
    dataset = build_dataset(config, config.data.train_split, train=False)
    loader = build_dataloader(dataset, batch_size=2, train=False, workers=0, seed=config.seed)
    view_transform = model.camera.view_transform
    with torch.no_grad():
        rows = visibility(view_transform, loader, samples)
    width, height = view_transform.image_size
    f_h, f_w = view_transform.frustum.shape[1:3]
    print(
        f"visibility, {samples} samples of {config.data.root} ({config.data.train_split}), "
        f"images {width}x{height}, {f_w}x{f_h} rays a camera{' ' if overrides else ''}"
        + " ".join(overrides)
    )
    print(
        "| class | boxes | with LiDAR points | with a camera ray | centre in an image "
        "| LiDAR points a box | camera rays a box |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    total = {k: 0 for k in rows[0]}
    for row in rows:
        for k, v in row.items():
            total[k] += v
    for name, row in [*zip(CLASS_NAMES, rows), ("all", total)]:
        n = max(row["boxes"], 1)
        print(
            f"| {name} | {row['boxes']} | {row['lidar_boxes'] / n:.0%} | "
            f"{row['ray_boxes'] / n:.0%} | {row['centre_in_image'] / n:.0%} | "
            f"{row['points'] / n:.0f} | {row['rays'] / n:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--root", default="data/synth-train")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", default="outputs/camera_bottleneck")
    parser.add_argument("--name", help="the run's folder under --out (default: the variant)")
    parser.add_argument(
        "--height-cells",
        type=int,
        default=1,
        help="camera variants: lift into this many height cells over -5..3 m (default 1)",
    )
    parser.add_argument(
        "--bev-layers",
        type=int,
        default=0,
        help="camera variants: this many more 3x3 conv-BN-ReLU layers on the lifted BEV map",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override key=value"
    )
    parser.add_argument(
        "--visibility",
        type=int,
        metavar="N",
        help="no training: count, per class over the first N samples of the train split (no "
        "augmentation), the boxes that LiDAR points and camera rays reach",
    )
    args = parser.parse_args()
    overrides = [
        f"data.root={args.root}",
        "data.version=v1.0-trainval",
        "data.train_split=train",
        "data.val_split=val",
        f"train.max_steps={args.steps}",
        f"seed={args.seed}",
        *args.overrides,
    ]
    config, model = build(args.variant, overrides, args.bev_layers, args.height_cells)
    if args.visibility:
        print_visibility(config, model, args.visibility, args.overrides)
        return
    dataset = build_dataset(config, train=True)
    loader = build_dataloader(
        dataset,
        batch_size=config.train.batch_size,
        train=True,
        workers=config.train.workers,
        seed=config.seed,
        distributed=False,
    )
    work = Path(args.out) / (args.name or args.variant.replace("+", "_"))
    hooks = build_hooks(config, model=model, datasets=[dataset], progress=False)
    Trainer(config=config, model=model, loader=loader, work_dir=work, hooks=hooks).train()
    curve = []
    for line in open(work / "log.jsonl"):
        record = json.loads(line)
        if "losses" in record and record["step"] % 50 == 0:
            losses = record["losses"]
            heatmap = sum(v for k, v in losses.items() if k.startswith("heatmap/"))
            curve.append(
                (record["step"], round(heatmap, 2), round(losses.get("camera/depth", 0), 2))
            )
    settings = " ".join(
        [
            *args.overrides,
            *[f"bev_layers={args.bev_layers}"] * bool(args.bev_layers),
            *[f"height_cells={args.height_cells}"] * (args.height_cells > 1),
        ]
    )
    settings = f" {settings}" if settings else ""
    print(f"{args.variant}{settings}: (step, heatmap loss summed over tasks, depth loss)")
    print(" ".join(f"{s}:{h}/{d}" for s, h, d in curve))


if __name__ == "__main__":
    main()
