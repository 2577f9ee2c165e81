"""The generators' training data, cut from an object bank (`perception.generative.bank`):
fixed-size camera crops with a mask channel (`camera_crops`) and LiDAR occupancy grids in the
box frame (`lidar_grids`), each with the objects' `ObjectConditions`; and the way back from a
grid to points (`grid_to_points`).

Camera crops: `[4, S, S]` float32 in [-1, 1]: the view's RGB crop (its projected 3-D box's
pixels, `CameraView.crop`) resized to S x S (aspect not kept: the crop's aspect follows from
the box, its pose and the camera, which paste knows), and its mask resized the same way as a
fourth, alpha channel (1 -> +1: object, 0 -> -1: background or a nearer object).

LiDAR grids: `[Z + 1, X, Y]` float32 in [-1, 1]. A point (x, y, z) of the box frame
(`BOX_FRAME`) is normalised by the box's half size to (x / (l/2), y / (w/2), z / (h/2)) in
[-1, 1]^3 and binned into X x Y x Z equal cells (x along the heading, y to the left, z up).
Channels 0..Z-1: occupancy of z-bin k (+1 occupied, -1 empty); channel Z: the mean intensity
of the points in the (x, y) column, `intensity / INTENSITY_SCALE * 2 - 1` clipped to [-1, 1]
(nuScenes intensity is 0..255), -1 for an empty column.

Both sets save to one safetensors file with their settings as JSON metadata (never pickle):
`CropSet.save(path)` / `CropSet.load(path)`, the same for `GridSet`, to cache a training set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch import Tensor

from ..structures.classes import CAMERA_NAMES, CLASS_NAMES
from .conditions import LIDAR_SENSOR, ObjectConditions

if TYPE_CHECKING:
    from .bank import ObjectBank
    from .config import GeneratorDataConfig

INTENSITY_SCALE = 255.0  # nuScenes intensity range: 0..255
CROPS_KIND = "perception.camera-crops"
GRIDS_KIND = "perception.lidar-grids"
DATASET_FORMAT_VERSION = 1
# jitter keeps a point this fraction of a cell away from the cell's faces, so binning the
# point again (after float32 rounding) finds the same cell
_JITTER_MARGIN = 1e-3
# points this far (in normalised units) outside [-1, 1] still go into the boundary cell
# (float32 rounding of points on a face); points further out (a bank cut with a margin) are
# left out of the grid
_FACE_TOLERANCE = 1e-3

__all__ = [
    "SignalSet",
    "bank_signals",
    "INTENSITY_SCALE",
    "CropSet",
    "GridSet",
    "camera_crops",
    "crop_image",
    "grid_to_points",
    "lidar_grids",
    "lidar_pose",
    "points_to_grid",
]


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------
def _check_set(name: str, data: Tensor, conditions: ObjectConditions, index: Tensor) -> None:
    if not isinstance(conditions, ObjectConditions):
        raise TypeError(f"conditions: expected ObjectConditions, got {type(conditions).__name__}")
    if data.dtype != torch.float32 or data.dim() != 4:
        raise ValueError(
            f"{name}: must be [N, C, H, W] float32, got {data.dtype} {list(data.shape)}"
        )
    if index.dtype != torch.long or tuple(index.shape) != (data.shape[0],):
        raise ValueError(
            f"object_index: must be [{data.shape[0]}] int64, got {index.dtype} {list(index.shape)}"
        )
    if len(conditions) != data.shape[0]:
        raise ValueError(f"conditions: {len(conditions)} rows for {data.shape[0]} {name}")


def _save(path: str | Path, kind: str, data: dict[str, Tensor], conditions: ObjectConditions,
          object_index: Tensor, settings: dict[str, Any]) -> None:  # fmt: skip
    from safetensors.torch import save_file

    tensors = {
        **{k: v.detach().cpu().contiguous() for k, v in data.items()},
        "object_index": object_index.cpu().contiguous(),
        **{f"cond_{k}": getattr(conditions, k).cpu().contiguous()
           for k in ("label", "size", "view_angle", "depth", "sensor")},
    }  # fmt: skip
    meta = {"kind": kind, "format_version": DATASET_FORMAT_VERSION, "settings": settings}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"meta": json.dumps(meta)})


def _load(path: str | Path, kind: str, names: Sequence[str]):
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["meta"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors' own error types, missing or malformed metadata
        raise ValueError(f"{path}: unreadable dataset file ({exc!r})") from None
    if meta.get("kind") != kind or meta.get("format_version") != DATASET_FORMAT_VERSION:
        raise ValueError(
            f"{path}: a {meta.get('kind')!r} file of format version "
            f"{meta.get('format_version')!r}, expected {kind!r} version {DATASET_FORMAT_VERSION}"
        )
    missing = [n for n in (*names, "object_index", "cond_label") if n not in tensors]
    if missing:
        raise ValueError(f"{path}: lacks tensor(s) {missing}")
    conditions = ObjectConditions(
        **{k: tensors[f"cond_{k}"] for k in ("label", "size", "view_angle", "depth", "sensor")}
    )
    return tensors, conditions, meta["settings"]


@dataclass(frozen=True, eq=False)
class CropSet:
    """N camera crops of bank objects (one per object and camera view).

    Attributes:
        images: `[N, 4, S, S]` float32 in [-1, 1]: RGB, then the mask as alpha.
        conditions: the N crops' conditions (sensor = the `CAMERA_NAMES` index).
        object_index: `[N]` int64, the object's bank index (`BankObject.index`).
        settings: how the set was made (bank path, split, size, min_visibility, classes).
    """

    images: Tensor
    conditions: ObjectConditions
    object_index: Tensor
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_set("images", self.images, self.conditions, self.object_index)
        if self.images.shape[1] != 4 or self.images.shape[2] != self.images.shape[3]:
            raise ValueError(f"images: must be [N, 4, S, S], got {list(self.images.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, idx: slice | Tensor | Sequence[int]) -> CropSet:
        """The crops `idx` (a slice, an index or bool tensor, a list of ints)."""
        if not isinstance(idx, slice | Tensor):
            idx = torch.as_tensor(list(idx), dtype=torch.long)
        return CropSet(
            images=self.images[idx],
            conditions=self.conditions.index(idx),
            object_index=self.object_index[idx],
            settings=dict(self.settings),
        )

    def save(self, path: str | Path) -> None:
        """One safetensors file; the settings as JSON metadata."""
        _save(path, CROPS_KIND, {"images": self.images}, self.conditions, self.object_index,
              self.settings)  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> CropSet:
        tensors, conditions, settings = _load(path, CROPS_KIND, ("images",))
        return cls(tensors["images"], conditions, tensors["object_index"], settings)


@dataclass(frozen=True, eq=False)
class GridSet:
    """N objects' LiDAR occupancy grids (module docstring: layout and scaling).

    Attributes:
        grids: `[N, Z + 1, X, Y]` float32 in [-1, 1].
        conditions: the objects' conditions (sensor = `LIDAR_SENSOR`).
        object_index: `[N]` int64, the object's bank index.
        settings: how the set was made (bank path, split, grid, min_points, classes).
    """

    grids: Tensor
    conditions: ObjectConditions
    object_index: Tensor
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_set("grids", self.grids, self.conditions, self.object_index)
        if self.grids.shape[1] < 2:
            raise ValueError(
                f"grids: must be [N, Z + 1, X, Y] with Z >= 1, got {list(self.grids.shape)}"
            )

    def __len__(self) -> int:
        return self.grids.shape[0]

    @property
    def grid(self) -> tuple[int, int, int]:
        """(X, Y, Z) cells."""
        _, C, X, Y = self.grids.shape
        return (X, Y, C - 1)

    def subset(self, idx: slice | Tensor | Sequence[int]) -> GridSet:
        if not isinstance(idx, slice | Tensor):
            idx = torch.as_tensor(list(idx), dtype=torch.long)
        return GridSet(
            grids=self.grids[idx],
            conditions=self.conditions.index(idx),
            object_index=self.object_index[idx],
            settings=dict(self.settings),
        )

    def save(self, path: str | Path) -> None:
        _save(path, GRIDS_KIND, {"grids": self.grids}, self.conditions, self.object_index,
              self.settings)  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> GridSet:
        tensors, conditions, settings = _load(path, GRIDS_KIND, ("grids",))
        return cls(tensors["grids"], conditions, tensors["object_index"], settings)


def _bank_settings(bank: ObjectBank) -> dict[str, Any]:
    return {"bank": str(bank.path), "version": bank.version, "split": bank.split,
            "training": bank.training}  # fmt: skip


def _select(bank: ObjectBank, **limits) -> ObjectBank:
    """`bank.filter(**limits)` (its errors name the class and the bank), refusing an empty
    result."""
    if len(bank) == 0:
        raise ValueError(f"{bank.index_path}: the bank (selection) holds no objects")
    chosen = bank.filter(**limits)
    if len(chosen) == 0:
        limits = ", ".join(f"{k}={v}" for k, v in limits.items())
        raise ValueError(f"{bank.index_path}: no objects with {limits}")
    return chosen


# ---------------------------------------------------------------------------------------------
# Camera crops
# ---------------------------------------------------------------------------------------------
def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """`image` `[h, w, C]` float32 -> `[size, size, C]`, area-averaged when shrinking an axis,
    bilinear when growing."""
    h, w = image.shape[:2]
    shrink = h >= size and w >= size
    out = cv2.resize(
        image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )
    return out.reshape(size, size, image.shape[2])


def crop_image(crop: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """One view's crop `[h, w, 3]` uint8 RGB and mask `[h, w]` bool -> `[4, size, size]`
    float32 in [-1, 1] (RGB / 127.5 - 1, then the resized mask as alpha * 2 - 1)."""
    rgba = np.concatenate([crop.astype(np.float32) / 255.0, mask[..., None].astype(np.float32)], 2)
    out = np.clip(_resize(rgba, size), 0.0, 1.0) * 2.0 - 1.0  # [S, S, 4]
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)  # [4, S, S]


def camera_crops(
    bank: ObjectBank,
    *,
    size: int = 32,
    min_visibility: float = 0.3,
    classes: Sequence[str] | None = None,
    progress: bool = True,
) -> CropSet:
    """One crop per (object, camera view) of `bank` (objects of `classes`, default all) whose
    view's visible fraction is at least `min_visibility`, in bank order and then view order.

    Conditions: label from the class, size = the object's (w, l, h), view_angle and depth the
    view's, sensor = the camera's `CAMERA_NAMES` index.

    Raises ValueError: `size` not a positive int; an empty bank, a requested class with no
    object (naming it and the bank), no view passing `min_visibility` (naming the bank).
    """
    from tqdm import tqdm

    if not isinstance(size, int | np.integer) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"size: must be a positive int (crop side, pixels), got {size!r}")
    chosen = _select(bank, classes=classes, min_visibility=min_visibility)
    images, labels, sizes, angles, depths, sensors, owners = [], [], [], [], [], [], []
    for obj in tqdm(
        chosen, total=len(chosen), desc="camera crops", unit="obj", disable=not progress
    ):
        label = CLASS_NAMES.index(obj.class_name)
        for view in obj.views:
            if view.visible_fraction < min_visibility or view.mask.size == 0:
                continue
            images.append(crop_image(view.crop, view.mask, size))
            labels.append(label)
            sizes.append(obj.size)
            angles.append(view.view_angle)
            depths.append(view.depth)
            sensors.append(CAMERA_NAMES.index(view.camera))
            owners.append(obj.index)
    if not images:
        raise ValueError(
            f"{bank.index_path}: no camera view with visible fraction >= {min_visibility} "
            f"among {len(chosen)} object(s) of classes {list(classes) if classes else 'all'}"
        )
    conditions = ObjectConditions(
        label=torch.tensor(labels, dtype=torch.long),
        size=torch.from_numpy(np.stack(sizes).astype(np.float32)),
        view_angle=torch.tensor(angles, dtype=torch.float32),
        depth=torch.tensor(depths, dtype=torch.float32),
        sensor=torch.tensor(sensors, dtype=torch.long),
    )
    settings = {**_bank_settings(bank), "size": int(size), "min_visibility": min_visibility,
                "classes": list(classes) if classes else None}  # fmt: skip
    return CropSet(
        images=torch.from_numpy(np.stack(images)),  # [N, 4, S, S]
        conditions=conditions,
        object_index=torch.tensor(owners, dtype=torch.long),
        settings=settings,
    )


# ---------------------------------------------------------------------------------------------
# LiDAR grids
# ---------------------------------------------------------------------------------------------
def _check_grid_shape(grid: Sequence[int]) -> tuple[int, int, int]:
    dims = tuple(grid)
    if len(dims) != 3 or any(
        not isinstance(d, int | np.integer) or isinstance(d, bool) or d <= 0 for d in dims
    ):
        raise ValueError(f"grid: must be three positive ints (X, Y, Z), got {grid!r}")
    return tuple(int(d) for d in dims)  # type: ignore[return-value]


def _check_size(size: Any) -> np.ndarray:
    """`size` -> `[3]` float64 (w, l, h), all finite and > 0."""
    values = np.asarray(
        size.detach().cpu().double().numpy() if isinstance(size, Tensor) else size, np.float64
    )
    if values.shape != (3,) or not np.isfinite(values).all() or (values <= 0).any():
        raise ValueError(f"size: must be 3 positive finite values (w, l, h) m, got {size!r}")
    return values


def points_to_grid(points: np.ndarray, size: Any, *, grid: Sequence[int] = (32, 32, 8)) -> Tensor:
    """An object's points in its box frame -> its occupancy grid (module docstring).

    Args:
        points: `[N, >= 4]` float (x, y, z, intensity, ...) in the box frame, m.
        size: `[3]` (w, l, h) of the box, m.
        grid: (X, Y, Z) cells.

    Returns:
        `[Z + 1, X, Y]` float32 in [-1, 1]. Points more than a hair outside the box are left out.
    """
    X, Y, Z = _check_grid_shape(grid)
    w, l, h = _check_size(size)
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 4:
        raise ValueError(f"points: must be [N, >= 4] (x, y, z, intensity, ...), got {points.shape}")
    xyz = points[:, :3].astype(np.float64) / np.array([l / 2, w / 2, h / 2])  # [N, 3] in [-1, 1]
    inside = (np.abs(xyz) <= 1.0 + _FACE_TOLERANCE).all(1)
    xyz, intensity = xyz[inside], points[inside, 3].astype(np.float64)
    dims = np.array([X, Y, Z])
    cell = np.clip(np.floor((xyz + 1.0) * 0.5 * dims), 0, dims - 1).astype(np.int64)  # [N, 3]
    out = np.full((Z + 1, X, Y), -1.0, np.float32)
    out[cell[:, 2], cell[:, 0], cell[:, 1]] = 1.0
    column = cell[:, 0] * Y + cell[:, 1]  # [N]
    count = np.bincount(column, minlength=X * Y)
    total = np.bincount(column, weights=intensity, minlength=X * Y)
    filled = count > 0
    mean = np.zeros(X * Y)
    mean[filled] = total[filled] / count[filled]
    scaled = np.clip(mean / INTENSITY_SCALE * 2.0 - 1.0, -1.0, 1.0)
    out[Z] = np.where(filled, scaled, -1.0).reshape(X, Y)
    return torch.from_numpy(out)


def lidar_pose(box_lidar: np.ndarray) -> tuple[float, float]:
    """`(view_angle, depth)` of a box seen by the LiDAR at the origin of its frame.

    Args:
        box_lidar: `[>= 7]` (x, y, z, w, l, h, yaw, ...) in the LiDAR frame.

    Returns:
        view_angle: rad, the azimuth of the LiDAR origin in the box frame (0: in front of the
            box, pi/2: on its left; as `CameraView.view_angle`).
        depth: m, the ground-plane (x, y) distance of the box centre from the LiDAR origin.
    """
    x, y, yaw = float(box_lidar[0]), float(box_lidar[1]), float(box_lidar[6])
    c, s = math.cos(yaw), math.sin(yaw)
    dx, dy = -x, -y  # the origin relative to the box centre, LiDAR frame
    local_x, local_y = c * dx + s * dy, -s * dx + c * dy  # rotated into the box frame
    return math.atan2(local_y, local_x), math.hypot(x, y)


def lidar_grids(
    bank: ObjectBank,
    *,
    grid: Sequence[int] = (32, 32, 8),
    min_points: int = 1,
    classes: Sequence[str] | None = None,
    progress: bool = True,
) -> GridSet:
    """One occupancy grid per object of `bank` (of `classes`, default all) with at least
    `min_points` points (every sweep's points count), in bank order.

    Conditions: label, size (w, l, h), sensor = `LIDAR_SENSOR`, and `lidar_pose` of the box:
    view_angle = the LiDAR's azimuth seen from the box (box frame), depth = the ground-plane
    distance of the box centre from the LiDAR.

    Raises ValueError: `grid` not three positive ints; an empty bank, a requested class with
    no object with enough points (naming it and the bank).
    """
    from tqdm import tqdm

    dims = _check_grid_shape(grid)
    if min_points < 0:
        raise ValueError(f"min_points: must be >= 0, got {min_points}")
    chosen = _select(bank, classes=classes, min_points=min_points)
    grids, labels, sizes, angles, depths, owners = [], [], [], [], [], []
    for obj in tqdm(
        chosen, total=len(chosen), desc="lidar grids", unit="obj", disable=not progress
    ):
        grids.append(points_to_grid(obj.points, obj.size, grid=dims))
        view_angle, depth = lidar_pose(obj.box_lidar)
        labels.append(CLASS_NAMES.index(obj.class_name))
        sizes.append(obj.size)
        angles.append(view_angle)
        depths.append(depth)
        owners.append(obj.index)
    n = len(grids)
    conditions = ObjectConditions(
        label=torch.tensor(labels, dtype=torch.long),
        size=torch.from_numpy(np.stack(sizes).astype(np.float32)),
        view_angle=torch.tensor(angles, dtype=torch.float32),
        depth=torch.tensor(depths, dtype=torch.float32),
        sensor=torch.full((n,), LIDAR_SENSOR, dtype=torch.long),
    )
    settings = {**_bank_settings(bank), "grid": list(dims), "min_points": int(min_points),
                "classes": list(classes) if classes else None,
                "intensity_scale": INTENSITY_SCALE}  # fmt: skip
    return GridSet(
        grids=torch.stack(grids),  # [N, Z + 1, X, Y]
        conditions=conditions,
        object_index=torch.tensor(owners, dtype=torch.long),
        settings=settings,
    )


def grid_to_points(
    grid: Tensor | np.ndarray,
    size: Any,
    *,
    threshold: float = 0.0,
    generator: torch.Generator | None = None,
    jitter: bool = True,
) -> np.ndarray:
    """A (generated) occupancy grid -> points in the box frame, one per occupied cell.

    Args:
        grid: `[Z + 1, X, Y]` float (module docstring layout); a cell is occupied when its
            occupancy value is > `threshold`.
        size: `[3]` (w, l, h) of the box, m.
        threshold: occupancy threshold (0: the midpoint of -1 and +1).
        generator: for the jitter (CPU generator).
        jitter: place each point uniformly inside its cell (kept 0.1% of a cell away from the
            cell's faces, so it bins back to the same cell) rather than at its centre.

    Returns:
        `[M, 5]` float32 (x, y, z, intensity, time_lag = 0) in the box frame, m; every point
        satisfies |x| <= l/2, |y| <= w/2, |z| <= h/2. Intensity = the column's intensity
        channel mapped back to 0..`INTENSITY_SCALE`. Rows ordered by (z, x, y) cell.
    """
    values = (
        grid.detach().float().cpu().numpy()
        if isinstance(grid, Tensor)
        else np.asarray(grid, np.float32)
    )
    if values.ndim != 3 or values.shape[0] < 2:
        raise ValueError(f"grid: must be [Z + 1, X, Y] with Z >= 1, got {list(values.shape)}")
    w, l, h = _check_size(size)
    Z, X, Y = values.shape[0] - 1, values.shape[1], values.shape[2]
    kz, kx, ky = np.nonzero(values[:Z] > threshold)  # [M] each
    M = len(kz)
    cell = np.stack([kx, ky, kz], 1).astype(np.float64)  # [M, 3]
    if jitter and M:
        u = torch.rand((M, 3), generator=generator, dtype=torch.float64).numpy()
        offset = _JITTER_MARGIN + u * (1.0 - 2 * _JITTER_MARGIN)  # [M, 3] in (0, 1)
    else:
        offset = np.full((M, 3), 0.5)
    dims = np.array([X, Y, Z], np.float64)
    normalised = (cell + offset) / dims * 2.0 - 1.0  # [M, 3] in (-1, 1)
    xyz = normalised * np.array([l / 2, w / 2, h / 2])  # [M, 3] m
    intensity = (np.clip(values[Z, kx, ky].astype(np.float64), -1.0, 1.0) + 1.0) / 2.0
    # float32 rounding must not carry a point past a face: the largest float32 <= each half
    half = np.array([l / 2, w / 2, h / 2])
    half32 = half.astype(np.float32)
    half32 = np.where(half32 > half, np.nextafter(half32, np.float32(0)), half32)
    out = np.zeros((M, 5), np.float32)
    out[:, :3] = np.clip(xyz.astype(np.float32), -half32, half32)
    out[:, 3] = intensity * INTENSITY_SCALE
    return out


# ---------------------------------------------------------------------------------------------
# A bank's signals as a generator reads them (training, evaluation, benchmarks)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SignalSet:
    """Signals of one modality with their conditions: a generator's training set, or the real
    held-out set it is scored against.

    signals: `[N, C, S, S]` float32 in [-1, 1] (camera crops, or LiDAR grids `[N, Z+1, X, Y]`).
    conditions: the N signals' `ObjectConditions`.
    object_index: `[N]` int64, the bank index of each signal's object (camera crops of one
        object share it).
    """

    signals: Tensor
    conditions: ObjectConditions
    object_index: Tensor

    def __len__(self) -> int:
        return len(self.signals)


def bank_signals(
    bank: ObjectBank, data: GeneratorDataConfig, *, progress: bool = True
) -> SignalSet:
    """The signals of `bank` cut as a generator config's `data` section says (modality, image
    size or LiDAR grid, min_visibility / min_points, classes): the one rule for the training
    set and the held-out set. ValueError (naming the bank) when no signal passes."""
    if data.modality == "camera":
        crops = camera_crops(
            bank,
            size=data.image_size,
            min_visibility=data.min_visibility,
            classes=data.classes,
            progress=progress,
        )
        signals = crops.images  # [N, 4, S, S]
    else:
        crops = lidar_grids(
            bank,
            grid=data.lidar_grid,
            min_points=data.min_points,
            classes=data.classes,
            progress=progress,
        )
        signals = crops.grids  # [N, Z + 1, X, Y]
    if len(signals) == 0:
        raise ValueError(
            f"{bank.index_path}: no {data.modality} signal passes data.min_visibility / "
            f"data.min_points for classes {data.classes or 'all'}"
        )
    return SignalSet(signals.float(), crops.conditions, crops.object_index)
