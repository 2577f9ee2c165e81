"""The one way a picture module writes a matplotlib figure to a PNG file."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_png(fig: Any, path: str | Path, *, dpi: int) -> Path:
    """Lay out `fig`, write it to `path` (parent folders made), close it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
