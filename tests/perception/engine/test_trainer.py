"""The training loop on the tiny world with a micro model: finite losses, checkpoints, logs,
exact resume inside an epoch (also after a kill inside a checkpoint write) without duplicate
log lines, per-step seeding, a NaN stop that keeps the last good checkpoint, and the hooks
built from the config at work (time budget, LiDAR first, freezing). Each hook on its own:
test_hooks.py."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

from perception.config import ConfigError, parse_config
from perception.datasets.pipeline import build_dataloader, build_dataset
from perception.engine import (
    Hook,
    NonFiniteLossError,
    TimeBudget,
    Trainer,
    build_hooks,
    find_latest,
    load_checkpoint,
    lr_factor,
    seed_everything,
    seed_step,
)
from perception.engine import hooks as hooks_module
from perception.models.builder import build_model
from tests.perception.models.helpers import MICRO

VERSION = "v1.0-mini"
# the whole tiny world (12 samples): batch 4 -> 3 steps an epoch, so 4 steps cross an epoch
TRAIN = ["data.train_split=all", "train.batch_size=4", "train.workers=0", "train.log_every=1",
         "train.warmup=0.25", "train.lr=1e-3"]  # fmt: skip


@pytest.fixture(scope="module")
def indexed_world(indexed_world_copy):
    return indexed_world_copy("trainer", max_sweeps=1, max_clip_frames=2)


def make_trainer(root, work_dir, *overrides, resume=False):
    """A trainer with the hooks of the config (as tools/train.py builds them)."""
    config = parse_config(MICRO, [*TRAIN, f"data.root={root}", *overrides])
    seed_everything(config.seed)
    model = build_model(config)
    dataset = build_dataset(config, train=True)
    loader = build_dataloader(
        dataset, batch_size=config.train.batch_size, train=True, workers=0, seed=config.seed
    )
    hooks = build_hooks(config, model=model, datasets=[dataset], progress=False)
    return Trainer(
        config=config, model=model, loader=loader, work_dir=work_dir, device="cpu",
        resume=resume, hooks=hooks,
    )  # fmt: skip


class Each(Hook):
    """Calls `before(trainer)` before and `after(trainer)` after every step."""

    def __init__(self, before=None, after=None):
        self.before, self.after = before, after

    def before_step(self):
        if self.before is not None:
            self.before(self.trainer)

    def after_step(self):
        if self.after is not None:
            self.after(self.trainer)


def test_a_few_steps_write_logs_and_a_checkpoint(indexed_world, tmp_path):
    trainer = make_trainer(indexed_world, tmp_path, "train.max_steps=2")
    last = trainer.train()
    assert last == find_latest(tmp_path) and last.name == "step_2"
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    for line in lines:
        assert torch.isfinite(torch.tensor(line["loss"])) and line["lr"] > 0
        assert line["losses"] and all(
            torch.isfinite(torch.tensor(v)) for v in line["losses"].values()
        )
        assert line["samples_per_s"] > 0


def test_resume_gives_the_same_weights(indexed_world, tmp_path):
    straight = make_trainer(indexed_world, tmp_path / "a", "train.max_steps=4",
                            "train.checkpoint_every=2")  # fmt: skip
    straight.train()
    first = make_trainer(indexed_world, tmp_path / "b", "train.max_steps=4")
    assert first.train(until_step=2).name == "step_2"  # as if interrupted after step 2
    # a fresh process state: different global RNG, new model; all must come from the checkpoint
    torch.manual_seed(1234)
    resumed = make_trainer(indexed_world, tmp_path / "b", "train.max_steps=4", resume=True)
    assert resumed.train().name == "step_4"
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert resumed.scheduler.get_last_lr() == straight.scheduler.get_last_lr()
    log_a = [json.loads(x)["loss"] for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x)["loss"] for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert log_a == log_b


def test_a_resume_drops_the_log_lines_written_after_its_checkpoint(indexed_world, tmp_path):
    """Killed after step 3 (logged) with step 2 the last checkpoint: the resumed run logs
    step 3 again, and the log holds it once, as an uninterrupted run's does."""
    steps = ("train.max_steps=4", "train.checkpoint_every=2")
    make_trainer(indexed_world, tmp_path / "a", *steps).train()
    make_trainer(indexed_world, tmp_path / "b", *steps).train(until_step=3)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_3")  # as if killed before it
    assert saved_extra(find_latest(tmp_path / "b"))["log_lines"] == 2
    assert [x["step"] for x in log_lines(tmp_path / "b")] == [1, 2, 3]
    make_trainer(indexed_world, tmp_path / "b", *steps, resume=True).train()
    a, b = log_lines(tmp_path / "a"), log_lines(tmp_path / "b")
    assert [x["step"] for x in b] == [1, 2, 3, 4]
    assert [x["loss"] for x in a] == [x["loss"] for x in b]
    # a checkpoint written before `log_lines` existed: the lines past its step are dropped
    old = make_trainer(indexed_world, tmp_path / "c", *steps)
    state = old.training_state
    old.training_state = lambda: {k: v for k, v in state().items() if k != "log_lines"}
    old.train(until_step=3)
    shutil.rmtree(tmp_path / "c" / "checkpoints" / "step_3")
    assert "log_lines" not in saved_extra(find_latest(tmp_path / "c"))
    make_trainer(indexed_world, tmp_path / "c", *steps, resume=True).train()
    assert [x["step"] for x in log_lines(tmp_path / "c")] == [1, 2, 3, 4]


class _Killed(BaseException):
    """Stands for SIGKILL (tests/tools/test_train_cli.py sends the real one, slowly): not an
    Exception, so nothing in the trainer handles it."""


@pytest.mark.slow
def test_a_kill_inside_a_checkpoint_write_resumes_exactly(indexed_world, tmp_path, monkeypatch):
    """Killed while writing step 2's checkpoint (the weights in memory already at step 2): the
    half-written directory is ignored, step 1's checkpoint is resumed, and the run ends at the
    weights of an uninterrupted one."""
    from perception import checkpoint

    steps = ("train.batch_size=1", "train.max_steps=2", "train.checkpoint_every=1")
    straight = make_trainer(indexed_world, tmp_path / "a", *steps)
    straight.train()

    killed = make_trainer(indexed_world, tmp_path / "b", *steps)
    write_file, written = checkpoint._write_file, []

    def write_then_die(path, data):
        if path.parent.name.startswith(".tmp-step_2"):
            written.append(path.name)
            if len(written) == 3:
                raise _Killed
        return write_file(path, data)

    monkeypatch.setattr(checkpoint, "_write_file", write_then_die)
    with pytest.raises(_Killed):
        killed.train()
    monkeypatch.undo()
    root = tmp_path / "b" / "checkpoints"
    assert find_latest(tmp_path / "b").name == "step_1"
    assert any(p.name.startswith(".tmp-step_2") for p in root.iterdir())

    torch.manual_seed(1234)  # a fresh process: nothing may come from the global RNG state
    resumed = make_trainer(indexed_world, tmp_path / "b", *steps, resume=True)
    assert resumed.train().name == "step_2"
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_steps_draw_randomness_from_seed_rank_and_step():
    seed_step(3, rank=0, step=5)
    first = torch.rand(3), np.random.rand(), random.random()  # noqa: NPY002
    torch.rand(7)  # whatever ran in between
    seed_step(3, rank=0, step=5)
    again = torch.rand(3), np.random.rand(), random.random()  # noqa: NPY002
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    seed_step(3, rank=1, step=5)
    other_rank = torch.rand(3)
    seed_step(3, rank=0, step=6)
    other_step = torch.rand(3)
    assert not torch.equal(first[0], other_rank) and not torch.equal(first[0], other_step)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(indexed_world, tmp_path):
    # checkpoint after every step, so step 1's is the last good one
    trainer = make_trainer(indexed_world, tmp_path, "train.max_steps=4", "train.checkpoint_every=1")
    forward, calls = trainer.model.forward, []

    def nan_at_step_2(batch):
        losses = forward(batch)
        calls.append(1)
        if len(calls) == 2:
            losses = dict(losses)
            name = sorted(losses)[0]
            losses[name] = losses[name] * float("nan")
        return losses

    trainer.model.forward = nan_at_step_2
    name = sorted(forward(next(iter(trainer.loader))))[0]
    calls.clear()
    with pytest.raises(NonFiniteLossError, match=rf"step 2: .*{name}=nan") as info:
        trainer.train()
    assert "step_1" in str(info.value)
    latest = find_latest(tmp_path)
    assert latest.name == "step_1"
    saved = load_checkpoint(latest, model=build_model(trainer.config))
    assert saved.step == 1


def test_schedules_warm_up_and_decay():
    for schedule in ("cosine", "onecycle"):
        f = [lr_factor(s, total_steps=100, schedule=schedule, warmup=0.1) for s in range(101)]
        assert f[0] < f[5] < f[10] == pytest.approx(1.0)
        assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False)) and f[100] < 1e-2


# -- LiDAR first ---------------------------------------------------------------------------


def record_images(trainer):
    """Records whether each training batch holds decoded images (not decoded: all zeros)."""
    decoded = []
    trainer.register_hooks([Each(before=lambda t: decoded.append(bool(t.batch.images.any())))])
    return decoded


@pytest.mark.parametrize("start", [0.4, 0.6])
def test_lidar_first_adds_the_camera_at_an_epoch_and_resumes_there(indexed_world, tmp_path, start):
    # 3 steps an epoch; camera_start 0.4 or 0.6 of 6 steps (2.4, 3.6): the epoch start nearest
    # is epoch 1's, step 3: the camera joins there
    steps = ("train.max_steps=6", f"train.camera_start={start}", "train.checkpoint_every=100")
    straight = make_trainer(indexed_world, tmp_path / "a", *steps)
    camera_before = {k: v.clone() for k, v in straight.model.camera.state_dict().items()}
    decoded = record_images(straight)
    states = []
    straight.register_hooks([Each(after=lambda t: states.append(
        {k: v.clone() for k, v in t.model.camera.state_dict().items()}))])  # fmt: skip
    straight.train()
    assert decoded == [False] * 3 + [True] * 3
    joins = [x for x in log_lines(tmp_path / "a") if x.get("camera") == "joins"]
    assert [(x["step"], x["epoch"]) for x in joins] == [(3, 1)]
    for key, value in camera_before.items():  # untouched while LiDAR only, trained after
        assert torch.equal(states[2][key], value), key
    assert any(not torch.equal(states[-1][k], v) for k, v in camera_before.items())
    assert saved_extra(find_latest(tmp_path / "a"))["camera_from_epoch"] == 1

    for stop in (2, 4):  # interrupted before the camera joined, and after (mid-epoch)
        work = tmp_path / f"stop{stop}"
        make_trainer(indexed_world, work, *steps).train(until_step=stop)
        torch.manual_seed(1234)
        resumed = make_trainer(indexed_world, work, *steps, resume=True)
        decoded = record_images(resumed)
        resumed.train()
        assert decoded == [False] * (3 - stop) + [True] * min(3, 6 - stop)
        a, b = straight.model.state_dict(), resumed.model.state_dict()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"stop {stop}: {key}")


def test_lidar_first_keeps_decoding_images_for_a_painting_model(indexed_world, tmp_path):
    steps = ("train.max_steps=6", "train.camera_start=0.5", "model.paint_points=true")
    trainer = make_trainer(indexed_world, tmp_path, *steps)
    decoded = record_images(trainer)
    enabled = []
    trainer.register_hooks([Each(before=lambda t: enabled.append(t.model.camera_enabled))])
    trainer.train()
    assert decoded == [True] * 6  # the points are painted from the first step
    assert enabled == [False] * 3 + [True] * 3  # the camera branch still joins later


def test_lidar_first_needs_both_branches(indexed_world, tmp_path):
    with pytest.raises(ValueError, match="camera_start"):
        make_trainer(indexed_world, tmp_path, "train.camera_start=0.5", "model.camera=null")


# -- time budget ---------------------------------------------------------------------------


@pytest.fixture
def small_budget_steps(monkeypatch):
    """Plans from the first steps so a run of ~10 steps exercises them."""
    monkeypatch.setattr(hooks_module, "BUDGET_PACE_FROM", 1)
    monkeypatch.setattr(hooks_module, "BUDGET_FIRST_PLAN", 3)
    monkeypatch.setattr(hooks_module, "BUDGET_REPLAN_EVERY", 4)
    monkeypatch.setattr(hooks_module, "BUDGET_TARGET", 1.0)


def fake_clock(trainer, seconds_of_step):
    """Makes `trainer`'s budget clock advance `seconds_of_step(step)` per optimizer step."""
    now = {"t": 1000.0}
    (budget,) = [h for h in trainer.hooks if isinstance(h, TimeBudget)]
    budget.clock = lambda: now["t"]

    def tick(t):
        now["t"] += seconds_of_step(t.step + 1)

    trainer.register_hooks([Each(before=tick)])


def log_lines(work_dir):
    return [json.loads(x) for x in (work_dir / "log.jsonl").read_text().splitlines()]


def saved_extra(checkpoint):
    return json.loads((checkpoint / "training_state.json").read_text())["extra"]


BUDGET_10S = ["train.max_steps=100", f"train.time_budget_min={10 / 60}"]


def test_a_time_budget_plans_the_schedule_to_fit(indexed_world, tmp_path, small_budget_steps):
    trainer = make_trainer(indexed_world, tmp_path, *BUDGET_10S)
    fake_clock(trainer, lambda step: 1.0)
    last = trainer.train()
    # one second a step: planned at step 3 with 3 s spent -> 7 more steps fit in 10 s
    assert last.name == "step_10" and trainer.step == 10
    lines = log_lines(tmp_path)
    plans = [x for x in lines if x.get("time_budget") == "planned"]
    assert plans[0]["step"] == 3 and plans[0]["planned_steps"] == 10
    assert plans[0]["seconds_per_step"] == pytest.approx(1.0)
    # the schedule spans the planned 10 steps: decayed to its end at step 10, not at step 100
    last_lr = [x["lr"] for x in lines if "lr" in x][-1]
    assert last_lr == pytest.approx(1e-3 * lr_factor(10, total_steps=10, schedule="cosine",
                                                     warmup=0.25))  # fmt: skip
    extra = saved_extra(last)
    assert extra["planned_steps"] == 10 and extra["train_seconds"] == pytest.approx(10.0)


def test_a_time_budget_stops_a_run_that_slows_down(indexed_world, tmp_path, small_budget_steps):
    trainer = make_trainer(indexed_world, tmp_path, *BUDGET_10S)
    fake_clock(trainer, lambda step: 1.0 if step <= 5 else 5.0)
    last = trainer.train()
    # planned 10 steps at step 3; step 6 ends at 10 s: the run stops there, saved
    assert last.name == "step_6" and trainer.step == 6
    stops = [x for x in log_lines(tmp_path) if x.get("time_budget", "").startswith("stopped")]
    assert [x["step"] for x in stops] == [6]


def test_a_time_budget_survives_a_resume(indexed_world, tmp_path, small_budget_steps):
    first = make_trainer(indexed_world, tmp_path, *BUDGET_10S, "train.checkpoint_every=100")
    fake_clock(first, lambda step: 1.0)
    first.train(until_step=4)  # interrupted after the plan
    resumed = make_trainer(indexed_world, tmp_path, *BUDGET_10S, resume=True)
    fake_clock(resumed, lambda step: 1.0)
    last = resumed.train()
    # the plan (10 steps) and the 4 s spent came back with the checkpoint
    assert last.name == "step_10"
    assert saved_extra(last)["train_seconds"] == pytest.approx(10.0)


def test_without_a_time_budget_the_configured_steps_run(indexed_world, tmp_path):
    trainer = make_trainer(indexed_world, tmp_path, "train.max_steps=4")
    fake_clock(trainer, lambda step: 1e6)  # the clock has no say
    assert trainer.train().name == "step_4"
    assert not [x for x in log_lines(tmp_path) if "time_budget" in x]


def test_init_from_starts_the_named_weights_from_another_run(indexed_world, tmp_path):
    make_trainer(indexed_world, tmp_path / "source", "train.max_steps=1").train()
    source = load_checkpoint(tmp_path / "source", model=build_model(parse_config(MICRO)))
    saved = make_trainer(indexed_world, tmp_path / "x", "train.max_steps=1").model
    load_checkpoint(source.path, model=saved, restore_rng=False)
    init = [f"train.init_from={tmp_path / 'source'}", "train.init_prefixes=[camera.encoder.]",
            "train.max_steps=1", "train.lr=1e-12", "seed=7"]  # fmt: skip
    trainer = make_trainer(indexed_world, tmp_path / "run", *init)
    fresh = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()  # one step at a negligible learning rate: the weights stay where they began
    after, before = trainer.model.state_dict(), saved.state_dict()
    encoder = [k for k in after if k.startswith("camera.encoder.")]
    assert encoder and any("weight" in k for k in encoder)
    for key, value in after.items():
        if not value.is_floating_point() or "running_" in key:
            continue  # BatchNorm statistics move with the step's batch, whatever the lr
        start = before[key] if key.startswith("camera.encoder.") else fresh[key]
        torch.testing.assert_close(value, start, atol=1e-8, rtol=0, msg=key)
    assert not torch.equal(fresh[encoder[0]], before[encoder[0]])  # the seeds differ
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert lines[0] == {"step": 0, "init_from": str(tmp_path / "source"), "weights": len(encoder)}
    # a resume restores the run's own checkpoint and does not load the init weights again
    resumed = make_trainer(indexed_world, tmp_path / "run", *init, "train.max_steps=2",
                           resume=True)  # fmt: skip
    resumed.train()
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert sum("init_from" in x for x in lines) == 1


def test_freeze_prefixes_keep_those_weights_and_statistics(indexed_world, tmp_path):
    trainer = make_trainer(indexed_world, tmp_path, "train.max_steps=2",
                           "train.freeze_prefixes=[camera.encoder.]")  # fmt: skip
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    frozen = [n for n, p in trainer.model.named_parameters() if n.startswith("camera.encoder.")]
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert frozen and not any(
        id(p) in optimized for n, p in trainer.model.named_parameters() if n in frozen
    )
    trainer.train()
    after = trainer.model.state_dict()
    encoder = [k for k in after if k.startswith("camera.encoder.")]
    assert any("running_mean" in k for k in encoder)  # BatchNorm inside: eval mode kept them
    for key in encoder:
        assert torch.equal(after[key], before[key]), key
    moved = [k for k in after if not k.startswith("camera.encoder.")
             and after[k].is_floating_point() and not torch.equal(after[k], before[k])]  # fmt: skip
    assert any(k.startswith("camera.view_transform.") for k in moved)
    assert any(k.startswith("lidar.") for k in moved) and any(k.startswith("head.") for k in moved)
    assert not trainer.model.camera.encoder.training and trainer.model.camera.training
    first = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert first == {"step": 0, "frozen": ["camera.encoder."], "parameters": len(frozen)}


def test_freeze_prefixes_must_name_parameters(indexed_world, tmp_path):
    with pytest.raises(ConfigError, match=r"train.freeze_prefixes: 'camera.encdr.' matches no "
                       r"parameter of the model \(its parameter names start with camera\."):  # fmt: skip
        make_trainer(indexed_world, tmp_path, "train.freeze_prefixes=[camera.encdr.]")


def test_init_prefixes_need_init_from():
    with pytest.raises(ConfigError, match="train.init_prefixes needs train.init_from"):
        parse_config(MICRO, ["train.init_prefixes=[camera.]"])
