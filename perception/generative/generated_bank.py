"""A bank of GENERATED objects, in the real object bank's format, so GT-paste reads it unchanged
(`tools/create_data.py generated`).

Each generated object is a real object of a training bank (`perception.generative.bank`) with
its geometry kept and its signals replaced by a generator's samples, so both sensors agree:

- kept exactly: class, attribute, size, `box_lidar` (the pose it was at), ego distance,
  velocity, and every camera view's geometry (camera, crop box, 2-D box, image size, visible
  fraction, depth, view angle, intrinsics, box-to-camera pose); `sample_token`,
  `instance_token` and `scene_name` are kept for provenance (and the paste's leakage check),
  `annotation_token` becomes `gen-<seed>-<index>`.
- LiDAR (when a LiDAR generator is given): one occupancy grid sampled for the condition
  (class, size, and `crops.lidar_pose` of `box_lidar`: the LiDAR's view angle and range),
  decoded to points (`crops.grid_to_points`: jittered inside occupied cells, inside the box),
  then given the real sensor's point count, sweeps and beam pattern (`decode_lidar_points`):

  1. Count. The generator's occupancy is conditioned on range, but a grid cell decodes to
     one point while a real object puts several points (10 merged sweeps) in one cell: on
     the 30-scene rare-class training bank, at 32x32x8 cells, the median real points per
     occupied cell is 1.4 (bicycle), 6.1 (construction vehicle), 4.4 (car) within 20 m and
     1.1 / 3.1 / 1.7 beyond, so decoding one point per cell would give too few points and
     the wrong fall-off with range. The number of points is drawn instead from the real
     bank's own points-vs-range relation: per class `log n = a_c + b_c log r + e` fitted by
     least squares on the bank's objects with at least one point, `e` drawn from the fit's
     own residuals (`PointCountModel`; a class with fewer than `MIN_CLASS_FIT` such objects
     shares the slope and residuals fitted over all classes, with its own intercept). On
     that bank the slopes are -2.2 .. -3.4 (about the inverse square of range), the
     residuals' spread 0.5-1.2 in log n, and counts drawn at the real objects' ranges have
     the real 10/50/90% quantiles: pedestrian 6/46/406 (real 6/47/424), car 18/155/3528
     (real 14/183/3311), bicycle (59 objects) 8/64/897 (real 7/101/492). The count thins the
     decoded points (a random subset of the occupied cells) when the grid has more cells
     than the count, and draws further jittered points in random occupied cells when it has
     fewer.
  2. Sweeps. Each point gets a time lag drawn from the real object's own points' lags (the
     bank's objects merge `settings.sweeps` sweeps; about 10% of their points are keyframe
     points), or from its class's pooled lags when the real object has no point. The bank
     holds earlier sweeps' points motion-compensated into the keyframe box, as these are.
  3. Beam pattern. The real keyframe points of an object lie exactly on the LiDAR's beam
     elevations (measured on the training bank: the median and 99th percentile distance of
     a keyframe point's elevation from the nearest HDL-32E beam are both 0.000 deg, while
     earlier sweeps' points, seen from where the ego was, lie 0.17 deg (median) off), so
     each keyframe point (lag 0) is moved vertically onto the nearest beam's elevation as
     seen from the LiDAR at `box_lidar` (range and azimuth kept), and dropped when that puts
     it outside the box. Earlier sweeps' points keep their generated positions (their rings
     depend on the ego's unknown motion). `beams_deg=None` switches this off.

- Cameras (when a camera generator is given): per real view, one crop sampled for (class,
  size, the view's view angle and depth, its camera), resized from S x S to the crop box's
  size (bilinear); RGB to uint8, alpha > 0 -> the mask.

Either generator may be None: that sensor keeps the real object's signal (bank.json
`generation.signals` says which are generated). A generated object whose conditions fall
outside a generator's training range (`ConditionRange.check`: class, size, depth, sensor) is
skipped and counted per class and reason (`GeneratedObjects.skipped`), not an error.

    objects = generate_objects(bank, lidar_generator="work/hart_lidar",
                               camera_generator="work/hart_camera", classes=["bicycle"], seed=0)
    write_generated_bank(objects, "data/bank-generated", source_bank=bank)
    ObjectBank.open("data/bank-generated").source   # "generated"
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from ..datasets.synth.lidar import ELEVATIONS_DEG as SYNTH_ELEVATIONS_DEG
from ..structures.classes import CAMERA_NAMES, CLASS_NAMES
from .bank import BankObject, BankSummary, CameraView, ObjectBank, write_objects_bank
from .conditions import LIDAR_SENSOR, ConditionRange, ObjectConditions
from .crops import grid_to_points, lidar_pose

__all__ = [
    "HDL32E_ELEVATIONS_DEG",
    "GeneratedObjects",
    "PointCountModel",
    "SignalGenerator",
    "decode_lidar_points",
    "generate_objects",
    "load_signal_generator",
    "signal_to_crop",
    "write_generated_bank",
]

# nuScenes' LIDAR_TOP (Velodyne HDL-32E) beam elevations, deg (as the synthetic world casts).
HDL32E_ELEVATIONS_DEG: tuple[float, ...] = tuple(float(v) for v in SYNTH_ELEVATIONS_DEG)
# A class with fewer objects with points than this shares the slope and spread of the count fit.
MIN_CLASS_FIT = 20
# Ranges below this (m) are taken as this in the count fit (log r).
MIN_RANGE_M = 1.0
# Quantiles of the count fit's residuals kept (and drawn from, interpolated).
RESIDUAL_LEVELS = 101
# Objects per class read to pool the time lags of a class (for real objects without points).
LAG_POOL_OBJECTS = 32

# sample_fn(conditions, generator) -> signals [B, C, S, S] float in [-1, 1]
SampleFn = Callable[[ObjectConditions, torch.Generator], Tensor]


# ---------------------------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SignalGenerator:
    """A generator of one modality as `generate_objects` uses it.

    Attributes:
        sample: `sample(conditions, generator) -> [B, C, S, S]` float in [-1, 1] (camera:
            C = 4, RGB + alpha; LiDAR: C = Z + 1, the `crops` occupancy grid layout).
        ranges: the training conditions' range; conditions outside it are skipped.
        provenance: JSON-safe: where it came from and how it samples (path, kind, modality,
            sampling settings), written into bank.json.
    """

    sample: SampleFn
    ranges: ConditionRange
    provenance: dict[str, Any] = field(default_factory=dict)


def load_signal_generator(
    path: str | Path, *, modality: str, guidance: float | None = None
) -> SignalGenerator:
    """The trained generator of a work dir, stage dir or checkpoint, of any registered kind
    (`perception.generative.registry.load_any_generator`: hart, ldm, ...), sampling with its
    config's `sampling` settings (those its sampler takes; HART's residual head as its config
    says; `guidance` overrides the config's). Raises ValueError naming the path when it is
    missing, unreadable, of an unknown kind or of the other modality (`data.modality`)."""
    import inspect

    from ..checkpoint import CheckpointError
    from .registry import load_any_generator

    if modality not in ("camera", "lidar"):
        raise ValueError(f"modality={modality!r}: must be 'camera' or 'lidar'")
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such generator work dir or checkpoint")
    try:
        loaded = load_any_generator(path)
    except (CheckpointError, FileNotFoundError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    config = loaded.config
    if config.data.modality != modality:
        raise ValueError(
            f"{path}: a {config.data.modality} generator (data.modality: "
            f"{config.data.modality}), not a {modality} one"
        )
    takes = inspect.signature(loaded._sample).parameters
    settings = {k: v for k, v in config.sampling.model_dump().items() if k in takes}
    if guidance is not None:
        settings["guidance"] = float(guidance)
    head = getattr(config, "residual_head", None)
    if head is not None and "use_residual" in takes:
        settings["use_residual"] = bool(head.enabled)

    def sample_fn(conditions: ObjectConditions, generator: torch.Generator) -> Tensor:
        return loaded.sample(conditions, generator=generator, **settings).signals

    provenance = {
        "path": str(path.resolve()),
        "kind": loaded.kind,
        "name": getattr(config, "name", loaded.kind),
        "modality": modality,
        "signal": [config.data.in_channels, config.data.signal_size, config.data.signal_size],
        "sampling": settings,
    }
    return SignalGenerator(sample=sample_fn, ranges=loaded.ranges, provenance=provenance)


def _as_generator(
    value: SignalGenerator | tuple[SampleFn, ConditionRange] | str | Path | None,
    *,
    modality: str,
    guidance: float | None,
) -> SignalGenerator | None:
    if value is None or isinstance(value, SignalGenerator):
        return value
    if isinstance(value, str | Path):
        return load_signal_generator(value, modality=modality, guidance=guidance)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], ConditionRange):
        return SignalGenerator(
            sample=value[0], ranges=value[1], provenance={"kind": "callable", "modality": modality}
        )
    raise TypeError(
        f"{modality}_generator: expected a work dir, a (sample_fn, ConditionRange) pair or a "
        f"SignalGenerator, got {type(value).__name__}"
    )


# ---------------------------------------------------------------------------------------------
# LiDAR: points per object vs range, fitted on the real bank
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PointCountModel:
    """Per class, `log n = intercept + slope * log r + e` (n: an object's points, all sweeps;
    r: its box centre's ground-plane range from the LiDAR, m, at least `MIN_RANGE_M`), fitted
    by least squares on a bank's objects with at least one point; `e` is drawn from the fit's
    own residuals (their `RESIDUAL_LEVELS` quantiles, interpolated): the residuals are skewed
    (partly occluded objects make a long tail of few points), which a Gaussian would not keep.
    `maximum` caps a draw at the class's largest real count."""

    intercept: dict[str, float]
    slope: dict[str, float]
    spread: dict[str, float]  # the residuals' standard deviation (for reading)
    residuals: dict[str, tuple[float, ...]]  # RESIDUAL_LEVELS quantiles of the residuals
    maximum: dict[str, int]
    fitted: dict[str, int]  # objects with points each class's fit used

    @classmethod
    def fit(cls, bank: ObjectBank) -> PointCountModel:
        """From `bank`'s metadata (no points are read). Classes with at least `MIN_CLASS_FIT`
        objects with points (and ranges not all alike) get their own slope and residuals; the
        others share those fitted over every class (per-class intercepts), with their own
        intercept. A class without any object with points is left out."""
        boxes = bank.boxes_lidar.astype(np.float64)  # [N, 9]
        counts = bank.num_points
        labels = bank.labels
        seen = counts > 0
        x_all = np.log(np.maximum(np.hypot(boxes[:, 0], boxes[:, 1]), MIN_RANGE_M))  # [N]
        y_all = np.log(np.maximum(counts, 1).astype(np.float64))  # [N]
        per_class = {}
        for c in np.unique(labels[seen]):
            rows = seen & (labels == c)
            per_class[bank.classes[int(c)]] = (x_all[rows], y_all[rows], int(counts[rows].max()))
        if not per_class:
            raise ValueError(f"{bank.index_path}: no object with LiDAR points to fit counts to")
        # the slope shared by all classes: least squares with one intercept per class
        sxy = sum(float(((x - x.mean()) * (y - y.mean())).sum()) for x, y, _ in per_class.values())
        sxx = sum(float(((x - x.mean()) ** 2).sum()) for x, y, _ in per_class.values())
        shared_slope = sxy / sxx if sxx > 0 else -2.0  # no range spread at all: inverse square
        shared = np.concatenate(
            [y - y.mean() - shared_slope * (x - x.mean()) for x, y, _ in per_class.values()]
        )
        levels = np.linspace(0.0, 1.0, RESIDUAL_LEVELS)
        out: dict[str, dict] = {
            k: {} for k in ("intercept", "slope", "spread", "residuals", "maximum", "fitted")
        }
        for name, (x, y, top) in per_class.items():
            own = len(x) >= MIN_CLASS_FIT and float(x.std()) > 0.05
            slope = float(np.polyfit(x, y, 1)[0]) if own else shared_slope
            intercept = float((y - slope * x).mean())
            residual = y - intercept - slope * x if own else shared
            quantiles = tuple(float(v) for v in np.quantile(residual, levels))
            values = (intercept, slope, float(residual.std()), quantiles, top, len(x))
            for key, value in zip(out, values):
                out[key][name] = value
        return cls(**out)

    def draw(self, class_name: str, range_m: float, rng: np.random.Generator) -> int:
        """One object's point count at `range_m`, in [1, the class's largest real count]."""
        if class_name not in self.intercept:
            raise ValueError(f"class {class_name!r}: the real bank has no such object with points")
        x = math.log(max(range_m, MIN_RANGE_M))
        quantiles = self.residuals[class_name]
        levels = np.linspace(0.0, 1.0, len(quantiles))
        residual = float(np.interp(rng.random(), levels, quantiles))
        value = math.exp(self.intercept[class_name] + self.slope[class_name] * x + residual)
        return int(min(max(round(value), 1), self.maximum[class_name]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": "log n = intercept + slope * log(max(range, 1 m)) + a residual drawn from "
            "the fit's residual quantiles",
            **{f.name: dict(getattr(self, f.name)) for f in fields(self)},
        }


def decode_lidar_points(
    grid: Tensor | np.ndarray,
    size: np.ndarray,
    box_lidar: np.ndarray,
    *,
    count: int,
    lags: np.ndarray,
    generator: torch.Generator,
    rng: np.random.Generator,
    beams_deg: Sequence[float] | None = HDL32E_ELEVATIONS_DEG,
) -> np.ndarray:
    """A generated occupancy grid -> an object's points as the LiDAR would record them
    (module docstring: count, sweeps, beam pattern).

    Args:
        grid: `[Z + 1, X, Y]` float (`crops` layout).
        size: `[3]` (w, l, h) m.
        box_lidar: `[>= 7]` (x, y, z, w, l, h, yaw, ...) the box in the LiDAR frame (the sensor
            at the origin): where the beams are seen from.
        count: points wanted (before the beam pattern drops any).
        lags: `[K]` float time lags (s) to draw each point's from (K = 0: all 0).
        generator: CPU generator for the jitter inside cells.
        rng: for the subset of cells and the lags.
        beams_deg: the beams' elevations (deg); None: no beam pattern.

    Returns:
        `[M, 5]` float32 (x, y, z, intensity, time_lag) in the box frame, every point inside the
        box (`|x| <= l/2, |y| <= w/2, |z| <= h/2`); M <= count (0 when no cell is occupied).
    """
    first = grid_to_points(grid, size, generator=generator)  # [C, 5] one per occupied cell
    cells = len(first)
    if cells == 0 or count <= 0:
        return np.zeros((0, 5), np.float32)
    if count <= cells:
        points = first[np.sort(rng.choice(cells, count, replace=False))]
    else:
        rounds = math.ceil(count / cells) - 1
        more = np.concatenate([grid_to_points(grid, size, generator=generator)
                               for _ in range(rounds)])  # fmt: skip
        extra = more[np.sort(rng.choice(len(more), count - cells, replace=False))]
        points = np.concatenate([first, extra])  # [count, 5]
    lags = np.asarray(lags, np.float32).reshape(-1)
    points[:, 4] = rng.choice(lags, len(points)) if len(lags) else 0.0
    if beams_deg is None:
        return np.ascontiguousarray(points, dtype=np.float32)
    keyframe = points[:, 4] == 0
    if not keyframe.any():
        return np.ascontiguousarray(points, dtype=np.float32)
    box = np.asarray(box_lidar, np.float64)
    c, s = math.cos(box[6]), math.sin(box[6])
    p = points[keyframe].astype(np.float64)  # [K, 5] box frame
    x = c * p[:, 0] - s * p[:, 1] + box[0]  # LiDAR frame
    y = s * p[:, 0] + c * p[:, 1] + box[1]
    z = p[:, 2] + box[2]
    ground = np.hypot(x, y)  # [K]
    beams = np.radians(np.asarray(beams_deg, np.float64))  # [R]
    elevation = np.arctan2(z, ground)
    nearest = beams[np.abs(elevation[:, None] - beams[None, :]).argmin(1)]  # [K]
    z_box = ground * np.tan(nearest) - box[2]  # the point moved onto its beam, box frame
    half_h = float(np.float32(size[2])) / 2
    inside = np.abs(z_box) <= half_h
    snapped = points[keyframe]
    snapped[:, 2] = np.clip(z_box, -half_h, half_h).astype(np.float32)
    return np.ascontiguousarray(
        np.concatenate([snapped[inside], points[~keyframe]]), dtype=np.float32
    )


# ---------------------------------------------------------------------------------------------
# Camera
# ---------------------------------------------------------------------------------------------
def signal_to_crop(
    signal: Tensor | np.ndarray, crop_box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A generated camera signal `[4, S, S]` float in [-1, 1] (RGB, alpha) -> the crop of
    `crop_box` (u0, v0, u1, v1): `(crop [h, w, 3] uint8 RGB, mask [h, w] bool)` with
    `h = v1 - v0`, `w = u1 - u0`; bilinear (area-averaged when shrinking), mask = alpha > 0."""
    values = (
        signal.detach().float().cpu().numpy()
        if isinstance(signal, Tensor)
        else np.asarray(signal, np.float32)
    )
    if values.ndim != 3 or values.shape[0] != 4:
        raise ValueError(f"signal: must be [4, S, S] (RGB + alpha), got {list(values.shape)}")
    u0, v0, u1, v1 = (int(v) for v in crop_box)
    h, w = v1 - v0, u1 - u0
    if h <= 0 or w <= 0:
        raise ValueError(f"crop_box: {crop_box} is empty")
    image = np.ascontiguousarray(values.transpose(1, 2, 0))  # [S, S, 4]
    S = image.shape[0]
    shrink = h < S and w < S
    resized = cv2.resize(
        image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    ).reshape(h, w, 4)
    rgb = np.round((np.clip(resized[..., :3], -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(resized[..., 3] > 0)


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------
class GeneratedObjects(list):
    """The generated `BankObject`s (a list, in bank order) and what happened on the way.

    Attributes:
        requested: class -> real objects x `per_object` asked for.
        skipped: class -> reason -> objects skipped (reason "<sensor>:<field>": a condition
            outside that generator's training range, e.g. "lidar:size", "camera:depth").
        empty_lidar: class -> generated objects left with no LiDAR point (kept).
        empty_masks: class -> generated camera views whose mask has no pixel (kept; the
            compositor draws nothing of them).
        settings: how they were made (written into bank.json's `generation`).
    """

    def __init__(
        self,
        objects: Sequence[BankObject] = (),
        *,
        requested: Mapping[str, int] | None = None,
        skipped: Mapping[str, Mapping[str, int]] | None = None,
        empty_lidar: Mapping[str, int] | None = None,
        empty_masks: Mapping[str, int] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(objects)
        self.requested = dict(requested or {})
        self.skipped = {k: dict(v) for k, v in (skipped or {}).items()}
        self.empty_lidar = dict(empty_lidar or {})
        self.empty_masks = dict(empty_masks or {})
        self.settings = dict(settings or {})

    @property
    def generated(self) -> dict[str, int]:
        """class -> generated objects."""
        counts = Counter(o.class_name for o in self)
        return {c: counts.get(c, 0) for c in self.requested}


def _out_of_range(ranges: ConditionRange, conds: ObjectConditions) -> str | None:
    """The field (e.g. "size") of the first check `conds` (one row) fails, else None."""
    try:
        ranges.check(conds)
    except ValueError as exc:
        return str(exc).split(":", 1)[0]
    return None


def _conditions(rows: Sequence[tuple[str, np.ndarray, float, float, int]]) -> ObjectConditions:
    """(class, size [3], view angle, depth, sensor) rows -> ObjectConditions."""
    return ObjectConditions(
        label=torch.tensor([CLASS_NAMES.index(r[0]) for r in rows], dtype=torch.long),
        size=torch.from_numpy(np.stack([np.asarray(r[1], np.float32) for r in rows])),
        view_angle=torch.tensor([r[2] for r in rows], dtype=torch.float32),
        depth=torch.tensor([r[3] for r in rows], dtype=torch.float32),
        sensor=torch.tensor([r[4] for r in rows], dtype=torch.long),
    )


def _sample(
    generator: SignalGenerator,
    rows: Sequence[tuple[str, np.ndarray, float, float, int]],
    *,
    batch_size: int,
    torch_generator: torch.Generator,
    channels: int | None,
    name: str,
) -> list[Tensor]:
    """One signal `[C, S, S]` per row, sampled `batch_size` rows at a time."""
    out: list[Tensor] = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        signals = generator.sample(_conditions(chunk), torch_generator)
        if signals.dim() != 4 or signals.shape[0] != len(chunk):
            raise ValueError(
                f"{name}: its sample returned {list(signals.shape)} for {len(chunk)} conditions "
                "(expected [B, C, S, S])"
            )
        if channels is not None and signals.shape[1] != channels:
            raise ValueError(
                f"{name}: samples have {signals.shape[1]} channels, a camera crop needs "
                f"{channels} (RGB + alpha): is it a LiDAR generator?"
            )
        if channels is None and signals.shape[1] < 2:
            raise ValueError(f"{name}: samples have {signals.shape[1]} channels, not Z + 1 >= 2")
        out += list(signals.detach().float().cpu())
    return out


def _pooled_lags(bank: ObjectBank, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """class -> the time lags of the points of up to `LAG_POOL_OBJECTS` of its objects."""
    pooled = {}
    for name in classes:
        chosen = np.flatnonzero((bank.labels == bank.classes.index(name)) & (bank.num_points > 0))
        lags = [bank[int(i)].points[:, 4] for i in chosen[:LAG_POOL_OBJECTS]]
        pooled[name] = np.concatenate(lags) if lags else np.zeros(0, np.float32)
    return pooled


def generate_objects(
    real_bank: ObjectBank,
    *,
    camera_generator: SignalGenerator | tuple[SampleFn, ConditionRange] | str | Path | None = None,
    lidar_generator: SignalGenerator | tuple[SampleFn, ConditionRange] | str | Path | None = None,
    classes: Sequence[str],
    per_object: int = 1,
    seed: int = 0,
    guidance: float | None = None,
    batch_size: int = 64,
    progress: bool = True,
    point_counts: PointCountModel | None = None,
    beams_deg: Sequence[float] | None = HDL32E_ELEVATIONS_DEG,
) -> GeneratedObjects:
    """`per_object` generated objects for every object of `classes` in `real_bank` (module
    docstring: what is kept, what is generated and how).

    Args:
        real_bank: a training bank cut from a dataroot (`source` "bank").
        camera_generator, lidar_generator: a work dir (loaded with `load_signal_generator`,
            `guidance` overriding its config's), a `(sample_fn, ConditionRange)` pair
            (`sample_fn(conditions, generator) -> [B, C, S, S]`) or a `SignalGenerator`; None:
            that sensor keeps the real signal. At least one must be given.
        classes: the classes to generate (each must have objects in the bank).
        per_object: generated objects per real object.
        seed: seeds the sampling (a `torch.Generator`) and the point draws; part of each
            generated object's `annotation_token` (`gen-<seed>-<index>`).
        batch_size: objects per generator call (and camera views per call).
        point_counts: the points-vs-range model (default: fitted on `real_bank`, all classes).
        beams_deg: beam elevations of the keyframe points' beam pattern (None: off).

    Returns:
        `GeneratedObjects` (a list of `BankObject`, bank indices 0..N-1 in order), with the
        requested / skipped / empty counts per class. Raises ValueError naming the argument:
        no generator, a generated bank as the source, a class without objects, `per_object`
        or `batch_size` < 1.
    """
    from tqdm import tqdm

    if per_object < 1:
        raise ValueError(f"per_object={per_object}: must be >= 1")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    if not classes:
        raise ValueError("classes: give at least one class to generate")
    if real_bank.source != "bank":
        raise ValueError(
            f"real_bank: {real_bank.index_path} is a {real_bank.source} bank; generate from a "
            "bank cut from a dataroot (tools/create_data.py objects)"
        )
    camera = _as_generator(camera_generator, modality="camera", guidance=guidance)
    lidar = _as_generator(lidar_generator, modality="lidar", guidance=guidance)
    if camera is None and lidar is None:
        raise ValueError(
            "camera_generator, lidar_generator: give at least one (with neither, the objects "
            "would be the real ones)"
        )
    selection = real_bank.filter(classes=list(classes))  # names a class without objects
    counts_model = None
    pooled: dict[str, np.ndarray] = {}
    if lidar is not None:
        counts_model = point_counts or PointCountModel.fit(real_bank)
        pooled = _pooled_lags(real_bank, classes)
    torch_generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    requested: Counter[str] = Counter()
    skipped: dict[str, Counter[str]] = defaultdict(Counter)
    empty: Counter[str] = Counter()
    empty_masks: Counter[str] = Counter()
    objects: list[BankObject] = []
    jobs = [(i, k) for i in range(len(selection)) for k in range(per_object)]
    bar = tqdm(total=len(jobs), desc="generated objects", unit="obj", disable=not progress)
    with bar:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            real = {i: selection[i] for i in sorted({i for i, _ in chunk})}
            kept: list[BankObject] = []
            lidar_rows, camera_rows = [], []
            for i, _ in chunk:
                obj = real[i]
                requested[obj.class_name] += 1
                angle, depth = lidar_pose(obj.box_lidar)
                l_row = (obj.class_name, obj.size, angle, depth, LIDAR_SENSOR)
                c_rows = [
                    (obj.class_name, obj.size, v.view_angle, v.depth, CAMERA_NAMES.index(v.camera))
                    for v in obj.views
                ]
                reason = None
                if lidar is not None:
                    bad = _out_of_range(lidar.ranges, _conditions([l_row]))
                    reason = f"lidar:{bad}" if bad else None
                if (
                    reason is None
                    and lidar is not None
                    and obj.class_name not in (counts_model.intercept)
                ):
                    reason = "lidar:no_real_points"
                if reason is None and camera is not None:
                    for row in c_rows:
                        bad = _out_of_range(camera.ranges, _conditions([row]))
                        if bad:
                            reason = f"camera:{bad}"
                            break
                if reason is not None:
                    skipped[obj.class_name][reason] += 1
                    continue
                kept.append(obj)
                lidar_rows.append(l_row)
                camera_rows += c_rows
            grids = (
                _sample(lidar, lidar_rows, batch_size=batch_size, torch_generator=torch_generator,
                        channels=None, name="lidar_generator")
                if lidar is not None and kept
                else []
            )  # fmt: skip
            crops = (
                _sample(camera, camera_rows, batch_size=batch_size,
                        torch_generator=torch_generator, channels=4, name="camera_generator")
                if camera is not None and camera_rows
                else []
            )  # fmt: skip
            view_at = 0
            for j, obj in enumerate(kept):
                index = len(objects)
                points = obj.points
                if lidar is not None:
                    own = obj.points[:, 4]
                    points = decode_lidar_points(
                        grids[j],
                        obj.size,
                        obj.box_lidar,
                        count=counts_model.draw(obj.class_name, lidar_rows[j][3], rng),
                        lags=own if len(own) else pooled.get(obj.class_name, own),
                        generator=torch_generator,
                        rng=rng,
                        beams_deg=beams_deg,
                    )
                    if not len(points):
                        empty[obj.class_name] += 1
                views = obj.views
                if camera is not None:
                    views = tuple(
                        _generated_view(v, crops[view_at + n]) for n, v in enumerate(obj.views)
                    )
                    view_at += len(obj.views)
                    empty_masks[obj.class_name] += sum(not v.mask.any() for v in views)
                objects.append(_generated_object(obj, index, seed, points, views))
            bar.update(len(chunk))

    settings = {
        "seed": int(seed),
        "per_object": int(per_object),
        "classes": list(classes),
        "batch_size": int(batch_size),
        "signals": {
            "lidar": "generated" if lidar is not None else "real",
            "camera": "generated" if camera is not None else "real",
        },
        "generators": {
            "lidar": dict(lidar.provenance) if lidar is not None else None,
            "camera": dict(camera.provenance) if camera is not None else None,
        },
        "lidar_points": None
        if lidar is None
        else {
            "decode": "crops.grid_to_points (jittered in occupied cells), then a count drawn "
            "from the fitted points-vs-range model (a subset of cells, or extra jittered "
            "points in occupied cells), time lags drawn from the real object's points, "
            "keyframe points moved onto the nearest beam elevation",
            "beams_deg": list(beams_deg) if beams_deg is not None else None,
            "counts": counts_model.to_dict(),
        },
    }
    return GeneratedObjects(
        objects,
        requested={c: requested.get(c, 0) for c in classes},
        skipped={c: dict(skipped[c]) for c in classes if skipped.get(c)},
        empty_lidar={c: empty[c] for c in classes if empty.get(c)},
        empty_masks={c: empty_masks[c] for c in classes if empty_masks.get(c)},
        settings=settings,
    )


def _generated_view(view: CameraView, signal: Tensor) -> CameraView:
    crop, mask = signal_to_crop(signal, view.crop_box)
    return CameraView(
        camera=view.camera,
        crop=crop,
        mask=mask,
        crop_box=view.crop_box,
        box2d=view.box2d,
        image_size=view.image_size,
        visible_fraction=view.visible_fraction,
        depth=view.depth,
        view_angle=view.view_angle,
        intrinsics=view.intrinsics,
        box_to_camera=view.box_to_camera,
    )


def _generated_object(
    obj: BankObject, index: int, seed: int, points: np.ndarray, views: tuple[CameraView, ...]
) -> BankObject:
    return BankObject(
        index=index,
        class_name=obj.class_name,
        attribute=obj.attribute,
        size=obj.size,
        velocity=obj.velocity,
        box_lidar=obj.box_lidar,
        ego_distance=obj.ego_distance,
        points=points,
        views=views,
        sample_token=obj.sample_token,
        instance_token=obj.instance_token,
        annotation_token=f"gen-{seed}-{index}",
        scene_name=obj.scene_name,
        split=obj.split,
    )


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def write_generated_bank(
    objects: Sequence[BankObject],
    out: str | Path,
    *,
    source_bank: ObjectBank,
    generators: Mapping[str, Any] | None = None,
    seed: int | None = None,
    include_real: bool = False,
    overwrite: bool = False,
) -> BankSummary:
    """Writes generated objects as a bank folder `out` (`bank.write_objects_bank`) that
    `ObjectBank.open` and GT-paste read: bank.json's `source` is "generated"; its `dataset`
    block (root, version, fingerprint, split, scenes) and `training` are `source_bank`'s, so
    the paste's version, training and leakage checks judge the data the objects came from;
    `generation` records the generators' provenance (`generators`: sensor -> path, kind,
    sampling settings; default the `GeneratedObjects`' own), the seed, which signals are
    generated, the point-count model and the counts (requested, generated, skipped).

    `include_real`: the bank also holds `source_bank`'s real objects of the generated classes
    (first, unchanged: their own tokens), for a "real + generated" paste that draws from both
    (per class, generated : real = `per_object` : 1 less the skipped);
    `generation.real_objects` counts them per class."""
    if source_bank.source != "bank":
        raise ValueError(
            f"source_bank: {source_bank.index_path} is a {source_bank.source} bank, not one cut "
            "from a dataroot"
        )
    made = dict(getattr(objects, "settings", {}))
    generation = {
        **made,
        "seed": made.get("seed") if seed is None else int(seed),
        "generators": made.get("generators") if generators is None else dict(generators),
        "source_bank": {
            "path": str(Path(source_bank.path).resolve()),
            "objects": len(source_bank),
            "per_class": source_bank.counts(),
        },
    }
    if isinstance(objects, GeneratedObjects):
        generation.update(
            requested=objects.requested,
            generated=objects.generated,
            skipped=objects.skipped,
            empty_lidar=objects.empty_lidar,
            empty_masks=objects.empty_masks,
        )
    written = list(objects)
    generation["real_objects"] = None
    if include_real:
        classes = made.get("classes") or sorted(
            {o.class_name for o in written}, key=CLASS_NAMES.index
        )
        real = list(source_bank.filter(classes=classes)) if classes else []
        generation["real_objects"] = dict(Counter(o.class_name for o in real))
        written = real + written
    return write_objects_bank(
        written,
        out,
        dataset=source_bank.dataset,
        training=source_bank.training,
        settings=source_bank.settings,
        source="generated",
        extra={"generation": generation},
        overwrite=overwrite,
    )
