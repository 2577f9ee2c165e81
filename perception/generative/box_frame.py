"""The box frame of the object bank and the paste, in numpy (float64).

Box frame: origin at the box's geometric centre, x forward along the heading, y left, z up,
metres; a box `(x, y, z, w, l, h, yaw, ...)` of `perception.structures.Boxes3D` conventions
spans `|x| <= l/2, |y| <= w/2, |z| <= h/2` there (docs/frames.md).
"""

from __future__ import annotations

import math

import numpy as np


def box_to_frame(box: np.ndarray) -> np.ndarray:
    """`[4, 4]` float64: box frame -> the frame `box` (x, y, z, w, l, h, yaw, ...) is given in."""
    c, s = math.cos(box[6]), math.sin(box[6])
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    m[:3, 3] = box[:3]
    return m


def box_corners(size: np.ndarray) -> np.ndarray:
    """`[8, 3]` float64 corners in the box frame of a box of `size` (w, l, h), in
    `Boxes3D.corners` order: bottom face counter-clockwise from the front-left corner, then the
    top face in the same order."""
    w, l, h = (float(v) for v in size)
    xy = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], np.float64) * [l / 2, w / 2]
    z = np.repeat([-h / 2, h / 2], 4)[:, None]
    return np.c_[np.r_[xy, xy], z]


# The box's 12 edges as pairs of `box_corners` indices: bottom face, top face, verticals.
BOX_EDGES = np.array(
    [[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]]
)


def clip_to_near_plane(corners: np.ndarray, near: float) -> np.ndarray | None:
    """The box's points in front of a camera's near plane: `corners [8, 3]` (the third column
    the depth: camera-frame `(x, y, z)`, or `(u*d, v*d, d)` after the intrinsics, both linear, so
    the crossings interpolate alike) -> `[K, 3]`, the corners with depth > `near` and the points
    where the box's edges cross that plane; None when fewer than 3 remain (the box is behind)."""
    depth = corners[:, 2]
    kept = [corners[depth > near]]
    a, b = corners[BOX_EDGES[:, 0]], corners[BOX_EDGES[:, 1]]
    da, db = a[:, 2] - near, b[:, 2] - near
    crossing = (da > 0) != (db > 0)
    if crossing.any():
        t = da[crossing] / (da[crossing] - db[crossing])
        kept.append(a[crossing] + t[:, None] * (b[crossing] - a[crossing]))
    pts = np.concatenate(kept, 0)
    return pts if len(pts) >= 3 else None
