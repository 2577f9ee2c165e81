"""Pictures of training curves: the DiffAugment GAN grid's KID against the training step
(issue #26), one panel per number of real crops, one colour per augmentation mode, one line per
seed, so a discriminator's collapse (KID turning up) is visible at a glance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .figures import save_png

__all__ = ["save_kid_curves"]

MODE_COLOURS = {"none": "#d62728", "both": "#1f77b4", "reals_only": "#7f7f7f"}


def save_kid_curves(runs: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Draw `runs` (the GAN collector's records: `num_real`, `mode`, `seed`, `kid_curve` as
    [[step, KID], ...]) to a PNG at `path`. ValueError when no run has a curve."""
    with_curve = [r for r in runs if r.get("kid_curve")]
    if not with_curve:
        raise ValueError("no run has a KID curve (log.jsonl lines with 'kid'): nothing to draw")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels: list[str] = []
    for r in with_curve:
        if r["num_real"] not in panels:
            panels.append(r["num_real"])
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False, sharey=True
    )
    for ax, n in zip(axes[0], panels, strict=True):
        labelled: set[str] = set()
        for r in (r for r in with_curve if r["num_real"] == n):
            steps = [point[0] for point in r["kid_curve"]]
            kids = [point[1] for point in r["kid_curve"]]
            mode = r["mode"]
            ax.plot(
                steps,
                kids,
                marker="o",
                markersize=3,
                color=MODE_COLOURS.get(mode, "#2ca02c"),
                label=None if mode in labelled else mode,
                alpha=0.85,
            )
            labelled.add(mode)
        ax.set_title(f"N = {n} real crops")
        ax.set_xlabel("training step")
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.grid(alpha=0.3)
        ax.legend(title="augment", fontsize=8)
    axes[0][0].set_ylabel("KID (training subset)")
    return save_png(fig, path, dpi=90)
