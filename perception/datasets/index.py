"""The dataset index: everything the reader needs per keyframe, built once from a nuScenes
dataroot with the devkit and stored as versioned, gzipped JSON (never pickle).

All geometry is expressed relative to each keyframe's LiDAR frame (docs/frames.md): sweeps as
`sweep_to_lidar`, camera frames as `camera_to_lidar`, boxes as (x, y, z, w, l, h, yaw, vx, vy).
The index remembers a fingerprint of the tables it came from and refuses to serve a dataroot
whose tables changed, or one it was not built from.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..structures.classes import CAMERA_NAMES, CLASS_NAMES
from .checks import TABLES, check_tables, reference_problems
from .sensors import pose_matrix

INDEX_FORMAT_VERSION = 1
INDEX_KIND = "perception.nuscenes-index"


class IndexFileError(ValueError):
    """An index file that is stale, foreign, from another format version, or unreadable."""


def default_index_path(root: str | Path, version: str) -> Path:
    return Path(root) / f"perception_index_{version}.json.gz"


def tables_fingerprint(root: str | Path, version: str) -> str:
    """sha256 over the scene, sample, sample_data and sample_annotation tables' bytes."""
    digest = hashlib.sha256(version.encode())
    for table in ("scene", "sample", "sample_data", "sample_annotation"):
        path = Path(root) / version / f"{table}.json"
        try:
            digest.update(path.read_bytes())
        except FileNotFoundError:
            raise IndexFileError(f"{path}: table is missing") from None
    return digest.hexdigest()


def _flat(m: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(m).reshape(-1)]


@dataclass(frozen=True)
class Index:
    """A loaded index: `samples` are per-keyframe records (see `build_index`)."""

    root: Path
    version: str
    max_sweeps: int
    max_clip_frames: int
    samples: list[dict[str, Any]]
    fingerprint: str

    def scene_samples(self, scene_names: set[str] | None) -> list[dict[str, Any]]:
        if scene_names is None:
            return list(self.samples)
        return [s for s in self.samples if s["scene_name"] in scene_names]


def build_index(
    root: str | Path,
    version: str,
    *,
    out: str | Path | None = None,
    max_sweeps: int = 10,
    max_clip_frames: int = 6,
    progress: bool = True,
) -> Path:
    """Builds the index of every keyframe in `root`/`version` and writes it to `out`
    (default `<root>/perception_index_<version>.json.gz`). Returns the path.

    Per keyframe: the LiDAR file and its calibration; up to `max_sweeps - 1` earlier sweeps
    (newest first) with `sweep_to_lidar` and time lag; per camera the intrinsics and up to
    `max_clip_frames` frames (the keyframe first, then earlier ones) with `camera_to_lidar`;
    GT boxes of the ten detection classes in the LiDAR frame with velocity, attribute, point
    count and distance to the ego (what the official evaluation filters on).
    """
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.nuscenes import NuScenes
    from tqdm import tqdm

    root = Path(root)
    hint = f"Run `python tools/create_data.py check --root {root} --version {version}`."
    try:
        nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    except (AssertionError, FileNotFoundError, KeyError, json.JSONDecodeError) as exc:
        # The devkit's own message (a bare KeyError: '<token>') names no table or record.
        problems = check_tables(root, version) if isinstance(exc, KeyError) else []
        detail = "; ".join(str(p) for p in problems) if problems else repr(exc)
        raise IndexFileError(
            f"{root}: the nuScenes devkit cannot load version {version!r}: {detail}. {hint}"
        ) from None
    # Token fields the devkit does not follow while loading (attributes, visibility, next/prev)
    # would otherwise fail half-way through as a bare KeyError.
    problems = reference_problems({name: getattr(nusc, name) for name in TABLES}, root / version)
    if problems:
        raise IndexFileError(
            f"{root}: {len(problems)} broken reference(s): "
            + "; ".join(str(p) for p in problems)
            + f". {hint}"
        )
    samples = []
    for sample in tqdm(nusc.sample, desc="index", unit="sample", disable=not progress):
        scene = nusc.get("scene", sample["scene_token"])
        if "LIDAR_TOP" not in sample["data"]:
            raise IndexFileError(
                f"{root / version / 'sample.json'}: sample {sample['token']} has no LIDAR_TOP "
                f"keyframe in sample_data.json. {hint}"
            )
        lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        lidar_cs = nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
        lidar_pose = nusc.get("ego_pose", lidar_sd["ego_pose_token"])
        lidar_to_ego = pose_matrix(lidar_cs["translation"], lidar_cs["rotation"])
        ego_to_global = pose_matrix(lidar_pose["translation"], lidar_pose["rotation"])
        global_to_lidar = np.linalg.inv(ego_to_global @ lidar_to_ego)
        key_time = lidar_sd["timestamp"]

        def to_key_lidar(sd: dict, global_to_lidar: np.ndarray = global_to_lidar) -> np.ndarray:
            """4x4 from the sensor frame of sample_data `sd` to this keyframe's LiDAR frame."""
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            pose = nusc.get("ego_pose", sd["ego_pose_token"])
            sensor_to_global = pose_matrix(pose["translation"], pose["rotation"]) @ pose_matrix(
                cs["translation"], cs["rotation"]
            )
            return global_to_lidar @ sensor_to_global

        sweeps = []
        sd = lidar_sd
        while len(sweeps) < max_sweeps - 1 and sd["prev"]:
            sd = nusc.get("sample_data", sd["prev"])
            sweeps.append(
                {
                    "path": sd["filename"],
                    "sweep_to_lidar": _flat(to_key_lidar(sd)),
                    "time_lag": (key_time - sd["timestamp"]) * 1e-6,
                }
            )

        cameras = {}
        for channel in CAMERA_NAMES:
            if channel not in sample["data"]:
                continue
            cam_sd = nusc.get("sample_data", sample["data"][channel])
            cam_cs = nusc.get("calibrated_sensor", cam_sd["calibrated_sensor_token"])
            frames = []
            sd = cam_sd
            while True:
                frames.append(
                    {
                        "path": sd["filename"],
                        "camera_to_lidar": _flat(to_key_lidar(sd)),
                        "time_lag": (key_time - sd["timestamp"]) * 1e-6,
                    }
                )
                if len(frames) >= max_clip_frames or not sd["prev"]:
                    break
                sd = nusc.get("sample_data", sd["prev"])
            cameras[channel] = {
                "intrinsics": _flat(np.asarray(cam_cs["camera_intrinsic"])),
                "size": [cam_sd["width"], cam_sd["height"]],
                "frames": frames,
            }

        boxes, labels, attributes, num_points, ego_dist, ann_tokens = [], [], [], [], [], []
        global_to_lidar_rot = global_to_lidar[:3, :3]
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            name = category_to_detection_name(ann["category_name"])
            if name is None:
                continue
            ann_to_global = pose_matrix(ann["translation"], ann["rotation"])
            ann_to_lidar = global_to_lidar @ ann_to_global
            heading = ann_to_lidar[:3, 0]
            velocity = nusc.box_velocity(ann_token)  # global frame, NaN when unknown
            velocity_lidar = global_to_lidar_rot @ np.nan_to_num(velocity, nan=0.0)
            if np.isnan(velocity).any():
                velocity_lidar[:] = math.nan
            w, l, h = ann["size"]
            boxes.append(
                [
                    *ann_to_lidar[:3, 3],
                    w,
                    l,
                    h,
                    math.atan2(heading[1], heading[0]),
                    float(velocity_lidar[0]),
                    float(velocity_lidar[1]),
                ]
            )
            labels.append(name)
            attr_tokens = ann["attribute_tokens"]
            attributes.append(nusc.get("attribute", attr_tokens[0])["name"] if attr_tokens else "")
            num_points.append(int(ann["num_lidar_pts"]) + int(ann["num_radar_pts"]))
            offset = np.asarray(ann["translation"][:2]) - np.asarray(lidar_pose["translation"][:2])
            ego_dist.append(float(np.linalg.norm(offset)))
            ann_tokens.append(ann_token)

        samples.append(
            {
                "token": sample["token"],
                "scene_name": scene["name"],
                "timestamp": key_time,
                "lidar": {
                    "path": lidar_sd["filename"],
                    "lidar_to_ego": _flat(lidar_to_ego),
                    "ego_to_global": _flat(ego_to_global),
                },
                "sweeps": sweeps,
                "cameras": cameras,
                "gt": {
                    "boxes": boxes,
                    "labels": labels,
                    "attributes": attributes,
                    "num_points": num_points,
                    "ego_dist": ego_dist,
                    "ann_tokens": ann_tokens,
                },
            }
        )
    samples.sort(key=lambda s: (s["scene_name"], s["timestamp"]))
    payload = {
        "kind": INDEX_KIND,
        "format_version": INDEX_FORMAT_VERSION,
        "version": version,
        "fingerprint": tables_fingerprint(root, version),
        "max_sweeps": max_sweeps,
        "max_clip_frames": max_clip_frames,
        "classes": list(CLASS_NAMES),
        "samples": samples,
    }
    out = Path(out) if out is not None else default_index_path(root, version)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    # NaN velocities are written as JSON NaN literals, which Python's json reads back.
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        json.dump(payload, f, separators=(",", ":"))
    tmp.replace(out)
    return out


def load_index(
    path: str | Path, root: str | Path, version: str, *, check_fingerprint: bool = True
) -> Index:
    """Loads an index and checks that it belongs to `root`/`version` and is up to date."""
    path = Path(path)
    hint = f"rebuild it: python tools/create_data.py nuscenes --root {root} --version {version}"
    if not path.is_file():
        raise IndexFileError(f"{path}: no index file; {hint}")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            payload = json.load(f)
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFileError(f"{path}: unreadable index ({exc}); {hint}") from None
    if not isinstance(payload, dict) or payload.get("kind") != INDEX_KIND:
        raise IndexFileError(f"{path}: not a perception dataset index; {hint}")
    if payload.get("format_version") != INDEX_FORMAT_VERSION:
        raise IndexFileError(
            f"{path}: index format version {payload.get('format_version')}, this code reads "
            f"{INDEX_FORMAT_VERSION}; {hint}"
        )
    if payload.get("version") != version:
        raise IndexFileError(
            f"{path}: built for version {payload.get('version')!r}, not {version!r}"
        )
    fingerprint = tables_fingerprint(root, version)
    if check_fingerprint and payload.get("fingerprint") != fingerprint:
        raise IndexFileError(
            f"{path}: stale or foreign index: the tables under {Path(root) / version} are not "
            f"the ones it was built from; {hint}"
        )
    return Index(
        root=Path(root),
        version=version,
        max_sweeps=int(payload["max_sweeps"]),
        max_clip_frames=int(payload["max_clip_frames"]),
        samples=payload["samples"],
        fingerprint=fingerprint,
    )
