"""A road centreline made of straight and circular-arc segments, in the global frame.

Everything on the road is placed in road coordinates (s, d): s is arc length along the
centreline in metres, d the signed lateral offset in metres, positive to the left of the
direction of increasing s. Global frame: x east, y north, z up, metres; headings are radians
counter-clockwise from +x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Road:
    """Piecewise straight/arc centreline; segment i starts at arc length `seg_s0[i]`.

    seg_xy0 [S,2] start point (global, m); seg_heading0 [S] start heading (rad);
    seg_curvature [S] curvature (1/m, 0 for straight, positive turns left).
    """

    seg_s0: np.ndarray
    seg_xy0: np.ndarray
    seg_heading0: np.ndarray
    seg_curvature: np.ndarray
    length: float

    def centre(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centreline at arc lengths s [N] -> (xy [N,2], heading [N], curvature [N]).

        Outside [0, length] the first/last segment is extended (exact for arcs and straights).
        """
        s = np.asarray(s, dtype=np.float64)
        idx = np.clip(np.searchsorted(self.seg_s0, s, side="right") - 1, 0, len(self.seg_s0) - 1)
        u = s - self.seg_s0[idx]
        k = self.seg_curvature[idx]
        h0 = self.seg_heading0[idx]
        heading = h0 + k * u
        straight = np.abs(k) < 1e-12
        k_safe = np.where(straight, 1.0, k)
        dx = np.where(straight, u * np.cos(h0), (np.sin(heading) - np.sin(h0)) / k_safe)
        dy = np.where(straight, u * np.sin(h0), (np.cos(h0) - np.cos(heading)) / k_safe)
        xy = self.seg_xy0[idx] + np.stack([dx, dy], axis=-1)
        return xy, heading, k

    def point(self, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Road coordinates (s, d) [N] -> (global xy [N,2], centreline heading at s [N])."""
        xy, heading, _ = self.centre(s)
        normal = np.stack([-np.sin(heading), np.cos(heading)], axis=-1)
        return xy + np.asarray(d, dtype=np.float64)[..., None] * normal, heading


def make_road(
    rng: np.random.Generator, *, length: float, start_xy: np.ndarray, start_heading: float
) -> Road:
    """Random road of at least `length` metres: a long straight, then arcs and straights."""
    s0s, xy0s, h0s, ks = [], [], [], []
    s, xy, heading = 0.0, np.asarray(start_xy, dtype=np.float64), float(start_heading)
    seg = 0
    while s < length:
        if seg % 2 == 0:
            seg_len = float(rng.uniform(150.0, 300.0) if seg == 0 else rng.uniform(30.0, 160.0))
            k = 0.0
        else:
            radius = float(rng.uniform(60.0, 250.0))
            turn = float(rng.uniform(np.radians(15.0), np.radians(75.0)))
            k = float(rng.choice([-1.0, 1.0])) / radius
            seg_len = turn * radius
        s0s.append(s)
        xy0s.append(xy.copy())
        h0s.append(heading)
        ks.append(k)
        partial = Road(
            np.array([s]), xy[None].copy(), np.array([heading]), np.array([k]), s + seg_len
        )
        end_xy, end_heading, _ = partial.centre(np.array([s + seg_len]))
        xy, heading = end_xy[0], float(end_heading[0])
        s += seg_len
        seg += 1
    return Road(
        seg_s0=np.array(s0s),
        seg_xy0=np.array(xy0s),
        seg_heading0=np.array(h0s),
        seg_curvature=np.array(ks),
        length=s,
    )


@dataclass(frozen=True)
class Tracks:
    """Motion of N things along the road: s(t) = s0 + v t + a t^2 / 2, fixed lateral offset d.

    yaw_offset [N] is added to the centreline heading at s(t) (pi for traffic going against s);
    t in seconds from the scene start.
    """

    s0: np.ndarray
    v: np.ndarray
    a: np.ndarray
    d: np.ndarray
    yaw_offset: np.ndarray

    def state(self, road: Road, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """At time t -> (xy [N,2] global m, yaw [N] rad, velocity [N,2] global m/s)."""
        s = self.s0 + self.v * t + 0.5 * self.a * t * t
        s_dot = self.v + self.a * t
        xy, heading, k = road.centre(s)
        normal = np.stack([-np.sin(heading), np.cos(heading)], axis=-1)
        tangent = np.stack([np.cos(heading), np.sin(heading)], axis=-1)
        pos = xy + self.d[:, None] * normal
        # d/dt of C(s) + d N(s) = s_dot (1 - k d) T(s): offset paths are longer outside a bend.
        velocity = (s_dot * (1.0 - k * self.d))[:, None] * tangent
        return pos, heading + self.yaw_offset, velocity
