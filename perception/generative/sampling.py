"""Conditions for looking at a generator: a grid of classes x view angles inside the range the
generator was trained on (`tools/sample_generator.py`, shared by every generator kind)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .conditions import ConditionRange, ObjectConditions

__all__ = ["describe_condition", "grid_conditions"]


def grid_conditions(
    ranges: ConditionRange,
    *,
    classes: Sequence[str] | None = None,
    n: int = 64,
    sensor: str | None = None,
    size: Sequence[float] | None = None,
    depth: float | None = None,
) -> ObjectConditions:
    """`n` conditions per class (default every trained class): view angles evenly around the
    object (-pi .. pi), the class's middle size (or `size` (w, l, h)), the middle of the trained
    depths (or `depth`), one sensor (default the first trained one). Checked against `ranges`:
    a class, size, depth or sensor the generator never saw raises ValueError naming it."""
    if n < 1:
        raise ValueError(f"n={n}: must be >= 1")
    classes = list(classes) if classes else sorted(ranges.counts)
    sensor = sensor or ranges.sensors[0]
    labels, sizes, angles = [], [], []
    for name in classes:
        if name not in ranges.counts:
            raise ValueError(
                f"class {name!r}: the generator saw no {name!r} in training "
                f"(it knows {sorted(ranges.counts)})"
            )
        middle = [(a + b) / 2 for a, b in zip(ranges.size_min[name], ranges.size_max[name])]
        chosen = list(size) if size is not None else middle
        for i in range(n):
            labels.append(name)
            sizes.append(chosen)
            angles.append(-math.pi + 2 * math.pi * i / n)
    depths = [depth if depth is not None else (ranges.depth_min + ranges.depth_max) / 2] * len(
        labels
    )
    conds = ObjectConditions.create(
        label=labels, size=sizes, view_angle=angles, depth=depths, sensor=[sensor] * len(labels)
    )
    ranges.check(conds)
    return conds


def describe_condition(conds: ObjectConditions, i: int) -> str:
    """A short title for row `i`: class, view angle in degrees, depth."""
    from ..structures.classes import CLASS_NAMES

    name = CLASS_NAMES[int(conds.label[i])]
    angle = math.degrees(float(conds.view_angle[i]))
    return f"{name}\n{angle:+.0f}deg {float(conds.depth[i]):.0f}m"
