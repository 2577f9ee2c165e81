"""The node's streaming state, kept between LiDAR clouds: the TF tree (ego poses and sensor
mounts), the LiDAR sweep history merged into each new cloud, and each camera's recent frames.

All of it is plain per-instance state (one node owns one of each); `reset()` forgets what a
time jump or a reset request invalidates (the sensor mounts on `/tf_static` are kept).

Frames: `map` (world), `base_link` (ego), sensor frames (`lidar_top`, `cam_front`, ...), as
`deploy/bag.py` writes them. Matrices are 4x4 float64 `parent <- child` (tf2's convention).
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from perception.datasets.sensors import (
    DEFAULT_MAX_SWEEP_AGE_S,
    fresh_clip_length,
    interpolate_pose,
    merge_sweeps,
)

from .convert import StampedTransform


class MissingTransform(LookupError):
    """No transform for a frame at a stamp (TF not received yet, or too far from any pose)."""


@dataclass
class TfBuffer:
    """Static sensor mounts (`base_link <- sensor`) and a time series of ego poses
    (`map <- base_link`).

    `ego_pose(stamp)` is exact at a recorded stamp, interpolated between two, and held from the
    nearest pose up to `tolerance_ns` outside the recorded span; otherwise `MissingTransform`.
    """

    map_frame: str = "map"
    base_frame: str = "base_link"
    tolerance_ns: int = 100_000_000
    max_poses: int = 2000
    static: dict[str, np.ndarray] = field(default_factory=dict)
    _stamps: list[int] = field(default_factory=list)
    _poses: list[np.ndarray] = field(default_factory=list)

    def add(self, transforms: list[StampedTransform], *, static: bool) -> None:
        for t in transforms:
            if static or t.parent == self.base_frame:
                self.static[t.child] = t.matrix
            elif t.parent == self.map_frame and t.child == self.base_frame:
                i = bisect.bisect_left(self._stamps, t.stamp_ns)
                if i < len(self._stamps) and self._stamps[i] == t.stamp_ns:
                    self._poses[i] = t.matrix
                    continue
                self._stamps.insert(i, t.stamp_ns)
                self._poses.insert(i, t.matrix)
                if len(self._stamps) > self.max_poses:
                    del self._stamps[0], self._poses[0]

    @property
    def known_frames(self) -> set[str]:
        return {self.map_frame, self.base_frame, *self.static}

    def ego_pose(self, stamp_ns: int) -> np.ndarray:
        """`map <- base_link` at `stamp_ns`."""
        stamps = self._stamps
        if not stamps:
            raise MissingTransform(f"no {self.map_frame} -> {self.base_frame} pose received yet")
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            return self._poses[i]
        if 0 < i < len(stamps):
            w = (stamp_ns - stamps[i - 1]) / (stamps[i] - stamps[i - 1])
            return interpolate_pose(self._poses[i - 1], self._poses[i], w)
        nearest = 0 if i == 0 else len(stamps) - 1
        if abs(stamps[nearest] - stamp_ns) <= self.tolerance_ns:
            return self._poses[nearest]
        raise MissingTransform(
            f"no ego pose within {self.tolerance_ns / 1e6:.0f} ms of {stamp_ns} ns "
            f"(poses span {stamps[0]}..{stamps[-1]} ns)"
        )

    def sensor_to_ego(self, frame: str) -> np.ndarray:
        if frame == self.base_frame:
            return np.eye(4)
        try:
            return self.static[frame]
        except KeyError:
            raise MissingTransform(f"no static transform {self.base_frame} -> {frame}") from None

    def sensor_to_map(self, frame: str, stamp_ns: int) -> np.ndarray:
        return self.ego_pose(stamp_ns) @ self.sensor_to_ego(frame)

    def reset(self) -> None:
        """Forgets the ego poses (a time jump invalidates them); keeps the static mounts."""
        self._stamps.clear()
        self._poses.clear()


@dataclass(frozen=True)
class Sweep:
    """One accepted cloud: `points` `[N, 4]` float32 (x, y, z, intensity), sensor frame."""

    stamp_ns: int
    points: np.ndarray
    sensor_to_map: np.ndarray  # [4, 4] float64


def merge_earlier(
    sweep: Sweep, earlier: tuple[Sweep, ...], max_age_s: float | None
) -> tuple[np.ndarray, int]:
    """The dataset's `merge_sweeps` (`perception.datasets.sensors`) on the node's sweeps:
    `[N, 5]` float32 (x, y, z, intensity, time_lag) in `sweep`'s frame (its points with lag 0,
    then each of `earlier`, oldest first, merged newest first, moved with the ego motion
    between the stamps), and how many of `earlier` were skipped as older than `max_age_s`
    seconds (`data.max_sweep_age`)."""
    map_to_key = np.linalg.inv(sweep.sensor_to_map)
    return merge_sweeps(
        sweep.points,
        [
            (old.points, map_to_key @ old.sensor_to_map, (sweep.stamp_ns - old.stamp_ns) * 1e-9)
            for old in reversed(earlier)  # newest first
        ],
        max_age_s,
    )


@dataclass
class SweepAccumulator:
    """`sweeps - 1` earlier accepted clouds (every `stride`-th, counting back from the newest),
    merged into each new one as the dataset does (`NuScenesDataset._points`, `merge_earlier`):
    those older than `max_age_s` seconds (`data.max_sweep_age`; None: no limit) are skipped.

    Every valid cloud enters the history, processed by the model or not, so dropping frames
    under load does not change which sweeps later clouds merge. `add` is cheap (the receive
    thread calls it for every cloud); the merge itself runs later, on the pre-process stage.
    """

    sweeps: int
    max_age_s: float | None = DEFAULT_MAX_SWEEP_AGE_S
    stride: int = 1
    history: deque = field(init=False)

    def __post_init__(self) -> None:
        if self.sweeps < 1:
            raise ValueError(f"sweeps must be >= 1, got {self.sweeps}")
        if self.stride < 1:
            raise ValueError(f"sweep stride must be >= 1, got {self.stride}")
        self.history = deque(maxlen=max((self.sweeps - 1) * self.stride, 1))

    def add(self, sweep: Sweep) -> tuple[Sweep, ...]:
        """Remembers `sweep`; returns the earlier sweeps to merge into it (oldest first)."""
        if self.sweeps == 1:
            return ()
        newest_first = list(self.history)[::-1]
        self.history.append(sweep)
        return tuple(newest_first[self.stride - 1 :: self.stride][::-1])

    def merge(self, sweep: Sweep) -> tuple[np.ndarray, int]:
        """`add`, then `merge_earlier`: the merged points and how many sweeps were skipped."""
        return merge_earlier(sweep, self.add(sweep), self.max_age_s)

    def reset(self) -> None:
        self.history.clear()


@dataclass(frozen=True, eq=False)
class CameraFrame:
    """One accepted camera image, decoded (strictly) and pre-processed (test-time resize/crop)
    once, at arrival: a frame in the history is always usable, so a bad image costs only
    itself, never a later cloud.

    `image` is `[3, H, W]` uint8 (the model's input size); `seq` counts the camera's frames
    since the last reset (consecutive frames differ by 1).
    """

    stamp_ns: int
    seq: int
    image: np.ndarray
    receive_ns: int


@dataclass
class CameraHistory:
    """The last `depth` frames of one camera (enough for a clip of T plus one newer frame)."""

    depth: int
    frames: deque = field(init=False)
    next_seq: int = 0

    def __post_init__(self) -> None:
        self.frames = deque(maxlen=self.depth)

    def add(self, stamp_ns: int, image: np.ndarray, receive_ns: int) -> CameraFrame:
        frame = CameraFrame(stamp_ns, self.next_seq, image, receive_ns)
        self.next_seq += 1
        self.frames.append(frame)
        return frame

    @property
    def latest(self) -> CameraFrame | None:
        return self.frames[-1] if self.frames else None

    def nearest(self, stamp_ns: int, max_delay_ns: int) -> CameraFrame | None:
        """The frame nearest in time to `stamp_ns`, if within `max_delay_ns`."""
        best = min(self.frames, key=lambda f: abs(f.stamp_ns - stamp_ns), default=None)
        if best is None or abs(best.stamp_ns - stamp_ns) > max_delay_ns:
            return None
        return best

    def clip(
        self,
        frame: CameraFrame,
        length: int,
        *,
        reference_ns: int | None = None,
        max_age_s: float | None = None,
    ) -> tuple[list[CameraFrame], int]:
        """`frame` and the `length - 1` frames before it, oldest first, cut as the dataset
        cuts a clip (`fresh_clip_length`): at the first earlier frame more than `max_age_s`
        seconds (`data.max_clip_frame_age`; None: no limit) before `reference_ns` (the cloud's
        stamp; default `frame`'s). Padded at the start by repeating the oldest frame kept
        (the dataset's rule at a scene's start or a gap). Returns the clip and how many
        available frames were left out for their age."""
        before = [f for f in self.frames if f.seq <= frame.seq][-length:]
        reference = frame.stamp_ns if reference_ns is None else reference_ns
        lags = [(reference - f.stamp_ns) * 1e-9 for f in reversed(before)]  # newest first
        kept = fresh_clip_length(lags, max_age_s)
        fresh = before[len(before) - kept :]
        return [fresh[0]] * (length - len(fresh)) + fresh, len(before) - kept

    def reset(self) -> None:
        self.frames.clear()
        self.next_seq = 0
