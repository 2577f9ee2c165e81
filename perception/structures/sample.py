"""What flows between the dataset, the model and the evaluation: `Sample`, `Batch`, `Detections`.

Frames and conventions: docs/frames.md. Every geometric tensor here is in the keyframe's LiDAR
frame unless its name says otherwise (`ego_to_global`, `lidar_to_ego`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

from .boxes import Boxes3D

# Columns of `Sample.points`: position in the keyframe LiDAR frame (m), intensity as recorded,
# and how long before the keyframe the sweep was taken (s, >= 0).
POINT_CHANNELS: tuple[str, ...] = ("x", "y", "z", "intensity", "time_lag")


def _to(value, device):
    if isinstance(value, torch.Tensor | Boxes3D):
        return value.to(device)
    if isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor | Boxes3D):
        return tuple(v.to(device) for v in value)
    return value


@dataclass(frozen=True)
class Sample:
    """One keyframe with its LiDAR sweeps and per-camera clips.

    Shapes: Ncam cameras, T frames per camera clip (oldest first, the keyframe image last),
    N points, M boxes.
    """

    token: str
    timestamp_us: int
    points: torch.Tensor  # [N, 5] float32, POINT_CHANNELS, LiDAR frame
    images: torch.Tensor  # [Ncam, T, 3, H, W] uint8 RGB
    camera_names: tuple[str, ...]
    intrinsics: torch.Tensor  # [Ncam, 3, 3] float32, pixels of the image as loaded
    camera_to_lidar: torch.Tensor  # [Ncam, T, 4, 4] float32, each frame's camera -> key LiDAR
    camera_time_lag: torch.Tensor  # [Ncam, T] float32, s before the keyframe LiDAR
    image_aug: torch.Tensor  # [Ncam, 4, 4] float32, pixel transform of resize/crop/flip
    lidar_aug: torch.Tensor  # [4, 4] float32, global rot/scale/flip/translation applied
    lidar_to_ego: torch.Tensor  # [4, 4] float64, keyframe
    ego_to_global: torch.Tensor  # [4, 4] float64, keyframe LiDAR timestamp
    camera_mask: torch.Tensor  # [Ncam] bool, False where the camera is missing
    lidar_present: bool
    gt_boxes: Boxes3D  # [M] in the (augmented) LiDAR frame
    gt_labels: torch.Tensor  # [M] int64 index into CLASS_NAMES
    gt_attributes: torch.Tensor  # [M] int64 index into ATTRIBUTE_NAMES, -1 for none
    gt_num_points: torch.Tensor  # [M] int64 LiDAR points inside each box (keyframe sweep)
    # What GT-paste added (perception.generative.paste), one dict per object: class, bank
    # index and tokens, box in the LiDAR frame as pasted, points kept; empty when nothing was.
    pasted: tuple[dict, ...] = ()
    # GT-paste's counters for this sample (`GTPaste.stats()` keys: objects pasted, skipped and
    # why, ...); empty when no paste ran. They travel with the sample out of the loader
    # workers: collate sums them into `Batch.paste_counts` and the trainer logs them.
    paste_counts: dict[str, int] = field(default_factory=dict)

    def replace(self, **changes) -> Sample:
        return replace(self, **changes)


@dataclass(frozen=True)
class Batch:
    """Samples collated for a model. B samples; points of all samples concatenated."""

    tokens: tuple[str, ...]
    points: torch.Tensor  # [P, 6] float32: (batch index, x, y, z, intensity, time_lag)
    images: torch.Tensor  # [B, Ncam, T, 3, H, W] uint8
    camera_names: tuple[str, ...]
    intrinsics: torch.Tensor  # [B, Ncam, 3, 3]
    camera_to_lidar: torch.Tensor  # [B, Ncam, T, 4, 4]
    camera_time_lag: torch.Tensor  # [B, Ncam, T]
    image_aug: torch.Tensor  # [B, Ncam, 4, 4]
    lidar_aug: torch.Tensor  # [B, 4, 4]
    lidar_to_ego: torch.Tensor  # [B, 4, 4] float64
    ego_to_global: torch.Tensor  # [B, 4, 4] float64
    camera_mask: torch.Tensor  # [B, Ncam] bool
    lidar_mask: torch.Tensor  # [B] bool
    gt_boxes: tuple[Boxes3D, ...]
    gt_labels: tuple[torch.Tensor, ...]
    gt_attributes: tuple[torch.Tensor, ...]
    # the samples' `Sample.paste_counts` summed (empty when no paste ran)
    paste_counts: dict[str, int] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return len(self.tokens)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: _to(getattr(self, f.name), device) for f in fields(self)})


@dataclass(frozen=True)
class Detections:
    """Decoded detections of one sample, in its keyframe LiDAR frame (un-augmented)."""

    sample_token: str
    boxes: Boxes3D  # [K]
    scores: torch.Tensor  # [K] float32 in [0, 1]
    labels: torch.Tensor  # [K] int64 index into CLASS_NAMES
    attributes: torch.Tensor  # [K] int64 index into ATTRIBUTE_NAMES, -1: class default

    def __post_init__(self) -> None:
        k = len(self.boxes)
        for name in ("scores", "labels", "attributes"):
            value = getattr(self, name)
            if value.shape != (k,):
                raise ValueError(f"Detections.{name} must be [{k}], got {tuple(value.shape)}")

    def __len__(self) -> int:
        return len(self.boxes)
