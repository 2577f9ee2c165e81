"""Collates `Sample`s into a `Batch`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from ..structures import Batch, Sample


def collate_samples(samples: Sequence[Sample]) -> Batch:
    """Stacks per-sample tensors; concatenates points with a leading batch-index column; sums
    the samples' GT-paste counters (`Sample.paste_counts`)."""
    if not samples:
        raise ValueError("collate_samples: empty list")
    names = {s.camera_names for s in samples}
    if len(names) != 1:
        raise ValueError(f"collate_samples: samples have different cameras: {sorted(names)}")
    shapes = {tuple(s.images.shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(
            f"collate_samples: image tensors differ in shape {sorted(shapes)}; "
            "resize them to one size with ImageAug first"
        )
    points = torch.cat(
        [
            torch.cat([torch.full((len(s.points), 1), float(b)), s.points], dim=1)
            for b, s in enumerate(samples)
        ]
    )
    paste_counts: Counter[str] = Counter()
    for s in samples:
        paste_counts.update(s.paste_counts)
    return Batch(
        tokens=tuple(s.token for s in samples),
        points=points,
        images=torch.stack([s.images for s in samples]),
        camera_names=samples[0].camera_names,
        intrinsics=torch.stack([s.intrinsics for s in samples]),
        camera_to_lidar=torch.stack([s.camera_to_lidar for s in samples]),
        camera_time_lag=torch.stack([s.camera_time_lag for s in samples]),
        image_aug=torch.stack([s.image_aug for s in samples]),
        lidar_aug=torch.stack([s.lidar_aug for s in samples]),
        lidar_to_ego=torch.stack([s.lidar_to_ego for s in samples]),
        ego_to_global=torch.stack([s.ego_to_global for s in samples]),
        camera_mask=torch.stack([s.camera_mask for s in samples]),
        lidar_mask=torch.tensor([s.lidar_present for s in samples]),
        gt_boxes=tuple(s.gt_boxes for s in samples),
        gt_labels=tuple(s.gt_labels for s in samples),
        gt_attributes=tuple(s.gt_attributes for s in samples),
        paste_counts=dict(sorted(paste_counts.items())),
    )
