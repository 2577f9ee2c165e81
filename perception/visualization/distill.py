"""A distilled camera student's BEV maps beside its LiDAR teacher's, for one sample: what the
distillation asks the camera to produce, and how far it got (issue #27, docs/distillation.md).

One row per distilled feature point (the student's map through its adapter, the teacher's
map, their squared difference, the cell weights the loss uses), then the heatmaps (largest
class probability over every task) of both. A map is shown as its per-cell RMS over channels;
the student's and the teacher's share one colour scale, so equal brightness means an equal
magnitude.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from ..structures import Batch

POINT_TITLES = {
    "camera_bev": ("camera BEV (adapted)", "LiDAR BEV"),
    "fused": ("fused (adapted)", "fused"),
    "decoder": ("decoder (adapted)", "decoder"),
}


def _rms(x: torch.Tensor) -> np.ndarray:
    """`[C, X, Y]` -> `[Y, X]` (x to the right, y up once drawn with origin="lower")."""
    return x.float().pow(2).mean(0).sqrt().T.cpu().numpy()


def _heat(outputs) -> np.ndarray:
    heats = torch.stack([o.heatmap[0].sigmoid().amax(0) for o in outputs]).amax(0)  # [X, Y]
    return heats.T.float().cpu().numpy()


@torch.no_grad()
def distill_figure_png(model: torch.nn.Module, batch: Batch) -> bytes:
    """The figure for sample 0 of `batch` (one sample with its LiDAR and cameras) as PNG bytes.
    `model`: a camera student with its teacher attached (`perception.models.distill.
    load_teacher`); both run in eval mode (the model's mode is restored)."""
    distiller = model.distiller
    if distiller is None or distiller.teacher is None:
        raise ValueError("the model has no distiller with a teacher attached")
    was_training = model.training
    model.eval()
    try:
        student = model.stage_features(batch)
        teacher = distiller.teacher_features(batch)
    finally:
        model.train(was_training)
    maps = {
        "camera_bev": (student.camera_bev, teacher.lidar_bev, "branch"),
        "fused": (student.fused, teacher.fused, "branch"),
        "decoder": (student.decoded, teacher.decoded, "head"),
    }
    rows = []
    for point, adapter in distiller.adapters.items():
        s, t, grid = maps[point]
        if s is None:
            continue
        adapted = adapter(s)[0]
        weight = distiller.cell_weights(batch, teacher, distiller.grids[grid])[0, 0]
        error = (adapted - t[0]).pow(2).mean(0)
        rows.append((point, _rms(adapted), _rms(t[0]), error.T.cpu().numpy(), weight.T.numpy()))

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    n = len(rows) + 1
    fig, axes = plt.subplots(n, 4, figsize=(12, 3.1 * n), squeeze=False)
    for r, (point, s_map, t_map, error, weight) in enumerate(rows):
        top = float(max(s_map.max(), t_map.max(), 1e-6))
        s_title, t_title = POINT_TITLES[point]
        panels = (
            (s_map, f"student: {s_title}", "viridis", 0.0, top),
            (t_map, f"teacher: {t_title}", "viridis", 0.0, top),
            (error, f"squared difference (mean {error.mean():.3g})", "magma", 0.0, None),
            (weight, "cell weight of the loss", "gray", 0.0, None),
        )
        for ax, (image, title, cmap, lo, hi) in zip(axes[r], panels):
            im = ax.imshow(image, origin="lower", cmap=cmap, vmin=lo, vmax=hi)
            ax.set_title(title, fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    heat_s, heat_t = _heat(student.outputs), _heat(teacher.outputs)
    for ax, image, title in (
        (axes[-1][0], heat_s, "student heatmap (max class prob.)"),
        (axes[-1][1], heat_t, "teacher heatmap (max class prob.)"),
    ):
        im = ax.imshow(image, origin="lower", cmap="inferno", vmin=0.0, vmax=1.0)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    diff = np.abs(heat_s - heat_t)
    im = axes[-1][2].imshow(diff, origin="lower", cmap="magma", vmin=0.0, vmax=1.0)
    axes[-1][2].set_title(f"|difference| (mean {diff.mean():.3g})", fontsize=9)
    fig.colorbar(im, ax=axes[-1][2], fraction=0.046, pad=0.02)
    axes[-1][3].axis("off")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"sample {batch.tokens[0]}: BEV, x to the right, y up", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
