"""The config-built data pipeline: shapes, ranges, determinism, epochs in workers, sharding."""

from __future__ import annotations

import pytest
import torch

from perception.config import load_config
from perception.datasets.pipeline import (
    EpochSampler,
    build_dataloader,
    build_dataset,
    measure_loader,
)
from perception.structures import Batch

VERSION = "v1.0-mini"
TINY_CONFIG = "configs/bevfusion_tiny.yaml"


@pytest.fixture(scope="module")
def indexed_world(indexed_world_copy):
    return indexed_world_copy("pipeline", max_sweeps=3, max_clip_frames=2)


@pytest.fixture(scope="module")
def config():
    # the whole tiny world as both splits: 12 samples, enough for batches and shards
    return load_config(TINY_CONFIG, ["data.train_split=all", "data.val_split=all"])


def _epoch_batches(loader, dataset, epoch: int) -> list[Batch]:
    dataset.set_epoch(epoch)
    return list(loader)


def _same(a: list[Batch], b: list[Batch]) -> bool:
    return all(
        x.tokens == y.tokens
        and torch.equal(x.points, y.points)
        and torch.equal(x.images, y.images)
        and torch.equal(x.lidar_aug, y.lidar_aug)
        for x, y in zip(a, b, strict=True)
    )


def test_train_batch_shapes_and_ranges(indexed_world, config):
    dataset = build_dataset(config, train=True, root=indexed_world)
    loader = build_dataloader(dataset, batch_size=2, train=True, workers=0, seed=0)
    batch = next(iter(loader))
    assert isinstance(batch, Batch) and len(batch.tokens) == 2
    final_w, final_h = config.augment.image.final_size
    assert batch.images.shape == (2, 6, config.data.clip_frames, 3, final_h, final_w)
    assert batch.images.float().mean() > 0  # real pixels, not placeholders
    r = torch.tensor(config.data.point_range)
    xyz = batch.points[:, 1:4]
    assert len(xyz) > 0 and ((xyz >= r[:3]) & (xyz < r[3:])).all()
    for boxes in batch.gt_boxes:
        xy = boxes.center[:, :2]
        assert ((xy >= r[:2]) & (xy < r[3:5])).all()
    assert not torch.equal(batch.lidar_aug[0], torch.eye(4))  # LiDAR augmentation ran


def test_test_pipeline_is_deterministic(indexed_world, config):
    loads = []
    for _ in range(2):
        dataset = build_dataset(config, train=False, root=indexed_world)
        loader = build_dataloader(dataset, batch_size=3, train=False, workers=0, seed=0)
        loads.append(list(loader))
    assert _same(*loads)
    assert loads[0][0].tokens == tuple(dataset.tokens[:3])  # dataset order, no shuffle
    assert torch.equal(loads[0][0].lidar_aug[0], torch.eye(4))  # no LiDAR augmentation


@pytest.mark.parametrize("workers", [0, 2])
def test_train_epochs_differ_and_reproduce(indexed_world, config, workers):
    dataset = build_dataset(config, train=True, root=indexed_world)
    loader = build_dataloader(dataset, batch_size=4, train=True, workers=workers, seed=0)
    epoch0 = _epoch_batches(loader, dataset, 0)
    epoch1 = _epoch_batches(loader, dataset, 1)
    epoch0_again = _epoch_batches(loader, dataset, 0)  # same persistent workers, epoch back
    assert _same(epoch0, epoch0_again)
    assert not _same(epoch0, epoch1)
    # the augmentation itself changed with the epoch (not only the shuffle order): compare
    # each sample's LiDAR augmentation by token
    aug0 = {t: a for b in epoch0 for t, a in zip(b.tokens, b.lidar_aug)}
    aug1 = {t: a for b in epoch1 for t, a in zip(b.tokens, b.lidar_aug)}
    assert all(not torch.equal(aug0[t], aug1[t]) for t in aug0.keys() & aug1.keys())
    # a fresh loader (fresh workers) reproduces what the other saw at epoch 1
    fresh_dataset = build_dataset(config, train=True, root=indexed_world)
    fresh = build_dataloader(fresh_dataset, batch_size=4, train=True, workers=workers, seed=0)
    assert _same(_epoch_batches(fresh, fresh_dataset, 1), epoch1)


def test_workers_match_main_process(indexed_world, config):
    """Worker processes see the epoch the main process set: the same samples as no workers."""
    dataset = build_dataset(config, train=True, root=indexed_world)
    in_process = build_dataloader(dataset, batch_size=4, train=True, workers=0, seed=0)
    in_workers = build_dataloader(dataset, batch_size=4, train=True, workers=2, seed=0)
    for epoch in (3, 5):
        dataset.set_epoch(epoch)
        assert _same(list(in_process), list(in_workers))


def test_camera_free_config_skips_images(indexed_world):
    config = load_config("configs/bevfusion_tiny_lidar.yaml", ["data.train_split=all"])
    assert config.model.camera is None
    dataset = build_dataset(config, train=True, root=indexed_world)
    assert not dataset.load_images
    raw = dataset.load_raw(dataset.records[0])
    assert raw.images.shape[-2:] == (1, 1)


def test_distributed_shards_are_disjoint_and_cover(indexed_world, config):
    dataset = build_dataset(config, train=True, root=indexed_world)
    assert len(dataset) % 2 == 0  # no padding: shards must be exactly disjoint
    shards = [
        [i for _, i, _ in EpochSampler(dataset, shuffle=True, seed=0, num_replicas=2, rank=rank)]
        for rank in (0, 1)
    ]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(len(dataset)))
    # the same through build_dataloader
    tokens = []
    for rank in (0, 1):
        loader = build_dataloader(
            dataset, batch_size=2, train=False, workers=0, seed=0,
            distributed=True, num_replicas=2, rank=rank,
        )  # fmt: skip
        assert loader.sampler.num_replicas == 2 and loader.sampler.rank == rank
        tokens.append([t for _, i, _ in loader.sampler for t in [dataset.tokens[i]]])
    assert not set(tokens[0]) & set(tokens[1])
    assert sorted(tokens[0] + tokens[1]) == sorted(dataset.tokens)


def test_distributed_without_process_group_needs_rank(indexed_world, config):
    dataset = build_dataset(config, train=True, root=indexed_world)
    with pytest.raises(RuntimeError, match="num_replicas and rank"):
        build_dataloader(dataset, batch_size=2, train=True, workers=0, seed=0, distributed=True)


def test_drop_sensors_masks_camera(indexed_world, config):
    dataset = build_dataset(config, train=False, root=indexed_world, drop_sensors=["CAM_FRONT"])
    sample = dataset[0]
    c = sample.camera_names.index("CAM_FRONT")
    assert not sample.camera_mask[c] and sample.camera_mask.sum() == len(sample.camera_names) - 1
    assert not sample.images[c].any() and sample.images.any()
    with pytest.raises(ValueError, match="unknown sensors"):
        build_dataset(config, train=False, root=indexed_world, drop_sensors=["CAM_TOP"])


def test_measure_loader(indexed_world, config):
    dataset = build_dataset(config, train=False, root=indexed_world)
    loader = build_dataloader(dataset, batch_size=2, train=False, workers=0, seed=0)
    assert measure_loader(loader, batches=2) > 0
