"""Reads any nuScenes dataroot (real or synthetic) through its index into `Sample`s.

A sample is one keyframe: the keyframe sweep plus `sweeps - 1` earlier sweeps merged into the
keyframe LiDAR frame with a time-lag channel (sweeps older than `max_sweep_age` are not merged,
see `perception.datasets.sensors`), a clip of the `clip_frames` most recent frames
per camera (oldest first; padded by repeating the oldest frame at the start of a scene or
before a frame older than `max_clip_frame_age`), all
camera geometry as matrices to the LiDAR frame, and GT boxes in the LiDAR frame filtered the
way the official evaluation filters them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..structures import ATTRIBUTE_NAMES, CAMERA_NAMES, CLASS_NAMES, Boxes3D, Sample
from .index import Index, default_index_path, load_index
from .io import read_image, read_points
from .sensors import (
    DEFAULT_MAX_CLIP_FRAME_AGE_S,
    DEFAULT_MAX_SWEEP_AGE_S,
    fresh_clip_length,
    merge_sweeps,
    within_age,
)

# The official evaluation's per-class ranges (detection_cvpr_2019), in metres from the ego.
EVAL_CLASS_RANGE: dict[str, float] = {
    "car": 50,
    "truck": 50,
    "bus": 50,
    "trailer": 50,
    "construction_vehicle": 50,
    "pedestrian": 40,
    "motorcycle": 40,
    "bicycle": 40,
    "traffic_cone": 30,
    "barrier": 30,
}

__all__ = ["EVAL_CLASS_RANGE", "NuScenesDataset", "split_scene_names"]

Transform = Callable[[Sample, np.random.Generator], Sample]


def split_scene_names(split: str) -> set[str] | None:
    """Scene names of a devkit split (`train`, `val`, `mini_train`, ...); None for `all`."""
    if split == "all":
        return None
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; choose 'all' or one of {sorted(splits)}")
    return set(splits[split])


class NuScenesDataset(Dataset):
    """`Sample`s of one split of a nuScenes dataroot.

    Args:
        root: the dataroot (holds `samples/`, `sweeps/`, `<version>/`).
        version: e.g. `v1.0-mini`, `v1.0-trainval`.
        split: a devkit split name or `all`.
        index_path: default `<root>/perception_index_<version>.json.gz`.
        sweeps: LiDAR sweeps per sample (1 = keyframe only); at most the index's `max_sweeps`.
        sweep_stride: merge every k-th earlier sweep (1: consecutive sweeps); the oldest merged
            is the `(sweeps - 1) * k`-th before the keyframe, within the index's `max_sweeps - 1`.
        clip_frames: camera frames per clip (T); at most the index's `max_clip_frames`.
        max_sweep_age: seconds; earlier sweeps older than this are not merged (a gap in the
            recording); None: no limit. Counted in `stale_sweeps` (a warning at start).
        max_clip_frame_age: seconds; a clip stops at the first earlier frame older than this
            and is padded like a scene's start; None: no limit. Counted in
            `stale_clip_frames`.
        cameras: which cameras to load, in this order.
        load_images: False leaves `images` as zeros of shape [Ncam, T, 3, 1, 1] (LiDAR-only).
        filter_gt: drop GT boxes the official evaluation ignores (beyond the class range,
            no LiDAR/radar points).
        transforms: called as `t(sample, rng)` in order.
        seed: augmentation randomness comes from (seed, epoch, index): reproducible.
    """

    def __init__(
        self,
        root: str | Path,
        version: str,
        split: str = "all",
        *,
        index_path: str | Path | None = None,
        sweeps: int = 10,
        sweep_stride: int = 1,
        clip_frames: int = 1,
        max_sweep_age: float | None = DEFAULT_MAX_SWEEP_AGE_S,
        max_clip_frame_age: float | None = DEFAULT_MAX_CLIP_FRAME_AGE_S,
        cameras: Sequence[str] = CAMERA_NAMES,
        load_images: bool = True,
        filter_gt: bool = True,
        transforms: Sequence[Transform] = (),
        seed: int = 0,
    ):
        self.root = Path(root)
        self.index: Index = load_index(
            index_path or default_index_path(root, version), root, version
        )
        if not 1 <= sweeps <= self.index.max_sweeps:
            raise ValueError(f"sweeps={sweeps}: the index holds 1..{self.index.max_sweeps}")
        if sweep_stride < 1 or (sweeps - 1) * sweep_stride > self.index.max_sweeps - 1:
            raise ValueError(
                f"sweeps={sweeps} with sweep_stride={sweep_stride} reach "
                f"{(sweeps - 1) * sweep_stride} sweeps back; the index holds "
                f"{self.index.max_sweeps - 1} earlier sweeps (tools/create_data.py --max-sweeps)"
            )
        if not 1 <= clip_frames <= self.index.max_clip_frames:
            raise ValueError(
                f"clip_frames={clip_frames}: the index holds 1..{self.index.max_clip_frames}"
            )
        unknown = [c for c in cameras if c not in CAMERA_NAMES]
        if unknown:
            raise ValueError(f"unknown cameras {unknown}; nuScenes has {list(CAMERA_NAMES)}")
        self.records = self.index.scene_samples(split_scene_names(split))
        if not self.records:
            raise ValueError(
                f"{self.root}: split {split!r} holds no samples in {version} "
                f"({len(self.index.samples)} samples in all)"
            )
        self.split = split
        self.sweeps = sweeps
        self.sweep_stride = sweep_stride
        self.clip_frames = clip_frames
        self.cameras = tuple(cameras)
        self.load_images = load_images
        self.filter_gt = filter_gt
        self.transforms = tuple(transforms)
        self.seed = seed
        self.epoch = 0
        for name, age in (
            ("max_sweep_age", max_sweep_age),
            ("max_clip_frame_age", max_clip_frame_age),
        ):
            if age is not None and not age > 0:
                raise ValueError(f"{name}={age}: must be > 0 seconds (or None: no limit)")
        self.max_sweep_age = max_sweep_age
        self.max_clip_frame_age = max_clip_frame_age
        self.stale_sweeps, self.stale_clip_frames = self._count_stale()
        if self.stale_sweeps or self.stale_clip_frames:
            warnings.warn(self.stale_summary(), stacklevel=2)

    def _selected_sweeps(self, record: dict) -> list[dict]:
        """The earlier sweeps `sweeps`/`sweep_stride` select, newest first (any age)."""
        k = self.sweep_stride  # record["sweeps"] runs newest first
        return record["sweeps"][k - 1 :: k][: self.sweeps - 1]

    def _count_stale(self) -> tuple[int, int]:
        """Sweeps and camera clip frames of this split not used for their age (fixed by the
        index and the settings, so counted once here rather than in loader workers)."""
        sweeps = frames = 0
        for record in self.records:
            sweeps += sum(
                not within_age(s["time_lag"], self.max_sweep_age)
                for s in self._selected_sweeps(record)
            )
            for channel in self.cameras:
                cam = record["cameras"].get(channel)
                if cam is not None:
                    clip = cam["frames"][: self.clip_frames]
                    lags = [f["time_lag"] for f in clip]
                    frames += len(clip) - fresh_clip_length(lags, self.max_clip_frame_age)
        return sweeps, frames

    def stale_summary(self) -> str:
        """One line: what the age limits left out of this split."""
        n = len(self.records)
        return (
            f"{self.root} ({self.split}, {n} samples): {self.stale_sweeps} earlier LiDAR "
            f"sweep(s) older than data.max_sweep_age={self.max_sweep_age} s not merged; "
            f"{self.stale_clip_frames} camera clip frame(s) older than "
            f"data.max_clip_frame_age={self.max_clip_frame_age} s replaced by padding"
        )

    def set_epoch(self, epoch: int) -> None:
        """Changes the augmentation randomness (call once per epoch, as with samplers)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    @property
    def tokens(self) -> list[str]:
        return [r["token"] for r in self.records]

    def __getitem__(self, i: int) -> Sample:
        record = self.records[i]
        sample = self.load_raw(record)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample

    # -- loading ------------------------------------------------------------------------

    def _points(self, record: dict) -> np.ndarray:
        """[N, 5] float32 (x, y, z, intensity, time_lag) in the keyframe LiDAR frame."""
        key = read_points(self.root / record["lidar"]["path"])
        earlier = [
            (read_points(self.root / s["path"]), s["sweep_to_lidar"], s["time_lag"])
            for s in self._selected_sweeps(record)
            if within_age(s["time_lag"], self.max_sweep_age)  # stale ones are not even read
        ]
        points, _ = merge_sweeps(key, earlier, self.max_sweep_age)
        return points

    def _cameras(self, record: dict):
        n, t = len(self.cameras), self.clip_frames
        intrinsics = np.zeros((n, 3, 3), np.float32)
        camera_to_lidar = np.tile(np.eye(4, dtype=np.float32), (n, t, 1, 1))
        time_lag = np.zeros((n, t), np.float32)
        mask = np.zeros(n, bool)
        images = None
        for c, channel in enumerate(self.cameras):
            cam = record["cameras"].get(channel)
            if cam is None:
                continue  # the dataroot has no such camera for this sample: masked out
            mask[c] = True
            intrinsics[c] = np.asarray(cam["intrinsics"], np.float32).reshape(3, 3)
            frames = cam["frames"][:t]
            frames = frames[
                : fresh_clip_length([f["time_lag"] for f in frames], self.max_clip_frame_age)
            ]
            frames = frames + [frames[-1]] * (t - len(frames))  # pad: a scene's start, or a gap
            for j, frame in enumerate(reversed(frames)):  # oldest first
                camera_to_lidar[c, j] = np.asarray(frame["camera_to_lidar"]).reshape(4, 4)
                time_lag[c, j] = frame["time_lag"]
                if self.load_images:
                    image = read_image(self.root / frame["path"], tuple(cam["size"]))
                    if images is None:
                        h, w = image.shape[:2]
                        images = np.zeros((n, t, 3, h, w), np.uint8)
                    if image.shape[:2] != images.shape[-2:]:
                        raise ValueError(
                            f"{self.root / frame['path']}: {image.shape[1]}x{image.shape[0]} "
                            f"differs from the other cameras' {images.shape[-1]}x"
                            f"{images.shape[-2]}; resize in a transform before collating"
                        )
                    images[c, j] = cv2.split(image)  # HWC -> 3 planes (5x a transpose copy)
        if images is None:
            images = np.zeros((n, t, 3, 1, 1), np.uint8)
        return images, intrinsics, camera_to_lidar, time_lag, mask

    def _gt(self, record: dict):
        gt = record["gt"]
        boxes = np.asarray(gt["boxes"], np.float32).reshape(-1, 9)
        keep = np.ones(len(boxes), bool)
        if self.filter_gt:
            dist = np.asarray(gt["ego_dist"])
            limits = np.asarray([EVAL_CLASS_RANGE[name] for name in gt["labels"]])
            keep = (dist <= limits) & (np.asarray(gt["num_points"]) > 0)
        boxes = np.nan_to_num(boxes[keep], nan=0.0)  # unknown velocity: trained as zero
        labels = [CLASS_NAMES.index(n) for n, k in zip(gt["labels"], keep) if k]
        attributes = [
            ATTRIBUTE_NAMES.index(a) if a else -1 for a, k in zip(gt["attributes"], keep) if k
        ]
        num_points = [p for p, k in zip(gt["num_points"], keep) if k]
        return (
            Boxes3D(torch.from_numpy(boxes)),
            torch.tensor(labels, dtype=torch.int64),
            torch.tensor(attributes, dtype=torch.int64),
            torch.tensor(num_points, dtype=torch.int64),
        )

    def load_raw(self, record: dict) -> Sample:
        """The sample as stored, before transforms."""
        points = self._points(record)
        images, intrinsics, camera_to_lidar, time_lag, mask = self._cameras(record)
        boxes, labels, attributes, num_points = self._gt(record)
        n = len(self.cameras)
        return Sample(
            token=record["token"],
            timestamp_us=int(record["timestamp"]),
            points=torch.from_numpy(points),
            images=torch.from_numpy(images),
            camera_names=self.cameras,
            intrinsics=torch.from_numpy(intrinsics),
            camera_to_lidar=torch.from_numpy(camera_to_lidar),
            camera_time_lag=torch.from_numpy(time_lag),
            image_aug=torch.eye(4).repeat(n, 1, 1),
            lidar_aug=torch.eye(4),
            lidar_to_ego=torch.tensor(record["lidar"]["lidar_to_ego"], dtype=torch.float64).view(
                4, 4
            ),
            ego_to_global=torch.tensor(record["lidar"]["ego_to_global"], dtype=torch.float64).view(
                4, 4
            ),
            camera_mask=torch.from_numpy(mask),
            lidar_present=True,
            gt_boxes=boxes,
            gt_labels=labels,
            gt_attributes=attributes,
            gt_num_points=num_points,
        )
