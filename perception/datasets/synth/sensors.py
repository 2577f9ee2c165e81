"""The sensor rig (nuScenes' LIDAR_TOP and six cameras) and when each sensor fires.

Frames: ego (x forward, y left, z up, origin at the rear axle on the ground); LiDAR sensor
(x right, y forward, z up, as nuScenes' LIDAR_TOP); camera (x right, y down, z forward).
Rotations are quaternions [w, x, y, z] taking sensor coordinates to ego coordinates, as in
nuScenes' calibrated_sensor table; translations in metres; timestamps in microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyquaternion import Quaternion

from perception.datasets.sensors import quaternion_to_matrix
from perception.structures.classes import CAMERA_NAMES

LIDAR = "LIDAR_TOP"
CAMERAS: tuple[str, ...] = CAMERA_NAMES
# (yaw in degrees, position on the ego in m, focal length at 1600x900 in px), from nuScenes.
_CAMERA_MOUNTS: dict[str, tuple[float, tuple[float, float, float], float]] = {
    "CAM_FRONT": (0.0, (1.70, 0.016, 1.51), 1266.4),
    "CAM_FRONT_RIGHT": (-55.0, (1.55, -0.49, 1.49), 1260.8),
    "CAM_FRONT_LEFT": (55.0, (1.52, 0.49, 1.51), 1272.6),
    "CAM_BACK": (180.0, (0.03, 0.003, 1.58), 809.2),
    "CAM_BACK_LEFT": (110.0, (1.04, 0.48, 1.56), 1256.7),
    "CAM_BACK_RIGHT": (-110.0, (1.04, -0.48, 1.56), 1259.5),
}
_LIDAR_MOUNT = (0.985, 0.0, 1.84)

LIDAR_PERIOD_US = 50_000  # 20 Hz
CAMERA_PERIOD_US = 83_333  # 12 Hz
SWEEPS_PER_KEYFRAME = 10  # 2 Hz keyframes
FRAMES_PER_KEYFRAME = 6
LIDAR_PREROLL = 9  # sweeps before the first keyframe, so the first sample has a full history
CAMERA_PREROLL = 5


def _rot_z(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _small_rotation(rng: np.random.Generator, deg: float) -> np.ndarray:
    rx, ry, rz = np.radians(rng.normal(0.0, deg, 3))
    return (
        Quaternion(axis=[1, 0, 0], angle=rx).rotation_matrix
        @ Quaternion(axis=[0, 1, 0], angle=ry).rotation_matrix
        @ Quaternion(axis=[0, 0, 1], angle=rz).rotation_matrix
    )


@dataclass(frozen=True)
class Calibration:
    """One sensor's mounting: sensor -> ego. `rotation` [w,x,y,z] and `rotation_matrix` agree
    exactly (the matrix is computed from the stored quaternion, as the devkit does)."""

    channel: str
    translation: np.ndarray  # [3] m, ego frame
    rotation: np.ndarray  # [4] quaternion w, x, y, z
    rotation_matrix: np.ndarray  # [3,3]
    intrinsic: np.ndarray | None  # [3,3] px, cameras only
    width: int
    height: int


def _calibration(
    channel: str, translation: np.ndarray, matrix: np.ndarray, intrinsic, w: int, h: int
) -> Calibration:
    q = Quaternion(matrix=matrix)
    if q.w < 0:
        q = -q
    rotation = np.array(q.elements)
    return Calibration(
        channel, translation, rotation, quaternion_to_matrix(rotation), intrinsic, w, h
    )


def make_rig(rng: np.random.Generator, image_size: tuple[int, int]) -> dict[str, Calibration]:
    """nuScenes-like calibration with small per-log mounting differences (mm, tenths of a deg).

    Intrinsics are the real ones scaled from 1600x900 to `image_size` (width, height).
    """
    width, height = image_size
    rig = {}
    # LiDAR: +y forward means a -90 deg yaw from the ego axes.
    lidar_t = np.array(_LIDAR_MOUNT) + rng.normal(0.0, 0.005, 3)
    rig[LIDAR] = _calibration(LIDAR, lidar_t, _rot_z(-90.0) @ _small_rotation(rng, 0.3), None, 0, 0)
    # Camera axes (x right, y down, z forward) expressed in ego axes for a forward camera.
    cam_to_ego = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    for channel in CAMERAS:
        yaw, position, focal = _CAMERA_MOUNTS[channel]
        t = np.array(position) + rng.normal(0.0, 0.005, 3)
        matrix = _rot_z(yaw) @ _small_rotation(rng, 0.3) @ cam_to_ego
        sx, sy = width / 1600.0, height / 900.0
        cx, cy = (829.0, 481.0) if channel == "CAM_BACK" else (816.0, 491.0)
        intrinsic = np.array([[focal * sx, 0.0, cx * sx], [0.0, focal * sy, cy * sy], [0, 0, 1.0]])
        rig[channel] = _calibration(channel, t, matrix, intrinsic, width, height)
    return rig


@dataclass(frozen=True)
class Frame:
    """One sample_data: which sensor, its index in its stream, when, and which keyframe.

    key: the keyframe index it is (or -1); sample: the keyframe sample it belongs to (the
    next keyframe for sweeps, as nuScenes' get_boxes expects).
    """

    channel: str
    index: int
    timestamp: int
    key: int
    sample: int


def schedule(
    rng: np.random.Generator, start_us: int, samples: int
) -> tuple[np.ndarray, dict[str, list[Frame]]]:
    """Timestamps of every sensor frame of a scene.

    Returns (keyframe timestamps [K] in us, frames per channel in time order). LiDAR runs at
    20 Hz with every 10th sweep a keyframe; cameras at 12 Hz with every 6th frame a keyframe,
    triggered when the spinning LiDAR passes their heading (a few tens of ms around it).
    """
    n_lidar = LIDAR_PREROLL + SWEEPS_PER_KEYFRAME * (samples - 1) + 1
    jitter = rng.integers(-150, 151, n_lidar)
    lidar_t = start_us + np.arange(n_lidar) * LIDAR_PERIOD_US + jitter
    key_idx = LIDAR_PREROLL + SWEEPS_PER_KEYFRAME * np.arange(samples)
    key_t = lidar_t[key_idx]
    frames: dict[str, list[Frame]] = {LIDAR: []}
    for i, t in enumerate(lidar_t):
        rel = i - LIDAR_PREROLL
        key = rel // SWEEPS_PER_KEYFRAME if rel >= 0 and rel % SWEEPS_PER_KEYFRAME == 0 else -1
        sample = max(0, -(-rel // SWEEPS_PER_KEYFRAME))  # ceil: sweeps belong to the next sample
        frames[LIDAR].append(Frame(LIDAR, i, int(t), int(key), int(sample)))
    for channel in CAMERAS:
        yaw = _CAMERA_MOUNTS[channel][0]
        # The LiDAR spins clockwise from the back; cameras fire as it sweeps past them.
        offset = int(((180.0 - yaw) % 360.0) / 360.0 * LIDAR_PERIOD_US) - LIDAR_PERIOD_US // 2
        cam_key = key_t + offset
        times = []
        for j in range(CAMERA_PREROLL, 0, -1):
            times.append(cam_key[0] - j * CAMERA_PERIOD_US)
        for k in range(samples):
            times.append(cam_key[k])
            if k + 1 < samples:
                step = (cam_key[k + 1] - cam_key[k]) / FRAMES_PER_KEYFRAME
                times.extend(
                    int(round(cam_key[k] + m * step)) for m in range(1, FRAMES_PER_KEYFRAME)
                )
        frames[channel] = []
        for j, t in enumerate(times):
            rel = j - CAMERA_PREROLL
            key = rel // FRAMES_PER_KEYFRAME if rel >= 0 and rel % FRAMES_PER_KEYFRAME == 0 else -1
            sample = max(0, -(-rel // FRAMES_PER_KEYFRAME))
            frames[channel].append(Frame(channel, j, int(t), int(key), int(sample)))
    return key_t, frames
