"""`BEVFusion`: a detector that reads as its parts (camera branch, LiDAR branch, fuser, BEV
decoder, head), each already built (see `perception.models.builder` for the config path).

Train mode returns a dict of named scalar losses; eval mode returns decoded `Detections` per
sample, in each sample's un-augmented keyframe LiDAR frame. Either branch may be absent (a
camera-only or LiDAR-only model), and at run time either sensor may be missing for some
samples (`Batch.camera_mask`, `Batch.lidar_mask`): the fuser is told, and the model runs on what
it has.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import torch
from torch import nn

from ..structures import Batch, Detections
from .bev_decoder import BEVDecoder
from .fuser import ConvFuser, ModalityDropout
from .heads.centerpoint import CenterPointHead
from .painting import paint_points as painted


class CameraBranch(Protocol):
    """Batch -> camera BEV `[B, C_cam, X, Y]` plus auxiliary losses (e.g. depth), named."""

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


class LidarBranch(Protocol):
    """Points `[P, 6]` (batch index first; `[P, 10]` painted) of B samples -> LiDAR BEV
    `[B, C_lidar, X, Y]`."""

    def __call__(self, points: torch.Tensor, batch_size: int) -> torch.Tensor: ...


class BEVFusion(nn.Module):
    """Camera + LiDAR BEV fusion detector.

    Args:
        camera: the camera branch, or None for a LiDAR-only model.
        lidar: the LiDAR branch, or None for a camera-only model.
        fuser: fuses the present branches' maps (in the order camera, LiDAR).
        decoder: BEV backbone + neck on the fused map.
        head: the detection head on the decoder's map.
        modality_dropout: in training, drops a sensor per sample at random (never both), so
            the detector learns to run degraded.
        paint_points: a fused model's LiDAR branch reads each point's keyframe pixel colour
            (`perception.models.painting`; the branch then takes 4 more point columns). A
            sample's missing or dropped cameras paint nothing.

    `camera_enabled` (default True) False skips a fused model's camera branch: the fuser sees
    the camera as missing from every sample, and a fuser that starts with zero camera weights
    (`ConvFuser(zero_init=...)`) then computes exactly the LiDAR-only model. The trainer's
    LiDAR-first schedule (`train.camera_start`) switches it. Painting does not depend on it:
    a painting model skipping its camera branch still paints the points (the loader keeps
    decoding images for it).
    """

    def __init__(
        self,
        *,
        camera: nn.Module | None,
        lidar: nn.Module | None,
        fuser: ConvFuser,
        decoder: BEVDecoder,
        head: CenterPointHead,
        modality_dropout: ModalityDropout | None = None,
        paint_points: bool = False,
    ):
        super().__init__()
        if camera is None and lidar is None:
            raise ValueError("BEVFusion needs a camera branch, a LiDAR branch or both")
        expected = (camera is not None) + (lidar is not None)
        if len(fuser.in_channels) != expected:
            raise ValueError(
                f"the fuser takes {len(fuser.in_channels)} maps, branches give {expected}"
            )
        self.camera = camera
        self.lidar = lidar
        self.fuser = fuser
        self.decoder = decoder
        self.head = head
        self.modality_dropout = modality_dropout
        self.camera_enabled = True
        if paint_points and (camera is None or lidar is None):
            raise ValueError("paint_points needs both a camera and a LiDAR branch")
        self.paint_points = paint_points

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(
            name for name, m in (("camera", self.camera), ("lidar", self.lidar)) if m is not None
        )

    def _presence(self, batch: Batch) -> list[torch.Tensor]:
        present = []
        if self.camera is not None:
            present.append(batch.camera_mask.any(dim=1))  # [B]
        if self.lidar is not None:
            present.append(batch.lidar_mask)  # [B]
        return present

    def lidar_points(self, batch: Batch, cameras: torch.Tensor | None = None) -> torch.Tensor:
        """The points the LiDAR branch reads: `batch.points`, painted when `paint_points`, by
        `cameras` `[B, Ncam]` (default: the present ones, `batch.camera_mask`)."""
        if not self.paint_points:
            return batch.points
        return painted(batch, batch.camera_mask if cameras is None else cameras)

    def bev_features(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The fused and decoded BEV map `[B, C, X, Y]` and the branches' auxiliary losses."""
        aux: dict[str, torch.Tensor] = {}
        maps: list[torch.Tensor | None] = []
        present = self._presence(batch)
        skip_camera = self.camera is not None and self.lidar is not None and not self.camera_enabled
        if skip_camera:
            present[0] = torch.zeros_like(present[0])
            maps.append(None)
        elif self.training and self.modality_dropout is not None and len(present) > 1:
            present = list(self.modality_dropout(present))
        painters = None
        if self.paint_points:  # dropout's choice, not the LiDAR-first skip
            painters = batch.camera_mask
            if not skip_camera:
                painters = painters & present[0][:, None]
        if self.camera is not None and not skip_camera:
            camera_batch = batch
            if self.lidar is not None:  # a camera branch reading LiDAR depths sees what's kept
                camera_batch = replace(batch, lidar_mask=batch.lidar_mask & present[-1])
            camera_bev, camera_aux = self.camera(camera_batch)  # [B, C_cam, X, Y]
            maps.append(camera_bev)
            aux.update({f"camera/{k}": v for k, v in camera_aux.items()})
        if self.lidar is not None:
            points = self.lidar_points(batch, painters)
            maps.append(self.lidar(points, batch.batch_size, batch.lidar_mask))
        fused = self.fuser(maps, present)  # [B, C_fused, X, Y]
        return self.decoder(fused), aux

    def forward(self, batch: Batch) -> dict[str, torch.Tensor] | list[Detections]:
        features, aux = self.bev_features(batch)
        outputs = self.head(features)
        if self.training:
            losses = self.head.loss(outputs, batch.gt_boxes, batch.gt_labels, batch.gt_attributes)
            return {**losses, **aux}
        return self.head.predict(outputs, batch)
