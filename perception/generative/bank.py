"""The object bank: every annotated object of a dataroot split, cut out once, for GT-paste and
the generators (`tools/create_data.py objects`).

Per object: its LiDAR points in the box frame (keyframe plus the sweeps the dataset merges, each
point's time lag kept), one crop per camera that sees it (pixels, mask, 2-D box, visible
fraction, depth, viewing angle, intrinsics, box-to-camera pose), class, attribute, size,
velocity, the box in its keyframe's LiDAR frame, and the sample/instance/annotation tokens it
came from.

Box frame (every `points` array and `velocity` here): origin at the box's geometric centre,
x forward along the heading, y left, z up, metres (docs/frames.md; a box of
`perception.structures.Boxes3D` with yaw 0 at the origin). The box spans
`|x| <= l/2, |y| <= w/2, |z| <= h/2` with `(w, l, h) = size`.

On disk (never pickle): a folder holding `bank.json` (kind, format version, the dataroot's
version, fingerprint and split, whether the bank may train, the class list, settings, the
shards with their sizes and sha256) and shards `objects-NNNNN.safetensors`, each holding the
arrays of a run of samples and, in its safetensors metadata, the objects' tokens.

    bank = ObjectBank.open("data/bank-train", version="v1.0-trainval", split="train")
    bikes = bank.filter(classes=["bicycle"], min_points=5, min_visibility=0.3)
    obj = bikes[0]   # BankObject: obj.points [N, 5] in the box frame, obj.views (CameraView)

Objects of an evaluation split never enter a training bank: `write_bank` refuses a split that
shares a scene with the version's evaluation split (`val`, `mini_val`, `test`; `all` always
does) unless `allow_eval_split=True`, and then marks the bank `training: false`;
`ObjectBank.open(..., training=True)` refuses such a bank. Reference: docs/object_bank.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ..structures.classes import ATTRIBUTE_NAMES, CAMERA_NAMES, CLASS_NAMES
from .box_frame import box_corners, box_to_frame, clip_to_near_plane

if TYPE_CHECKING:
    from ..structures.sample import Sample

BANK_FORMAT_VERSION = 1
BANK_KIND = "perception.object-bank"
INDEX_NAME = "bank.json"
# Per dataset version, the splits whose objects must never reach a training bank (the devkit's
# names; v1.0-mini's mini_train holds scenes of trainval's val, so each version has its own).
EVALUATION_SPLITS: dict[str, tuple[str, ...]] = {
    "v1.0-mini": ("mini_val",),
    "v1.0-trainval": ("val",),
    "v1.0-test": ("test",),
}
# A version not listed above: every evaluation split of the devkit counts.
ALL_EVALUATION_SPLITS: tuple[str, ...] = ("val", "mini_val", "test")
POINT_CHANNELS: tuple[str, ...] = ("x", "y", "z", "intensity", "time_lag")
# Camera-frame depth (m) where projected box edges are clipped: corners behind it do not project.
NEAR_PLANE_M = 0.1
# Keyframes per shard: a shard is one worker task and one file (bounded memory per worker).
DEFAULT_SHARD_SAMPLES = 8
# Objects per shard when a bank is written from a list of objects (`write_objects_bank`).
DEFAULT_SHARD_OBJECTS = 256
# Where a bank's objects come from (bank.json "source"; absent: "bank"): cut from a dataroot
# (`write_bank`), or made by a generator from such a bank's objects
# (`perception.generative.generated_bank`).
BANK_SOURCES: tuple[str, ...] = ("bank", "generated")

BOX_FRAME = (
    "origin at the box centre, x forward along the heading, y left, z up, metres; the box spans "
    "|x| <= l/2, |y| <= w/2, |z| <= h/2 with (w, l, h) = size"
)

__all__ = [
    "BANK_FORMAT_VERSION",
    "BANK_SOURCES",
    "BOX_FRAME",
    "EVALUATION_SPLITS",
    "BankFileError",
    "BankObject",
    "BankSummary",
    "CameraView",
    "ObjectBank",
    "extract_objects",
    "read_bank",
    "write_bank",
    "write_objects_bank",
    "write_shard",
]


class BankFileError(ValueError):
    """A bank that is missing, corrupt, from another format or dataset version, or split."""


# ---------------------------------------------------------------------------------------------
# Typed objects
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class CameraView:
    """One camera's view of a banked object, from the keyframe image.

    `crop` holds the image pixels `crop_box`; `mask` marks which of them show the object (inside
    its projected box and not behind the projected box of a nearer annotated object). Pixel
    coordinates are those of the image as stored in the dataroot (`image_size`).
    """

    camera: str  # e.g. "CAM_FRONT"
    crop: np.ndarray  # [h, w, 3] uint8 RGB
    mask: np.ndarray  # [h, w] bool
    crop_box: tuple[int, int, int, int]  # (u0, v0, u1, v1) pixels, end exclusive, in the image
    box2d: np.ndarray  # [4] float32 (u0, v0, u1, v1): the projected 3-D box clipped to the image
    image_size: tuple[int, int]  # (W, H)
    visible_fraction: float  # of the projected box: inside the image and not hidden, [0, 1]
    depth: float  # m, the box centre's z in the camera frame
    view_angle: float  # rad: azimuth of the camera seen from the box in the box frame (0: front,
    # pi/2: from the object's left, +-pi: from behind)
    intrinsics: np.ndarray  # [3, 3] float32
    box_to_camera: np.ndarray  # [4, 4] float32: box frame -> camera frame (OpenCV)


@dataclass(frozen=True, eq=False)
class BankObject:
    """One annotated object of one keyframe. `points` and `velocity` are in the box frame
    (`BOX_FRAME`); `box_lidar` is the box where it was, in its keyframe's LiDAR frame."""

    index: int  # position in the bank (stable: the order of the shards)
    class_name: str
    attribute: str  # "" when the annotation has none
    size: np.ndarray  # [3] float32 (w, l, h), m
    velocity: np.ndarray  # [2] float32 (vx, vy) m/s in the box frame; NaN when unknown
    box_lidar: np.ndarray  # [9] float32 (x, y, z, w, l, h, yaw, vx, vy), keyframe LiDAR frame
    ego_distance: float  # m, box centre to the ego in the ground plane (as the evaluation)
    points: np.ndarray  # [N, 5] float32 POINT_CHANNELS, box frame
    views: tuple[CameraView, ...]
    sample_token: str
    instance_token: str
    annotation_token: str
    scene_name: str
    split: str

    @property
    def num_points(self) -> int:
        return len(self.points)

    @property
    def visibility(self) -> float:
        """The largest visible fraction over its camera views (0 when no camera sees it)."""
        return max((v.visible_fraction for v in self.views), default=0.0)


# ---------------------------------------------------------------------------------------------
# Extraction (one keyframe)
# ---------------------------------------------------------------------------------------------
def _project_box(corners_cam: np.ndarray, intrinsics: np.ndarray) -> np.ndarray | None:
    """Pixels `[K, 2]` float64 of the box's outline: the corners in front of the near plane and
    where its edges cross it; None when the whole box is behind."""
    pts = clip_to_near_plane(corners_cam, NEAR_PLANE_M)
    if pts is None:
        return None
    uvw = pts @ intrinsics.T
    return uvw[:, :2] / uvw[:, 2:3]


def _convex_mask(hull: np.ndarray, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """`[h, w]` bool: which pixels (of a crop whose pixel (0, 0) is image pixel `origin`) have
    their centre (integer + 0.5) inside the convex polygon `hull` ([K, 2] image pixels, in
    order); the same rule for every polygon, so an occluder hides exactly what it covers."""
    h, w = shape
    u = np.arange(w, dtype=np.float64) + origin[0] + 0.5
    v = np.arange(h, dtype=np.float64) + origin[1] + 0.5
    x, y = hull[:, 0], hull[:, 1]
    orientation = np.sign(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)) or 1.0
    inside = np.ones((h, w), bool)
    for k in range(len(hull)):
        ax, ay = hull[k]
        bx, by = hull[(k + 1) % len(hull)]
        cross = (bx - ax) * (v[:, None] - ay) - (by - ay) * (u[None, :] - ax)  # [h, w]
        inside &= orientation * cross >= 0
    return inside


def _points_in_box(
    points: np.ndarray, box: np.ndarray, candidates: np.ndarray, margin: float
) -> np.ndarray:
    """The candidate points of `points` ([N, 5] LiDAR frame) inside `box` grown by `margin`,
    in the box frame. Earlier sweeps' points are moved by velocity x time lag first (where
    the velocity is known), so a moving object's sweeps line up with its keyframe box."""
    pts = points[candidates]
    xyz = pts[:, :3].astype(np.float64)
    velocity = box[7:9].astype(np.float64)
    if np.isfinite(velocity).all():
        xyz[:, :2] += velocity[None, :] * pts[:, 4:5]
    c, s = math.cos(box[6]), math.sin(box[6])
    d = xyz - box[:3]
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
    w, l, h = (float(v) for v in box[3:6])
    inside = (
        (np.abs(local[:, 0]) <= l / 2 + margin)
        & (np.abs(local[:, 1]) <= w / 2 + margin)
        & (np.abs(local[:, 2]) <= h / 2 + margin)
    )
    out = np.concatenate([local[inside].astype(np.float32), pts[inside, 3:5]], 1)
    return np.ascontiguousarray(out, dtype=np.float32)


def _f32(value: float) -> float:
    """`value` at the float32 precision the bank stores it in (round trips are exact)."""
    return float(np.float32(value))


@dataclass(frozen=True)
class _Projection:
    hull: np.ndarray  # [K, 2] convex hull in image pixels
    depth: float
    box2d: np.ndarray  # [4] clipped to the image
    polygon: Any  # the hull as a shapely Polygon


def extract_objects(
    sample: Sample,
    record: Mapping[str, Any],
    instance_tokens: Mapping[str, str],
    *,
    split: str,
    margin: float = 0.0,
    first_index: int = 0,
) -> list[BankObject]:
    """Every annotated object of one keyframe as `BankObject`s.

    Args:
        sample: the raw `perception.structures.Sample` of `record` (`NuScenesDataset.load_raw`,
            one clip frame, GT unfiltered): merged points with time lags, keyframe images and
            calibration in the keyframe LiDAR frame.
        record: the sample's dataset-index record; its `gt` gives the boxes (NaN velocity kept),
            classes, attributes and annotation tokens.
        instance_tokens: annotation token -> instance token.
        split: recorded in each object.
        margin: m; points within this distance outside the box also count as the object's.
        first_index: the bank index of the first object.
    """
    from scipy.spatial import cKDTree
    from shapely import box as rectangle
    from shapely import union_all
    from shapely.geometry import Polygon

    gt = record["gt"]
    boxes = np.asarray(gt["boxes"], np.float64).reshape(-1, 9)
    points = sample.points.numpy()  # [P, 5] keyframe LiDAR frame
    M = len(boxes)
    tree = cKDTree(points[:, :2]) if len(points) else None
    max_lag = float(points[:, 4].max()) if len(points) else 0.0
    box_to_lidar = [box_to_frame(b) for b in boxes]
    corners = [box_corners(b[3:6]) for b in boxes]

    # Per camera: each box's projection (convex hull, depth), for the views and as occluders.
    images = sample.images[:, -1]  # [Ncam, 3, H, W] the keyframe frame (clips are oldest first)
    cameras = []  # (camera name, image HWC, K, lidar_to_camera, [projection or None] * M)
    for c, name in enumerate(sample.camera_names):
        if not bool(sample.camera_mask[c]):
            continue
        K = sample.intrinsics[c].numpy().astype(np.float64)
        lidar_to_camera = np.linalg.inv(sample.camera_to_lidar[c, -1].numpy().astype(np.float64))
        image = images[c].permute(1, 2, 0).numpy()  # [H, W, 3]
        H, W = image.shape[:2]
        frame = rectangle(0, 0, W, H)
        projections: list[_Projection | None] = []
        for m in range(M):
            box_to_camera = lidar_to_camera @ box_to_lidar[m]
            depth = float(box_to_camera[2, 3])
            pix = (
                _project_box(corners[m] @ box_to_camera[:3, :3].T + box_to_camera[:3, 3], K)
                if depth > 0
                else None
            )
            if pix is None:
                projections.append(None)
                continue
            hull = cv2.convexHull(pix.astype(np.float32)).reshape(-1, 2).astype(np.float64)
            lo = np.clip(hull.min(0), 0, [W, H])
            hi = np.clip(hull.max(0), 0, [W, H])
            if (hi - lo).min() <= 0:
                projections.append(None)
                continue
            box2d = np.r_[lo, hi].astype(np.float32)
            projections.append(_Projection(hull, depth, box2d, Polygon(hull)))
        cameras.append((name, image, K, lidar_to_camera, projections, frame))

    objects = []
    for m in range(M):
        box = boxes[m]
        radius = 0.5 * float(np.hypot(box[3], box[4])) + margin
        speed = float(np.hypot(*box[7:9])) if np.isfinite(box[7:9]).all() else 0.0
        if tree is not None:
            candidates = np.asarray(
                tree.query_ball_point(box[:2], radius + speed * max_lag), np.int64
            )
            candidates.sort()
        else:
            candidates = np.zeros(0, np.int64)
        box_points = _points_in_box(points, box, candidates, margin)
        views = []
        for name, image, K, lidar_to_camera, projections, frame in cameras:
            own = projections[m]
            if own is None:
                continue
            u0, v0 = (int(math.floor(v)) for v in own.box2d[:2])
            u1, v1 = (int(math.ceil(v)) for v in own.box2d[2:])
            mask = _convex_mask(own.hull, (u0, v0), (v1 - v0, u1 - u0))
            if not mask.any():
                continue  # covers no pixel centre: nothing to crop
            nearer = []
            for j, other in enumerate(projections):
                if j == m or other is None or other.depth >= own.depth:
                    continue
                b = other.box2d
                if b[0] >= u1 or b[2] <= u0 or b[1] >= v1 or b[3] <= v0:
                    continue
                ou0, ov0 = max(u0, int(math.floor(b[0]))), max(v0, int(math.floor(b[1])))
                ou1, ov1 = min(u1, int(math.ceil(b[2]))), min(v1, int(math.ceil(b[3])))
                hidden = _convex_mask(other.hull, (ou0, ov0), (ov1 - ov0, ou1 - ou0))
                mask[ov0 - v0 : ov1 - v0, ou0 - u0 : ou1 - u0] &= ~hidden  # the overlap only
                nearer.append(other.polygon)
            # exact areas: the share of the projected box inside the image and not hidden
            seen = own.polygon.intersection(frame)
            if nearer:
                seen = seen.difference(union_all(nearer))
            visible = seen.area / own.polygon.area if own.polygon.area > 0 else 0.0
            box_to_camera = lidar_to_camera @ box_to_lidar[m]
            camera_in_box = np.linalg.inv(box_to_camera)[:3, 3]
            views.append(
                CameraView(
                    camera=name,
                    crop=np.ascontiguousarray(image[v0:v1, u0:u1]),
                    mask=mask,
                    crop_box=(u0, v0, u1, v1),
                    box2d=own.box2d,
                    image_size=(int(image.shape[1]), int(image.shape[0])),
                    visible_fraction=_f32(min(1.0, visible)),
                    depth=_f32(own.depth),
                    view_angle=_f32(math.atan2(camera_in_box[1], camera_in_box[0])),
                    intrinsics=K.astype(np.float32),
                    box_to_camera=box_to_camera.astype(np.float32),
                )
            )
        c, s = math.cos(box[6]), math.sin(box[6])
        vx, vy = box[7], box[8]  # NaN stays NaN: unknown
        objects.append(
            BankObject(
                index=first_index + m,
                class_name=gt["labels"][m],
                attribute=gt["attributes"][m] or "",
                size=box[3:6].astype(np.float32),
                velocity=np.array([c * vx + s * vy, -s * vx + c * vy], np.float32),
                box_lidar=box.astype(np.float32),
                ego_distance=_f32(gt["ego_dist"][m]),
                points=box_points,
                views=tuple(views),
                sample_token=record["token"],
                instance_token=instance_tokens[gt["ann_tokens"][m]],
                annotation_token=gt["ann_tokens"][m],
                scene_name=record["scene_name"],
                split=split,
            )
        )
    return objects


# ---------------------------------------------------------------------------------------------
# Shards: the arrays of a run of keyframes' objects in one safetensors file
# ---------------------------------------------------------------------------------------------
_OBJECT_ARRAYS = ("obj_label", "obj_attribute", "obj_box_lidar", "obj_ego_distance",
                  "obj_velocity", "obj_points_offset", "obj_views_offset")  # fmt: skip
_VIEW_ARRAYS = ("view_camera", "view_crop_box", "view_box2d", "view_image_size", "view_visible",
                "view_depth", "view_angle", "view_intrinsics", "view_box_to_camera",
                "view_pixels_offset")  # fmt: skip
_BULK_ARRAYS = ("points", "crops", "masks")  # sliced per object on demand


def _offsets(lengths: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


def _pack_shard(objects: Sequence[BankObject]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays and the safetensors metadata (tokens, as JSON) of `objects`."""
    views = [v for o in objects for v in o.views]
    attributes = [ATTRIBUTE_NAMES.index(o.attribute) if o.attribute else -1 for o in objects]
    arrays = {
        "obj_label": np.array([CLASS_NAMES.index(o.class_name) for o in objects], np.int32),
        "obj_attribute": np.array(attributes, np.int32),
        "obj_box_lidar": np.array([o.box_lidar for o in objects], np.float32).reshape(-1, 9),
        "obj_ego_distance": np.array([o.ego_distance for o in objects], np.float32),
        "obj_velocity": np.array([o.velocity for o in objects], np.float32).reshape(-1, 2),
        "obj_points_offset": _offsets([len(o.points) for o in objects]),
        "obj_views_offset": _offsets([len(o.views) for o in objects]),
        "points": np.concatenate([o.points for o in objects] or [np.zeros((0, 5))], 0).astype(
            np.float32
        ),
        "view_camera": np.array([CAMERA_NAMES.index(v.camera) for v in views], np.int32),
        "view_crop_box": np.array([v.crop_box for v in views], np.int32).reshape(-1, 4),
        "view_box2d": np.array([v.box2d for v in views], np.float32).reshape(-1, 4),
        "view_image_size": np.array([v.image_size for v in views], np.int32).reshape(-1, 2),
        "view_visible": np.array([v.visible_fraction for v in views], np.float32),
        "view_depth": np.array([v.depth for v in views], np.float32),
        "view_angle": np.array([v.view_angle for v in views], np.float32),
        "view_intrinsics": np.array([v.intrinsics for v in views], np.float32).reshape(-1, 3, 3),
        "view_box_to_camera": np.array([v.box_to_camera for v in views], np.float32).reshape(
            -1, 4, 4
        ),
        "view_pixels_offset": _offsets([v.mask.size for v in views]),
        "crops": np.concatenate(
            [v.crop.reshape(-1, 3) for v in views] or [np.zeros((0, 3))], 0
        ).astype(np.uint8),
        "masks": np.concatenate([v.mask.reshape(-1) for v in views] or [np.zeros(0)], 0).astype(
            np.uint8
        ),
    }
    tokens = {
        "sample": [o.sample_token for o in objects],
        "instance": [o.instance_token for o in objects],
        "annotation": [o.annotation_token for o in objects],
        "scene": [o.scene_name for o in objects],
    }
    return arrays, {"tokens": json.dumps(tokens, separators=(",", ":"))}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard(path: str | Path, objects: Sequence[BankObject]) -> dict[str, Any]:
    """Writes `objects` as one bank shard (safetensors) at `path`; returns its record for the
    bank index's `shards` list (file name, objects, views, points, bytes, sha256)."""
    return _write_shard(Path(path), objects)


def _write_shard(path: Path, objects: Sequence[BankObject]) -> dict[str, Any]:
    from safetensors.numpy import save_file

    arrays, metadata = _pack_shard(objects)
    save_file(arrays, str(path), metadata=metadata)
    return {
        "file": path.name,
        "objects": len(objects),
        "views": int(len(arrays["view_camera"])),
        "points": int(len(arrays["points"])),
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
    }


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BankSummary:
    """What `write_bank` wrote."""

    out: Path
    split: str
    training: bool
    samples: int
    objects: int
    views: int
    points: int
    per_class: dict[str, int]
    seconds: float


def evaluation_scenes(split: str, version: str) -> set[str] | None:
    """The scenes of `split` that belong to an evaluation split of `version`
    (`EVALUATION_SPLITS`); None when `split` is `all` (every scene of the dataroot, the
    evaluation ones included)."""
    from nuscenes.utils.splits import create_splits_scenes

    from ..datasets.nuscenes import split_scene_names

    scenes = split_scene_names(split)
    if scenes is None:
        return None
    splits = create_splits_scenes()
    evaluation = EVALUATION_SPLITS.get(version, ALL_EVALUATION_SPLITS)
    held_out = set().union(*(splits[s] for s in evaluation))
    return scenes & held_out


# One dataset per worker process, built by the pool's initializer: the index is read once per
# worker rather than once per shard (a process pool's per-process state, not library state).
_WORKER_STATE: dict[str, Any] = {}


def _init_worker(root: str, version: str, split: str, sweeps: int, margin: float) -> None:
    import warnings

    import torch

    from ..datasets.nuscenes import NuScenesDataset

    torch.set_num_threads(1)
    with warnings.catch_warnings():  # the parent already warned about stale sweeps
        warnings.simplefilter("ignore")
        dataset = NuScenesDataset(
            root, version, split, sweeps=sweeps, clip_frames=1, filter_gt=False
        )
    _WORKER_STATE.update(dataset=dataset, split=split, margin=margin)


def _run_shard(
    shard_dir: str, shard_id: int, sample_ids: Sequence[int], instance_tokens: dict[str, str]
) -> tuple[int, dict[str, Any], dict[str, int]]:
    dataset = _WORKER_STATE["dataset"]
    objects: list[BankObject] = []
    for i in sample_ids:
        record = dataset.records[i]
        try:
            sample = dataset.load_raw(record)
        except ValueError as exc:  # DataError names the file; a plain error crosses processes
            raise ValueError(f"sample {record['token']}: {exc}") from None
        objects += extract_objects(
            sample,
            record,
            instance_tokens,
            split=_WORKER_STATE["split"],
            margin=_WORKER_STATE["margin"],
        )
    info = _write_shard(Path(shard_dir) / f"objects-{shard_id:05d}.safetensors", objects)
    return shard_id, info, dict(Counter(o.class_name for o in objects))


def _instance_tokens(root: Path, version: str, wanted: set[str]) -> dict[str, str]:
    """annotation token -> instance token, for the annotations in `wanted`."""
    table = root / version / "sample_annotation.json"
    try:
        rows = json.loads(table.read_bytes())
    except FileNotFoundError:
        raise BankFileError(f"{table}: table is missing") from None
    except (OSError, ValueError) as exc:
        raise BankFileError(f"{table}: unreadable ({exc})") from None
    found = {r["token"]: r["instance_token"] for r in rows if r.get("token") in wanted}
    missing = wanted - found.keys()
    if missing:
        raise BankFileError(
            f"{table}: {len(missing)} annotation(s) of the dataset index are not in the table "
            f"(e.g. {sorted(missing)[0]}); the index is stale: rebuild it with "
            f"tools/create_data.py nuscenes --root {root} --version {version}"
        )
    return found


def write_bank(
    root: str | Path,
    version: str,
    split: str,
    out: str | Path,
    *,
    workers: int = 1,
    sweeps: int = 10,
    margin: float = 0.0,
    allow_eval_split: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    shard_samples: int = DEFAULT_SHARD_SAMPLES,
) -> BankSummary:
    """Extracts every annotated object of `split`'s keyframes into a bank folder `out`.

    Points come from `NuScenesDataset` with `sweeps` merged sweeps (its sweep merge and age
    limit); `margin` (m) grows each box when collecting its points. A split that shares a
    scene with an evaluation split of `version` (`EVALUATION_SPLITS`; `all` always does) is refused
    unless `allow_eval_split`, and such a bank is marked `training: false`. The folder is
    written aside and renamed into place when complete; an existing `out` is an error unless
    `overwrite` (then it must be a bank). Requires the dataset index (tools/create_data.py
    nuscenes).
    """
    import time
    import warnings

    from tqdm import tqdm

    from ..datasets.nuscenes import NuScenesDataset

    start = time.perf_counter()
    root, out = Path(root), Path(out)
    if workers < 1:
        raise ValueError(f"workers={workers}: must be >= 1")
    if shard_samples < 1:
        raise ValueError(f"shard_samples={shard_samples}: must be >= 1")
    if margin < 0:
        raise ValueError(f"margin={margin}: must be >= 0 m")
    held_out = evaluation_scenes(split, version)
    training = held_out == set()
    if not training and not allow_eval_split:
        what = (
            "every scene, the evaluation splits' included"
            if held_out is None
            else f"{len(held_out)} scene(s) of an evaluation split (e.g. {sorted(held_out)[0]})"
        )
        raise ValueError(
            f"split {split!r} holds {what}: their objects must never enter a training bank. "
            f"Use a training split (train, mini_train), or pass --allow-eval-split "
            f"(allow_eval_split=True) to build an evaluation bank, marked as one"
        )
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        if not (out / INDEX_NAME).is_file() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not an object bank; not replacing it")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = NuScenesDataset(
            root, version, split, sweeps=sweeps, clip_frames=1, load_images=False, filter_gt=False
        )
    for w in caught:
        print(f"warning: {w.message}")
    records = dataset.records
    wanted = {t for r in records for t in r["gt"]["ann_tokens"]}
    instance_tokens = _instance_tokens(root, version, wanted)

    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    chunks = [
        list(range(i, min(i + shard_samples, len(records))))
        for i in range(0, len(records), shard_samples)
    ]

    def task_args(shard_id: int) -> tuple:
        ids = chunks[shard_id]
        tokens = {t: instance_tokens[t] for i in ids for t in records[i]["gt"]["ann_tokens"]}
        return str(partial), shard_id, ids, tokens

    init = (str(root), version, split, sweeps, margin)
    shards: list[dict[str, Any] | None] = [None] * len(chunks)
    per_class: Counter[str] = Counter()
    try:
        bar = tqdm(total=len(records), desc="objects", unit="sample", disable=not progress)
        with bar:
            if workers == 1:
                _init_worker(*init)
                try:
                    for shard_id in range(len(chunks)):
                        _, info, counts = _run_shard(*task_args(shard_id))
                        shards[shard_id] = info
                        per_class.update(counts)
                        bar.update(len(chunks[shard_id]))
                finally:
                    _WORKER_STATE.clear()
            else:
                context = multiprocessing.get_context("spawn")  # safe whatever the parent imported
                with ProcessPoolExecutor(
                    min(workers, len(chunks)), mp_context=context, initializer=_init_worker,
                    initargs=init,
                ) as pool:  # fmt: skip
                    futures = [pool.submit(_run_shard, *task_args(s)) for s in range(len(chunks))]
                    for future in futures:
                        shard_id, info, counts = future.result()
                        shards[shard_id] = info
                        per_class.update(counts)
                        bar.update(len(chunks[shard_id]))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # no half-written bank left behind
        raise

    payload = {
        "kind": BANK_KIND,
        "format_version": BANK_FORMAT_VERSION,
        "dataset": {
            "root": str(root.resolve()),
            "version": version,
            "fingerprint": dataset.index.fingerprint,
            "split": split,
            "scenes": sorted({r["scene_name"] for r in records}),
            "samples": len(records),
        },
        "training": training,
        "classes": list(CLASS_NAMES),
        "attributes": list(ATTRIBUTE_NAMES),
        "cameras": list(CAMERA_NAMES),
        "box_frame": BOX_FRAME,
        "point_channels": list(POINT_CHANNELS),
        "settings": {
            "sweeps": sweeps,
            "max_sweep_age_s": dataset.max_sweep_age,
            "margin_m": margin,
            "sweep_points_moved_by_velocity": True,
        },
        "objects": sum(s["objects"] for s in shards),
        "per_class": {c: per_class.get(c, 0) for c in CLASS_NAMES},
        "shards": shards,
    }
    (partial / INDEX_NAME).write_text(json.dumps(payload, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return BankSummary(
        out=out,
        split=split,
        training=training,
        samples=len(records),
        objects=payload["objects"],
        views=sum(s["views"] for s in shards),
        points=sum(s["points"] for s in shards),
        per_class=payload["per_class"],
        seconds=time.perf_counter() - start,
    )


def write_objects_bank(
    objects: Sequence[BankObject],
    out: str | Path,
    *,
    dataset: Mapping[str, Any],
    training: bool,
    settings: Mapping[str, Any],
    source: str = "bank",
    extra: Mapping[str, Any] | None = None,
    shard_objects: int = DEFAULT_SHARD_OBJECTS,
    overwrite: bool = False,
) -> BankSummary:
    """Writes a bank folder `out` from a list of objects (e.g. generated ones), in the format
    `write_bank` writes and `ObjectBank.open` reads: shards of `shard_objects` objects in list
    order (an object's bank index is its position) and `bank.json`.

    Args:
        dataset: the index's `dataset` block: `root`, `version`, `fingerprint`, `split`,
            `scenes`, `samples` (a generated bank copies its source bank's, `ObjectBank.dataset`,
            so version, split and leakage checks see the data it came from).
        training: whether the bank may train.
        settings: the index's `settings`.
        source: one of `BANK_SOURCES`, written as bank.json's `source`.
        extra: more top-level keys of bank.json (e.g. `generation`); may not replace the
            format's own keys.

    The folder is written aside and renamed into place when complete; an existing `out` is an
    error unless `overwrite` (then it must be a bank). Raises ValueError naming the argument.
    """
    import time

    start = time.perf_counter()
    out = Path(out)
    objects = list(objects)
    if not objects:
        raise ValueError(f"objects: nothing to write to {out} (0 objects)")
    if source not in BANK_SOURCES:
        raise ValueError(f"source={source!r}: must be one of {list(BANK_SOURCES)}")
    if shard_objects < 1:
        raise ValueError(f"shard_objects={shard_objects}: must be >= 1")
    missing = [k for k in ("version", "split") if k not in dataset]
    if missing:
        raise ValueError(f"dataset: lacks {missing} (the source bank's `dataset` block)")
    unknown = [o.class_name for o in objects if o.class_name not in CLASS_NAMES]
    if unknown:
        raise ValueError(f"objects: unknown class {unknown[0]!r}")
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        if not (out / INDEX_NAME).is_file() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not an object bank; not replacing it")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        shards = [
            _write_shard(partial / f"objects-{k:05d}.safetensors", objects[i : i + shard_objects])
            for k, i in enumerate(range(0, len(objects), shard_objects))
        ]
        per_class = Counter(o.class_name for o in objects)
        payload = {
            "kind": BANK_KIND,
            "format_version": BANK_FORMAT_VERSION,
            "source": source,
            "dataset": dict(dataset),
            "training": bool(training),
            "classes": list(CLASS_NAMES),
            "attributes": list(ATTRIBUTE_NAMES),
            "cameras": list(CAMERA_NAMES),
            "box_frame": BOX_FRAME,
            "point_channels": list(POINT_CHANNELS),
            "settings": dict(settings),
            "objects": len(objects),
            "per_class": {c: per_class.get(c, 0) for c in CLASS_NAMES},
            "shards": shards,
        }
        clash = sorted(set(extra or {}) & set(payload))
        if clash:
            raise ValueError(f"extra: may not replace the bank index's own key(s) {clash}")
        payload.update(extra or {})
        (partial / INDEX_NAME).write_text(json.dumps(payload, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # no half-written bank left behind
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return BankSummary(
        out=out,
        split=str(dataset["split"]),
        training=bool(training),
        samples=int(dataset.get("samples", 0)),
        objects=len(objects),
        views=sum(s["views"] for s in shards),
        points=sum(s["points"] for s in shards),
        per_class=payload["per_class"],
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------
class ObjectBank:
    """A bank opened for reading, or a filtered selection of one (`filter`).

    Per-object metadata (class, points count, visibility, ...) is in memory; each object's
    points and crops are read from its shard when the object is asked for (`bank[i]`).
    """

    def __init__(
        self,
        path: Path,
        payload: dict[str, Any],
        tables: dict[str, np.ndarray],
        tokens: dict[str, list[str]],
        shard_paths: list[Path],
        selection: np.ndarray,
        min_visibility: float = 0.0,
    ):
        self.path = path
        self._payload = payload
        self._tables = tables
        self._tokens = tokens
        self._shard_paths = shard_paths
        self._selection = selection
        self._min_visibility = min_visibility
        self._handles: dict[int, Any] = {}

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        version: str | None = None,
        split: str | None = None,
        training: bool | None = None,
        verify: bool = True,
        source: str | None = None,
    ) -> ObjectBank:
        """Opens the bank folder `path` (or its `bank.json`).

        `version`, `split`: when given, the bank must come from that dataset version and split.
        `training=True`: the bank must be a training bank (no evaluation-split objects).
        `verify`: check every shard's sha256 (reads the whole bank once); sizes are always
        checked. `source`: when given, the bank's `source` (`BANK_SOURCES`: "bank" for a bank
        cut from a dataroot, "generated") must be it. Raises `BankFileError` naming the file
        for anything missing, corrupt or mismatched.
        """
        path = Path(path)
        index = path if path.name == INDEX_NAME else path / INDEX_NAME
        folder = index.parent
        hint = "build it with: python tools/create_data.py objects --root DIR --version V --split S --out BANK"
        if not index.is_file():
            raise BankFileError(f"{index}: no object bank here; {hint}")
        try:
            payload = json.loads(index.read_text())
        except (OSError, ValueError) as exc:
            raise BankFileError(f"{index}: unreadable bank index ({exc})") from None
        if not isinstance(payload, dict) or payload.get("kind") != BANK_KIND:
            raise BankFileError(f"{index}: not an object bank index (kind {BANK_KIND!r})")
        if payload.get("format_version") != BANK_FORMAT_VERSION:
            raise BankFileError(
                f"{index}: bank format version {payload.get('format_version')}, this code reads "
                f"{BANK_FORMAT_VERSION}; rebuild it ({hint})"
            )
        try:
            dataset = payload["dataset"]
            bank_version, bank_split = dataset["version"], dataset["split"]
            shards = payload["shards"]
            classes = payload["classes"]
        except (KeyError, TypeError) as exc:
            raise BankFileError(f"{index}: bank index lacks field {exc}") from None
        if version is not None and bank_version != version:
            raise BankFileError(
                f"{index}: a bank of dataset version {bank_version!r}, not {version!r}"
            )
        if split is not None and bank_split != split:
            raise BankFileError(f"{index}: a bank of split {bank_split!r}, not {split!r}")
        bank_source = payload.get("source", "bank")
        if bank_source not in BANK_SOURCES:
            raise BankFileError(
                f"{index}: unknown bank source {bank_source!r} (known: {list(BANK_SOURCES)})"
            )
        if source is not None and bank_source != source:
            made = {
                "generated": "tools/create_data.py generated --bank REAL --out BANK ...",
                "bank": "tools/create_data.py objects",
            }
            raise BankFileError(
                f"{index}: a bank of source {bank_source!r}, not {source!r} (a {source!r} bank "
                f"is made by {made.get(source, '?')})"
            )
        if training and not payload.get("training", False):
            raise BankFileError(
                f"{index}: an evaluation bank (split {bank_split!r} holds evaluation scenes); "
                "a training bank must hold none"
            )
        if list(classes) != list(CLASS_NAMES):
            raise BankFileError(
                f"{index}: class list {classes} differs from this code's {list(CLASS_NAMES)}"
            )

        # Per object and per view over all shards; offsets into a shard's bulk arrays stay
        # local to that shard ("*_start", "*_stop").
        parts: dict[str, list[np.ndarray]] = {}
        tokens: dict[str, list[str]] = {"sample": [], "instance": [], "annotation": [], "scene": []}
        shard_paths = []
        objects = views = 0
        for shard_id, shard in enumerate(shards):
            file = folder / str(shard.get("file", "")) if isinstance(shard, dict) else folder
            shard_paths.append(file)
            a, shard_tokens = _read_shard_tables(file, shard, verify)
            n, v = len(a["obj_label"]), len(a["view_camera"])
            for name in ("obj_label", "obj_attribute", "obj_box_lidar", "obj_ego_distance",
                         "obj_velocity", *_VIEW_ARRAYS[:-1]):  # fmt: skip
                parts.setdefault(name, []).append(a[name])
            extra = {
                "shard": np.full(n, shard_id, np.int32),
                "points_start": a["obj_points_offset"][:-1],
                "points_stop": a["obj_points_offset"][1:],
                "views_start": a["obj_views_offset"][:-1] + views,
                "views_stop": a["obj_views_offset"][1:] + views,
                "view_owner": np.repeat(np.arange(n) + objects, np.diff(a["obj_views_offset"])),
                "pixels_start": a["view_pixels_offset"][:-1],
                "pixels_stop": a["view_pixels_offset"][1:],
            }
            for name, value in extra.items():
                parts.setdefault(name, []).append(value)
            for key in tokens:
                tokens[key] += shard_tokens[key]
            objects, views = objects + n, views + v
        tables = {k: np.concatenate(v, 0) for k, v in parts.items()}
        if not shards:
            raise BankFileError(f"{index}: the bank index lists no shards")
        tables["points_count"] = tables["points_stop"] - tables["points_start"]
        n = int(payload.get("objects", -1))
        if len(tokens["sample"]) != n:
            raise BankFileError(
                f"{index}: says {n} objects, its shards hold {len(tokens['sample'])}"
            )
        return cls(folder, payload, tables, tokens, shard_paths, np.arange(n, dtype=np.int64))

    # -- what the bank is -------------------------------------------------------------------
    def __repr__(self) -> str:
        kind = "training" if self.training else "evaluation"
        return (
            f"ObjectBank({str(self.path)!r}: {self.version} {self.split}, {kind}, "
            f"{len(self)} objects selected)"
        )

    @property
    def index_path(self) -> Path:
        return self.path / INDEX_NAME

    @property
    def version(self) -> str:
        """The dataset version (e.g. v1.0-trainval) the bank was cut from."""
        return self._payload["dataset"]["version"]

    @property
    def split(self) -> str:
        return self._payload["dataset"]["split"]

    @property
    def training(self) -> bool:
        """Whether the bank may train (its split shares no scene with an evaluation split)."""
        return bool(self._payload["training"])

    @property
    def dataroot(self) -> str:
        return self._payload["dataset"]["root"]

    @property
    def source(self) -> str:
        """Where the objects come from (`BANK_SOURCES`): "bank" (cut from a dataroot; the
        default of an index without the key) or "generated"."""
        return str(self._payload.get("source", "bank"))

    @property
    def dataset(self) -> dict[str, Any]:
        """A copy of the index's `dataset` block (root, version, fingerprint, split, scenes,
        samples)."""
        return json.loads(json.dumps(self._payload["dataset"]))

    @property
    def generation(self) -> dict[str, Any] | None:
        """How a generated bank was made (bank.json `generation`: generators, seed, signals,
        counts); None for a bank cut from a dataroot."""
        value = self._payload.get("generation")
        return json.loads(json.dumps(value)) if value is not None else None

    @property
    def scenes(self) -> tuple[str, ...]:
        """The names of the scenes the bank's objects come from (for leakage checks)."""
        return tuple(self._payload["dataset"].get("scenes", ()))

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self._payload["classes"])

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._payload["settings"])

    # -- per-object metadata of the selection, without loading points or crops ---------------
    @property
    def labels(self) -> np.ndarray:
        """`[N]` int32 index into `classes`."""
        return self._tables["obj_label"][self._selection]

    @property
    def num_points(self) -> np.ndarray:
        """`[N]` int64 points per object."""
        return self._tables["points_count"][self._selection]

    @property
    def visibility(self) -> np.ndarray:
        """`[N]` float32: each object's largest visible fraction over its kept views."""
        return self._view_max(self._min_visibility)[self._selection]

    @property
    def boxes_lidar(self) -> np.ndarray:
        """`[N, 9]` float32: each object's box in its keyframe's LiDAR frame (where it was:
        distance and yaw distributions without reading points or crops)."""
        return self._tables["obj_box_lidar"][self._selection]

    @property
    def ego_distances(self) -> np.ndarray:
        """`[N]` float32 m."""
        return self._tables["obj_ego_distance"][self._selection]

    @property
    def sample_tokens(self) -> list[str]:
        return [self._tokens["sample"][i] for i in self._selection]

    @property
    def instance_tokens(self) -> list[str]:
        return [self._tokens["instance"][i] for i in self._selection]

    def counts(self) -> dict[str, int]:
        """Objects per class in this selection (every class of `classes`, zeros included)."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}

    def _view_max(self, min_visibility: float) -> np.ndarray:
        """`[all objects]` the largest visible fraction of the views >= `min_visibility`."""
        visible = self._tables["view_visible"]
        owner = self._tables["view_owner"]
        best = np.zeros(len(self._tables["obj_label"]), np.float32)
        keep = visible >= min_visibility
        np.maximum.at(best, owner[keep], visible[keep])
        return best

    def filter(
        self,
        *,
        classes: Sequence[str] | None = None,
        min_points: int = 0,
        min_visibility: float = 0.0,
    ) -> ObjectBank:
        """The objects of `classes` (default all) with at least `min_points` points and a
        camera view whose visible fraction is at least `min_visibility` (when > 0; views below
        it are left out of the objects). Raises ValueError naming a requested class that has no
        such object, and the bank file."""
        if not 0.0 <= min_visibility <= 1.0:
            raise ValueError(f"min_visibility={min_visibility}: must be in [0, 1]")
        keep = np.ones(len(self._selection), bool)
        labels = self.labels
        if classes is not None:
            unknown = [c for c in classes if c not in self.classes]
            if unknown:
                raise ValueError(
                    f"{self.index_path}: unknown class(es) {unknown}; the bank's classes are "
                    f"{list(self.classes)}"
                )
            wanted = [self.classes.index(c) for c in classes]
            keep &= np.isin(labels, wanted)
        keep &= self.num_points >= min_points
        min_vis = max(min_visibility, self._min_visibility)
        if min_visibility > 0:
            keep &= self._view_max(min_vis)[self._selection] >= min_visibility
        chosen = self._selection[keep]
        for name in classes or ():
            label = self.classes.index(name)
            if not (self._tables["obj_label"][chosen] == label).any():
                held = int((labels == label).sum())
                raise ValueError(
                    f"{self.index_path}: no {name!r} objects with >= {min_points} points and "
                    f"visibility >= {min_visibility} (split {self.split!r} holds {held} {name!r} "
                    f"object(s) before these limits)"
                )
        return ObjectBank(
            self.path, self._payload, self._tables, self._tokens, self._shard_paths, chosen,
            min_vis,
        )  # fmt: skip

    # -- objects ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._selection)

    def __iter__(self) -> Iterator[BankObject]:
        for i in range(len(self)):
            yield self[i]

    def __getstate__(self) -> dict[str, Any]:
        # open shard handles do not cross processes (DataLoader workers reopen them)
        return {**self.__dict__, "_handles": {}}

    def _handle(self, shard_id: int):
        from safetensors import safe_open

        if shard_id not in self._handles:
            path = self._shard_paths[shard_id]
            try:
                self._handles[shard_id] = safe_open(str(path), framework="np")
            except Exception as exc:  # safetensors raises its own error types
                raise BankFileError(f"{path}: unreadable bank shard ({exc})") from None
        return self._handles[shard_id]

    def _slice(self, shard_id: int, name: str, start: int, stop: int) -> np.ndarray:
        path = self._shard_paths[shard_id]
        try:
            return self._handle(shard_id).get_slice(name)[start:stop]
        except BankFileError:
            raise
        except Exception as exc:
            raise BankFileError(f"{path}: cannot read {name}[{start}:{stop}] ({exc})") from None

    def __getitem__(self, i: int) -> BankObject:
        if not -len(self) <= i < len(self):
            raise IndexError(f"object {i} of a selection of {len(self)}")
        g = int(self._selection[i])
        t = self._tables
        shard = int(t["shard"][g])
        points = self._slice(shard, "points", int(t["points_start"][g]), int(t["points_stop"][g]))
        v0, v1 = int(t["views_start"][g]), int(t["views_stop"][g])
        views = []
        if v1 > v0:
            q0, q1 = int(t["pixels_start"][v0]), int(t["pixels_stop"][v1 - 1])
            crops = self._slice(shard, "crops", q0, q1)  # [pixels, 3] of all its views
            masks = self._slice(shard, "masks", q0, q1)
            for v in range(v0, v1):
                if t["view_visible"][v] < self._min_visibility:
                    continue
                a, b = int(t["pixels_start"][v]) - q0, int(t["pixels_stop"][v]) - q0
                u0, y0, u1, y1 = (int(x) for x in t["view_crop_box"][v])
                h, w = y1 - y0, u1 - u0
                views.append(
                    CameraView(
                        camera=CAMERA_NAMES[int(t["view_camera"][v])],
                        crop=_frozen(crops[a:b].reshape(h, w, 3)),
                        mask=_frozen(masks[a:b].reshape(h, w).astype(bool)),
                        crop_box=(u0, y0, u1, y1),
                        box2d=_frozen(t["view_box2d"][v].copy()),
                        image_size=(
                            int(t["view_image_size"][v, 0]),
                            int(t["view_image_size"][v, 1]),
                        ),
                        visible_fraction=float(t["view_visible"][v]),
                        depth=float(t["view_depth"][v]),
                        view_angle=float(t["view_angle"][v]),
                        intrinsics=_frozen(t["view_intrinsics"][v].copy()),
                        box_to_camera=_frozen(t["view_box_to_camera"][v].copy()),
                    )
                )
        attribute = int(t["obj_attribute"][g])
        box = t["obj_box_lidar"][g].copy()
        return BankObject(
            index=g,
            class_name=self.classes[int(t["obj_label"][g])],
            attribute=ATTRIBUTE_NAMES[attribute] if attribute >= 0 else "",
            size=_frozen(box[3:6].copy()),
            velocity=_frozen(t["obj_velocity"][g].copy()),
            box_lidar=_frozen(box),
            ego_distance=float(t["obj_ego_distance"][g]),
            points=_frozen(np.ascontiguousarray(points)),
            views=tuple(views),
            sample_token=self._tokens["sample"][g],
            instance_token=self._tokens["instance"][g],
            annotation_token=self._tokens["annotation"][g],
            scene_name=self._tokens["scene"][g],
            split=self.split,
        )


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _read_shard_tables(
    path: Path, shard: Mapping[str, Any], verify: bool
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """A shard's per-object and per-view arrays (bulk arrays stay on disk) and its tokens,
    checked against the bank index's record of it."""
    from safetensors import safe_open

    if not path.is_file():
        raise BankFileError(f"{path}: bank shard is missing")
    size = path.stat().st_size
    if size != shard.get("bytes"):
        raise BankFileError(
            f"{path}: bank shard is {size} bytes, the bank index says {shard.get('bytes')} "
            "(truncated or replaced)"
        )
    if verify and _sha256(path) != shard.get("sha256"):
        raise BankFileError(f"{path}: bank shard is corrupt (sha256 differs from the index)")
    try:
        with safe_open(str(path), framework="np") as f:
            names = set(f.keys())
            missing = [n for n in (*_OBJECT_ARRAYS, *_VIEW_ARRAYS, *_BULK_ARRAYS) if n not in names]
            if missing:
                raise BankFileError(f"{path}: bank shard lacks array(s) {missing}")
            arrays = {n: f.get_tensor(n) for n in (*_OBJECT_ARRAYS, *_VIEW_ARRAYS)}
            shapes = {n: f.get_slice(n).get_shape() for n in _BULK_ARRAYS}
            tokens = json.loads((f.metadata() or {})["tokens"])
    except BankFileError:
        raise
    except Exception as exc:  # safetensors' own errors, a missing or malformed token list
        raise BankFileError(f"{path}: unreadable bank shard ({exc!r})") from None
    n = len(arrays["obj_label"])
    v = len(arrays["view_camera"])
    if (
        n != shard.get("objects")
        or len(arrays["obj_points_offset"]) != n + 1
        or len(arrays["obj_views_offset"]) != n + 1
        or arrays["obj_views_offset"][-1] != v
        or arrays["obj_points_offset"][-1] != shapes["points"][0]
        or arrays["view_pixels_offset"][-1] != shapes["crops"][0]
        or any(len(tokens.get(k, ())) != n for k in ("sample", "instance", "annotation", "scene"))
    ):
        raise BankFileError(f"{path}: bank shard's arrays disagree with each other or the index")
    return arrays, tokens


def read_bank(
    path: str | Path,
    *,
    classes: Sequence[str] | None = None,
    min_points: int = 0,
    min_visibility: float = 0.0,
    split: str | None = None,
    version: str | None = None,
    training: bool | None = None,
    verify: bool = True,
) -> ObjectBank:
    """`ObjectBank.open(path, version=, split=, training=, verify=)` then `.filter(classes=,
    min_points=, min_visibility=)`: one call for the bank's users."""
    bank = ObjectBank.open(path, version=version, split=split, training=training, verify=verify)
    return bank.filter(classes=classes, min_points=min_points, min_visibility=min_visibility)
