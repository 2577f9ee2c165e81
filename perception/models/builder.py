"""The one builder: a validated `ExperimentConfig` -> a `BEVFusion` made of explicit parts.

There is no registry of layer types: this function reads the config and calls constructors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import load_config
from ..config.schema import ExperimentConfig
from ..structures.classes import CLASS_NAMES
from .bev_decoder import SECOND, SECONDFPN, BEVDecoder
from .bev_grid import BEVGrid
from .camera import (
    CameraEncoderConfig,
    EfficientViTConfig,
    TemporalShiftConfig,
    build_camera_encoder,
)
from .camera_branch import CameraBEVBranch
from .detector import BEVFusion
from .distill import BEVDistiller
from .fuser import ConvFuser, ModalityDropout
from .heads.centerpoint import CenterPointHead, DecodeConfig, LossWeights
from .heads.targets import TargetConfig
from .lidar import SPVConvEncoder
from .painting import PAINT_CHANNELS
from .perspective import PerspectiveHead
from .view_transform import LSSViewTransform

IMAGE_FEATURE_STRIDE = 8  # the camera neck's output stride
POINT_FEATURES = 5  # Batch.points after the batch index: x, y, z, intensity, time_lag


def camera_bev_grid(config: ExperimentConfig) -> BEVGrid:
    """The grid of the camera branch's output map (after its downsampling)."""
    cam = config.model.camera
    assert cam is not None
    r = config.data.point_range
    z0, z1 = cam.z_range
    return BEVGrid(
        point_range=(r[0], r[1], z0, r[3], r[4], z1),
        voxel_size=(cam.bev_cell, cam.bev_cell, z1 - z0),
        stride=cam.bev_downsample,
    )


def build_camera_branch(config: ExperimentConfig) -> CameraBEVBranch:
    cam = config.model.camera
    assert cam is not None
    tsm = TemporalShiftConfig(
        mode=cam.tsm_mode, frames=config.data.clip_frames, stages=cam.tsm_stages
    )
    encoder = build_camera_encoder(
        CameraEncoderConfig(
            backbone=EfficientViTConfig(variant=cam.variant, tsm=tsm),
            neck_channels=cam.neck_channels,
        )
    )
    view_transform = LSSViewTransform(
        in_channels=encoder.out_channels,
        out_channels=cam.out_channels,
        context_channels=cam.context_channels,
        image_size=config.augment.image.final_size,
        feature_stride=IMAGE_FEATURE_STRIDE,
        depth_bins=cam.depth_bins,
        grid=camera_bev_grid(config).with_stride(1),  # the frustum is pooled at bev_cell
        downsample=cam.bev_downsample,
        depth_loss_weight=cam.depth_loss_weight,
        lidar_depth_input=cam.lidar_depth_input,
        lidar_depth_prior=cam.lidar_depth_prior,
        ground_depth_input=cam.ground_depth_input,
        perspective=(
            PerspectiveHead(encoder.out_channels, len(CLASS_NAMES), cam.perspective_loss_weight)
            if cam.perspective_loss_weight > 0
            else None
        ),
    )
    return CameraBEVBranch(encoder=encoder, view_transform=view_transform)


def build_lidar_branch(config: ExperimentConfig) -> SPVConvEncoder:
    lidar = config.model.lidar
    assert lidar is not None
    return SPVConvEncoder(
        in_channels=POINT_FEATURES + (PAINT_CHANNELS if config.model.paint_points else 0),
        stem_channels=lidar.stem_channels,
        stage_channels=lidar.stage_channels,
        stage_blocks=lidar.stage_blocks,
        z_strides=lidar.z_strides,
        point_range=config.data.point_range,
        voxel_size=lidar.voxel_size,
        out_channels=lidar.out_channels,
        deterministic=lidar.deterministic,
    )


def build_model(config: ExperimentConfig | str | Path, overrides: Sequence[str] = ()) -> BEVFusion:
    """The detector a config describes, randomly initialized: `build_model("configs/x.yaml")`,
    with optional typed overrides (`["model.camera.variant=b1"]`), or from a loaded config."""
    if not isinstance(config, ExperimentConfig):
        config = load_config(config, list(overrides))
    elif overrides:
        raise ValueError("overrides apply to a config file; pass them to load_config instead")
    m = config.model
    camera = build_camera_branch(config) if m.camera is not None else None
    lidar = build_lidar_branch(config) if m.lidar is not None else None
    grids = {}
    if camera is not None:
        grids["camera"] = camera_bev_grid(config)
    if lidar is not None:
        grids["lidar"] = lidar.grid
    shapes = {name: g.shape for name, g in grids.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(
            f"model: the camera and LiDAR BEV maps differ in size {shapes}: make "
            "camera.bev_cell * camera.bev_downsample equal lidar.voxel_size * 2 ** len(stage_channels)"
        )
    base = grids.get("lidar") or grids["camera"]
    in_channels = [b.out_channels for b in (camera, lidar) if b is not None]
    names = [n for n, b in (("camera", camera), ("lidar", lidar)) if b is not None]
    fuser = ConvFuser(
        in_channels=in_channels,
        out_channels=m.fuser_channels,
        zero_init=[n in m.fuser_zero_init for n in names],
    )
    d = m.decoder
    decoder = BEVDecoder(
        backbone=SECOND(
            in_channels=m.fuser_channels,
            out_channels=d.channels,
            layer_nums=d.layers,
            strides=d.strides,
        ),
        neck=SECONDFPN(
            in_channels=d.channels,
            out_channels=d.neck_channels,
            upsample_strides=d.upsample_strides,
        ),
    )
    scale = d.strides[0] / d.upsample_strides[0]  # the decoder map's stride over its input
    if scale != int(scale) or scale < 1:
        raise ValueError(
            f"model.decoder: output stride {scale} relative to the input is not a whole number >= 1"
        )
    head_grid = base.with_stride(base.stride * int(scale))
    h = m.head
    head = CenterPointHead(
        in_channels=decoder.out_channels,
        grid=head_grid,
        shared_channels=h.shared_channels,
        head_channels=h.head_channels,
        targets=TargetConfig(max_objects=h.max_objects, min_radius=h.min_radius),
        loss_weights=LossWeights(neighbours=h.neighbour_weight),
        decode=DecodeConfig(
            score_threshold=h.score_threshold,
            pre_max_size=h.pre_max_size,
            post_max_size=h.post_max_size,
        ),
    )
    dropout = None
    if camera is not None and lidar is not None and any(p > 0 for p in m.modality_dropout):
        dropout = ModalityDropout(drop_probs=m.modality_dropout)
    distiller = None
    if m.distill is not None:
        assert camera is not None  # the schema requires it
        distiller = BEVDistiller(
            config=m.distill,
            student_channels={
                "camera_bev": camera.out_channels,
                "fused": fuser.out_channels,
                "decoder": decoder.out_channels,
            },
            grids={"branch": base, "head": head_grid},
        )
    return BEVFusion(
        camera=camera,
        lidar=lidar,
        fuser=fuser,
        decoder=decoder,
        head=head,
        modality_dropout=dropout,
        paint_points=m.paint_points,
        distiller=distiller,
    )
