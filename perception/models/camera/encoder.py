"""Camera encoder: multi-camera frame clips -> one feature map per camera for the last frame."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from perception.models.camera.efficientvit import EfficientViT, EfficientViTConfig
from perception.models.camera.neck import GeneralizedLSSFPN
from perception.models.camera.tsm import TemporalShiftState


class CameraEncoder(nn.Module):
    """EfficientViT(+TSM) backbone then FPN neck, over every camera of every sample.

    Args:
        backbone: the (temporal) image backbone; its `out_channels` feed the neck.
        neck: fuses the backbone's maps into one at the backbone's finest output stride.

    Attributes:
        out_channels: channels of the output map (the neck's).
        stride: image pixels per output cell (the backbone's finest output stride).
    """

    def __init__(self, *, backbone: EfficientViT, neck: GeneralizedLSSFPN):
        super().__init__()
        if tuple(neck.in_channels) != tuple(backbone.out_channels):
            raise ValueError(
                f"neck expects levels of {neck.in_channels} channels, the backbone gives "
                f"{backbone.out_channels}"
            )
        self.backbone = backbone
        self.neck = neck
        self.out_channels = neck.out_channels
        self.stride = backbone.out_strides[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Clip mode: whole clips, features of the newest frame.

        Args:
            images: `[B, Ncam, T, 3, H, W]` float, normalized; frames oldest first (the last
                one is the keyframe).

        Returns:
            `[B, Ncam, out_channels, ceil(H / stride), ceil(W / stride)]`, images' dtype.
        """
        B, Ncam, T, C, H, W = images.shape
        frames = images.reshape(B * Ncam * T, C, H, W)  # clips contiguous, oldest first
        levels = self.backbone(frames, frames=T)  # each [B Ncam T, C_l, h_l, w_l]
        last = [
            f.reshape(B * Ncam, T, *f.shape[1:])[:, T - 1]  # [B Ncam, C_l, h_l, w_l]
            for f in levels
        ]
        fused = self.neck(last)  # [B Ncam, out, h, w]
        return fused.reshape(B, Ncam, *fused.shape[1:])

    def forward_stream(
        self, images: torch.Tensor, state: TemporalShiftState | None = None
    ) -> tuple[torch.Tensor, TemporalShiftState]:
        """Streaming mode: the newest frame of each camera, one backbone pass.

        Args:
            images: `[B, Ncam, 3, H, W]` float, normalized; the same (sample, camera) streams in
                the same order at every call.
            state: the state the previous call returned (one cache per camera stream); None or
                `TemporalShiftState()` to start or reset.

        Returns:
            `(features [B, Ncam, out_channels, ceil(H / stride), ceil(W / stride)], new_state)`;
            after frames `1..T` from a reset, equal to `forward` on those `T` frames.
        """
        B, Ncam, C, H, W = images.shape
        levels, new_state = self.backbone.forward_stream(
            images.reshape(B * Ncam, C, H, W), state
        )  # each [B Ncam, C_l, h_l, w_l]
        fused = self.neck(list(levels))  # [B Ncam, out, h, w]
        return fused.reshape(B, Ncam, *fused.shape[1:]), new_state

    def initial_state(
        self,
        batch_size: int,
        num_cameras: int,
        image_size: tuple[int, int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> TemporalShiftState:
        """Explicit all-zeros streaming state for `batch_size * num_cameras` streams of
        `image_size = (H, W)` frames (equivalent to None; fixed shapes for export)."""
        return self.backbone.initial_state(
            batch_size * num_cameras, image_size, device=device, dtype=dtype
        )


@dataclass(frozen=True)
class CameraEncoderConfig:
    """Backbone configuration plus the neck's output channels."""

    backbone: EfficientViTConfig = field(default_factory=EfficientViTConfig)
    neck_channels: int = 256

    def __post_init__(self) -> None:
        if self.neck_channels < 1:
            raise ValueError(f"neck_channels: must be >= 1, got {self.neck_channels}")


def build_camera_encoder(config: CameraEncoderConfig) -> CameraEncoder:
    """The `CameraEncoder` described by `config` (randomly initialized)."""
    backbone = EfficientViT.from_config(config.backbone)
    neck = GeneralizedLSSFPN(in_channels=backbone.out_channels, out_channels=config.neck_channels)
    return CameraEncoder(backbone=backbone, neck=neck)
