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
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..config.schema import ExperimentConfig
from ..structures import CAMERA_NAMES, Sample
from .collate import collate_samples
from .nuscenes import NuScenesDataset, Transform
from .transforms import BoxesRangeFilter, DropSensors, ImageAug, LidarAug, PointsRangeFilter

LIDAR_NAME = "LIDAR_TOP"


def build_transforms(config: ExperimentConfig, *, train: bool) -> list[Transform]:
    """Train: image augmentation, global LiDAR augmentation, then the point and box range
    filters (after LidarAug, so what leaves the pipeline lies in `data.point_range`).
    Test: the deterministic image resize/centre crop and the range filters."""
    point_range = config.data.point_range
    if train:
        augment: list[Transform] = [
            ImageAug(config.augment.image, train=True),
            LidarAug(config.augment.lidar),
        ]
    else:
        augment = [
            ImageAug(config.augment.image, train=False, test_resize=config.augment.test_resize)
        ]
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
    return NuScenesDataset(
        root or data.root,
        data.version,
        split,
        sweeps=data.sweeps,
        sweep_stride=data.sweep_stride,
        clip_frames=data.clip_frames,
        cameras=data.cameras,
        load_images=data.load_images and config.model.camera is not None,
        transforms=transforms,
        seed=config.seed,
    )


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

    `num_replicas`/`rank` default to 1/0, or to torch.distributed's world size and rank when
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
        elif not torch.distributed.is_available() or not torch.distributed.is_initialized():
            if num_replicas is None or rank is None:
                raise RuntimeError(
                    "distributed=True needs an initialized process group or explicit "
                    "num_replicas and rank"
                )
        # DistributedSampler itself reads the world size and rank of the process group when
        # num_replicas/rank are None.
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
