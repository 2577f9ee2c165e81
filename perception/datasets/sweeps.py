"""The sweep and clip rules the dataset and the real-time node share: which earlier LiDAR
sweeps and camera frames are recent enough to use, and how earlier sweeps are merged into the
keyframe (`NuScenesDataset`, `deploy/state.py`).

A gap in a recording (or a dropped sensor stream) puts old data next to new along the `prev`
chain; merging points from seconds ago smears moving objects across the scene. So an earlier
sweep is merged only if `0 < time_lag <= max_age` (seconds before the keyframe), and a camera
clip stops at the first frame older than its limit (the clip is then padded by repeating the
oldest kept frame, as at a scene's start). `None` means no limit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# At 20 Hz, 10 sweeps reach 0.45 s back; two periods of slack for jitter and one lost sweep.
DEFAULT_MAX_SWEEP_AGE_S = 0.55
# At 12 Hz, a clip of 6 frames reaches ~0.42 s back (plus up to ~0.04 s camera/LiDAR offset).
DEFAULT_MAX_CLIP_FRAME_AGE_S = 0.55
# Points of earlier sweeps this close to the sensor hit the ego vehicle itself.
EGO_RADIUS_M = 1.0


def within_age(time_lag_s: float, max_age_s: float | None) -> bool:
    """Whether an earlier sweep `time_lag_s` seconds before the keyframe may be merged."""
    return time_lag_s > 0 and (max_age_s is None or time_lag_s <= max_age_s)


def fresh_clip_length(time_lags_newest_first: Sequence[float], max_age_s: float | None) -> int:
    """How many of a clip's frames (newest first: the keyframe's frame, then earlier ones) to
    keep: the newest always, then earlier ones up to the first older than `max_age_s`."""
    kept = min(1, len(time_lags_newest_first))
    for lag in time_lags_newest_first[1:]:
        if max_age_s is not None and lag > max_age_s:
            break
        kept += 1
    return kept


def merge_sweeps(
    key_points: np.ndarray,
    earlier: Sequence[tuple[np.ndarray, np.ndarray, float]],
    max_age_s: float | None,
) -> tuple[np.ndarray, int]:
    """Merges earlier sweeps into a keyframe's points.

    Args:
        key_points: `[N, >=4]` float32 (x, y, z, intensity, ...) in the keyframe sensor frame.
        earlier: newest first, per earlier sweep `(points [M, >=4] float32` in its own sensor
            frame, `sweep_to_key [4, 4] float64`, `time_lag_s`).
        max_age_s: sweeps older than this are skipped (`within_age`).

    Returns:
        `[P, 5]` float32 (x, y, z, intensity, time_lag) in the keyframe frame: the keyframe's
        points with lag 0, then each recent sweep's without the points within `EGO_RADIUS_M`
        of its sensor; and how many sweeps were skipped for their age.
    """
    parts = [np.concatenate([key_points[:, :4], np.zeros((len(key_points), 1), np.float32)], 1)]
    skipped = 0
    for points, sweep_to_key, lag in earlier:
        if not within_age(lag, max_age_s):
            skipped += 1
            continue
        pts = points[np.linalg.norm(points[:, :2], axis=1) > EGO_RADIUS_M]
        m = np.asarray(sweep_to_key, dtype=np.float64).reshape(4, 4)
        xyz = pts[:, :3].astype(np.float64) @ m[:3, :3].T + m[:3, 3]
        lag_column = np.full((len(pts), 1), lag, np.float32)
        parts.append(np.concatenate([xyz.astype(np.float32), pts[:, 3:4], lag_column], 1))
    return np.concatenate(parts, 0), skipped


def sweep_reach_problem(
    sweeps: int, stride: int, period_s: float, max_age_s: float | None
) -> str | None:
    """What is wrong when `sweeps` sweeps, every `stride`-th, of a LiDAR turning every
    `period_s` seconds reach further back than `max_age_s`: the older ones would be skipped at
    every keyframe, not only across a gap. None when they all fit (or no limit)."""
    if max_age_s is None or sweeps < 2 or not period_s > 0:
        return None
    lags = period_s * stride * np.arange(1, sweeps)  # nominal lag of each merged sweep
    beyond = int((lags > max_age_s + 1e-6).sum())  # a lag at the limit is merged
    if not beyond:
        return None
    return (
        f"data.sweeps={sweeps} with data.sweep_stride={stride} reach {lags[-1]:.2f} s back "
        f"at a LiDAR period of {period_s * 1e3:.0f} ms, beyond data.max_sweep_age={max_age_s} "
        f"s: {beyond} of the {sweeps - 1} earlier sweeps are never merged. Raise "
        f"data.max_sweep_age to {lags[-1] + 2 * period_s:.2f} (the reach plus two periods of "
        "slack), or lower data.sweep_stride or data.sweeps"
    )
