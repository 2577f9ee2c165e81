"""Each training hook on its own, driven by a stand-in trainer (no data, no detector): the time
budget plans and stops by an injected clock, LiDAR first switches the model and the datasets
at its epoch, freezing, logging, evaluation and checkpointing act at their steps, every
hook's state round-trips through `state_dict`, and log.jsonl keeps no line twice after a
resume. Then the loop itself on a toy model: the order of the calls, and hook state through a
real checkpoint and resume."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from perception.config import ConfigError, parse_config
from perception.engine import (
    Freeze,
    Hook,
    JsonLog,
    LidarFirst,
    PeriodicCheckpoint,
    PeriodicEval,
    PeriodicLog,
    TimeBudget,
    Trainer,
    find_latest,
)
from tests.perception.models.helpers import MICRO


class FakeTrainer(SimpleNamespace):
    """The trainer attributes hooks read, with defaults; `run(hooks, steps)` drives them."""

    def __init__(self, tmp_path, **kwargs):
        defaults = dict(
            step=0, epoch=0, loop_steps=0, steps_per_epoch=3, total_steps=12,
            configured_steps=12, until_step=None, is_main=True, distributed=False,
            world_size=1, global_batch_size=2, losses={"total": 1.5, "a": 1.0, "b": 0.5},
            batch=SimpleNamespace(paste_counts={}), work_dir=tmp_path,
            log=JsonLog(tmp_path / "log.jsonl"), model=nn.Linear(1, 1),
            scheduler=SimpleNamespace(get_last_lr=lambda: [1e-3]),
            max_over_processes=lambda value: value,
        )  # fmt: skip
        super().__init__(**{**defaults, **kwargs})

    @property
    def stop_step(self):
        return min(self.total_steps, self.until_step or self.total_steps)

    def run(self, hooks, steps=None):
        """The loop's calls, `steps` optimizer steps at most (default: to `stop_step`)."""
        for hook in hooks:
            hook.trainer = self
        calls = lambda stage: [getattr(h, stage)() for h in hooks]  # noqa: E731
        end = self.step + (steps or self.stop_step)
        self.loop_steps = 0
        calls("before_train")
        while self.step < min(self.stop_step, end):
            self.epoch = self.step // self.steps_per_epoch
            calls("before_epoch")
            for _ in range(self.step % self.steps_per_epoch, self.steps_per_epoch):
                calls("before_step")
                self.step += 1
                self.loop_steps += 1
                calls("after_step")
                if self.step >= min(self.stop_step, end):
                    break
        calls("after_train")


def records(tmp_path):
    path = tmp_path / "log.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


# -- time budget ---------------------------------------------------------------------------


class Clock:
    """A clock that a hook advances by `seconds_of_step(step)` before each step."""

    def __init__(self, seconds_of_step):
        self.now, self.seconds_of_step = 1000.0, seconds_of_step

    def __call__(self):
        return self.now

    def hook(self):
        clock = self

        class Tick(Hook):
            def before_step(self):
                clock.now += clock.seconds_of_step(self.trainer.step + 1)

        return Tick()


def budget(clock, budget_s=10.0):
    return TimeBudget(budget_s, clock=clock, pace_from=1, first_plan=3, replan_every=4,
                      target=1.0)  # fmt: skip


def test_time_budget_plans_the_steps_that_fit(tmp_path):
    clock = Clock(lambda step: 1.0)
    trainer = FakeTrainer(tmp_path, total_steps=100, configured_steps=100)
    trainer.run([clock.hook(), budget(clock)])
    # one second a step: at step 3, 3 s spent and a 1 s pace leave room for 7 more
    assert trainer.step == trainer.total_steps == 10
    (plan,) = [x for x in records(tmp_path) if x.get("time_budget") == "planned"]
    assert plan == {"step": 3, "time_budget": "planned", "planned_steps": 10,
                    "train_seconds": 3.0, "budget_seconds": 10.0, "seconds_per_step": 1.0}  # fmt: skip


def test_time_budget_stops_at_the_budget(tmp_path):
    clock = Clock(lambda step: 1.0 if step <= 5 else 5.0)
    hook = budget(clock)
    trainer = FakeTrainer(tmp_path, total_steps=100, configured_steps=100)
    trainer.run([clock.hook(), hook])
    # planned 10 steps at step 3; step 6 ends at 10 s: the run's end moves there
    assert trainer.step == trainer.total_steps == 6
    stops = [x for x in records(tmp_path) if x.get("time_budget", "").startswith("stopped")]
    assert [(x["step"], x["train_seconds"]) for x in stops] == [(6, 10.0)]
    assert hook.state_dict() == {"planned_steps": 6, "train_seconds": 10.0}


def test_time_budget_never_plans_past_the_configured_steps(tmp_path):
    """A fast run: every plan is the configured 20 steps, also at step 20 (a re-planning step,
    where the plan once became 21)."""
    clock = Clock(lambda step: 0.01)
    trainer = FakeTrainer(tmp_path, total_steps=20, configured_steps=20)
    trainer.run([clock.hook(), budget(clock)])
    assert trainer.step == 20 and not [x for x in records(tmp_path) if "time_budget" in x]


def test_time_budget_state_round_trips(tmp_path):
    clock = Clock(lambda step: 1.0)
    first = budget(clock)
    trainer = FakeTrainer(tmp_path, total_steps=100, configured_steps=100)
    trainer.run([clock.hook(), first], steps=4)  # interrupted after the plan
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    assert state == {"planned_steps": 10, "train_seconds": 4.0}
    resumed, fresh = budget(clock), FakeTrainer(tmp_path, step=4, total_steps=100)
    resumed.trainer = fresh
    resumed.load_state_dict(state)
    assert fresh.total_steps == 10 and resumed.state_dict() == state
    fresh.run([clock.hook(), resumed])
    assert fresh.step == 10 and resumed.spent() == pytest.approx(10.0)
    # without a budget the hook only measures: a resume keeps the configured steps
    unbudgeted, other = TimeBudget(None, clock=clock), FakeTrainer(tmp_path, total_steps=50)
    unbudgeted.trainer = other
    unbudgeted.load_state_dict(state)
    assert other.total_steps == 50 and unbudgeted.spent() == 0.0


# -- LiDAR first ---------------------------------------------------------------------------


def fused_model(paint_points=False):
    return SimpleNamespace(camera=object(), lidar=object(), camera_enabled=True,
                           paint_points=paint_points)  # fmt: skip


class Phases(Hook):
    """Records, before each step, the model's camera switch and the datasets' decoding."""

    def __init__(self, model, datasets):
        self.model, self.datasets, self.seen = model, datasets, []

    def before_step(self):
        self.seen.append((self.model.camera_enabled, *(d.load_images for d in self.datasets)))


def test_lidar_first_switches_the_model_and_the_datasets_at_its_epoch(tmp_path):
    model = fused_model()
    datasets = [SimpleNamespace(load_images=True), SimpleNamespace(load_images=False)]
    hook = LidarFirst(model=model, datasets=datasets, camera_start=0.5)
    phases = Phases(model, datasets)
    # 3 steps an epoch, 12 steps: the epoch start nearest step 6 is epoch 2's
    FakeTrainer(tmp_path).run([hook, phases])
    # a dataset built without images (data.load_images: false) never decodes them
    assert phases.seen == [(False, False, False)] * 6 + [(True, True, False)] * 6
    assert records(tmp_path) == [{"step": 6, "epoch": 2, "camera": "joins"}]
    assert hook.state_dict() == {"camera_from_epoch": 2}


def test_lidar_first_keeps_images_for_a_painting_model(tmp_path):
    model, datasets = fused_model(paint_points=True), [SimpleNamespace(load_images=True)]
    phases = Phases(model, datasets)
    FakeTrainer(tmp_path).run([LidarFirst(model=model, datasets=datasets, camera_start=0.5),
                               phases])  # fmt: skip
    assert phases.seen == [(False, True)] * 6 + [(True, True)] * 6


@pytest.mark.parametrize(("stop", "joined"), [(4, None), (6, None), (7, 2)])
def test_lidar_first_resumes_in_its_phase(tmp_path, stop, joined):
    """Resumed from a checkpoint at `stop` (before, at and after the join): the same phases as
    an uninterrupted run from there on, and one join record."""
    model, datasets = fused_model(), [SimpleNamespace(load_images=True)]
    first = LidarFirst(model=model, datasets=datasets, camera_start=0.5)
    FakeTrainer(tmp_path).run([first], steps=stop)
    state = json.loads(json.dumps(first.state_dict()))
    assert state == {"camera_from_epoch": joined}

    model, datasets = fused_model(), [SimpleNamespace(load_images=True)]
    resumed = LidarFirst(model=model, datasets=datasets, camera_start=0.5)
    resumed.load_state_dict(state)
    phases = Phases(model, datasets)
    FakeTrainer(tmp_path, step=stop).run([resumed, phases])
    assert phases.seen == [(False, False)] * max(0, 6 - stop) + [(True, True)] * min(6, 12 - stop)
    assert resumed.state_dict() == {"camera_from_epoch": 2}
    if joined is None:  # the join is written by the run that crossed it
        assert [x["step"] for x in records(tmp_path) if "camera" in x] == [6]


def test_lidar_first_needs_a_fused_model_and_the_datasets():
    with pytest.raises(ValueError, match="camera_start > 0 needs a fused model"):
        LidarFirst(model=SimpleNamespace(camera=object(), lidar=None, camera_enabled=True),
                   datasets=[SimpleNamespace(load_images=True)], camera_start=0.5)  # fmt: skip
    with pytest.raises(ValueError, match="datasets"):
        LidarFirst(model=fused_model(), datasets=[], camera_start=0.5)


# -- freezing ------------------------------------------------------------------------------


def test_freeze_stops_gradients_at_once_and_keeps_frozen_modules_in_eval(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 1))
    hook = Freeze(model, ["0.", "1."])
    assert [p.requires_grad for p in model.parameters()] == [False] * 4 + [True] * 2
    model.train()
    FakeTrainer(tmp_path, model=model).run([hook], steps=1)
    assert [m.training for m in model] == [False, False, True]
    assert records(tmp_path) == [{"step": 0, "frozen": ["0.", "1."], "parameters": 4}]
    # a resumed run (step > 0) does not log it again
    FakeTrainer(tmp_path, model=model, step=5).run([hook], steps=1)
    assert len(records(tmp_path)) == 1
    assert hook.state_dict() == {}


def test_freeze_names_a_prefix_that_matches_nothing():
    with pytest.raises(ConfigError, match=r"'2\.' matches no parameter .* start with 0\., 1\."):
        Freeze(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), ["2."])


# -- logging -------------------------------------------------------------------------------


def test_periodic_log_writes_the_same_keys_every_n_steps_and_at_the_end(tmp_path):
    trainer = FakeTrainer(tmp_path, total_steps=5)
    trainer.run([PeriodicLog(every=2)])
    lines = records(tmp_path)
    assert [x["step"] for x in lines] == [2, 4, 5]
    for line in lines:
        assert set(line) == {"step", "epoch", "loss", "lr", "samples_per_s", "losses"}
        assert line["loss"] == 1.5 and line["losses"] == {"a": 1.0, "b": 0.5}
        assert line["lr"] == 1e-3 and line["samples_per_s"] > 0
    assert [x["epoch"] for x in lines] == [0, 1, 1]


def test_periodic_log_sums_paste_counters_and_their_state_round_trips(tmp_path):
    hook = PeriodicLog(every=2, paste=True)
    batch = SimpleNamespace(paste_counts={"samples": 2, "pasted": 1, "no_free_pose": 0})
    trainer = FakeTrainer(tmp_path, total_steps=6, batch=batch)
    trainer.run([hook], steps=3)  # a record at step 2; step 3's batch is not logged yet
    (line,) = records(tmp_path)
    assert line["paste"] == line["paste_total"] == {"no_free_pose": 0, "pasted": 2, "samples": 4}
    state = json.loads(json.dumps(hook.state_dict()))
    assert state == {"paste_counts": {"samples": 6, "pasted": 3, "no_free_pose": 0}}
    resumed = PeriodicLog(every=2, paste=True)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    trainer = FakeTrainer(tmp_path, total_steps=6, batch=batch, step=3)
    trainer.run([resumed])
    last = records(tmp_path)[-1]
    assert last["step"] == 6 and last["paste_total"]["samples"] == 12
    # nothing pasted in a run: no paste keys
    (tmp_path / "log.jsonl").unlink()
    FakeTrainer(tmp_path, total_steps=2, log=JsonLog(tmp_path / "log.jsonl")).run(
        [PeriodicLog(every=1)]
    )
    assert all("paste" not in x for x in records(tmp_path))


def test_json_log_keeps_the_lines_before_a_checkpoint(tmp_path):
    log = JsonLog(tmp_path / "log.jsonl")
    for step in (1, 2, 3):
        log.write({"step": step})
    assert log.lines == 3 and JsonLog(tmp_path / "log.jsonl").lines == 3
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a write killed half-way
    reopened = JsonLog(tmp_path / "log.jsonl")
    assert reopened.keep_first(2) == 1 and reopened.lines == 2
    assert records(tmp_path) == [{"step": 1}, {"step": 2}]
    reopened.write({"step": 3})
    assert reopened.lines == 3 and records(tmp_path)[-1] == {"step": 3}
    assert reopened.keep_first(10) == 0 and reopened.lines == 3
    # checkpoints without a line count: by step (records without one are kept)
    reopened.write({"init_from": "x"})
    reopened.write({"step": 4})
    assert reopened.drop_after_step(2) == 2
    assert records(tmp_path) == [{"step": 1}, {"step": 2}, {"init_from": "x"}]
    # off rank 0 nothing is written or dropped
    other = JsonLog(tmp_path / "log.jsonl", enabled=False)
    other.write({"step": 9})
    assert other.keep_first(0) == 0 and len(records(tmp_path)) == 3


# -- evaluation, checkpoints -----------------------------------------------------------------


def test_periodic_eval_runs_in_eval_mode_and_restores_training_flags(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.train()
    model[0].eval()  # e.g. a frozen module
    seen = []

    def evaluate(m):
        seen.append((m.training, torch.is_grad_enabled()))
        return {"mAP": 0.25 * len(seen)}

    hook = PeriodicEval(every=4, evaluate=evaluate)
    FakeTrainer(tmp_path, model=model, total_steps=10).run([hook])
    assert seen == [(False, False)] * 3  # steps 4, 8 and the last, 10
    assert [m.training for m in model.modules()] == [True, False, True]
    assert [(x["step"], x["eval"]) for x in records(tmp_path)] == [
        (4, {"mAP": 0.25}), (8, {"mAP": 0.5}), (10, {"mAP": 0.75})]  # fmt: skip
    state = json.loads(json.dumps(hook.state_dict()))
    assert state == {"last_eval": {"step": 10, "metrics": {"mAP": 0.75}}}
    resumed = PeriodicEval(every=4, evaluate=evaluate)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state


def test_periodic_checkpoint_saves_every_n_steps_and_at_the_end(tmp_path):
    saved = []
    trainer = FakeTrainer(tmp_path, total_steps=7, until_step=None)
    trainer.save_checkpoint = lambda keep: saved.append((trainer.step, keep))
    trainer.run([PeriodicCheckpoint(every=3, keep=2)])
    assert saved == [(3, 2), (6, 2), (7, 2)]
    saved.clear()
    trainer = FakeTrainer(tmp_path, total_steps=7, until_step=4)  # interrupted after step 4
    trainer.save_checkpoint = lambda keep: saved.append((trainer.step, keep))
    trainer.run([PeriodicCheckpoint(every=3)])
    assert saved == [(3, None), (4, None)]


# -- the loop ------------------------------------------------------------------------------


class Numbers(Dataset):
    """Samples 0..n-1; the loop calls `set_epoch`."""

    def __init__(self, n):
        self.n, self.epochs = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return index

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


class NumbersBatch:
    def __init__(self, values):
        self.values = torch.tensor(values, dtype=torch.float32)
        self.paste_counts = {}

    def to(self, device):
        return self


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, batch):
        return {"fit": ((self.weight * batch.values - 1.0) ** 2).mean()}


class Recorder(Hook):
    """Records each call with the step, and counts steps as its state."""

    state_keys = ("counted",)

    def __init__(self):
        self.calls, self.counted = [], 0

    def before_train(self):
        self.calls.append(("before_train", self.trainer.step))

    def before_epoch(self):
        self.calls.append(("before_epoch", self.trainer.step))

    def before_step(self):
        self.calls.append(("before_step", self.trainer.step))

    def after_step(self):
        self.counted += 1
        self.calls.append(("after_step", self.trainer.step))

    def after_train(self):
        self.calls.append(("after_train", self.trainer.step))

    def state_dict(self):
        return {"counted": self.counted}

    def load_state_dict(self, state):
        self.counted = state.get("counted", 0)


def toy_trainer(tmp_path, *hooks, resume=False):
    config = parse_config(MICRO, ["train.max_steps=5", "train.log_every=1", "train.warmup=0"])
    loader = DataLoader(Numbers(6), batch_size=2, collate_fn=NumbersBatch)
    return Trainer(config=config, model=Toy(), loader=loader, work_dir=tmp_path, device="cpu",
                   resume=resume, hooks=[*hooks, PeriodicCheckpoint(every=2)])  # fmt: skip


def test_the_loop_calls_hooks_in_order_and_resumes_their_state(tmp_path):
    recorder = Recorder()
    trainer = toy_trainer(tmp_path, recorder)
    assert trainer.train(until_step=4).name == "step_4"
    assert recorder.calls == [
        ("before_train", 0),
        ("before_epoch", 0), ("before_step", 0), ("after_step", 1), ("before_step", 1),
        ("after_step", 2), ("before_step", 2), ("after_step", 3),
        ("before_epoch", 3), ("before_step", 3), ("after_step", 4),
        ("after_train", 4),
    ]  # fmt: skip
    extra = json.loads((find_latest(tmp_path) / "training_state.json").read_text())["extra"]
    assert extra["counted"] == 4 and extra["steps_per_epoch"] == 3

    resumed_recorder = Recorder()
    resumed = toy_trainer(tmp_path, resumed_recorder, resume=True)
    assert resumed.train().name == "step_5"
    assert resumed_recorder.calls[:3] == [("before_train", 4), ("before_epoch", 4),
                                          ("before_step", 4)]  # fmt: skip
    assert resumed_recorder.counted == 5  # restored 4, plus one step


def test_hook_state_keys_must_be_distinct(tmp_path):
    with pytest.raises(ValueError, match=r"Recorder: state key 'counted' is already Recorder's"):
        toy_trainer(tmp_path, Recorder(), Recorder())
    taken = type("Taken", (Hook,), {"state_keys": ("log_lines",)})
    with pytest.raises(ValueError, match="'log_lines' is already the trainer's"):
        toy_trainer(tmp_path, taken())


def test_a_hook_error_stops_the_loop_and_after_train_still_runs(tmp_path):
    class Boom(Hook):
        def after_step(self):
            if self.trainer.step == 2:
                raise RuntimeError("boom")

    recorder = Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        toy_trainer(tmp_path, recorder, Boom()).train()
    assert recorder.calls[-1] == ("after_train", 2)
    assert Counter(name for name, _ in recorder.calls)["after_step"] == 2
