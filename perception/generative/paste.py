"""GT-paste: objects of an object bank placed into a training sample (`data.paste`).

The LiDAR and annotation side lives here; the camera compositing is
`perception.generative.paste_camera.composite_objects`, called with the boxes placed here.

    paste = build_paste(config)           # None when data.paste.enabled is false
    sample = paste(sample, rng)           # the sample as loaded, before any augmentation
    paste.stats()                         # counters: pasted, skipped and why, points removed

Per sample and per class of `data.paste.classes`, `count` objects are drawn from the bank
(objects with at least `min_points` points and, as the dataset's GT filter, within the class's
evaluation range). Each is placed as follows (frames: docs/frames.md; all in the sample's
keyframe LiDAR frame, before augmentation, so resize/crop/flip/rotate and the global LiDAR
augmentation apply to pasted and real objects alike):

- Pose: the object keeps its own range from the LiDAR origin, its heading relative to the
  sensor ray and its box height z; only the azimuth is new (uniform). The distance and
  yaw-to-ray distribution of pasted objects is thus the class's own in the bank, and the
  viewing geometry matches the object's crops. z: the generated world's ground is flat and
  every sample's LiDAR sits at the same height, so the original box z stands on the ground
  (on real, sloped roads it may float or sink a little). No road raster is used: a pose is
  anywhere in `data.point_range` (the generated world has none; real nuScenes' map is not
  read).
- Collision: a pose whose BEV box overlaps (rotated IoU > 0, `perception.ops.bev_iou`) an
  existing GT box or an object pasted before is rejected, as is one where, seen from the
  LiDAR, it would cover more than `max_shadow` of a farther box's azimuth span (or be that
  much covered by a nearer one), and one whose box already holds more than
  `max_scene_points` scene points above its lowest 0.3 m (a building, a pole, an
  unannotated object). `placement_tries` azimuths are tried, then the object is skipped
  (counted).
- Points: moved with the box; only those of the sweeps the scene has (time lags within
  0.02 s of one of the scene's: `data.sweeps` may differ from the bank's). Turning an object
  about the sensor's vertical axis keeps every point's range and elevation and the side of
  the object the sensor saw, so the scan pattern stays the one the same LiDAR would record
  there: the points are kept as they are, no re-dropping by beam pattern (which only a move
  to another range would need). The bank
  motion-compensates earlier sweeps' points into the keyframe box; they are shifted back by
  velocity x time lag in the new frame, so a moving pasted object trails as real ones do.
- Occlusion (sensor origin: the LiDAR frame origin), on a range image of
  `occlusion_cell_deg` cells: a point is hidden when a point of another object (the scene
  counts as one) lies in its ray's cell or one of the 8 around it and is nearer. Scene
  points behind a pasted object and pasted points behind the scene go; scene points inside
  a pasted box go too (mmdet3d's habit). A pasted object left with fewer than
  `min_points` points (or no keyframe point) is dropped and the rest recomputed (counted).
  Existing boxes keep `gt_num_points` up to date; one left with no keyframe point is removed
  from the targets, as the dataset drops GT without points (counted: `gt_hidden`).
- Targets: the pasted boxes are appended to gt_boxes / gt_labels / gt_attributes /
  gt_num_points with the bank object's velocity turned into the new heading (unknown: 0, as
  the dataset trains unknown velocities); `Sample.pasted` records each object.
- Cameras (`data.paste.cameras`, and images loaded): once the LiDAR side has settled which
  objects stay, `composite_objects` draws them with the sample's existing boxes as nearer
  occluders; its record is each object's `camera` entry. If it refuses the sample
  (ValueError), the sample is returned unchanged (counted: `camera_failed`), never a LiDAR
  paste the cameras do not show. Without images (a LiDAR-only model, or the trainer's
  LiDAR-first phase) only the LiDAR side runs (counted: `camera_skipped`).

A sample where nothing could be placed is returned unchanged (but for its counters) and
counted (`stats()`); the counters are also logged (logger `perception.generative.paste`,
warning level) at the first skip and every `log_every` samples with skips, from each loader
worker. Every sample returned carries its own counters (`Sample.paste_counts`: the `stats()`
keys, `pasted/<class>` where non-zero): collate sums them per batch and the trainer writes
them to log.jsonl (`paste`, `paste_total`), so the skips made in loader workers are counted in
the training log.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..structures import ATTRIBUTE_NAMES, CLASS_NAMES, Boxes3D, Sample
from .bank import BankFileError, BankObject, ObjectBank

if TYPE_CHECKING:
    from ..config.schema import ExperimentConfig, PasteConfig

__all__ = [
    "ClassPlan",
    "GTPaste",
    "build_paste",
    "camera_compositor",
    "hidden_points",
    "object_points",
    "open_paste_bank",
]

logger = logging.getLogger(__name__)

# composite_objects(sample, boxes [M, 9], objects, *, rng) -> (sample, records)
Compositor = Callable[..., tuple[Sample, list[dict]]]


def camera_compositor() -> Compositor | None:
    """`perception.generative.paste_camera.composite_objects`, or None where this checkout
    does not have it."""
    try:
        from .paste_camera import composite_objects
    except ImportError:
        return None
    return composite_objects


@dataclass(frozen=True, eq=False)
class ClassPlan:
    """What is pasted of one class: `count` objects a sample drawn from `bank` (a selection
    of that class), with each candidate's range, heading relative to its ray and box z."""

    name: str
    count: int
    min_points: int
    bank: ObjectBank  # the class's selection (min points, visibility)
    indices: np.ndarray  # [K] int64 positions in `bank` of the objects within the class range
    ranges: np.ndarray  # [K] float64 m, box centre to the LiDAR origin in the ground plane
    yaw_to_ray: np.ndarray  # [K] float64 rad, heading minus the azimuth of the centre
    boxes: np.ndarray  # [K, 9] float64, each object's box in its keyframe's LiDAR frame
    max_ego_distance: float  # m, the class's evaluation range

    @classmethod
    def from_bank(cls, name: str, count: int, min_points: int, bank: ObjectBank) -> ClassPlan:
        from ..datasets.nuscenes import EVAL_CLASS_RANGE

        limit = float(EVAL_CLASS_RANGE[name])
        # as the dataset's GT filter: only objects the evaluation scores
        keep = np.flatnonzero(bank.ego_distances <= limit)
        if not len(keep):
            raise ValueError(
                f"{bank.index_path}: no {name!r} objects with >= {min_points} points within "
                f"its evaluation range ({limit:g} m)"
            )
        boxes = bank.boxes_lidar[keep].astype(np.float64)  # [K, 9]
        azimuth = np.arctan2(boxes[:, 1], boxes[:, 0])
        return cls(
            name=name,
            count=count,
            min_points=min_points,
            bank=bank,
            indices=keep,
            ranges=np.hypot(boxes[:, 0], boxes[:, 1]),
            yaw_to_ray=boxes[:, 6] - azimuth,
            boxes=boxes,
            max_ego_distance=limit,
        )


def open_paste_bank(
    paste: PasteConfig,
    version: str,
    *,
    cameras: bool | None = None,
    val_split: str | None = None,
) -> list[ClassPlan]:
    """The bank of `paste.bank` opened for training on dataset `version`, one `ClassPlan` per
    class with count > 0 (`cameras`, default `paste.cameras`: only objects with a camera view
    at least `paste.min_visibility` visible). Raises ValueError (`BankFileError`) naming the
    config key and the bank file: missing, corrupt, of another version, an evaluation bank,
    empty, holding a scene of `val_split` (the split the run evaluates on), or without
    objects of a requested class."""
    where = f"data.paste.bank {paste.bank}"
    cameras = paste.cameras if cameras is None else cameras
    try:
        # sizes are checked; the sha256 of every shard is not (it reads the whole bank)
        bank = ObjectBank.open(
            paste.bank, version=version, training=True, verify=False, source=paste.source
        )
    except BankFileError as exc:
        raise BankFileError(f"{where}: {exc}") from None
    if len(bank) == 0:
        raise BankFileError(f"{where}: {bank.index_path}: the bank holds no objects")
    if val_split is not None:
        from ..datasets.nuscenes import split_scene_names

        evaluated = split_scene_names(val_split)
        banked = set(bank.scenes)
        shared = sorted(banked if evaluated is None else banked & evaluated)
        if shared:
            raise BankFileError(
                f"{where}: {bank.index_path}: holds objects of {len(shared)} scene(s) of "
                f"data.val_split {val_split!r} ({', '.join(shared[:3])}, ...): they would "
                "leak into training"
            )
    plans = []
    for name, cls_config in paste.classes.items():
        if cls_config.count == 0:
            continue
        try:
            selection = bank.filter(
                classes=[name],
                min_points=cls_config.min_points,
                # with cameras, an object no camera saw cannot be composited: one view at least
                min_visibility=max(paste.min_visibility, 1e-6) if cameras else 0.0,
            )
            plans.append(
                ClassPlan.from_bank(name, cls_config.count, cls_config.min_points, selection)
            )
        except ValueError as exc:
            raise ValueError(f"data.paste.classes.{name}: {exc}") from None
    return plans


def scene_sweep_lags(points: np.ndarray) -> np.ndarray:
    """The distinct time lags `[S]` of a merged cloud `[N, 5]` (its sweeps, concatenated one
    after another, each with one lag; the keyframe's 0 always included)."""
    lag = points[:, 4]
    starts = np.r_[0, np.flatnonzero(np.diff(lag)) + 1] if len(lag) else np.zeros(0, np.int64)
    return np.unique(np.r_[0.0, lag[starts]])


def object_points(obj: BankObject, box: np.ndarray) -> np.ndarray:
    """`[N, 5]` float32: `obj.points` (box frame) moved to `box` (x, y, z, w, l, h, yaw, vx, vy
    in the LiDAR frame), earlier sweeps' points shifted back by `box`'s velocity x time lag
    (the bank compensated them into the keyframe box). Intensity and time lag are kept."""
    pts = obj.points.astype(np.float64)
    c, s = math.cos(box[6]), math.sin(box[6])
    xyz = np.empty((len(pts), 3))
    xyz[:, 0] = c * pts[:, 0] - s * pts[:, 1] + box[0]
    xyz[:, 1] = s * pts[:, 0] + c * pts[:, 1] + box[1]
    xyz[:, 2] = pts[:, 2] + box[2]
    velocity = np.asarray(box[7:9], np.float64)
    if np.isfinite(obj.velocity).all():
        xyz[:, :2] -= velocity[None, :] * pts[:, 4:5]
    return np.concatenate([xyz, pts[:, 3:5]], 1).astype(np.float32)


def ray_cells(xyz: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray, int]:
    """The range-image cell of each point's ray from the origin: `(elevation index,
    azimuth index, azimuth cells)`; `[N]` int64 each. Azimuth cells span 2 pi / n exactly
    (n = round(2 pi / cell)), elevation cells `cell` rad from -pi / 2."""
    n_az = max(3, round(2 * math.pi / cell))
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    az = np.arctan2(y, x)
    el = np.arctan2(z, np.hypot(x, y))
    az_idx = np.floor((az + math.pi) / (2 * math.pi / n_az)).astype(np.int64) % n_az
    el_idx = np.floor((el + math.pi / 2) / cell).astype(np.int64)
    return el_idx, az_idx, n_az


# Rounds in which objects left with too few points after occlusion get a new pose.
OCCLUSION_RETRIES = 2
# A bank point is kept when its time lag is this close to one of the scene's sweeps' (s; less
# than half the 0.05 s between sweeps at 20 Hz).
SWEEP_LAG_TOLERANCE_S = 0.02
# Points this close above a box's bottom are taken for ground when looking for what stands in
# a candidate pose (the generated world's ground is flat; real roads are not quite).
GROUND_CLEARANCE_M = 0.3
_NEIGHBOURS = np.array([(de, da) for de in (-1, 0, 1) for da in (-1, 0, 1)], np.int64)  # [9, 2]


def _cell_min(
    el: np.ndarray, az: np.ndarray, group: np.ndarray, rng: np.ndarray, n_az: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (cell, group), the nearest range, spread to the cell's 8 neighbours (azimuth wraps):
    `(cell ids, group, range)` of every occluder entry."""
    key = (el * n_az + az) * (int(group.max()) + 1) + group
    order = np.lexsort((rng, key))
    first = np.r_[True, key[order][1:] != key[order][:-1]]
    kept = order[first]
    el, az, group, rng = el[kept], az[kept], group[kept], rng[kept]
    e = (el[:, None] + _NEIGHBOURS[None, :, 0]).ravel()
    a = ((az[:, None] + _NEIGHBOURS[None, :, 1]) % n_az).ravel()
    return e * n_az + a, np.repeat(group, 9), np.repeat(rng, 9)


def hidden_points(
    scene: np.ndarray,
    objects: Sequence[np.ndarray],
    cell: float,
    scene_cells: tuple[np.ndarray, np.ndarray] | None = None,
    ignore: np.ndarray | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Which points are hidden, seen from the origin, on a range image of `cell` rad: a point
    is hidden when a point of another group (the scene is one group, each object one) lies in
    its ray's cell or one of the 8 around it (`ray_cells`) and is nearer to the origin. An
    object's angular footprint is thus its points' cells widened by one cell.

    Args:
        scene: `[N, >=3]` the scene's points (x, y, z first).
        objects: per pasted object `[Ni, >=3]`.
        scene_cells: `ray_cells(scene, cell)[:2]` when already computed.
        ignore: `[N]` bool, scene points that neither hide nor are hidden (left False).
    Returns:
        `hidden [N]` bool for the scene and one `[Ni]` bool per object.
    """
    hidden_scene = np.zeros(len(scene), bool)
    sizes = [len(o) for o in objects]
    if not sum(sizes):
        return hidden_scene, [np.zeros(n, bool) for n in sizes]
    obj_xyz = np.concatenate([o[:, :3] for o in objects], 0).astype(np.float64)
    obj_group = np.repeat(np.arange(1, len(objects) + 1), sizes)  # the scene is group 0
    obj_range = np.linalg.norm(obj_xyz, axis=1)
    e_o, a_o, n_az = ray_cells(obj_xyz, cell)

    # the scene points whose cell is in the objects' widened footprint (a dense row window)
    lo, hi = int(e_o.min()) - 1, int(e_o.max()) + 1
    footprint = np.zeros((hi - lo + 1, n_az), bool)
    for de, da in _NEIGHBOURS:
        footprint[e_o + de - lo, (a_o + da) % n_az] = True
    near = np.zeros(len(scene), bool)
    if len(scene):
        e_s, a_s = scene_cells if scene_cells is not None else ray_cells(scene, cell)[:2]
        rows = (e_s >= lo) & (e_s <= hi)
        near[rows] = footprint[e_s[rows] - lo, a_s[rows]]
        if ignore is not None:
            near &= ~ignore
    idx = np.flatnonzero(near)
    s_xyz = scene[idx, :3].astype(np.float64)
    s_range = np.linalg.norm(s_xyz, axis=1)
    e_n, a_n = (e_s[idx], a_s[idx]) if len(scene) else (idx, idx)

    # every point's ray cell, group and range (the near scene points first, then the objects)
    el = np.concatenate([e_n, e_o])
    az = np.concatenate([a_n, a_o])
    group = np.concatenate([np.zeros(len(idx), np.int64), obj_group])
    rng = np.concatenate([s_range, obj_range])
    # per cell, the nearest occluder and the nearest of another group than that one's
    cells, occ_group, occ_range = _cell_min(el, az, group, rng, n_az)
    order = np.lexsort((occ_range, cells))
    cells, occ_group, occ_range = cells[order], occ_group[order], occ_range[order]
    first = np.r_[True, cells[1:] != cells[:-1]]
    unique = cells[first]
    slot = np.cumsum(first) - 1
    best_range, best_group = occ_range[first], occ_group[first]
    other = occ_group != best_group[slot]
    second = np.full(len(unique), np.inf)
    o_slot = slot[other]
    o_first = np.r_[True, o_slot[1:] != o_slot[:-1]] if len(o_slot) else o_slot.astype(bool)
    second[o_slot[o_first]] = occ_range[other][o_first]
    # each point against the nearest occluder of another group in its own cell
    query = el * n_az + az
    pos = np.minimum(np.searchsorted(unique, query), len(unique) - 1)
    found = unique[pos] == query
    nearest_other = np.where(best_group[pos] != group, best_range[pos], second[pos])
    hidden = found & (nearest_other < rng)
    hidden_scene[idx] = hidden[: len(idx)]
    bounds = np.cumsum([0, *sizes]) + len(idx)
    return hidden_scene, [hidden[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _inside_box(xyz: np.ndarray, box: np.ndarray) -> np.ndarray:
    """`[N]` bool: points `[N, >=3]` inside `box` (x, y, z, w, l, h, yaw, ...)."""
    inside = np.zeros(len(xyz), bool)
    radius = 0.5 * math.hypot(box[3], box[4])
    near = np.flatnonzero(
        (np.abs(xyz[:, 0] - box[0]) <= radius) & (np.abs(xyz[:, 1] - box[1]) <= radius)
    )
    c, s = math.cos(box[6]), math.sin(box[6])
    d = xyz[near, :3].astype(np.float64) - box[:3]
    along = c * d[:, 0] + s * d[:, 1]
    across = -s * d[:, 0] + c * d[:, 1]
    inside[near] = (
        (np.abs(along) <= box[4] / 2)
        & (np.abs(across) <= box[3] / 2)
        & (np.abs(d[:, 2]) <= box[5] / 2)
    )
    return inside


def _bev_overlaps(candidates: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """`[T]` bool: which candidate boxes `[T, 9]` overlap in BEV (rotated IoU > 0) any of
    `boxes` `[K, 9]`."""
    if not len(boxes):
        return np.zeros(len(candidates), bool)
    from perception.ops import bev_iou

    cols = [0, 1, 3, 4, 6]
    iou = bev_iou(
        torch.from_numpy(np.ascontiguousarray(candidates[:, cols], np.float32)),
        torch.from_numpy(np.ascontiguousarray(boxes[:, cols], np.float32)),
    )
    return (iou > 0).any(1).numpy()


def _azimuth_spans(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seen from the origin, each box's `(centre azimuth, low, high)` `[K]`: the BEV corners'
    azimuths relative to the centre's lie in [low, high] (rad; a box around the origin spans
    [-pi, pi])."""
    corners = Boxes3D(torch.from_numpy(np.ascontiguousarray(boxes[:, :9], np.float64)))
    xy = corners.corners()[:, :4, :2].numpy()  # [K, 4, 2]
    centre = np.arctan2(boxes[:, 1], boxes[:, 0])
    rel = np.arctan2(xy[..., 1], xy[..., 0]) - centre[:, None]
    rel = np.remainder(rel + math.pi, 2 * math.pi) - math.pi
    low, high = rel.min(1), rel.max(1)
    around = high - low > math.pi  # the origin inside (or nearly): every direction
    low[around], high[around] = -math.pi, math.pi
    return centre, low, high


def _shadows(candidates: np.ndarray, boxes: np.ndarray, limit: float) -> np.ndarray:
    """`[T]` bool: which candidate boxes `[T, 9]` would cover, seen from the origin, more than
    `limit` of the azimuth span of a farther box of `boxes` `[K, 9]`, or have more than that
    of their own span covered by a nearer one (their points would mostly be hidden)."""
    if not len(boxes) or limit >= 1:
        return np.zeros(len(candidates), bool)
    c_az, c_lo, c_hi = _azimuth_spans(candidates)
    b_az, b_lo, b_hi = _azimuth_spans(boxes)
    d = np.remainder(b_az[None, :] - c_az[:, None] + math.pi, 2 * math.pi) - math.pi  # [T, K]
    overlap = np.clip(
        np.minimum(c_hi[:, None], d + b_hi[None, :]) - np.maximum(c_lo[:, None], d + b_lo[None, :]),
        0,
        None,
    )
    c_range = np.hypot(candidates[:, 0], candidates[:, 1])[:, None]
    b_range = np.hypot(boxes[:, 0], boxes[:, 1])[None, :]
    far_span = np.where(c_range < b_range, (b_hi - b_lo)[None, :], (c_hi - c_lo)[:, None])
    return (overlap > limit * np.maximum(far_span, 1e-9)).any(1)


def _occupied(
    candidates: np.ndarray, scene: np.ndarray, scene_range: np.ndarray, limit: int
) -> np.ndarray:
    """`[T]` bool: which candidate boxes `[T, 9]` (one object at one range, several azimuths)
    hold more than `limit` scene points above their lowest `GROUND_CLEARANCE_M` (something
    unannotated stands there: a building, a pole, an object the dataset does not label)."""
    box = candidates[0]
    radius = 0.5 * math.hypot(box[3], box[4])
    r = math.hypot(box[0], box[1])
    bottom = box[2] - box[5] / 2
    ring = np.flatnonzero(
        (np.abs(scene_range - r) <= radius)
        & (scene[:, 2] > bottom + GROUND_CLEARANCE_M)
        & (scene[:, 2] <= bottom + box[5])
    )
    if len(ring) <= limit:
        return np.zeros(len(candidates), bool)
    pts = scene[ring]
    azimuth = np.arctan2(pts[:, 1], pts[:, 0])
    order = np.argsort(azimuth)
    pts, azimuth = pts[order], azimuth[order]
    centre, low, high = _azimuth_spans(candidates)
    out = np.zeros(len(candidates), bool)
    for t, cand in enumerate(candidates):
        lo, hi = centre[t] + low[t], centre[t] + high[t]
        # the sector [lo, hi] of the ring (it may wrap past +-pi)
        pieces = [(lo, hi)]
        if lo < -math.pi:
            pieces = [(-math.pi, hi), (lo + 2 * math.pi, math.pi)]
        elif hi > math.pi:
            pieces = [(lo, math.pi), (-math.pi, hi - 2 * math.pi)]
        idx = np.concatenate(
            [np.arange(*np.searchsorted(azimuth, [a, b])) for a, b in pieces]
        ).astype(np.int64)
        out[t] = int(_inside_box(pts[idx], cand).sum()) > limit
    return out


class GTPaste:
    """The paste transform: `paste(sample, rng) -> sample` (module docstring). Built by
    `build_paste`; `stats()` gives its counters (of this process: each loader worker counts
    its own samples and logs them); each returned sample carries its own (`paste_counts`)."""

    def __init__(
        self,
        *,
        plans: Sequence[ClassPlan],
        point_range: Sequence[float],
        placement_tries: int = 30,
        occlusion_cell_deg: float = 0.25,
        max_shadow: float = 0.5,
        max_scene_points: int = 10,
        compositor: Compositor | None = None,
        log_every: int = 500,
    ):
        self.plans = tuple(plans)
        self.point_range = tuple(float(v) for v in point_range)
        self.placement_tries = placement_tries
        self.occlusion_cell = math.radians(occlusion_cell_deg)
        self.max_shadow = max_shadow
        self.max_scene_points = max_scene_points
        self.compositor = compositor
        self.log_every = log_every
        self._counts: Counter[str] = Counter()
        self._logged_skip = False

    def __repr__(self) -> str:
        classes = {p.name: p.count for p in self.plans}
        return f"GTPaste(classes={classes}, cameras={self.compositor is not None})"

    # -- counters ---------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counters since the transform was built (this process): `samples`; `samples_pasted`
        (at least one object added); `samples_skipped` (none could be, sample unchanged);
        `requested`, `pasted` and `pasted/<class>` objects; skipped objects by reason:
        `no_free_pose` (every tried pose overlapped or shadowed a box, held scene points or
        left the range), `occluded` (too few points left after occlusion, at the re-tried
        poses too); `camera_failed` (the compositor refused the sample: unchanged); `camera_skipped` (images not loaded: LiDAR side only);
        `scene_points_removed`; `gt_hidden` (real boxes left without points, removed)."""
        keys = ("samples", "samples_pasted", "samples_skipped", "requested", "pasted",
                "no_free_pose", "occluded", "camera_failed", "camera_skipped",
                "scene_points_removed", "gt_hidden")  # fmt: skip
        out = {k: int(self._counts[k]) for k in keys}
        out.update({k: int(v) for k, v in sorted(self._counts.items()) if k.startswith("pasted/")})
        return out

    def summary(self) -> str:
        s = self.stats()
        per_class = ", ".join(f"{k[7:]} {v}" for k, v in s.items() if k.startswith("pasted/"))
        return (
            f"GT-paste (pid {os.getpid()}): {s['samples']} samples, {s['pasted']} of "
            f"{s['requested']} objects pasted ({per_class or 'none'}); skipped: "
            f"{s['no_free_pose']} no free pose, {s['occluded']} occluded, {s['samples_skipped']} "
            f"samples with nothing placed, {s['camera_failed']} refused by the camera "
            f"compositor; {s['camera_skipped']} samples without images (LiDAR only); "
            f"{s['scene_points_removed']} scene points removed, {s['gt_hidden']} real boxes "
            "hidden"
        )

    def _skip(self, reason: str, token: str, n: int = 1) -> None:
        self._counts[reason] += n
        if not self._logged_skip:
            self._logged_skip = True
            logger.warning("GT-paste: sample %s: %d object(s) skipped (%s)", token, n, reason)

    # -- the transform ----------------------------------------------------------------------
    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if not torch.equal(sample.lidar_aug, torch.eye(4)) or not torch.equal(
            sample.image_aug, torch.eye(4).expand_as(sample.image_aug)
        ):
            raise ValueError(
                f"GT-paste on sample {sample.token}: the sample is already augmented; paste "
                "must come first in the transforms (on the sample as loaded)"
            )
        before = self.stats()
        self._counts["samples"] += 1
        out = self._paste(sample, rng)
        if self.log_every and self._counts["samples"] % self.log_every == 0:
            if any(self._counts[k] for k in ("no_free_pose", "occluded", "camera_failed")):
                logger.warning(self.summary())
        # this sample's counters travel with it (out of a loader worker, into the training log)
        after = self.stats()
        counts = {k: v - before.get(k, 0) for k, v in after.items()}
        return out.replace(paste_counts={k: v for k, v in counts.items() if v or "/" not in k})

    def _place(self, sample: Sample, rng: np.random.Generator) -> tuple[list[tuple], dict]:
        """Draws the objects and their free poses: `[(plan, k, object, box [9])]` and the
        placement context (`_free_pose`)."""
        # the keyframe sweep is enough to see what stands where (and a tenth of the points)
        scene = sample.points.numpy()
        scene = scene[scene[:, 4] == 0]
        context = {
            "existing": sample.gt_boxes.tensor.numpy().astype(np.float64),  # [M, 9]
            "lidar_to_ego": sample.lidar_to_ego.numpy(),
            "scene": scene,
            "scene_range": np.hypot(scene[:, 0], scene[:, 1]),
        }
        placed: list[tuple] = []
        for plan in self.plans:
            for _ in range(plan.count):
                self._counts["requested"] += 1
                k = int(rng.integers(len(plan.ranges)))
                obj = plan.bank[int(plan.indices[k])]
                box = self._free_pose(plan, k, obj, context, [p[3] for p in placed], rng)
                if box is None:
                    self._skip("no_free_pose", sample.token)
                    continue
                placed.append((plan, k, obj, box))
        return placed, context

    def _free_pose(
        self,
        plan: ClassPlan,
        k: int,
        obj: BankObject,
        context: dict,
        pasted: list[np.ndarray],
        rng: np.random.Generator,
    ) -> np.ndarray | None:
        """A free pose `[9]` for object `k` of `plan` (`obj`: its range, yaw to the ray and z;
        a new azimuth, `placement_tries` drawn), the velocity turned with it; None if none."""
        T = self.placement_tries
        azimuth = rng.uniform(-math.pi, math.pi, T)  # [T] candidate directions
        cand = np.tile(plan.boxes[k], (T, 1))  # [T, 9]
        cand[:, 0] = plan.ranges[k] * np.cos(azimuth)
        cand[:, 1] = plan.ranges[k] * np.sin(azimuth)
        cand[:, 6] = np.remainder(azimuth + plan.yaw_to_ray[k] + math.pi, 2 * math.pi) - math.pi
        ok = self._in_range(cand, context["lidar_to_ego"], plan.max_ego_distance)
        occupied = np.concatenate([context["existing"], *(b[None] for b in pasted)], 0)
        if ok.any():
            ok[ok] = ~_bev_overlaps(cand[ok], occupied)
        if ok.any():
            ok[ok] = ~_shadows(cand[ok], occupied, self.max_shadow)
        if ok.any():
            scene, scene_range = context["scene"], context["scene_range"]
            ok[ok] = ~_occupied(cand[ok], scene, scene_range, self.max_scene_points)
        if not ok.any():
            return None
        box = cand[int(np.argmax(ok))]
        # the bank's velocity is in the box frame: turned with the new heading
        c, s = math.cos(box[6]), math.sin(box[6])
        vx, vy = (float(v) for v in obj.velocity)
        if np.isfinite([vx, vy]).all():
            box[7:9] = (c * vx - s * vy, s * vx + c * vy)
        else:
            box[7:9] = 0.0  # unknown: trained as zero, as the dataset does
        return box

    def _in_range(self, boxes: np.ndarray, lidar_to_ego: np.ndarray, max_ego: float):
        """`[T]` bool: every BEV corner inside `point_range`, the centre's height inside it,
        and the centre within `max_ego` m of the ego (the class's evaluation range)."""
        r = self.point_range
        corners = Boxes3D(torch.from_numpy(boxes)).corners()[:, :4, :2].numpy()  # [T, 4, 2]
        inside = (
            (corners[..., 0] >= r[0]) & (corners[..., 0] < r[3])
            & (corners[..., 1] >= r[1]) & (corners[..., 1] < r[4])
        ).all(1)  # fmt: skip
        inside &= (boxes[:, 2] >= r[2]) & (boxes[:, 2] < r[5])
        ego = boxes[:, :3] @ lidar_to_ego[:3, :3].T + lidar_to_ego[:3, 3]
        return inside & (np.hypot(ego[:, 0], ego[:, 1]) <= max_ego)

    def _paste(self, sample: Sample, rng: np.random.Generator) -> Sample:
        placed, context = self._place(sample, rng)
        scene = sample.points.numpy()
        # only the bank points of sweeps the scene has too (data.sweeps / sweep_stride may
        # differ from the bank's): within SWEEP_LAG_TOLERANCE_S of one of the scene's lags
        lags = scene_sweep_lags(scene)
        el, az = ray_cells(scene, self.occlusion_cell)[:2] if placed else (None, None)
        retries = OCCLUSION_RETRIES
        # occlusion; an object left with too few points gets another pose (OCCLUSION_RETRIES
        # rounds), then is dropped, until every object left keeps enough
        # id(box) -> (box, its points, scene points inside it); holding the box keeps its id
        cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        while True:
            for _, _, obj, box in placed:
                if id(box) not in cache:
                    pts = object_points(obj, box)
                    near = np.abs(pts[:, 4:5] - lags[None, :]).min(1) <= SWEEP_LAG_TOLERANCE_S
                    cache[id(box)] = box, pts[near], _inside_box(scene, box)
            moved = [cache[id(box)][1] for *_, box in placed]
            # scene points inside a pasted box go (mmdet3d's habit) and hide nothing
            inside = np.zeros(len(scene), bool)
            for *_, box in placed:
                inside |= cache[id(box)][2]
            hidden_scene, hidden_objs = hidden_points(
                scene, moved, self.occlusion_cell, (el, az) if placed else None, inside
            )
            kept = [p[~h] for p, h in zip(moved, hidden_objs)]
            weak = [
                i
                for i, ((plan, *_), p) in enumerate(zip(placed, kept))
                if len(p) < plan.min_points or not (p[:, 4] == 0).any()
            ]
            if not weak:
                break
            strong = [x for i, x in enumerate(placed) if i not in weak]
            for i in weak:
                plan, k, obj, _ = placed[i]
                box = None
                if retries:
                    box = self._free_pose(plan, k, obj, context, [x[3] for x in strong], rng)
                if box is None:
                    self._skip("occluded", sample.token)
                else:
                    strong.append((plan, k, obj, box))
            retries = max(0, retries - 1)
            placed = strong
        plans = [x[0] for x in placed]
        objects = [x[2] for x in placed]
        boxes = [x[3] for x in placed]
        removed = inside | hidden_scene
        if not objects:
            if any(p.count for p in self.plans):
                self._skip("samples_skipped", sample.token)
            return sample

        if self.compositor is not None and sample.images.shape[-2:] != (1, 1):
            try:
                composited, camera_records = self.compositor(
                    sample, np.stack(boxes).astype(np.float32), objects, rng=rng
                )
            except ValueError as exc:  # bad input: the sample stays as it was, counted
                logger.warning(
                    "GT-paste: sample %s: camera compositing failed: %s", sample.token, exc
                )
                self._skip("camera_failed", sample.token)
                return sample
        else:
            if self.compositor is not None:
                self._counts["camera_skipped"] += 1
            composited, camera_records = sample, [{} for _ in objects]

        self._counts["scene_points_removed"] += int(removed.sum())
        # real boxes: their keyframe points that were removed
        existing = sample.gt_boxes.tensor.numpy().astype(np.float64)
        gone = scene[removed & (scene[:, 4] == 0), :3]
        lost = np.array([int(_inside_box(gone, b).sum()) for b in existing], np.int64)
        num_points = (sample.gt_num_points - torch.from_numpy(lost)).clamp(min=0)
        still = (num_points > 0) | (sample.gt_num_points == 0)
        self._counts["gt_hidden"] += int((~still).sum())

        new_boxes = torch.from_numpy(np.stack(boxes)).to(sample.gt_boxes.tensor.dtype)
        labels = torch.tensor([CLASS_NAMES.index(p.name) for p in plans], dtype=torch.int64)
        attributes = torch.tensor(
            [ATTRIBUTE_NAMES.index(o.attribute) if o.attribute else -1 for o in objects],
            dtype=torch.int64,
        )
        pasted_points = torch.tensor([int((p[:, 4] == 0).sum()) for p in kept], dtype=torch.int64)
        records = []
        for i, (plan, obj, box, p) in enumerate(zip(plans, objects, boxes, kept)):
            records.append(
                {
                    "class": plan.name,
                    "bank_index": obj.index,
                    "sample_token": obj.sample_token,
                    "instance_token": obj.instance_token,
                    "box": [float(v) for v in box],
                    "gt_index": int(still.sum()) + i,
                    "points": len(p),
                    "points_hidden": len(moved[i]) - len(p),
                    "camera": camera_records[i] if i < len(camera_records) else {},
                }
            )
            self._counts["pasted"] += 1
            self._counts[f"pasted/{plan.name}"] += 1
        self._counts["samples_pasted"] += 1
        points = np.concatenate([scene[~removed], *kept], 0).astype(np.float32)
        return composited.replace(
            points=torch.from_numpy(points),
            gt_boxes=Boxes3D.cat([sample.gt_boxes[still], Boxes3D(new_boxes)]),
            gt_labels=torch.cat([sample.gt_labels[still], labels]),
            gt_attributes=torch.cat([sample.gt_attributes[still], attributes]),
            gt_num_points=torch.cat([num_points[still], pasted_points]),
            pasted=(*sample.pasted, *records),
        )


def build_paste(config: ExperimentConfig, *, cameras: bool | None = None) -> GTPaste | None:
    """The paste transform of `config.data.paste` (None when it is off). `cameras`: override
    `data.paste.cameras` (e.g. False for a model without a camera branch).

    Raises ValueError naming the config key and file: a bank that cannot be used
    (`open_paste_bank`), or `cameras: true` where this checkout lacks the camera compositor.
    """
    paste = config.data.paste
    if not paste.enabled:
        return None
    use_cameras = paste.cameras if cameras is None else cameras
    compositor = None
    if use_cameras:
        compositor = camera_compositor()
        if compositor is None:
            raise ValueError(
                "data.paste.cameras: true needs perception.generative.paste_camera, which this "
                "checkout lacks; set data.paste.cameras: false for LiDAR-only paste"
            )
    plans = open_paste_bank(
        paste, config.data.version, cameras=use_cameras, val_split=config.data.val_split
    )
    return GTPaste(
        plans=plans,
        point_range=config.data.point_range,
        placement_tries=paste.placement_tries,
        occlusion_cell_deg=paste.occlusion_cell_deg,
        max_shadow=paste.max_shadow,
        max_scene_points=paste.max_scene_points,
        compositor=compositor,
    )


def benchmark_paste(
    root: str,
    version: str,
    split: str,
    bank: str,
    classes: dict[str, int] | None = None,
    samples: int = 20,
) -> dict[str, float]:
    """Milliseconds per sample (median over `samples` keyframes of `split`) of the loader
    (`NuScenesDataset.load_raw`: 10 sweeps, 6 camera images decoded) and of the paste on its
    output, LiDAR only and with the cameras composited; printed and returned."""
    import time

    from ..config.loader import parse_config
    from ..datasets.nuscenes import NuScenesDataset

    classes = classes or {"bicycle": 2, "construction_vehicle": 2, "motorcycle": 1}
    dataset = NuScenesDataset(root, version, split)
    pastes = {}
    for cameras in (False, True):
        raw = {"enabled": True, "bank": bank, "cameras": cameras,
               "classes": {c: {"count": n} for c, n in classes.items()}}  # fmt: skip
        pastes[cameras] = build_paste(parse_config({"data": {"version": version, "paste": raw}}))
    times: dict[str, list[float]] = {"load": [], "paste_lidar": [], "paste_cameras": []}
    n = min(samples, len(dataset))
    for i in range(n + 1):  # the first (imports, file handles) is not counted
        start = time.perf_counter()
        sample = dataset.load_raw(dataset.records[i % len(dataset)])
        loaded = time.perf_counter()
        pastes[False](sample, np.random.default_rng(i))
        lidar = time.perf_counter()
        pastes[True](sample, np.random.default_rng(i))
        both = time.perf_counter()
        if i:
            times["load"].append(loaded - start)
            times["paste_lidar"].append(lidar - loaded)
            times["paste_cameras"].append(both - lidar)
    result = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    print(
        f"{n} samples of {root} {split}, {classes} per sample: loader {result['load']:.0f} ms, "
        f"paste LiDAR only {result['paste_lidar']:.0f} ms, with cameras "
        f"{result['paste_cameras']:.0f} ms (medians); pasted "
        f"{pastes[True].stats()['pasted']} objects with cameras"
    )
    return result
