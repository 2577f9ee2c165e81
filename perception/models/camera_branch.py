"""The camera branch: uint8 image clips -> normalized -> EfficientViT(+TSM) + neck -> LSS view
transform -> camera BEV map."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..structures import Batch
from .camera import CameraEncoder, TemporalShiftState
from .view_transform import LSSViewTransform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CameraBEVBranch(nn.Module):
    """`Batch` -> camera BEV `[B, C, X, Y]` and auxiliary losses (`depth` when supervised).

    Args:
        encoder: the image encoder (clip mode: `[B, Ncam, T, 3, H, W]` -> last-frame features).
        view_transform: lifts the features into the BEV grid.
        mean, std: per-channel normalization of RGB images scaled to [0, 1].
    """

    def __init__(
        self,
        *,
        encoder: CameraEncoder,
        view_transform: LSSViewTransform,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__()
        self.encoder = encoder
        self.view_transform = view_transform
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)

    @property
    def out_channels(self) -> int:
        return self.view_transform.out_channels

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `[..., 3, H, W]` -> float normalized, same shape."""
        return (images.float() / 255.0 - self.mean) / self.std

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.encoder(self.normalize(batch.images))  # [B, Ncam, C, fH, fW]
        return self.view_transform(features, batch)

    def forward_stream(
        self, batch: Batch, state: TemporalShiftState | None
    ) -> tuple[torch.Tensor, TemporalShiftState]:
        """Streaming: `batch.images` holds one new frame per camera (T = 1); `state` carries
        the temporal-shift caches of earlier frames. Returns the camera BEV and the new state."""
        if batch.images.shape[2] != 1:
            raise ValueError(f"streaming takes one frame per camera, got T={batch.images.shape[2]}")
        frame = self.normalize(batch.images[:, :, 0])  # [B, Ncam, 3, H, W]
        features, state = self.encoder.forward_stream(frame, state)  # [B, Ncam, C, fH, fW]
        bev, _ = self.view_transform(features, batch)
        return bev, state
