"""`BEVFusion`: a detector that reads as its parts (camera branch, LiDAR branch, fuser, BEV
decoder, head), each already built (see `perception.models.builder` for the config path).

Train mode returns a dict of named scalar losses; eval mode returns decoded `Detections` per
sample, in each sample's un-augmented keyframe LiDAR frame. Either branch may be absent (a
camera-only or LiDAR-only model), and at run time either sensor may be missing for some
samples (`Batch.camera_mask`, `Batch.lidar_mask`): the fuser is told, and the model runs on what
it has.

The stages, in order (each a method; `forward`, the node's pipeline `deploy.pipeline.ModelStages`,
the model benchmark and the ONNX export all call them, so what is trained is what is served):

    encode_camera(batch)             -> camera BEV [B, C_cam, X, Y], aux losses
    encode_lidar(batch)              -> LiDAR BEV [B, C_lidar, X, Y] (voxelization inside)
    fuse(batch, camera, lidar)       -> fused BEV [B, C_fused, X, Y] (`presence` says who is there)
    decode(fused)                    -> the head's per-task maps (BEV decoder + head)
    detect(outputs, batch) | losses(outputs, batch)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import torch
from torch import nn

from ..structures import Batch, Detections
from .bev_decoder import BEVDecoder
from .distill import BEVDistiller, BEVFeatures
from .fuser import ConvFuser, ModalityDropout
from .heads.centerpoint import CenterPointHead, TaskOutput
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
        distiller: a camera student's distillation (`perception.models.distill`): in training,
            with a teacher attached, `forward` adds its `distill/...` losses.

    `decode_backend` (default None) replaces stage 3 (`decode`) in eval mode by another
    implementation of the same map -> `TaskOutput`s function: the node's and the test tool's
    INT8 decoder-head graph (`perception.deploy.quantize.DecoderHeadGraph`); its `precision`
    names it. Training with one set is refused (a graph has no gradient).

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
        distiller: BEVDistiller | None = None,
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
        if distiller is not None and camera is None:
            raise ValueError("a distiller trains a camera branch: the model has none")
        self.distiller = distiller
        self.decode_backend: Callable[[torch.Tensor], list[TaskOutput]] | None = None

    @property
    def precision(self) -> str:
        """What runs stage 3: "float32" (this module) or the decode backend's precision."""
        backend = self.decode_backend
        return "float32" if backend is None else getattr(backend, "precision", "other")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(
            name for name, m in (("camera", self.camera), ("lidar", self.lidar)) if m is not None
        )

    # -- the stages: forward, the node's pipeline, the model benchmark and the ONNX export all
    # -- call these (deploy/pipeline.py `ModelStages`, perception/benchmarks/model.py).

    def presence(self, batch: Batch) -> list[torch.Tensor]:
        """Per branch (camera first, then LiDAR; absent branches left out) which samples have
        that sensor: `[B]` bool each. The fuser's `present` argument."""
        present = []
        if self.camera is not None:
            present.append(batch.camera_mask.any(dim=1))  # [B]
        if self.lidar is not None:
            present.append(batch.lidar_mask)  # [B]
        return present

    def encode_camera(
        self, batch: Batch, lidar_present: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Stage 1a: camera BEV `[B, C_cam, X, Y]` and its auxiliary losses (named
        `camera/<name>`); `(None, {})` without a camera branch.

        `lidar_present` `[B]` bool: the samples whose LiDAR the fused model keeps (modality
        dropout); a camera branch reading LiDAR depths then sees only those. Default: the
        batch's `lidar_mask`.
        """
        if self.camera is None:
            return None, {}
        camera_batch = batch
        if self.lidar is not None and lidar_present is not None:
            camera_batch = replace(batch, lidar_mask=batch.lidar_mask & lidar_present)
        bev, aux = self.camera(camera_batch)
        return bev, {f"camera/{k}": v for k, v in aux.items()}

    def lidar_points(self, batch: Batch, cameras: torch.Tensor | None = None) -> torch.Tensor:
        """The points the LiDAR branch reads: `batch.points`, painted when `paint_points`, by
        `cameras` `[B, Ncam]` (default: the present ones, `batch.camera_mask`)."""
        if not self.paint_points:
            return batch.points
        return painted(batch, batch.camera_mask if cameras is None else cameras)

    def encode_lidar(
        self, batch: Batch, painters: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Stage 1b: LiDAR BEV `[B, C_lidar, X, Y]` (voxelization inside); None without a
        LiDAR branch. `painters` `[B, Ncam]` bool: the cameras that paint the points (see
        `lidar_points`)."""
        if self.lidar is None:
            return None
        return self.lidar(self.lidar_points(batch, painters), batch.batch_size, batch.lidar_mask)

    def fuse(
        self,
        batch: Batch,
        camera_bev: torch.Tensor | None,
        lidar_bev: torch.Tensor | None,
        present: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Stage 2: the fused BEV `[B, C_fused, X, Y]` from the branches' maps (a map of a
        branch the model has may be None: missing from every sample). `present`: per branch
        which samples have it (default `presence(batch)`)."""
        present = self.presence(batch) if present is None else present
        maps = []
        if self.camera is not None:
            maps.append(camera_bev)
        if self.lidar is not None:
            maps.append(lidar_bev)
        return self.fuser(maps, present)

    def decode(self, fused: torch.Tensor) -> list[TaskOutput]:
        """Stage 3: BEV decoder and detection head on the fused map: the head's per-task maps
        (the ONNX export's decoder-head graph is this call; `decode_backend` replaces it)."""
        if self.decode_backend is not None:
            if self.training:
                raise RuntimeError(
                    f"a {self.precision} decode backend is set: it has no gradient; train "
                    "without it (model.decode_backend = None)"
                )
            return self.decode_backend(fused)
        return self.head(self.decoder(fused))

    def detect(self, outputs: list[TaskOutput], batch: Batch) -> list[Detections]:
        """Stage 4 (eval): box decoding + BEV NMS, back to each sample's un-augmented keyframe
        LiDAR frame."""
        return self.head.predict(outputs, batch)

    def losses(self, outputs: list[TaskOutput], batch: Batch) -> dict[str, torch.Tensor]:
        """Stage 4 (train): the head's named losses against the batch's targets."""
        return self.head.loss(outputs, batch.gt_boxes, batch.gt_labels, batch.gt_attributes)

    def fused_features(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stages 1-2 as `forward` runs them: the fused map `[B, C_fused, X, Y]` (after the
        LiDAR-first skip and, in training, modality dropout) and the auxiliary losses."""
        _, _, fused, aux = self._encode(batch)
        return fused, aux

    def _encode(
        self, batch: Batch
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, dict[str, torch.Tensor]]:
        """`fused_features` with the branches' maps: camera BEV, LiDAR BEV, fused, aux."""
        present = self.presence(batch)
        skip_camera = self.camera is not None and self.lidar is not None and not self.camera_enabled
        if skip_camera:
            present[0] = torch.zeros_like(present[0])
        elif self.training and self.modality_dropout is not None and len(present) > 1:
            present = list(self.modality_dropout(present))
        painters = None
        if self.paint_points:  # dropout's choice, not the LiDAR-first skip
            painters = batch.camera_mask
            if not skip_camera:
                painters = painters & present[0][:, None]
        camera_bev, aux = None, {}
        if not skip_camera:
            camera_bev, aux = self.encode_camera(batch, present[-1])
        lidar_bev = self.encode_lidar(batch, painters)
        return camera_bev, lidar_bev, self.fuse(batch, camera_bev, lidar_bev, present), aux

    def stage_features(self, batch: Batch) -> BEVFeatures:
        """Every stage's map on `batch` as `forward` computes them (the distillation's view
        of a student and of a teacher)."""
        camera_bev, lidar_bev, fused, aux = self._encode(batch)
        decoded = self.decoder(fused)
        return BEVFeatures(
            camera_bev=camera_bev,
            lidar_bev=lidar_bev,
            fused=fused,
            decoded=decoded,
            outputs=self.head(decoded),
            aux=aux,
        )

    def bev_features(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The fused and decoded BEV map `[B, C, X, Y]` (the head's input) and the branches'
        auxiliary losses."""
        fused, aux = self.fused_features(batch)
        return self.decoder(fused), aux

    def forward(self, batch: Batch) -> dict[str, torch.Tensor] | list[Detections]:
        if self.training and self.distiller is not None and self.distiller.teacher is not None:
            student = self.stage_features(batch)
            losses = {**self.losses(student.outputs, batch), **student.aux}
            return {**losses, **self.distiller(student, batch)}
        fused, aux = self.fused_features(batch)
        outputs = self.decode(fused)
        if self.training:
            return {**self.losses(outputs, batch), **aux}
        return self.detect(outputs, batch)
