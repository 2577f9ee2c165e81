"""Sensor preprocessing shared by the dataset (training, offline inference) and the real-time
node (`deploy/`): one implementation of each rule, so a training sample and the node's input
for the same sensor data go through the same functions.

- tables: reading a nuScenes JSON table (`read_table`).
- poses and quaternions: `quaternion_to_matrix`, `matrix_to_quaternion`, `yaw_to_quaternion`,
  `quaternion_yaw`, `pose_matrix`, `interpolate_pose`.
- LiDAR sweeps: which earlier sweeps are recent enough (`within_age`), how they are merged into
  the keyframe (`merge_sweeps`, dropping ego hits within `EGO_RADIUS_M`), which camera clip
  frames are kept (`fresh_clip_length`), and the config check on a sweep setting's reach
  (`sweep_reach_problem`).
- range filter: `points_in_range` / `in_range_mask` (`PointsRangeFilter` and the node).
- camera images: the test-time resize/crop (`TestTimeImageTransform`, which is
  `ImageAug(train=False)`) and the 3x3 pixel affine -> 4x4 `image_aug` embedding
  (`image_aug_matrix`).

Conventions, stated once:

- Quaternions are `(w, x, y, z)`: scalar first, nuScenes' and pyquaternion's order (Hamilton
  product, unit norm after normalisation). ROS messages carry the same quaternion in named
  fields `x, y, z, w`; `deploy/convert.py` maps between the two at the message boundary only.
- A pose is a `[4, 4]` float64 matrix `parent <- child` acting on column vectors
  (`p_parent = M @ [p_child, 1]`): nuScenes' `calibrated_sensor` is `ego <- sensor`, its
  `ego_pose` is `global <- ego` (tf2's `parent_from_child`, the same convention).
- Points are `[N, >=4]` float32 (x, y, z, intensity, ...) in metres, in the frame named by the
  caller; a merged cloud is `[N, 5]` (x, y, z, intensity, time_lag in seconds).
- A point range is `(x_min, y_min, z_min, x_max, y_max, z_max)` metres; a point is inside when
  `lo <= xyz < hi` for every axis (half-open).
- Camera images are `[H, W, 3]` uint8 RGB as decoded, `[3, H', W']` uint8 as the model reads
  them; an image affine maps input pixel `(u, v, 1)` to output pixel (`[3, 3]` float64).

Sweep ages: a gap in a recording (or a dropped sensor stream) puts old data next to new along
the `prev` chain; merging points from seconds ago smears moving objects across the scene. So an
earlier sweep is merged only if `0 < time_lag <= max_age` (seconds before the keyframe), and a
camera clip stops at the first frame older than its limit (the clip is then padded by repeating
the oldest kept frame, as at a scene's start). `None` means no limit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from pyquaternion import Quaternion as _PyQuaternion  # the nuScenes devkit's own dependency

if TYPE_CHECKING:
    from ..config.schema import ExperimentConfig
    from .transforms import ImageAug

__all__ = [
    "DEFAULT_MAX_CLIP_FRAME_AGE_S",
    "DEFAULT_MAX_SWEEP_AGE_S",
    "EGO_RADIUS_M",
    "TestTimeImageTransform",
    "fresh_clip_length",
    "image_aug_matrix",
    "in_range_mask",
    "interpolate_pose",
    "matrix_to_quaternion",
    "merge_sweeps",
    "points_in_range",
    "pose_matrix",
    "quaternion_to_matrix",
    "quaternion_yaw",
    "read_table",
    "sweep_reach_problem",
    "within_age",
    "yaw_to_quaternion",
]

# -- tables --------------------------------------------------------------------------------


def read_table(root: str | Path, version: str, name: str) -> list[dict]:
    """The records of the nuScenes table `<root>/<version>/<name>.json` (e.g. `ego_pose`).
    Raises `FileNotFoundError` naming the file when it is missing."""
    path = Path(root) / version / f"{name}.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: nuScenes table is missing") from None
    return json.loads(text)


# -- quaternions and poses -----------------------------------------------------------------

QuaternionWXYZ = tuple[float, float, float, float]  # (w, x, y, z)


def quaternion_to_matrix(q: Sequence[float]) -> np.ndarray:
    """`[3, 3]` float64 rotation of the quaternion `q = (w, x, y, z)`.

    Computed by pyquaternion, as the nuScenes devkit computes it (bit for bit: the dataset's
    matrices are the devkit's, and the synthetic writer's points land where the devkit reads
    them). pyquaternion normalises `q` unless `|q|^2` is within 1e-14 of 1. Raises ValueError
    for a zero quaternion.
    """
    q = [float(v) for v in q]
    if len(q) != 4:
        raise ValueError(f"a quaternion has 4 components (w, x, y, z), got {len(q)}")
    if sum(v * v for v in q) < 1e-12:
        raise ValueError("zero quaternion")
    return _PyQuaternion(q).rotation_matrix  # a view of pyquaternion's 4x4 product, as the devkit's


def matrix_to_quaternion(rotation: np.ndarray) -> QuaternionWXYZ:
    """`(w, x, y, z)`, `w >= 0`, of a `[3, 3]` rotation matrix (Shepperd's method)."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        w, x, y, z = (
            0.25 * s,
            (m[2, 1] - m[1, 2]) / s,
            (m[0, 2] - m[2, 0]) / s,
            (m[1, 0] - m[0, 1]) / s,
        )
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        w, x, y, z = (
            (m[2, 1] - m[1, 2]) / s,
            0.25 * s,
            (m[0, 1] + m[1, 0]) / s,
            (m[0, 2] + m[2, 0]) / s,
        )
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        w, x, y, z = (
            (m[0, 2] - m[2, 0]) / s,
            (m[0, 1] + m[1, 0]) / s,
            0.25 * s,
            (m[1, 2] + m[2, 1]) / s,
        )
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        w, x, y, z = (
            (m[1, 0] - m[0, 1]) / s,
            (m[0, 2] + m[2, 0]) / s,
            (m[1, 2] + m[2, 1]) / s,
            0.25 * s,
        )
    if w < 0:
        w, x, y, z = -w, -x, -y, -z
    return (float(w), float(x), float(y), float(z))


def yaw_to_quaternion(yaw: float) -> QuaternionWXYZ:
    """`(w, x, y, z)` of a rotation by `yaw` rad about +z (counter-clockwise seen from above)."""
    return (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))


def quaternion_yaw(q: Sequence[float]) -> float:
    """The heading (rad, from +x towards +y) of the x axis rotated by `q = (w, x, y, z)`,
    projected on the x-y plane: the devkit's `quaternion_yaw`."""
    w, x, y, z = q
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def pose_matrix(translation: Sequence[float], rotation: Sequence[float]) -> np.ndarray:
    """`[4, 4]` float64 `parent <- child` from a nuScenes record's `translation` (m, parent
    frame) and `rotation` quaternion `(w, x, y, z)`."""
    m = np.eye(4)
    m[:3, :3] = quaternion_to_matrix(rotation)
    m[:3, 3] = translation
    return m


def interpolate_pose(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    """`[4, 4]` float64 rigid transform `w` (0..1) of the way from pose `a` to pose `b`
    (`[4, 4]`): translation linear, rotation by quaternion slerp (the shorter arc)."""
    qa = np.array(matrix_to_quaternion(a[:3, :3]))
    qb = np.array(matrix_to_quaternion(b[:3, :3]))
    dot = float(qa @ qb)
    if dot < 0:
        qb, dot = -qb, -dot
    if dot > 0.9995:
        q = qa + w * (qb - qa)
    else:
        theta = np.arccos(dot)
        q = (np.sin((1 - w) * theta) * qa + np.sin(w * theta) * qb) / np.sin(theta)
    m = np.eye(4)
    m[:3, :3] = quaternion_to_matrix(q)
    m[:3, 3] = (1 - w) * a[:3, 3] + w * b[:3, 3]
    return m


# -- LiDAR sweeps and camera clips ---------------------------------------------------------

# At 20 Hz, 10 sweeps reach 0.45 s back; two periods of slack for jitter and one lost sweep.
DEFAULT_MAX_SWEEP_AGE_S = 0.55
# At 12 Hz, a clip of 6 frames reaches ~0.42 s back (plus up to ~0.04 s camera/LiDAR offset).
DEFAULT_MAX_CLIP_FRAME_AGE_S = 0.55
# Points of earlier sweeps this close to the sensor (x-y distance) hit the ego vehicle itself.
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
    """Merges earlier sweeps into a keyframe's points: what `NuScenesDataset` and the node
    (`deploy/state.py`, `merge_earlier`) both call.

    Args:
        key_points: `[N, >=4]` float32 (x, y, z, intensity, ...) in the keyframe sensor frame.
        earlier: newest first, per earlier sweep `(points [M, >=4] float32` in its own sensor
            frame, `sweep_to_key [4, 4] float64` (keyframe sensor <- sweep sensor),
            `time_lag_s`).
        max_age_s: sweeps older than this are skipped (`within_age`).

    Returns:
        `[P, 5]` float32 (x, y, z, intensity, time_lag) in the keyframe frame: the keyframe's
        points with lag 0, then each recent sweep's without the points within `EGO_RADIUS_M`
        (x-y) of its sensor; and how many sweeps were skipped for their age.
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


# -- range filter --------------------------------------------------------------------------


def in_range_mask(xyz: np.ndarray, point_range: Sequence[float]) -> np.ndarray:
    """`[N]` bool: which of `xyz` (`[N, >=3]`, only the first 3 columns are read) lie inside
    `point_range` (x_min, y_min, z_min, x_max, y_max, z_max), half-open `[lo, hi)`. The bounds
    are taken as float32 (the points' precision)."""
    lo = np.asarray(point_range[:3], np.float32)
    hi = np.asarray(point_range[3:], np.float32)
    xyz = xyz[:, :3]
    return ((xyz >= lo) & (xyz < hi)).all(axis=1)


def points_in_range(points: np.ndarray, point_range: Sequence[float]) -> np.ndarray:
    """The rows of `points` (`[N, >=3]`, x, y, z first) inside `point_range` (`in_range_mask`):
    what `PointsRangeFilter` keeps of a sample and the node of a merged cloud."""
    return points[in_range_mask(points, point_range)]


# -- camera images -------------------------------------------------------------------------


def image_aug_matrix(affine: np.ndarray) -> np.ndarray:
    """`[4, 4]` float64 `image_aug` (as recorded in `Sample.image_aug`, acting on `(u, v, d,
    1)`) of a `[3, 3]` pixel affine (acting on `(u, v, 1)`)."""
    m4 = np.eye(4)
    m4[:2, :2] = affine[:2, :2]
    m4[:2, 3] = affine[:2, 2]
    return m4


@dataclass(frozen=True)
class TestTimeImageTransform:
    """The dataset's test-time image transform, `aug` = `ImageAug(train=False)`: resize by the
    test scale, bottom/centre crop to `final_size`, no flip or rotation. The node warps each
    camera frame with it; the dataset applies `aug` to its samples (the same affine).
    """

    __test__ = False  # not a pytest test class despite its name

    aug: ImageAug

    def __post_init__(self) -> None:
        if self.aug.train:
            raise ValueError("TestTimeImageTransform needs ImageAug(train=False)")

    @classmethod
    def from_config(cls, config: ExperimentConfig) -> TestTimeImageTransform:
        """`augment.image` with `augment.test_resize`, as `image_transform(config, train=False)`
        builds it for the dataset."""
        from .transforms import ImageAug  # transforms imports this module

        return cls(
            ImageAug(config.augment.image, train=False, test_resize=config.augment.test_resize)
        )

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the model's input images."""
        return tuple(self.aug.config.final_size)

    def affine(self, width: int, height: int) -> np.ndarray:
        """`[3, 3]` float64 pixel affine of a `width` x `height` camera image."""
        return self.aug.affine(width, height)

    def matrix(self, width: int, height: int) -> np.ndarray:
        """`[4, 4]` float32 `image_aug` of a `width` x `height` camera image."""
        return image_aug_matrix(self.affine(width, height)).astype(np.float32)

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """(W, H) a `width` x `height` camera image must at least be decoded at for this
        transform: its size after the test-time resize (rounded up). A JPEG decoded at a
        reduced DCT scale of at least this size (`io.decode_image(min_size=...)`) loses no
        resolution the model would see."""
        resize = self.affine(width, height)[0, 0]  # test mode: a pure scale and a crop
        return min(width, math.ceil(width * resize)), min(height, math.ceil(height * resize))

    def __call__(self, rgb: np.ndarray, full_size: tuple[int, int] | None = None) -> np.ndarray:
        """`[h, w, 3]` uint8 RGB -> `[3, H', W']` uint8, `(W', H') = size`.

        `full_size` (W, H): the size of the camera image `rgb` was decoded from when it was
        decoded smaller (scale-on-decode); the transform is the full image's (`matrix(W, H)`,
        what the calibration and `image_aug` describe), composed with the map from the small
        image's pixel centres to the full one's. None: `rgb` is the full image.
        """
        h, w = rgb.shape[:2]
        W, H = (w, h) if full_size is None else full_size
        m = self.affine(W, H)
        if (w, h) != (W, H):
            sx, sy = W / w, H / h  # small pixel centre u + 0.5 covers full (u + 0.5) * sx
            m = m @ np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        warped = cv2.warpAffine(rgb, m[:2], self.size, flags=cv2.INTER_LINEAR)
        return np.ascontiguousarray(warped.transpose(2, 0, 1))
