"""Where the camera-only model's learning is slow: short runs with oracle inputs.

The camera-only tiny model's summed heatmap loss stays near 11-14 for thousands of steps where
the LiDAR-only model's falls to ~5 in a few hundred (BENCHMARKS.md, "Camera only"). This trains
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
from perception.engine import Trainer, seed_everything
from perception.models.bev_grid import BEVGrid
from perception.models.builder import build_model
from perception.structures import Batch

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


def cell_classes(view_transform, batch: Batch) -> torch.Tensor:
    """`[B*Ncam, fH, fW]` class of the box the nearest LiDAR point of each feature cell lies
    in; `NUM_CLASSES` for background or no point."""
    image_from_lidar = view_transform.image_from_lidar(batch)
    B, N = image_from_lidar.shape[:2]
    f_h, f_w = view_transform.frustum.shape[1:3]
    stride = view_transform.feature_stride
    nearest = torch.full((B * N * f_h * f_w,), float("inf"))
    labels = torch.full((B * N * f_h * f_w,), NUM_CLASSES, dtype=torch.long)
    for b in range(B):
        xyz = batch.points[batch.points[:, 0] == b, 1:4].float()
        if not len(xyz):
            continue
        box = points_in_boxes(xyz, batch.gt_boxes[b])
        point_class = torch.where(
            box >= 0, batch.gt_labels[b][box.clamp(min=0)], torch.full_like(box, NUM_CLASSES)
        )
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
        labels[flat[is_nearest]] = point_class.expand(N, -1)[ok][is_nearest]
    return labels.view(B * N, f_h, f_w)


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
    Trainer(config=config, model=model, loader=loader, work_dir=work, progress=False).train()
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
