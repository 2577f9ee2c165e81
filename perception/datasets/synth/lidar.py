"""Ray casting a 32-beam spinning LiDAR (Velodyne HDL-32E, as nuScenes' LIDAR_TOP).

Rays start at the sensor origin and hit the ground plane (global z = 0) or yaw-only boxes
(`Prisms`); the nearest hit wins, so near things occlude far ones. Points come back in the
LiDAR sensor frame (x right, y forward, z up; metres) as nuScenes stores them: 5 float32 per
point (x, y, z, intensity 0..255, ring index 0..31).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception.datasets.synth.layout import GroundRaster, Prisms

ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)
AZIMUTH_STEPS = 1084  # per revolution at 20 Hz
MAX_RANGE = 70.0  # m
RANGE_NOISE = 0.02  # m, 1 sigma
_COL = 2 * np.pi / AZIMUTH_STEPS


@dataclass(frozen=True)
class Sweep:
    """One LiDAR sweep.

    points [N,5] float32 in the sensor frame; hits_visible [M] / hits_total [M]: per annotated
    object, how many rays (before drop-outs) end on it / would end on it if nothing else were
    in the way (a ray through several of the object's parts counts once).
    """

    points: np.ndarray
    hits_visible: np.ndarray
    hits_total: np.ndarray


def _unit_rays() -> np.ndarray:
    """Ray directions in the sensor frame at phase 0, [32, AZIMUTH_STEPS, 3]; azimuth from +x
    towards +y."""
    el = np.radians(ELEVATIONS_DEG)[:, None]
    az = np.arange(AZIMUTH_STEPS)[None, :] * _COL
    shape = (len(ELEVATIONS_DEG), AZIMUTH_STEPS)
    return np.stack(
        [np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.broadcast_to(np.sin(el), shape)],
        axis=-1,
    )


_BASE_RAYS = _unit_rays()


def cast(
    prisms: Prisms,
    ground: GroundRaster,
    origin: np.ndarray,
    sensor_to_global: np.ndarray,
    n_objects: int,
    rng: np.random.Generator,
) -> Sweep:
    """Cast one sweep. origin [3]: sensor position (global, m); sensor_to_global [3,3] rotation."""
    # Each sweep starts at a random fraction of a column, so sweeps do not repeat exactly.
    phase = float(rng.uniform(0.0, _COL))
    spin = np.array(
        [[np.cos(phase), -np.sin(phase), 0], [np.sin(phase), np.cos(phase), 0], [0, 0, 1]]
    )
    R, A, _ = _BASE_RAYS.shape
    dirs = _BASE_RAYS @ (sensor_to_global @ spin).T  # [R, A, 3] global frame
    t_best = np.full((R, A), np.inf)
    hit_id = np.full((R, A), -1, dtype=np.int64)
    cosine = np.ones((R, A))
    hits_total = np.zeros(n_objects, dtype=np.int64)
    # The last object each ray was counted for: an object's prisms are consecutive, so a ray
    # that passes through several of its parts is counted once in hits_total.
    counted_for = np.full((R, A), -1, dtype=np.int64)

    # Per box, only the rays that can reach it: a window of azimuth columns and of rings
    # (far boxes span a few degrees both ways, so this cuts the work by orders of magnitude).
    rel = prisms.centre - origin  # [N, 3]
    local = rel @ sensor_to_global  # sensor frame (the rotation is orthonormal)
    centre_az = np.arctan2(local[:, 1], local[:, 0])
    horiz = np.hypot(local[:, 0], local[:, 1])
    radius = 0.5 * np.hypot(prisms.wlh[:, 0], prisms.wlh[:, 1])
    ratio = np.minimum(1.0, radius / np.maximum(horiz, 1e-6))
    half_angle = np.where(horiz > radius + 0.3, np.arcsin(ratio), np.pi)
    near_d = np.maximum(horiz - radius, 0.05)
    far_d = horiz + radius
    z_lo = rel[:, 2] - prisms.wlh[:, 2] / 2
    z_hi = rel[:, 2] + prisms.wlh[:, 2] / 2
    # Elevation range of the box seen from the sensor, widened for the sensor's small tilt.
    el_lo = np.degrees(np.minimum(np.arctan2(z_lo, near_d), np.arctan2(z_lo, far_d))) - 1.5
    el_hi = np.degrees(np.maximum(np.arctan2(z_hi, near_d), np.arctan2(z_hi, far_d))) + 1.5
    ring_lo = np.searchsorted(ELEVATIONS_DEG, el_lo, side="left")
    ring_hi = np.searchsorted(ELEVATIONS_DEG, el_hi, side="right")
    in_range = (near_d < MAX_RANGE) & (ring_hi > ring_lo)
    for i in np.flatnonzero(in_range):
        rows = slice(int(ring_lo[i]), int(ring_hi[i]))
        if half_angle[i] >= np.pi / 2:
            cols: slice | np.ndarray = slice(0, A)
        else:
            lo = int(np.floor((centre_az[i] - half_angle[i]) / _COL)) - 1
            hi = int(np.ceil((centre_az[i] + half_angle[i]) / _COL)) + 2
            lo, hi = lo % A, hi % A
            cols = slice(lo, hi) if lo < hi else np.r_[lo:A, 0:hi]
        c, s = np.cos(prisms.yaw[i]), np.sin(prisms.yaw[i])
        to_local = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])  # global -> box axes
        o_l = to_local @ (origin - prisms.centre[i])
        d_l = dirs[rows, cols] @ to_local.T  # [r, C, 3]
        d_l[np.abs(d_l) < 1e-12] = 1e-12
        half = np.array([prisms.wlh[i, 1], prisms.wlh[i, 0], prisms.wlh[i, 2]]) / 2  # l, w, h
        inv = 1.0 / d_l
        t1 = (-half - o_l) * inv
        t2 = (half - o_l) * inv
        t_lo = np.minimum(t1, t2)
        t_near = t_lo.max(-1)
        t_far = np.maximum(t1, t2).min(-1)
        hit = (t_near <= t_far) & (t_near > 0.0) & (t_near <= MAX_RANGE)
        obj = prisms.object[i]
        if obj >= 0:
            seen = counted_for[rows, cols]
            hits_total[obj] += int(np.count_nonzero(hit & (seen != obj)))
            counted_for[rows, cols] = np.where(hit, obj, seen)
        sub_t = t_best[rows, cols]
        better = hit & (t_near < sub_t)
        if not better.any():
            continue
        # The face hit is the slab entered last; its normal is that box axis.
        face_axis = t_lo.argmax(-1)
        face_cos = np.abs(
            np.where(
                face_axis == 0, d_l[..., 0], np.where(face_axis == 1, d_l[..., 1], d_l[..., 2])
            )
        )
        t_best[rows, cols] = np.where(better, t_near, sub_t)
        hit_id[rows, cols] = np.where(better, i, hit_id[rows, cols])
        cosine[rows, cols] = np.where(better, face_cos, cosine[rows, cols])

    dz = dirs[..., 2]
    t_ground = np.where(dz < -1e-6, -origin[2] / np.minimum(dz, -1e-6), np.inf)
    on_ground = t_ground < t_best
    t_best = np.where(on_ground, t_ground, t_best)
    hit_id = np.where(on_ground, -1, hit_id)
    cosine = np.where(on_ground, np.abs(dz), cosine)
    valid = t_best <= MAX_RANGE

    hits_visible = np.zeros(n_objects, dtype=np.int64)
    obj_of_hit = np.where(valid & (hit_id >= 0), prisms.object[np.maximum(hit_id, 0)], -1)
    np.add.at(hits_visible, obj_of_hit[obj_of_hit >= 0], 1)

    ring, col = np.nonzero(valid.T)[::-1]  # azimuth-major order, as the sensor streams points
    t = t_best[ring, col]
    ids = hit_id[ring, col]
    # Surface reflectivity: the ground picture (markings are bright) or the box's material.
    gxy = origin[:2] + t[:, None] * dirs[ring, col, :2]
    px = np.floor((gxy[:, 0] - ground.x0) / ground.resolution).astype(np.int64)
    py = np.floor((gxy[:, 1] - ground.y0) / ground.resolution).astype(np.int64)
    h, w = ground.intensity.shape
    inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    ground_refl = np.full(len(t), 12.0)
    ground_refl[inside] = ground.intensity[py[inside], px[inside]]
    refl = np.where(ids >= 0, prisms.reflectivity[np.maximum(ids, 0)], ground_refl)
    intensity = refl * (0.35 + 0.65 * cosine[ring, col]) * (1.0 - 0.35 * t / MAX_RANGE)
    intensity *= rng.normal(1.0, 0.1, len(t))
    intensity = np.clip(np.round(intensity), 0.0, 255.0)
    # Drop-outs: a few everywhere, more far away and on dark surfaces.
    p_drop = 0.015 + 0.25 * (t / MAX_RANGE) ** 2 + np.where(intensity < 4, 0.3, 0.0)
    keep = rng.random(len(t)) >= p_drop
    noisy_t = t + np.clip(rng.normal(0.0, RANGE_NOISE, len(t)), -3 * RANGE_NOISE, 3 * RANGE_NOISE)
    xyz = (_BASE_RAYS[ring, col] @ spin.T) * noisy_t[:, None]
    points = np.concatenate([xyz, intensity[:, None], ring[:, None].astype(np.float64)], axis=1)
    return Sweep(points[keep].astype(np.float32), hits_visible, hits_total)
