"""How much the micro detector's camera path moves under a one-ulp-scale change of the camera
intrinsics (x (1 + 3e-7)), on the CPU alone: the figure BENCHMARKS.md's GPU section quotes to
explain why the camera/fused model cannot match its CPU run to summation order.

    PYTHONPATH=. .venv/bin/python benchmarks/diagnostics/camera_nudge.py
"""

from dataclasses import replace

import torch

from perception.datasets.random_batch import random_batch
from perception.models.builder import build_model
from tests.perception.models.helpers import micro_config

torch.manual_seed(0)
config = micro_config()
model = build_model(config).eval()
batch = random_batch(config, 2, points_per_sample=4000)  # axis-aligned cameras
nudged = replace(batch, intrinsics=batch.intrinsics * (1 + 3e-7))
with torch.no_grad():
    a, _ = model.bev_features(batch)
    b, _ = model.bev_features(nudged)
diff, scale = (a - b).abs(), a.abs().max()
print(
    f"BEV values moved beyond 1e-4 of the largest: {100 * (diff > 1e-4 * scale).float().mean():.1f}%"
)
model.train()
la, lb = model(batch)["heatmap/task0"].item(), model(nudged)["heatmap/task0"].item()
print(f"heatmap/task0 loss: {la:.4f} -> {lb:.4f} ({100 * abs(lb - la) / la:.1f}%)")
