"""LSS-style depth view transform: lift camera features into 3-D with a predicted depth
distribution, pool them into the BEV grid (fused pool, never materializing the frustum).

Geometry uses every recorded matrix (intrinsics, camera -> LiDAR, image augmentation, LiDAR
augmentation; docs/frames.md), so augmented training stays consistent. The pooling plan (which
BEV cell each frustum point falls in, sorted) depends on geometry only, and is reused while
calibration and augmentation are unchanged (a per-module cache, not global state).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import global_mean_normaliser
from ..geometry import lidar_to_image
from ..ops.bev_pool import BEVPoolPlanCache, bev_pool_depth
from ..structures import Batch
from .bev_grid import BEVGrid
from .painting import image_from_lidar
from .perspective import PerspectiveHead, perspective_labels


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class LSSViewTransform(nn.Module):
    """Camera features `[B, Ncam, C_in, fH, fW]` -> camera BEV `[B, out_channels, X, Y]`.

    Args:
        in_channels: channels of the camera features.
        out_channels: channels of the BEV map it returns.
        context_channels: channels lifted per depth bin.
        image_size: `(W, H)` of the (augmented) images the features come from.
        feature_stride: image pixels per feature cell (8 for the stride-8 neck).
        depth_bins: `(min, max, step)` metres along the optical axis (BEVFusion: 1, 60, 0.5).
        grid: the BEV grid the frustum is pooled into (stride 1, a single height cell or a few).
        downsample: stride of a final conv (BEVFusion pools at 0.3 m and downsamples x2 to the
            LiDAR map's 0.6 m), 1 for none.
        depth_loss_weight: > 0 supervises the depth distribution with LiDAR points projected
            into the images (returned as the auxiliary loss `depth`).
        lidar_depth_input: the depth net also reads the LiDAR depth of every feature cell (the
            bin of the nearest projected point, one-hot, zeros where none), as BEVFusion's
            DepthLSSTransform does: a fused model then lifts camera features to the depths
            LiDAR measured instead of learning depth from pixels alone. At run time the
            camera branch of such a model needs the points of the same batch (a sample whose
            `lidar_mask` is False gets no depth input).
        lidar_depth_prior: with `lidar_depth_input`, > 0 also adds a learnable scale (starting
            at this value) times that one-hot LiDAR bin to the depth logits, so the lift is
            sharp at the measured depth from the first step instead of after the depth net has
            learned to copy its input (a tiny depth net takes hundreds of steps: the depth
            loss of the tiny fused model falls from ~3.7 to ~0.6 nats over its first ~160
            camera steps); 0 for none. Cells without a LiDAR point get no prior.
        ground_depth_input: the ground's height in the LiDAR frame (m; -1.84 for nuScenes'
            LIDAR_TOP) or None. The depth net then also reads, for every feature cell, the
            depth at which its ray meets that flat ground (one-hot bin; zeros for rays that
            meet it nowhere in the depth range, e.g. above the horizon): a geometric prior from
            calibration alone, for models that must find depth without LiDAR. An object
            standing on the ground sits at the ground depth of the cells just below it.
        perspective: in training, a head that classifies every feature cell (the class of the
            nearest ground-truth box projecting onto it, or background) and adds its loss as
            `perspective` (`perception.models.perspective`); None for none.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        context_channels: int,
        image_size: tuple[int, int],
        feature_stride: int,
        depth_bins: tuple[float, float, float],
        grid: BEVGrid,
        downsample: int = 1,
        depth_loss_weight: float = 0.0,
        lidar_depth_input: bool = False,
        lidar_depth_prior: float = 0.0,
        ground_depth_input: float | None = None,
        perspective: PerspectiveHead | None = None,
    ):
        super().__init__()
        d_min, d_max, d_step = depth_bins
        if not (0 < d_min < d_max and d_step > 0):
            raise ValueError(f"depth_bins must be (min > 0, max > min, step > 0), got {depth_bins}")
        width, height = image_size
        if width % feature_stride or height % feature_stride:
            raise ValueError(f"image_size {image_size} is not a multiple of {feature_stride}")
        self.image_size = (int(width), int(height))
        self.feature_stride = feature_stride
        self.depth_bins = (float(d_min), float(d_max), float(d_step))
        self.grid = grid
        self.context_channels = context_channels
        self.depth_loss_weight = depth_loss_weight
        self.lidar_depth_input = lidar_depth_input
        if lidar_depth_prior < 0 or (lidar_depth_prior > 0 and not lidar_depth_input):
            raise ValueError(
                f"lidar_depth_prior must be >= 0 and needs lidar_depth_input, got "
                f"{lidar_depth_prior} with lidar_depth_input={lidar_depth_input}"
            )
        self.lidar_depth_prior = (
            nn.Parameter(torch.tensor(float(lidar_depth_prior))) if lidar_depth_prior > 0 else None
        )
        self.ground_depth_input = ground_depth_input
        self.num_depth = int(round((d_max - d_min) / d_step))
        f_h, f_w = height // feature_stride, width // feature_stride
        # (u, v, d) of every frustum point in augmented-image pixels and metres: [D, fH, fW, 3]
        depths = d_min + d_step * torch.arange(self.num_depth, dtype=torch.float32)
        us = torch.linspace(0, width - 1, f_w)
        vs = torch.linspace(0, height - 1, f_h)
        d, v, u = torch.meshgrid(depths, vs, us, indexing="ij")
        self.register_buffer("frustum", torch.stack([u, v, d], dim=-1), persistent=False)
        depth_inputs = int(lidar_depth_input) + int(ground_depth_input is not None)
        depth_input = self.num_depth * depth_inputs  # one-hot depths the depth net reads
        self.depth_net = nn.Sequential(
            _conv_bn_relu(in_channels + depth_input, in_channels),
            nn.Conv2d(in_channels, self.num_depth + context_channels, 1),
        )
        num_z = grid.voxel_shape[2]
        layers: list[nn.Module] = [_conv_bn_relu(context_channels * num_z, out_channels)]
        if downsample > 1:
            layers.append(_conv_bn_relu(out_channels, out_channels, stride=downsample))
        self.bev_conv = nn.Sequential(*layers)
        self.out_channels = out_channels
        self.plan_cache = BEVPoolPlanCache()
        self.perspective = perspective

    # -- geometry ---------------------------------------------------------------------------

    def image_from_lidar(self, batch: Batch) -> torch.Tensor:
        """`[B, Ncam, 4, 4]`: augmented LiDAR point -> (u*d, v*d, d, 1) in the augmented image of
        each camera's keyframe (the clip's last frame)."""
        return image_from_lidar(batch)

    def frustum_cells(self, image_from_lidar: torch.Tensor) -> torch.Tensor:
        """`[B*Ncam, D, fH, fW, 4]` int64 (batch, z, x, y) BEV cell of every frustum point;
        points outside the grid get coordinates outside it (the pool drops them)."""
        B, N = image_from_lidar.shape[:2]
        lidar_from_image = torch.linalg.inv(image_from_lidar.double())  # [B, N, 4, 4]
        u, v, d = self.frustum.double().unbind(-1)  # [D, fH, fW] each
        homogeneous = torch.stack([u * d, v * d, d, torch.ones_like(d)], dim=-1)  # [D, fH, fW, 4]
        points = torch.einsum("bnij,dhwj->bndhwi", lidar_from_image, homogeneous)[..., :3]
        (x0, y0, z0), (cx, cy, cz) = self.grid.point_range[:3], self.grid.voxel_size
        ix = torch.floor((points[..., 0] - x0) / cx)
        iy = torch.floor((points[..., 1] - y0) / cy)
        iz = torch.floor((points[..., 2] - z0) / cz)
        batch_index = torch.arange(B, dtype=torch.float64, device=points.device)
        batch_index = batch_index.view(B, 1, 1, 1, 1).expand_as(ix)
        cells = torch.stack([batch_index, iz, ix, iy], dim=-1).long()  # [B, N, D, fH, fW, 4]
        return cells.flatten(0, 1)  # [B*N, D, fH, fW, 4]

    def ground_depth(self, batch: Batch) -> torch.Tensor:
        """`[B*Ncam, fH, fW]` depth (m, along the optical axis) at which the ray of each feature
        cell meets the ground plane z = `ground_depth_input` of the LiDAR frame before its
        augmentation (a global rotation, flip or scale moves the plane; the camera depth of
        a ground point does not change); inf where the ray never meets it ahead."""
        assert self.ground_depth_input is not None
        B, N = batch.intrinsics.shape[:2]
        identity = torch.eye(4, device=batch.intrinsics.device).expand(B, 1, 4, 4)
        image_from_sensor = lidar_to_image(
            batch.intrinsics.float(),
            batch.camera_to_lidar[:, :, -1].float(),
            batch.image_aug.float(),
            identity,
        )
        sensor_from_image = torch.linalg.inv(image_from_sensor.double())  # [B, N, 4, 4]
        u, v = self.frustum[0, ..., 0].double(), self.frustum[0, ..., 1].double()  # [fH, fW]
        # the point at depth d is d * (M0 u + M1 v + M2) + M3 (columns of M): its height is
        # d * slope + z0, so the ground is met at d = (ground - z0) / slope
        row = sensor_from_image[:, :, 2]  # [B, N, 4]
        slope = row[..., 0, None, None] * u + row[..., 1, None, None] * v + row[..., 2, None, None]
        depth = (self.ground_depth_input - row[..., 3, None, None]) / slope  # [B, N, fH, fW]
        depth = torch.where(depth > 0, depth, torch.full_like(depth, float("inf")))
        return depth.float().flatten(0, 1)

    def _depth_one_hot(self, depth_bin: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`[B*N, fH, fW]` bin index (-1: none) -> `[B*N, D, fH, fW]` one-hot (zeros: none)."""
        one_hot = F.one_hot(depth_bin.clamp(min=0), self.num_depth).permute(0, 3, 1, 2)
        return one_hot.to(dtype) * (depth_bin >= 0)[:, None].to(dtype)

    def _bins(self, depth: torch.Tensor) -> torch.Tensor:
        """Depths (m) -> bin indices, -1 outside [d_min, d_max)."""
        d_min, d_max, d_step = self.depth_bins
        bins = torch.floor((depth - d_min) / d_step)
        inside = (depth >= d_min) & (depth < d_max)
        bins = torch.where(inside, bins, torch.full_like(bins, -1)).long()
        return bins.clamp(max=self.num_depth - 1)

    # -- depth supervision ------------------------------------------------------------------

    def depth_targets(self, batch: Batch, image_from_lidar: torch.Tensor) -> torch.Tensor:
        """`[B*Ncam, fH, fW]` int64 depth-bin index of the nearest LiDAR point projecting into
        each feature cell, -1 where none does (everywhere in a sample whose `lidar_mask` is
        False)."""
        B, N = image_from_lidar.shape[:2]
        f_h, f_w = self.frustum.shape[1:3]
        d_min, d_max, _ = self.depth_bins
        target = torch.full((B * N, f_h * f_w), float("inf"), device=batch.points.device)
        points = batch.points  # [P, 6] (batch, x, y, z, ...)
        for b in range(B):
            xyz = points[points[:, 0] == b, 1:4]  # [P_b, 3]
            if not len(xyz) or not bool(batch.lidar_mask[b]):
                continue
            homogeneous = torch.cat([xyz, torch.ones_like(xyz[:, :1])], 1)  # [P_b, 4]
            projected = torch.einsum("nij,pj->npi", image_from_lidar[b], homogeneous)  # [N, P_b, 4]
            depth = projected[..., 2]
            uv = projected[..., :2] / depth.clamp(min=1e-3)[..., None]
            col = torch.floor(uv[..., 0] / self.feature_stride).long()
            row = torch.floor(uv[..., 1] / self.feature_stride).long()
            ok = (
                (depth >= d_min)
                & (depth < d_max)
                & (col >= 0)
                & (col < f_w)
                & (row >= 0)
                & (row < f_h)
            )
            cam = torch.arange(N, device=xyz.device)[:, None].expand_as(col)
            flat = (b * N + cam)[ok] * (f_h * f_w) + (row * f_w + col)[ok]
            target.view(-1).scatter_reduce_(0, flat, depth[ok], reduce="amin")
        return self._bins(target).view(B * N, f_h, f_w)  # inf (no point): -1

    def perspective_targets(
        self, batch: Batch, image_from_lidar: torch.Tensor, depth_bins: torch.Tensor | None
    ) -> torch.Tensor:
        """`[B*Ncam, fH, fW]` labels of the perspective head; `depth_bins` (the LiDAR depth
        targets, if computed) mark cells where a nearer surface hides the box."""
        assert self.perspective is not None
        surface = None
        if depth_bins is not None:
            d_min, _, d_step = self.depth_bins
            surface = torch.where(
                depth_bins >= 0, d_min + d_step * depth_bins.float(), float("inf")
            )
        with torch.no_grad():
            return perspective_labels(
                batch.gt_boxes,
                batch.gt_labels,
                image_from_lidar,
                feature_shape=tuple(self.frustum.shape[1:3]),
                feature_stride=self.feature_stride,
                background=self.perspective.num_classes,
                surface_depth=surface,
            )

    # -- forward -----------------------------------------------------------------------------

    def forward(
        self, features: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        B, N, C, f_h, f_w = features.shape
        D = self.num_depth
        if (f_h, f_w) != tuple(self.frustum.shape[1:3]):
            raise ValueError(
                f"camera features are {f_h}x{f_w}, the view transform expects "
                f"{self.frustum.shape[1]}x{self.frustum.shape[2]} (image_size {self.image_size} "
                f"/ stride {self.feature_stride})"
            )
        image_from_lidar = self.image_from_lidar(batch)  # [B, N, 4, 4]
        plan = self.plan_cache.get(
            (image_from_lidar,),
            lambda: self.frustum_cells(image_from_lidar),
            batch_size=B,
            grid=(self.grid.voxel_shape[2], *self.grid.voxel_shape[:2]),
        )
        target = None  # [B*N, fH, fW] LiDAR depth bins, when an input or a loss needs them
        if self.lidar_depth_input or (self.training and self.depth_loss_weight > 0):
            with torch.no_grad():
                target = self.depth_targets(batch, image_from_lidar)
        x = features.flatten(0, 1)  # [B*N, C, fH, fW]
        present = batch.camera_mask.flatten()  # [B*N]
        aux: dict[str, torch.Tensor] = {}
        if self.training and self.perspective is not None:
            aux["perspective"] = self.perspective.loss(
                x, self.perspective_targets(batch, image_from_lidar, target), present
            )
        lidar_depth = None  # [B*N, D, fH, fW] one-hot LiDAR depth bins, zeros where none
        if self.lidar_depth_input:
            lidar_depth = self._depth_one_hot(target, x.dtype)
            x = torch.cat([x, lidar_depth], dim=1)
        if self.ground_depth_input is not None:
            with torch.no_grad():
                ground = self._bins(self.ground_depth(batch))
            x = torch.cat([x, self._depth_one_hot(ground, x.dtype)], dim=1)
        x = self.depth_net(x)  # [B*N, D + C_ctx, fH, fW]
        depth_logits = x[:, :D]  # [B*N, D, fH, fW]
        if self.lidar_depth_prior is not None:
            depth_logits = depth_logits + self.lidar_depth_prior * lidar_depth
        depth = depth_logits.softmax(dim=1)
        depth = depth * present[:, None, None, None].to(depth.dtype)  # a missing camera: none
        context = x[:, D:]  # [B*N, C_ctx, fH, fW]
        # under autocast the softmax comes out float32 and the convolution's context bfloat16:
        # pool in the wider of the two (each cell sums many pixels)
        dtype = torch.promote_types(depth.dtype, context.dtype)
        bev = bev_pool_depth(depth.to(dtype), context.to(dtype), plan)  # [B, C_ctx, Z, X, Y]
        bev = bev.flatten(1, 2)  # [B, C_ctx * Z, X, Y]
        if self.training and self.depth_loss_weight > 0:
            assert target is not None
            valid = (target >= 0) & present[:, None, None]
            # the mean over the global batch's supervised pixels under torchrun (every process
            # reaches this all-reduce, with or without pixels of its own)
            normaliser = global_mean_normaliser(valid.sum().float(), min_value=1)
            if valid.any():
                logits = depth_logits.permute(0, 2, 3, 1)[valid]  # [V, D]
                loss = F.cross_entropy(logits, target[valid], reduction="sum") / normaliser
                aux["depth"] = self.depth_loss_weight * loss
            else:
                aux["depth"] = depth_logits.sum() * 0.0
        return self.bev_conv(bev), aux
