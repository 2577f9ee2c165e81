"""The data pipeline for training and testing, built from an `ExperimentConfig`.

    dataset = build_dataset(config, train=True)
    loader = build_dataloader(dataset, batch_size=4, train=True, workers=2, seed=config.seed)
    for epoch in range(epochs):
        dataset.set_epoch(epoch)  # reaches the worker processes too, persistent or not
        for batch in loader:
            ...

How the epoch reaches the workers: with worker processes (persistent ones above all) each
worker holds its own copy of the dataset, so `set_epoch` on the main process's dataset would
change nothing there. The loader therefore draws indices from an `EpochSampler`, which runs in
the main process: each time the loader is iterated it reads the dataset's current epoch and
yields `(epoch, index, load_images)` keys; the loader's dataset is an `EpochDataset`, which
sets that epoch (and whether images are decoded: the trainer's LiDAR-first phase turns it off
on the main process's dataset) on its copy before loading the sample. Augmentation randomness,
seeded by the dataset from (seed, epoch, index), is thus the same with 0 or N workers. The
shuffle order is a `DistributedSampler` order (one replica when not distributed), seeded by
(seed + epoch).
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..config.schema import ExperimentConfig
from ..distributed import is_distributed, world_size
from ..distributed import rank as process_rank
from ..structures import CAMERA_NAMES, Sample
from .collate import collate_samples
from .nuscenes import NuScenesDataset, Transform
from .sensors import sweep_reach_problem
from .transforms import (
    BoxesRangeFilter,
    DropSensors,
    ImageAug,
    LidarAug,
    PointsRangeFilter,
    horizon_row,
)

LIDAR_NAME = "LIDAR_TOP"


def image_transform(config: ExperimentConfig, *, train: bool) -> ImageAug:
    """The image resize/crop(/flip/rotate) of `config`: what the dataset applies and, with
    `train=False`, what the node applies to each camera frame (deploy/pipeline.py)."""
    augment = config.augment
    return ImageAug(augment.image, train=train, test_resize=None if train else augment.test_resize)


def camera_crop_problems(
    aug: ImageAug,
    width: int,
    height: int,
    intrinsics: np.ndarray,
    camera_to_ego: np.ndarray,
    views: Sequence[str],
    *,
    where: str,
) -> tuple[str | None, str | None]:
    """Checks one camera's `width` x `height` images against `aug`'s crop: it must keep at
    least `augment.image.min_horizon_keep` of the rows above the horizon (`horizon_row`) in
    each of `views` (named by `views`, e.g. `sample <token>`), each with its calibration
    (`intrinsics [V, 3, 3]`, `camera_to_ego [V, 4, 4]`). The dataset (`check_image_crops`) and
    the real-time node (its CameraInfo and /tf_static mount) both call this.

    Returns `(error, warning)` texts that start with `where` (None when fine): the error when
    the test crop (train: the middle draw) keeps less, the warning when only the largest
    training resize does.
    """
    min_keep = aug.config.min_horizon_keep
    if min_keep <= 0:
        return None, None
    mode = "training (middle draw)" if aug.train else "test"
    rows = horizon_row(np.asarray(intrinsics), np.asarray(camera_to_ego))
    typical, worst = aug.horizon_keep(width, height, rows)
    where = f"{where} ({width}x{height}, augment.image.final_size {list(aug.config.final_size)})"
    error = warning = None
    low = np.nan_to_num(typical, nan=1.0) < min_keep
    if low.any():
        i = int(np.nanargmin(typical))
        error = (
            f"{where}: the {mode} crop keeps {typical[i]:.0%} of the {rows[i]:.0f} rows above "
            f"the horizon in {views[i]} ({int(low.sum())} of {len(views)} below "
            f"augment.image.min_horizon_keep {min_keep}): the model would see mostly road. "
            "Resize less or cut more at the bottom (augment.image.scale_lim / test_scale "
            "relative to the fit, bottom_crop_lim), or set min_horizon_keep: 0"
        )
    low = np.nan_to_num(worst, nan=1.0) < min_keep
    if low.any():
        i = int(np.nanargmin(worst))
        warning = (
            f"{where}: the largest training resize keeps {worst[i]:.0%} of the "
            f"{rows[i]:.0f} rows above the horizon in {views[i]} ({int(low.sum())} of "
            f"{len(views)} below augment.image.min_horizon_keep {min_keep})"
        )
    return error, warning


def check_image_crops(
    aug: ImageAug, records: Sequence[dict], cameras: Sequence[str], *, source: str
) -> None:
    """`camera_crop_problems` per camera and image size, with each sample's calibration
    (index records: intrinsics, image size, keyframe `camera_to_lidar`, `lidar_to_ego`).

    Raises ValueError naming the camera and the worst sample when the test crop (train: the
    middle draw) keeps less than `min_horizon_keep`; warns when only the largest training
    resize does.
    """
    if aug.config.min_horizon_keep <= 0:
        return
    for channel in cameras:
        by_size: dict[tuple[int, int], list[tuple[str, np.ndarray, np.ndarray]]] = {}
        for record in records:
            cam = record["cameras"].get(channel)
            if cam is None:
                continue
            k = np.asarray(cam["intrinsics"], np.float64).reshape(3, 3)
            camera_to_lidar = np.asarray(cam["frames"][0]["camera_to_lidar"]).reshape(4, 4)
            lidar_to_ego = np.asarray(record["lidar"]["lidar_to_ego"]).reshape(4, 4)
            size = (int(cam["size"][0]), int(cam["size"][1]))
            by_size.setdefault(size, []).append(
                (f"sample {record['token']}", k, lidar_to_ego @ camera_to_lidar)
            )
        for (width, height), views in by_size.items():
            error, warning = camera_crop_problems(
                aug,
                width,
                height,
                np.stack([v[1] for v in views]),
                np.stack([v[2] for v in views]),
                [v[0] for v in views],
                where=f"{source}: {channel}",
            )
            if error:
                raise ValueError(error)
            if warning:
                warnings.warn(warning, stacklevel=2)


def lidar_period(records: Sequence[dict]) -> float | None:
    """The median time between consecutive LiDAR sweeps of index records (their `sweeps`
    lags); None when no record has an earlier sweep."""
    steps = [np.diff([0.0, *(s["time_lag"] for s in record["sweeps"])]) for record in records]
    steps = [x for x in steps if len(x)]
    return float(np.median(np.concatenate(steps))) if steps else None


def check_sweep_reach(dataset: NuScenesDataset) -> None:
    """Warns when `data.sweeps` and `data.sweep_stride` reach further back than
    `data.max_sweep_age` at the recording's LiDAR rate (`sweep_reach_problem`)."""
    period = lidar_period(dataset.records)
    problem = sweep_reach_problem(
        dataset.sweeps, dataset.sweep_stride, period or 0.0, dataset.max_sweep_age
    )
    if problem:
        warnings.warn(f"{dataset.root} ({dataset.split}): {problem}", stacklevel=3)


def build_transforms(config: ExperimentConfig, *, train: bool) -> list[Transform]:
    """Train: GT-paste when `data.paste.enabled` (first: on the sample as loaded, so the
    augmentation that follows moves pasted and real objects alike), image augmentation,
    global LiDAR augmentation, then the point and box range filters (after LidarAug, so what
    leaves the pipeline lies in `data.point_range`).
    Test: the deterministic image resize/centre crop and the range filters."""
    point_range = config.data.point_range
    augment: list[Transform] = [image_transform(config, train=train)]
    if train:
        augment.append(LidarAug(config.augment.lidar))
        if config.data.paste.enabled:
            from ..generative.paste import build_paste  # the bank is opened only when used

            images = config.data.load_images and config.model.camera is not None
            paste = build_paste(config, cameras=config.data.paste.cameras and images)
            augment.insert(0, paste)
    return [*augment, PointsRangeFilter(point_range), BoxesRangeFilter(point_range)]


def build_dataset(
    config: ExperimentConfig,
    split: str | None = None,
    *,
    train: bool,
    root: str | Path | None = None,
    drop_sensors: Sequence[str] | None = None,
) -> NuScenesDataset:
    """The dataset of `split` (default `data.train_split` when `train`, else `data.val_split`)
    under `root` (default `data.root`) with the config's transforms.

    Images are not decoded (1x1 placeholders) when the model has no camera branch or
    `data.load_images` is False. `drop_sensors` names sensors to remove after the transforms,
    for robustness evaluation: camera channels (`CAM_FRONT`, ...) and/or `LIDAR_TOP`.
    """
    data = config.data
    split = split or (data.train_split if train else data.val_split)
    transforms = build_transforms(config, train=train)
    if drop_sensors:
        unknown = [s for s in drop_sensors if s not in (*CAMERA_NAMES, LIDAR_NAME)]
        if unknown:
            raise ValueError(
                f"drop_sensors: unknown sensors {unknown}; "
                f"choose from {[*CAMERA_NAMES, LIDAR_NAME]}"
            )
        transforms.append(
            DropSensors(
                cameras=tuple(s for s in drop_sensors if s != LIDAR_NAME),
                lidar=LIDAR_NAME in drop_sensors,
            )
        )
    dataset = NuScenesDataset(
        root or data.root,
        data.version,
        split,
        sweeps=data.sweeps,
        sweep_stride=data.sweep_stride,
        clip_frames=data.clip_frames,
        max_sweep_age=data.max_sweep_age,
        max_clip_frame_age=data.max_clip_frame_age,
        cameras=data.cameras,
        load_images=data.load_images and config.model.camera is not None,
        transforms=transforms,
        seed=config.seed,
    )
    check_sweep_reach(dataset)
    if dataset.load_images:  # each camera's calibration against the crop, once per dataset
        image_aug = next(t for t in transforms if isinstance(t, ImageAug))
        check_image_crops(
            image_aug, dataset.records, dataset.cameras, source=f"{dataset.root} {split}"
        )
    return dataset


class EpochDataset(Dataset):
    """Wraps a dataset with `set_epoch` so that it is indexed by `(epoch, index, load_images)`
    keys (from `EpochSampler`): each worker's copy switches to the epoch, and to decoding
    images or not, as the main process asked."""

    def __init__(self, dataset: NuScenesDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitem__(self, key: tuple[int, int, bool]) -> Sample:
        epoch, index, load_images = key
        if self.dataset.epoch != epoch:
            self.dataset.set_epoch(epoch)
        self.dataset.load_images = load_images
        return self.dataset[index]


class EpochSampler(Sampler[tuple[int, int, bool]]):
    """Yields `(epoch, index, load_images)`: the indices of this rank's shard, shuffled by
    (seed + epoch) when `shuffle`, with the epoch and `load_images` read from the dataset each
    time it is iterated (in the main process, where the caller's `dataset.set_epoch` took
    effect).

    `num_replicas`/`rank` default to 1/0, or to the process group's world size and rank when
    `distributed` and a process group is initialized. Shards are padded by repetition to equal
    length, as `DistributedSampler` does.
    """

    def __init__(
        self,
        dataset: NuScenesDataset,
        *,
        shuffle: bool,
        seed: int,
        distributed: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        self.dataset = dataset
        if not distributed:
            num_replicas, rank = num_replicas or 1, rank or 0
        elif not is_distributed():
            if num_replicas is None or rank is None:
                raise RuntimeError(
                    "distributed=True needs an initialized process group or explicit "
                    "num_replicas and rank"
                )
        else:  # the process group's, unless given
            num_replicas = world_size() if num_replicas is None else num_replicas
            rank = process_rank() if rank is None else rank
        self.indices = DistributedSampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed
        )

    @property
    def num_replicas(self) -> int:
        return self.indices.num_replicas

    @property
    def rank(self) -> int:
        return self.indices.rank

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[int, int, bool]]:
        epoch, images = self.dataset.epoch, self.dataset.load_images
        self.indices.set_epoch(epoch)
        return ((epoch, i, images) for i in self.indices)


def seed_worker(worker_id: int) -> None:
    """Seeds numpy's and Python's global generators in a loader worker from the seed torch
    gave it (the loader's seeded generator + worker id): code that uses them stays
    reproducible and differs between workers. (Transforms get their own `rng`.)"""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 (the global generator is what we seed)
    random.seed(seed)


def build_dataloader(
    dataset: NuScenesDataset,
    *,
    batch_size: int,
    train: bool,
    workers: int,
    seed: int,
    distributed: bool = False,
    drop_last: bool | None = None,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> DataLoader:
    """A loader of collated `Batch`es of `dataset`.

    Train mode shuffles (seed + epoch) and, by default, drops the last incomplete batch; test
    mode keeps the dataset order. `distributed` shards the dataset over the process group's
    ranks (or the explicit `num_replicas`/`rank`). `workers` > 0 keeps the worker processes
    alive across epochs. Call `dataset.set_epoch(epoch)` before iterating each epoch; see the
    module docstring for how that reaches the workers.
    """
    sampler = EpochSampler(
        dataset,
        shuffle=train,
        seed=seed,
        distributed=distributed,
        num_replicas=num_replicas,
        rank=rank,
    )
    return DataLoader(
        EpochDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_samples,
        drop_last=train if drop_last is None else drop_last,
        persistent_workers=workers > 0,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )


def measure_loader(loader: DataLoader, batches: int) -> float:
    """Samples per second of the loader alone (no model), over up to `batches` batches after
    the first one (which pays for starting the workers and is not counted)."""
    iterator = iter(loader)
    next(iterator)
    samples = 0
    start = time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        samples += len(batch.tokens)
    elapsed = time.perf_counter() - start
    del iterator
    return samples / elapsed if elapsed > 0 else 0.0
