"""GT-paste's counters reach the training log: each sample carries its own (made in a loader
worker), collate sums them per batch, and the trainer writes them to log.jsonl per logging
interval and in total; they equal the sum over the samples the run drew."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from perception.config import parse_config
from perception.datasets.pipeline import build_dataloader, build_dataset
from perception.engine import PeriodicLog, Trainer, seed_everything
from perception.generative.bank import write_bank
from perception.models.builder import build_model
from tests.perception.engine.test_trainer import TRAIN, VERSION
from tests.perception.models.helpers import MICRO

PASTE = ["data.paste.enabled=true", "data.paste.cameras=false",
         "data.paste.classes.car.count=2", "data.paste.classes.pedestrian.count=1",
         "data.paste.classes.pedestrian.min_points=3"]  # fmt: skip


@pytest.fixture(scope="module")
def world_and_bank(indexed_world_copy, tmp_path_factory):
    world = indexed_world_copy("trainer_paste", max_sweeps=1, max_clip_frames=2)
    bank = tmp_path_factory.mktemp("trainer_paste_bank") / "train"
    write_bank(world, VERSION, "mini_train", bank, sweeps=1, progress=False, shard_samples=4)
    return world, bank


def _trainer(world, bank, work_dir, *overrides, workers, resume=False):
    config = parse_config(
        MICRO, [*TRAIN, f"data.root={world}", f"data.paste.bank={bank}", *PASTE, *overrides]
    )
    seed_everything(config.seed)
    dataset = build_dataset(config, train=True)
    loader = build_dataloader(
        dataset, batch_size=config.train.batch_size, train=True, workers=workers, seed=config.seed
    )
    return Trainer(config=config, model=build_model(config), loader=loader, work_dir=work_dir,
                   device="cpu", resume=resume, progress=False)  # fmt: skip


def _drawn(trainer, steps):
    """Per step, the paste counters of the batch's samples drawn again here, in this process
    (the samples depend only on (seed, epoch, index))."""
    loader = trainer.loader
    per_step = []
    for epoch in range(steps // trainer.steps_per_epoch + 1):
        loader.dataset.set_epoch(epoch)
        keys = list(loader.sampler)
        for b in range(min(trainer.steps_per_epoch, steps - len(per_step))):
            batch = Counter()
            for key in keys[b * loader.batch_size : (b + 1) * loader.batch_size]:
                batch.update(loader.dataset[key].paste_counts)
            per_step.append(batch)
    return per_step


def _records(work_dir):
    lines = [json.loads(x) for x in (work_dir / "log.jsonl").read_text().splitlines()]
    return [x for x in lines if "loss" in x]


def test_paste_counts_from_loader_workers_reach_the_log(world_and_bank, tmp_path):
    world, bank = world_and_bank
    trainer = _trainer(world, bank, tmp_path, "train.max_steps=4", "train.log_every=2",
                       workers=1)  # fmt: skip
    paste = trainer.loader.dataset.dataset.transforms[0]
    trainer.train()
    # the pasting happened in the worker process: this process's transform counted nothing
    assert paste.stats()["samples"] == 0
    records = _records(tmp_path)
    assert [r["step"] for r in records] == [2, 4]
    drawn = _drawn(trainer, 4)
    total = Counter()
    for record, batches in zip(records, (drawn[:2], drawn[2:]), strict=True):
        expected = Counter()
        for batch in batches:
            expected.update(batch)
        total.update(expected)
        assert record["paste"] == dict(expected)
        assert record["paste_total"] == dict(total)
    assert total["samples"] == 4 * 4 and total["requested"] == 4 * 4 * 3
    assert total["pasted"] > 0 and total["pasted"] == total["pasted/car"] + total.get(
        "pasted/pedestrian", 0
    )
    # what was not pasted is counted by reason
    skipped = total["requested"] - total["pasted"]
    assert skipped == total["no_free_pose"] + total["occluded"]
    # the transform, run here on the same samples, counted the same
    assert {k: v for k, v in paste.stats().items() if v} == {k: v for k, v in total.items() if v}


@pytest.mark.slow
def test_paste_totals_survive_a_resume_and_are_absent_without_paste(world_and_bank, tmp_path):
    world, bank = world_and_bank
    straight = _trainer(world, bank, tmp_path / "a", "train.max_steps=4", workers=0)
    straight.train()
    steps = ("train.max_steps=4", "train.log_every=3", "train.checkpoint_every=1")
    _trainer(world, bank, tmp_path / "b", *steps, workers=0).train(until_step=2)
    # as if killed before step 2's checkpoint: step 1's holds batch 1's counters, not yet
    # logged; step 2's record (logged as the run's last step) is dropped by the resume
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_2")
    _trainer(world, bank, tmp_path / "b", *steps, workers=0, resume=True).train()
    a, b = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert [r["step"] for r in b] == [3, 4]
    assert a[-1]["paste_total"] == b[-1]["paste_total"] and a[-1]["paste_total"]["samples"] == 16
    # without paste, no paste keys in the log
    config = parse_config(MICRO, [*TRAIN, f"data.root={world}", "train.max_steps=1"])
    dataset = build_dataset(config, train=True)
    loader = build_dataloader(dataset, batch_size=4, train=True, workers=0, seed=config.seed)
    Trainer(config=config, model=build_model(config), loader=loader, work_dir=tmp_path / "c",
            device="cpu", progress=False).train()  # fmt: skip
    (record,) = _records(tmp_path / "c")
    assert "paste" not in record and "paste_total" not in record


def _gather_worker(rank: int, init_file: str, out_dir: str) -> None:
    """`PeriodicLog.paste_counts` with a stand-in trainer in process `rank` of 2 (gloo)."""
    import os
    from types import SimpleNamespace

    import torch
    import torch.distributed as torch_dist

    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                  world_size=2)  # fmt: skip
    try:
        counts = [{"samples": 2, "pasted": 3, "pasted/car": 3}, {"samples": 2, "no_free_pose": 1}]
        hook = PeriodicLog(every=1, paste=True)
        hook.trainer = SimpleNamespace(
            distributed=True, world_size=2,
            all_gather_object=lambda obj: Trainer.all_gather_object(hook.trainer, obj),
        )  # fmt: skip
        hook.paste_interval, hook.paste_total = Counter(counts[rank]), Counter({"samples": 4})
        result = hook.paste_counts()
        torch.save({"result": result, "interval": dict(hook.paste_interval)},
                   os.path.join(out_dir, f"rank{rank}.pt"))  # fmt: skip
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.slow
def test_paste_counts_are_summed_over_processes(tmp_path):
    import torch

    torch.multiprocessing.spawn(
        _gather_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    interval = {"no_free_pose": 1, "pasted": 3, "pasted/car": 3, "samples": 4}
    for rank in range(2):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        assert saved["result"] == (interval, {**interval, "samples": 8})
        assert saved["interval"] == {}  # the next interval starts from zero
