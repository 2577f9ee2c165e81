"""Sample transforms. Each records what it did as a matrix so camera geometry stays consistent:
image resize/crop/flip/rotate in `Sample.image_aug`, global rotation/scale/flip/translation of
points and boxes in `Sample.lidar_aug` (docs/frames.md).

A transform is called as `transform(sample, rng)` with a `numpy.random.Generator`; the
dataset derives `rng` from (seed, epoch, index), so augmentation is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..config.schema import ImageAugConfig, LidarAugConfig
from ..structures import Sample
from .sensors import image_aug_matrix, in_range_mask


def _rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    return m


def fit_scale(width: int, height: int, final_size: Sequence[int]) -> float:
    """The smallest resize factor at which a `width` x `height` image covers `final_size`
    (W, H): the unit of `ImageAugConfig.scale_lim` and `test_scale`."""
    final_w, final_h = final_size
    return max(final_w / width, final_h / height)


def horizon_row(intrinsics: np.ndarray, camera_to_ego: np.ndarray) -> np.ndarray:
    """The image row of the horizon: where rays parallel to the ground (the ego frame's x-y
    plane, z up) project, at the principal point's column.

    Args:
        intrinsics: `[..., 3, 3]` pixels.
        camera_to_ego: `[..., 3, 3]` or `[..., 4, 4]`, camera (x right, y down, z forward)
            to ego; only the rotation is used.
    Returns:
        `[...]` float64 rows (may lie outside the image; NaN for a camera whose up direction
        points down the image, e.g. mounted upside down, or that looks straight up or down).
    """
    k = np.asarray(intrinsics, np.float64)
    up = np.asarray(camera_to_ego, np.float64)[..., 2, :3]  # ego z in camera axes: R^T e_z
    # The horizon is the vanishing line of the ground plane: l = K^-T n (l . [u, v, 1] = 0);
    # image points above it have l . x > 0.
    line = np.einsum("...ji,...j->...i", np.linalg.inv(k), up)
    u = k[..., 0, 2]
    l0, l1, l2 = line[..., 0], line[..., 1], line[..., 2]
    upright = l1 < -1e-9 * np.abs(line).max(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(upright, -(l0 * u + l2) / np.where(upright, l1, 1.0), np.nan)


@dataclass(frozen=True)
class ImageAug:
    """Resize relative to the input, crop to `final_size`, optionally flip left-right and
    rotate, per camera (the same for every frame of a camera's clip, so temporal models see a
    steady view).

    The resize factor is `scale` times `fit_scale` of the input image (so a config crops the
    same part of the view at any resolution); the crop is anchored as BEVFusion's: at the
    bottom, less a `bottom_crop_lim` fraction of the rows, and centred horizontally. Train
    mode draws the scale, bottom cut, horizontal crop offset, flip and angle; test mode uses
    `test_scale` (default the middle of `scale_lim`), the middle bottom cut, the centre and no
    flip or rotation. The deprecated absolute `resize_lim` / `test_resize` (the latter given
    here from `augment.test_resize`) replace the relative keys when set.
    """

    config: ImageAugConfig
    train: bool
    test_resize: float | None = None

    def _test_resize(self, width: int, height: int) -> float:
        cfg = self.config
        if self.test_resize is not None:
            return self.test_resize
        if cfg.resize_lim is not None:
            return sum(cfg.resize_lim) / 2
        scale = cfg.test_scale if cfg.test_scale is not None else sum(cfg.scale_lim) / 2
        return fit_scale(width, height, cfg.final_size) * scale

    def _resize_range(self, width: int, height: int) -> tuple[float, float]:
        """(low, high) absolute resize factors training draws from."""
        cfg = self.config
        if cfg.resize_lim is not None:
            return cfg.resize_lim
        fit = fit_scale(width, height, cfg.final_size)
        return fit * cfg.scale_lim[0], fit * cfg.scale_lim[1]

    def _crop_top(self, height: int, resize: float, bottom: float) -> int:
        """The first row of the crop in the resized image (negative: padded above)."""
        return int((1 - bottom) * (height * resize)) - self.config.final_size[1]

    def horizon_keep(
        self, width: int, height: int, horizon: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The fraction of a `width` x `height` image's rows above `horizon` (rows, any
        shape) that the crop keeps, as (typical, worst): test mode's crop twice, or in train
        mode the middle draw and the largest resize with the smallest bottom cut (the crop
        reaching least far up). Rotation is not counted. NaN where no row lies above the
        horizon (or `horizon` is NaN)."""
        cfg = self.config
        horizon = np.asarray(horizon, np.float64)
        bottom_mid = sum(cfg.bottom_crop_lim) / 2
        if self.train:
            low, high = self._resize_range(width, height)
            draws = [((low + high) / 2, bottom_mid), (high, cfg.bottom_crop_lim[0])]
        else:
            draws = [(self._test_resize(width, height), bottom_mid)] * 2
        above = np.clip(horizon, 0, height)  # rows of the image above the horizon
        kept = []
        for resize, bottom in draws:
            top = self._crop_top(height, resize, bottom) / resize  # in input rows
            end = top + cfg.final_size[1] / resize
            rows = np.clip(np.minimum(above, end) - max(top, 0.0), 0, None)
            with np.errstate(divide="ignore", invalid="ignore"):
                kept.append(np.where(above >= 1, rows / np.where(above >= 1, above, 1), np.nan))
        return kept[0], kept[1]

    def affine(self, width: int, height: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """`[3, 3]` float64 pixel affine (input `(u, v, 1)` -> output pixel) for a `width` x
        `height` image. Train mode draws from `rng` (required there); test mode draws nothing
        and is deterministic (`sensors.TestTimeImageTransform`, the node's transform)."""
        cfg = self.config
        if self.train and rng is None:
            raise ValueError("ImageAug(train=True).affine needs a random generator")
        final_w, final_h = cfg.final_size
        if self.train:
            if cfg.resize_lim is not None:
                resize = rng.uniform(*cfg.resize_lim)
            else:
                resize = fit_scale(width, height, cfg.final_size) * rng.uniform(*cfg.scale_lim)
            bottom = rng.uniform(*cfg.bottom_crop_lim)
        else:
            resize = self._test_resize(width, height)
            bottom = sum(cfg.bottom_crop_lim) / 2
        new_w = width * resize
        crop_h = self._crop_top(height, resize, bottom)
        crop_w = (
            int(rng.uniform(0, max(0.0, new_w - final_w)))
            if self.train
            else int(max(0.0, new_w - final_w) / 2)
        )
        flip = bool(self.train and cfg.flip and rng.uniform() < 0.5)
        angle = math.radians(rng.uniform(*cfg.rotate_lim_deg)) if self.train else 0.0
        m = np.eye(3)
        m[:2, :2] *= resize
        m[:2, 2] -= [crop_w, crop_h]
        if flip:
            m = np.array([[-1.0, 0, final_w], [0, 1, 0], [0, 0, 1]]) @ m
        if angle:
            center = np.array([final_w / 2, final_h / 2])
            c, s = math.cos(angle), math.sin(angle)
            rot = np.eye(3)
            rot[:2, :2] = [[c, -s], [s, c]]
            rot[:2, 2] = center - rot[:2, :2] @ center
            m = rot @ m
        return m

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        n, t, _, h, w = sample.images.shape
        final_w, final_h = self.config.final_size
        out = np.zeros((n, t, 3, final_h, final_w), np.uint8)
        image_aug = sample.image_aug.clone()
        images = sample.images.numpy()
        for c in range(n):
            m = self.affine(w, h, rng)
            if bool(sample.camera_mask[c]) and (h, w) != (1, 1):
                for j in range(t):
                    for k in range(3):  # plane by plane: each [H, W] plane is contiguous
                        cv2.warpAffine(
                            images[c, j, k],
                            m[:2],
                            (final_w, final_h),
                            dst=out[c, j, k],
                            flags=cv2.INTER_LINEAR,
                        )
            image_aug[c] = torch.from_numpy(image_aug_matrix(m)).float() @ image_aug[c]
        return sample.replace(images=torch.from_numpy(out), image_aug=image_aug)


@dataclass(frozen=True)
class LidarAug:
    """Global rotation about z, uniform scale, flips of x and/or y, and a translation, applied
    to points and GT boxes together and recorded in `lidar_aug` (new = A @ old)."""

    config: LidarAugConfig

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        cfg = self.config
        angle = math.radians(rng.uniform(*cfg.rotate_lim_deg))
        scale = rng.uniform(*cfg.scale_lim)
        flip = np.eye(4)
        if rng.uniform() < cfg.flip_x_prob:
            flip[0, 0] = -1
        if rng.uniform() < cfg.flip_y_prob:
            flip[1, 1] = -1
        shift = np.eye(4)
        shift[:3, 3] = rng.normal(0.0, cfg.translation_std, 3)
        a = shift @ flip @ np.diag([scale, scale, scale, 1.0]) @ _rotation_z(angle)
        return apply_lidar_transform(sample, torch.from_numpy(a).float())


def apply_lidar_transform(sample: Sample, matrix: torch.Tensor) -> Sample:
    """Applies a 4x4 transform (rotation about z, uniform scale, flips, translation) to the
    points and boxes of `sample` and records it in `lidar_aug`."""
    points = sample.points.clone()
    points[:, :3] = points[:, :3] @ matrix[:3, :3].T + matrix[:3, 3]
    return sample.replace(
        points=points,
        gt_boxes=sample.gt_boxes.transform(matrix),
        lidar_aug=matrix @ sample.lidar_aug,
    )


@dataclass(frozen=True)
class PointsRangeFilter:
    """Keeps points inside `point_range` (x_min, y_min, z_min, x_max, y_max, z_max), half-open
    (`sensors.in_range_mask`, the node's filter too)."""

    point_range: Sequence[float]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        keep = in_range_mask(sample.points.numpy(), self.point_range)
        return sample.replace(points=sample.points[torch.from_numpy(keep)])


@dataclass(frozen=True)
class BoxesRangeFilter:
    """Keeps GT boxes whose centre lies inside the x/y extent of `point_range`."""

    point_range: Sequence[float]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        r = self.point_range
        xy = sample.gt_boxes.center[:, :2]
        keep = (xy[:, 0] >= r[0]) & (xy[:, 0] < r[3]) & (xy[:, 1] >= r[1]) & (xy[:, 1] < r[4])
        return sample.replace(
            gt_boxes=sample.gt_boxes[keep],
            gt_labels=sample.gt_labels[keep],
            gt_attributes=sample.gt_attributes[keep],
            gt_num_points=sample.gt_num_points[keep],
        )


@dataclass(frozen=True)
class DropSensors:
    """Removes sensors as if they had failed: the named cameras' images become zeros with
    `camera_mask` False; `lidar=True` empties the point cloud and clears `lidar_present`."""

    cameras: Sequence[str] = ()
    lidar: bool = False

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        unknown = [c for c in self.cameras if c not in sample.camera_names]
        if unknown:
            raise ValueError(f"DropSensors: cameras {unknown} not in {list(sample.camera_names)}")
        images, mask = sample.images.clone(), sample.camera_mask.clone()
        for name in self.cameras:
            c = sample.camera_names.index(name)
            images[c] = 0
            mask[c] = False
        changes = {"images": images, "camera_mask": mask}
        if self.lidar:
            changes.update(points=sample.points[:0], lidar_present=False)
        return sample.replace(**changes)
