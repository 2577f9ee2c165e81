"""Writing a synthetic world in the nuScenes on-disk format (tables, LiDAR sweeps, images, map).

Layout on disk (as nuScenes): DIR/<version>/<table>.json for the 13 tables,
DIR/samples/<CHANNEL>/<log>__<CHANNEL>__<timestamp>.{pcd.bin,jpg} for keyframes,
DIR/sweeps/<CHANNEL>/... for the frames in between, DIR/maps/<token>.png.
DIR/synth_world_<version>.json (`SIDECAR_FORMAT`) records the arguments, the class weights and
the instances and annotations per class of each split.
Every token is a 32-hex digest of (seed, table, key); the same seed and arguments give
byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from perception.datasets.checks import TABLES as NUSCENES_TABLES
from perception.datasets.sensors import quaternion_to_matrix, yaw_to_quaternion
from perception.datasets.synth.camera import CameraRenderer
from perception.datasets.synth.catalog import (
    ATTRIBUTES,
    CATEGORIES,
    DETECTION_CLASSES,
    VISIBILITIES,
)
from perception.datasets.synth.class_weights import thin_layout, validate_class_weights
from perception.datasets.synth.layout import Prisms, SceneLayout, make_layout
from perception.datasets.synth.lidar import cast
from perception.datasets.synth.sensors import (
    CAMERAS,
    LIDAR,
    Calibration,
    Frame,
    make_rig,
    schedule,
)

VERSIONS = ("v1.0-mini", "v1.0-trainval")
TABLES = NUSCENES_TABLES  # written in this order
ANNOTATION_RANGE = 70.0  # m from the ego (xy); objects farther away are not annotated
DEFAULT_IMAGE_SIZE = (800, 450)
DEFAULT_SAMPLES_PER_SCENE = 10
_LOCATIONS = (
    "singapore-onenorth",
    "boston-seaport",
    "singapore-queenstown",
    "singapore-hollandvillage",
)
_VEHICLES = {"car", "truck", "bus", "trailer", "construction_vehicle"}
SIDECAR_FORMAT = 1  # format version of DIR/synth_world_<version>.json
_THINNING_STREAM = 4  # the random stream of a scene's class-weight draws (see _rng)


def make_token(seed: int, table: str, *key: object) -> str:
    """Deterministic 32-hex token for row `key` of `table` in the world made with `seed`."""
    text = "|".join([str(seed), table, *map(str, key)])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class SplitCounts:
    """Instances (annotated objects) and annotations per detection class of one split's scenes."""

    scenes: int
    instances_per_class: Mapping[str, int]
    annotations_per_class: Mapping[str, int]


@dataclass(frozen=True)
class WorldSummary:
    """What `generate_world` wrote. Counts are over the whole world, `splits` per split (devkit
    names: 'mini_train'/'mini_val' or 'train'/'val'); class_weights: the weights applied to the
    training scenes (None: the normal mix everywhere); seconds is wall time."""

    out_dir: Path
    version: str
    scenes: int
    samples: int
    lidar_sweeps: int  # all LIDAR_TOP sample_data, keyframes included
    images: int  # all camera sample_data, keyframes included
    instances: int
    annotations: int
    annotations_per_class: Mapping[str, int]
    seconds: float
    splits: Mapping[str, SplitCounts] = field(default_factory=dict)
    class_weights: Mapping[str, float] | None = None
    sidecar: Path | None = None


@dataclass(frozen=True)
class _SceneJob:
    seed: int
    index: int
    name: str
    location: str
    start_us: int
    samples: int
    image_size: tuple[int, int]
    out_dir: str
    split: str  # the devkit's split name of this scene
    class_weights: tuple[tuple[str, float], ...] = ()  # () : the normal mix


# ---------------------------------------------------------------------------------------------
# Scene names and argument checks
# ---------------------------------------------------------------------------------------------
def scene_names(version: str, scenes: int, val_scenes: int | None) -> list[str]:
    """Names of the generated scenes, val scenes first, so the devkit's splits apply."""
    return [name for name, _ in _scene_splits(version, scenes, val_scenes)]


def _split_names(version: str) -> tuple[str, str]:
    """(train, val) split names of the devkit for `version`."""
    return ("mini_train", "mini_val") if version == "v1.0-mini" else ("train", "val")


def _scene_splits(version: str, scenes: int, val_scenes: int | None) -> list[tuple[str, str]]:
    """(name, split) of each generated scene, val scenes first."""
    from nuscenes.utils import splits  # the devkit's own split lists

    if version not in VERSIONS:
        raise ValueError(f"version must be one of {', '.join(VERSIONS)}; got {version!r}")
    if scenes < 1:
        raise ValueError(f"need at least 1 scene; asked for {scenes}")
    if version == "v1.0-mini":
        train, val = list(splits.mini_train), list(splits.mini_val)
        train_name, val_name = "mini_train", "mini_val"
        default_val = 2 if scenes >= 3 else 1
    else:
        train, val = list(splits.train), list(splits.val)
        train_name, val_name = "train", "val"
        default_val = max(1, round(0.2 * scenes))
    if scenes > len(train) + len(val):
        raise ValueError(
            f"{version} has {len(train) + len(val)} scene names ({train_name} {len(train)} + "
            f"{val_name} {len(val)}); asked for {scenes}"
        )
    n_val = default_val if val_scenes is None else val_scenes
    if not 0 <= n_val <= min(scenes, len(val)):
        raise ValueError(
            f"val scenes must be between 0 and {min(scenes, len(val))} for {version} with "
            f"{scenes} scenes ({val_name} has {len(val)} names); got {n_val}"
        )
    if scenes - n_val > len(train):
        raise ValueError(
            f"{version} has {len(train)} {train_name} scene names; {scenes} scenes with "
            f"{n_val} val scenes need {scenes - n_val}"
        )
    return [(n, val_name) for n in val[:n_val]] + [(n, train_name) for n in train[: scenes - n_val]]


# ---------------------------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------------------------
def _yaw_quaternion(yaw: float) -> list[float]:
    """`[w, x, y, z]` of `yaw` wrapped to (-pi, pi] (so w >= 0), as a JSON table stores it."""
    return list(yaw_to_quaternion(math.atan2(math.sin(yaw), math.cos(yaw))))


def _points_in_boxes_count(
    points: np.ndarray,
    cs: Calibration,
    pose_rotation: list[float],
    pose_translation: list[float],
    boxes: list[tuple[list[float], list[float], list[float]]],
) -> list[int]:
    """num_lidar_pts exactly as the devkit counts it: the float32 cloud taken lidar -> ego ->
    global with LidarPointCloud.rotate/translate, then `points_in_box` per (centre, wlh, q)."""
    pc = np.ascontiguousarray(points[:, :4].T)  # [4, N] float32, as LidarPointCloud.points
    pc[:3, :] = np.dot(quaternion_to_matrix(cs.rotation.tolist()), pc[:3, :])
    translation = np.array(cs.translation.tolist())
    for i in range(3):
        pc[i, :] = pc[i, :] + translation[i]
    pc[:3, :] = np.dot(quaternion_to_matrix(pose_rotation), pc[:3, :])
    translation = np.array(pose_translation)
    for i in range(3):
        pc[i, :] = pc[i, :] + translation[i]
    xyz = pc[:3]
    counts = []
    for centre, wlh, rotation in boxes:
        w, l, h = np.array(wlh)
        corners = np.vstack(
            (
                l / 2 * np.array([1, 1, 1, 1, -1, -1, -1, -1]),
                w / 2 * np.array([1, -1, -1, 1, 1, -1, -1, 1]),
                h / 2 * np.array([1, 1, -1, -1, 1, 1, -1, -1]),
            )
        )
        corners = np.dot(quaternion_to_matrix(rotation), corners)
        x, y, z = np.array(centre)
        corners[0, :] = corners[0, :] + x
        corners[1, :] = corners[1, :] + y
        corners[2, :] = corners[2, :] + z
        # Only points near the box can be in it; the test below is the devkit's, verbatim.
        reach = 0.5 * float(np.linalg.norm([w, l, h])) + 0.05
        near = np.flatnonzero((np.abs(xyz[0] - x) <= reach) & (np.abs(xyz[1] - y) <= reach))
        p1, p_x, p_y, p_z = corners[:, 0], corners[:, 4], corners[:, 1], corners[:, 3]
        i, j, k = p_x - p1, p_y - p1, p_z - p1
        v = xyz[:, near] - p1.reshape((-1, 1))
        iv, jv, kv = np.dot(i, v), np.dot(j, v), np.dot(k, v)
        mask = (
            (0 <= iv) & (iv <= np.dot(i, i)) & (0 <= jv) & (jv <= np.dot(j, j))
            & (0 <= kv) & (kv <= np.dot(k, k))
        )  # fmt: skip
        counts.append(int(mask.sum()))
    return counts


def _attribute(detection: str, kind: str, speed: float) -> str | None:
    if detection in _VEHICLES:
        if kind == "parked":
            return "vehicle.parked"
        return "vehicle.moving" if speed > 0.3 else "vehicle.stopped"
    if detection == "pedestrian":
        if kind == "sitting":
            return "pedestrian.sitting_lying_down"
        return "pedestrian.moving" if speed > 0.2 else "pedestrian.standing"
    if detection in ("bicycle", "motorcycle"):
        return "cycle.without_rider" if kind == "parked_cycle" else "cycle.with_rider"
    return None


def _visibility(visible: int, total: int) -> str:
    """nuScenes visibility bin ('1'..'4') from the share of the object's rays that reach it."""
    share = visible / total if total > 0 else 0.0
    return "1" if share < 0.4 else "2" if share < 0.6 else "3" if share < 0.8 else "4"


# ---------------------------------------------------------------------------------------------
# One scene
# ---------------------------------------------------------------------------------------------
def _log_name(location: str, start_us: int) -> tuple[str, str, str]:
    """(log name, vehicle, date) in nuScenes style, local time of the location."""
    boston = location.startswith("boston")
    tz = timezone(timedelta(hours=-4 if boston else 8))
    when = datetime.fromtimestamp(start_us / 1e6, tz=tz)
    vehicle = "n008" if boston else "n015"
    suffix = "-0400" if boston else "+0800"
    return f"{vehicle}-{when:%Y-%m-%d-%H-%M-%S}{suffix}", vehicle, f"{when:%Y-%m-%d}"


@dataclass(frozen=True)
class SceneWorld:
    """The simulated truth behind one written scene (for tests and tools).

    key_us [K]: keyframe timestamps (us); t0_us: scene time origin (the first sweep), so a
    timestamp ts is at t = (ts - t0_us) / 1e6 s in `layout`; frames: per channel, in time order;
    object_tokens: instance token of each layout object (annotated or not).
    """

    key_us: np.ndarray
    t0_us: int
    frames: dict[str, list[Frame]]
    layout: SceneLayout
    rig: dict[str, Calibration]
    object_tokens: list[str]


def _rng(job: _SceneJob, stream: int) -> np.random.Generator:
    return np.random.default_rng([job.seed, job.index, stream])


def _scene_world(job: _SceneJob) -> SceneWorld:
    key_us, frames = schedule(_rng(job, 1), job.start_us, job.samples)
    t0_us = frames[LIDAR][0].timestamp
    last_us = max(f.timestamp for fs in frames.values() for f in fs)
    layout = make_layout(
        _rng(job, 2),
        key_times=(key_us - t0_us) / 1e6,
        duration=(last_us - t0_us) / 1e6,
        location=job.location,
    )
    if job.class_weights:
        layout = thin_layout(layout, dict(job.class_weights), _rng(job, _THINNING_STREAM))
    rig = make_rig(_rng(job, 3), job.image_size)
    tokens = [make_token(job.seed, "instance", job.name, i) for i in range(len(layout.objects))]
    return SceneWorld(key_us, t0_us, frames, layout, rig, tokens)


def scene_truth(
    *,
    version: str = "v1.0-mini",
    scenes: int,
    samples_per_scene: int,
    seed: int,
    val_scenes: int | None = None,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    class_weights: Mapping[str, float] | None = None,
) -> dict[str, SceneWorld]:
    """Rebuild, without rendering anything, the simulated truth of every scene (by scene name)
    of the world `generate_world` writes with the same arguments."""
    weights = None if class_weights is None else validate_class_weights(class_weights)
    jobs = _jobs(version, scenes, samples_per_scene, seed, val_scenes, image_size, "", weights)
    return {job.name: _scene_world(job) for job in jobs}


def _jobs(
    version: str,
    scenes: int,
    samples_per_scene: int,
    seed: int,
    val_scenes: int | None,
    image_size: tuple[int, int],
    out_dir: str,
    class_weights: Mapping[str, float] | None = None,
) -> list[_SceneJob]:
    """One job per scene; class_weights (validated) apply to the training scenes only."""
    train_split = _split_names(version)[0]
    weights = () if class_weights is None else tuple(class_weights.items())
    return [
        _SceneJob(
            seed=seed,
            index=i,
            name=name,
            location=_LOCATIONS[int(np.random.default_rng([seed, i, 0]).integers(len(_LOCATIONS)))],
            start_us=1_532_000_000_000_000 + i * 5_000_000_000 + (seed % 997) * 20_000_000,
            samples=samples_per_scene,
            image_size=(int(image_size[0]), int(image_size[1])),
            out_dir=out_dir,
            split=split,
            class_weights=weights if split == train_split else (),
        )
        for i, (name, split) in enumerate(_scene_splits(version, scenes, val_scenes))
    ]


def _generate_scene(job: _SceneJob) -> dict[str, Any]:
    """Generate, render and write one scene; returns its table rows and counts."""
    if multiprocessing.parent_process() is not None:
        cv2.setNumThreads(1)  # one scene per core; cv2's own threads would fight the pool
    seed, name = job.seed, job.name

    def rng(stream: int) -> np.random.Generator:
        return _rng(job, stream)

    world = _scene_world(job)
    key_us, frames, t0_us, layout, rig = (
        world.key_us,
        world.frames,
        world.t0_us,
        world.layout,
        world.rig,
    )
    log_name, vehicle, date = _log_name(job.location, job.start_us)
    out = Path(job.out_dir)
    rows: dict[str, list[dict]] = {t: [] for t in ("calibrated_sensor", "ego_pose", "sample_data")}
    rows["log"] = [
        {
            "token": make_token(seed, "log", name),
            "logfile": log_name,
            "vehicle": vehicle,
            "date_captured": date,
            "location": job.location,
        }
    ]
    sample_tokens = [make_token(seed, "sample", name, k) for k in range(job.samples)]
    rows["sample"] = [
        {
            "token": sample_tokens[k],
            "timestamp": int(key_us[k]),
            "prev": sample_tokens[k - 1] if k > 0 else "",
            "next": sample_tokens[k + 1] if k + 1 < job.samples else "",
            "scene_token": make_token(seed, "scene", name),
        }
        for k in range(job.samples)
    ]
    rows["scene"] = [
        {
            "token": make_token(seed, "scene", name),
            "log_token": rows["log"][0]["token"],
            "nbr_samples": job.samples,
            "first_sample_token": sample_tokens[0],
            "last_sample_token": sample_tokens[-1],
            "name": name,
            "description": layout.description,
        }
    ]
    for channel, calib in rig.items():
        rows["calibrated_sensor"].append(
            {
                "token": make_token(seed, "calibrated_sensor", name, channel),
                "sensor_token": make_token(seed, "sensor", channel),
                "translation": calib.translation.tolist(),
                "rotation": calib.rotation.tolist(),
                "camera_intrinsic": [] if calib.intrinsic is None else calib.intrinsic.tolist(),
            }
        )

    objects = layout.objects
    n_obj = len(objects)
    renderers = {ch: CameraRenderer(rig[ch], layout, rng(10 + i)) for i, ch in enumerate(CAMERAS)}
    keyframe_sweeps: dict[int, tuple[np.ndarray, Any, list[float], list[float]]] = {}
    for stream, (channel, channel_frames) in enumerate(frames.items()):
        calib = rig[channel]
        frame_rng = rng(100 + stream)
        sd_tokens = [
            make_token(seed, "sample_data", name, channel, f.index) for f in channel_frames
        ]
        for f in channel_frames:
            t = (f.timestamp - t0_us) / 1e6
            ego_xy, ego_yaw, _ = layout.ego.state(layout.road, t)
            pose_translation = [float(ego_xy[0, 0]), float(ego_xy[0, 1]), 0.0]
            pose_rotation = _yaw_quaternion(float(ego_yaw[0]))
            ego_rot = quaternion_to_matrix(pose_rotation)
            sensor_to_global = ego_rot @ calib.rotation_matrix
            origin = np.array(pose_translation) + ego_rot @ calib.translation
            prisms = Prisms.concat([objects.prisms(layout.road, t), layout.clutter])
            folder = "samples" if f.key >= 0 else "sweeps"
            ext = "pcd.bin" if channel == LIDAR else "jpg"
            filename = f"{folder}/{channel}/{log_name}__{channel}__{f.timestamp}.{ext}"
            if channel == LIDAR:
                sweep = cast(prisms, layout.ground, origin, sensor_to_global, n_obj, frame_rng)
                sweep.points.tofile(out / filename)
                if f.key >= 0:
                    keyframe_sweeps[f.key] = (sweep.points, sweep, pose_rotation, pose_translation)
            else:
                image = renderers[channel].render(sensor_to_global, origin, prisms, frame_rng)
                ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
                assert ok, "JPEG encoding failed"
                (out / filename).write_bytes(jpg.tobytes())
            pose_token = make_token(seed, "ego_pose", name, channel, f.index)
            rows["ego_pose"].append(
                {
                    "token": pose_token,
                    "timestamp": f.timestamp,
                    "rotation": pose_rotation,
                    "translation": pose_translation,
                }
            )
            rows["sample_data"].append(
                {
                    "token": sd_tokens[f.index],
                    "sample_token": sample_tokens[f.sample],
                    "ego_pose_token": pose_token,
                    "calibrated_sensor_token": make_token(seed, "calibrated_sensor", name, channel),
                    "timestamp": f.timestamp,
                    "fileformat": "pcd" if channel == LIDAR else "jpg",
                    "is_key_frame": f.key >= 0,
                    "height": calib.height,
                    "width": calib.width,
                    "filename": filename,
                    "prev": sd_tokens[f.index - 1] if f.index > 0 else "",
                    "next": sd_tokens[f.index + 1] if f.index + 1 < len(channel_frames) else "",
                }
            )

    # Annotations: keyframes only; an object is annotated from the first to the last keyframe
    # at which it is within ANNOTATION_RANGE of the ego (a contiguous track, as in nuScenes).
    key_t = (key_us - t0_us) / 1e6
    states = [objects.boxes(layout.road, float(t)) for t in key_t]
    ego_xy = [layout.ego.state(layout.road, float(t))[0][0] for t in key_t]
    near = np.array(
        [
            np.hypot(*(states[k][0][:, :2] - ego_xy[k]).T) <= ANNOTATION_RANGE
            for k in range(len(key_t))
        ]
    )  # [K, N]
    spans: dict[int, tuple[int, int]] = {}
    for obj in range(n_obj):
        ks = np.flatnonzero(near[:, obj])
        if len(ks):
            spans[obj] = (int(ks[0]), int(ks[-1]))
    ann_rows: list[dict] = []
    per_key_boxes: dict[int, list[tuple[int, list[float], list[float], list[float]]]] = {}
    for obj, (k0, k1) in spans.items():
        for k in range(k0, k1 + 1):
            centre, yaw, _ = states[k]
            box = (
                centre[obj].tolist(),
                objects.wlh[obj].tolist(),
                _yaw_quaternion(float(yaw[obj])),
            )
            per_key_boxes.setdefault(k, []).append((obj, *box))
    counts: dict[tuple[int, int], int] = {}
    for k, entries in per_key_boxes.items():
        points, sweep, pose_rotation, pose_translation = keyframe_sweeps[k]
        n_pts = _points_in_boxes_count(
            points, rig[LIDAR], pose_rotation, pose_translation, [e[1:] for e in entries]
        )
        for (obj, *_), n in zip(entries, n_pts):
            counts[(obj, k)] = n
    instance_rows = []
    category_token = {name_: make_token(seed, "category", name_) for name_, _ in CATEGORIES}
    attribute_token = {name_: make_token(seed, "attribute", name_) for name_, _ in ATTRIBUTES}
    for obj, (k0, k1) in spans.items():
        tokens = [make_token(seed, "sample_annotation", name, obj, k) for k in range(k0, k1 + 1)]
        for n, k in enumerate(range(k0, k1 + 1)):
            centre, yaw, velocity = states[k]
            sweep = keyframe_sweeps[k][1]
            attribute = _attribute(
                objects.detection[obj], objects.kind[obj], float(np.hypot(*velocity[obj]))
            )
            ann_rows.append(
                {
                    "token": tokens[n],
                    "sample_token": sample_tokens[k],
                    "instance_token": world.object_tokens[obj],
                    "visibility_token": _visibility(
                        int(sweep.hits_visible[obj]), int(sweep.hits_total[obj])
                    ),
                    "attribute_tokens": [] if attribute is None else [attribute_token[attribute]],
                    "translation": centre[obj].tolist(),
                    "size": objects.wlh[obj].tolist(),
                    "rotation": _yaw_quaternion(float(yaw[obj])),
                    "prev": tokens[n - 1] if n > 0 else "",
                    "next": tokens[n + 1] if n + 1 < len(tokens) else "",
                    "num_lidar_pts": counts[(obj, k)],
                    "num_radar_pts": 0,
                }
            )
        instance_rows.append(
            {
                "token": world.object_tokens[obj],
                "category_token": category_token[objects.category[obj]],
                "nbr_annotations": len(tokens),
                "first_annotation_token": tokens[0],
                "last_annotation_token": tokens[-1],
            }
        )
    rows["sample_annotation"] = ann_rows
    rows["instance"] = instance_rows
    per_class = Counter(objects.detection[int(obj)] for obj, _ in counts)
    instances = Counter(objects.detection[obj] for obj in spans)
    return {"rows": rows, "per_class": dict(per_class), "instances_per_class": dict(instances)}


# ---------------------------------------------------------------------------------------------
# The world
# ---------------------------------------------------------------------------------------------
def _static_tables(seed: int, log_tokens: list[str], map_token: str) -> dict[str, list[dict]]:
    return {
        "category": [
            {"token": make_token(seed, "category", n), "name": n, "description": d}
            for n, d in CATEGORIES
        ],
        "attribute": [
            {"token": make_token(seed, "attribute", n), "name": n, "description": d}
            for n, d in ATTRIBUTES
        ],
        "visibility": [{"token": t, "level": lv, "description": d} for t, lv, d in VISIBILITIES],
        "sensor": [
            {
                "token": make_token(seed, "sensor", ch),
                "channel": ch,
                "modality": "lidar" if ch == LIDAR else "camera",
            }
            for ch in (LIDAR, *CAMERAS)
        ],
        "map": [
            {
                "token": map_token,
                "log_tokens": log_tokens,
                "category": "semantic_prior",
                "filename": f"maps/{map_token}.png",
            }
        ],
    }


def generate_world(
    out_dir: str | os.PathLike,
    *,
    version: str = "v1.0-mini",
    scenes: int = 10,
    samples_per_scene: int = DEFAULT_SAMPLES_PER_SCENE,
    seed: int = 0,
    val_scenes: int | None = None,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
    class_weights: Mapping[str, float] | None = None,
) -> WorldSummary:
    """Generate a synthetic world in nuScenes format under `out_dir` (see the module docstring).

    version: 'v1.0-mini' (scene names from mini_val then mini_train) or 'v1.0-trainval'
    (from val then train); val_scenes: how many of the scenes take val names (default 2 for
    mini with >= 3 scenes else 1; 20% for trainval); image_size: (width, height) in px;
    workers: processes, one scene each (default os.cpu_count()); the output does not depend
    on it. overwrite: replace an existing world of this version in out_dir.
    class_weights: {detection class: share of its instances the training scenes keep, in
    [0, 1]} (see `class_weights`; unlisted classes 1); val scenes keep the normal mix. None:
    the normal mix everywhere (the world is then the same as before the option existed).
    """
    start = time.perf_counter()
    scene_names(version, scenes, val_scenes)  # argument errors first, before touching disk
    weights = None if class_weights is None else validate_class_weights(class_weights)
    if samples_per_scene < 2:
        raise ValueError(f"samples per scene must be at least 2; got {samples_per_scene}")
    width, height = (int(x) for x in image_size)
    if width < 16 or height < 16:
        raise ValueError(f"image size must be at least 16x16 px; got {width}x{height}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1; got {workers}")
    root = Path(out_dir)
    if (root / version).exists():
        if not overwrite:
            raise FileExistsError(f"{root / version} exists; pass overwrite=True to replace it")
        for sub in (version, "samples", "sweeps", "maps"):
            shutil.rmtree(root / sub, ignore_errors=True)
        (root / f"synth_world_{version}.json").unlink(missing_ok=True)
    for folder in ("samples", "sweeps"):
        for channel in (LIDAR, *CAMERAS):
            (root / folder / channel).mkdir(parents=True, exist_ok=True)
    (root / "maps").mkdir(parents=True, exist_ok=True)
    (root / version).mkdir(parents=True, exist_ok=True)

    jobs = _jobs(
        version, scenes, samples_per_scene, seed, val_scenes, (width, height), str(root), weights
    )
    bar = tqdm(total=len(jobs), desc="scenes", unit="scene", disable=not progress)
    if workers == 1 or len(jobs) == 1:
        results = []
        for job in jobs:
            results.append(_generate_scene(job))
            bar.update()
    else:
        context = multiprocessing.get_context("spawn")  # safe whatever the parent imported
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
            results = []
            for result in pool.map(_generate_scene, jobs):
                results.append(result)
                bar.update()
    bar.close()

    log_tokens = [make_token(seed, "log", job.name) for job in jobs]
    map_token = make_token(seed, "map", 0)
    tables = _static_tables(seed, log_tokens, map_token)
    for table in TABLES:
        if table not in tables:
            tables[table] = [row for r in results for row in r["rows"][table]]
    for table in TABLES:
        with open(root / version / f"{table}.json", "w") as f:
            json.dump(tables[table], f, indent=0)
    # The devkit only needs the map file to exist; an empty (all background) semantic prior.
    ok, png = cv2.imencode(".png", np.zeros((100, 100), np.uint8))
    assert ok
    (root / "maps" / f"{map_token}.png").write_bytes(png.tobytes())

    per_class: Counter[str] = Counter()
    for r in results:
        per_class.update(r["per_class"])
    splits = {}
    for split in sorted({job.split for job in jobs}, key=_split_names(version).index):
        split_results = [r for job, r in zip(jobs, results) if job.split == split]
        instances, annotations = Counter(), Counter()
        for r in split_results:
            instances.update(r["instances_per_class"])
            annotations.update(r["per_class"])
        splits[split] = SplitCounts(
            scenes=len(split_results),
            instances_per_class={c: instances.get(c, 0) for c in DETECTION_CLASSES},
            annotations_per_class={c: annotations.get(c, 0) for c in DETECTION_CLASSES},
        )
    sidecar = root / f"synth_world_{version}.json"
    record = {
        "format_version": SIDECAR_FORMAT,
        "generator": "perception.datasets.synth.generate_world",
        "version": version,
        "seed": seed,
        "scenes": len(jobs),
        "samples_per_scene": samples_per_scene,
        "image_size": [width, height],
        "class_weights": weights,
        "class_weights_apply_to": _split_names(version)[0],
        "splits": {name: dataclasses.asdict(counts) for name, counts in splits.items()},
    }
    sidecar.write_text(json.dumps(record, indent=1) + "\n")
    return WorldSummary(
        out_dir=root,
        version=version,
        scenes=len(jobs),
        samples=len(tables["sample"]),
        lidar_sweeps=sum(1 for sd in tables["sample_data"] if sd["fileformat"] == "pcd"),
        images=sum(1 for sd in tables["sample_data"] if sd["fileformat"] == "jpg"),
        instances=len(tables["instance"]),
        annotations=len(tables["sample_annotation"]),
        annotations_per_class={c: per_class.get(c, 0) for c in DETECTION_CLASSES},
        seconds=time.perf_counter() - start,
        splits=splits,
        class_weights=weights,
        sidecar=sidecar,
    )
