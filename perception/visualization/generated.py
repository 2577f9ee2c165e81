"""Pictures of generated (or real) object signals: camera crops (RGB + mask) and LiDAR
box-frame occupancy grids, laid out in a grid with their conditions as titles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .figures import save_png

__all__ = ["signal_to_image", "save_signal_grid"]

BACKGROUND = np.array([236, 236, 236], np.float32)  # where the alpha says "not the object"


def signal_to_image(signal: torch.Tensor | np.ndarray, modality: str) -> np.ndarray:
    """One signal -> uint8 RGB [H, W, 3].

    camera: `signal` [4, S, S] in [-1, 1], RGB + alpha (the object mask): composited on grey.
    lidar: `signal` [Z+1, X, Y] in [-1, 1], Z occupancy bins + intensity: a bird's-eye view of the
    box frame (x forward up, y left to the left), each occupied column coloured by its top bin.
    """
    s = torch.as_tensor(signal).detach().float().cpu().numpy()
    if modality == "camera":
        if s.shape[0] != 4:
            raise ValueError(f"camera signal: expected [4, S, S], got {s.shape}")
        rgb = (s[:3].transpose(1, 2, 0) + 1) * 127.5  # [S, S, 3]
        alpha = np.clip((s[3] + 1) / 2, 0, 1)[..., None]
        out = alpha * rgb + (1 - alpha) * BACKGROUND
        return np.clip(out, 0, 255).astype(np.uint8)
    if modality == "lidar":
        occupied = s[:-1] > 0  # [Z, X, Y]
        Z = occupied.shape[0]
        levels = np.arange(1, Z + 1)[:, None, None]
        top = (occupied * levels).max(0)  # [X, Y] 0 = empty, else 1..Z
        import matplotlib

        colours = matplotlib.colormaps["viridis"](np.linspace(0, 1, Z))[:, :3] * 255
        image = np.broadcast_to(BACKGROUND, (*top.shape, 3)).copy()
        filled = top > 0
        image[filled] = colours[top[filled] - 1]
        # rows: x from front (top) to back; columns: y from left (+y) to right
        return image[::-1, ::-1].astype(np.uint8)
    raise ValueError(f"modality {modality!r}: camera or lidar")


def save_signal_grid(
    signals: torch.Tensor | Sequence[torch.Tensor],
    path: str | Path,
    *,
    modality: str,
    titles: Sequence[str] | None = None,
    columns: int | None = None,
    suptitle: str | None = None,
) -> Path:
    """Writes the signals [N, C, S, S] as a grid image (PNG) with one title per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(signals)
    if n == 0:
        raise ValueError("save_signal_grid: no signals")
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.45 * rows + 0.4))
    axes = np.atleast_1d(axes).reshape(-1)
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(signal_to_image(signals[i], modality), interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=5, pad=2)
    if suptitle:
        fig.suptitle(suptitle, fontsize=8)
    return save_png(fig, path, dpi=150)
