"""Ground truth as predictions: an oracle that checks the evaluation path end to end, and,
with noise, shows how each error metric responds."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..structures import Boxes3D, Detections, Sample


@dataclass(frozen=True)
class OracleNoise:
    """Standard deviations of the noise added to GT boxes (all zero: exact GT)."""

    xy_m: float = 0.0  # centre, metres, per axis
    size_rel: float = 0.0  # relative, per dimension
    yaw_rad: float = 0.0
    velocity_mps: float = 0.0


def oracle_detections(
    sample: Sample, noise: OracleNoise | None = None, generator: torch.Generator | None = None
) -> Detections:
    """The sample's GT boxes (un-augmented LiDAR frame) as detections with score 1, noised."""
    noise = noise or OracleNoise()
    t = sample.gt_boxes.tensor.clone().double()
    n = len(t)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    t[:, 0:2] += noise.xy_m * randn(n, 2)
    t[:, 3:6] *= (1 + noise.size_rel * randn(n, 3)).clamp(min=0.1)
    t[:, 6] += noise.yaw_rad * randn(n)
    t[:, 7:9] += noise.velocity_mps * randn(n, 2)
    return Detections(
        sample_token=sample.token,
        boxes=Boxes3D(t.float(), sample.gt_boxes.frame),
        scores=torch.ones(n),
        labels=sample.gt_labels.clone(),
        attributes=sample.gt_attributes.clone(),
    )
