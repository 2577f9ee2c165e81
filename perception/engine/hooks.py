"""The training loop's hooks (detectron2 `engine/hooks.py` style): what varies between runs
(a time budget, the LiDAR-first camera phase, freezing, logging, checkpointing, evaluation)
is a hook; `Trainer.train` is the loop that calls them:

    resume (each hook's `load_state_dict`) or `train.init_from`
    before_train
    for each epoch (when resuming inside one, the rest of it):
        before_epoch
        for each batch:
            before_step
            one optimizer update (`Trainer.run_step`)
            after_step
    after_train                  (also when a step raises)

Hooks run in the order given (`build_hooks`' order: freeze, LiDAR first, time budget, progress
bar, log, evaluation, checkpoint; the checkpoint comes last so that it holds what the others
did at its step). A hook reads and sets the trainer's public attributes: `step` (optimizer
updates done), `epoch`, `steps_per_epoch`, `loop_steps` (updates in this `train` call),
`total_steps` (the schedule's length; a time budget shortens it), `stop_step` (where this
`train` call ends), `batch` and `losses` (the step's batch and its loss terms as floats, with
`total`), `model`, `log` (WORK_DIR/log.jsonl), `is_main`, `distributed`, `world_size`.

State: a hook names the keys it owns in a checkpoint's training state (`state_keys`, distinct
across a trainer's hooks). Every checkpoint writes each hook's `state_dict()` there (JSON, in
``training_state.json``'s ``extra``, beside the trainer's own ``steps_per_epoch``,
``world_size`` and ``log_lines``), and a resume gives each hook those keys back through
`load_state_dict` (only those present: a checkpoint older than a key leaves its default), so a
resumed run continues where the uninterrupted one was.

Switches reach the data and the model through objects handed to a hook when it is built
(`LidarFirst(model=..., datasets=[...])`), never by digging through the loader.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

from ..config.loader import ConfigError
from ..config.schema import ExperimentConfig

if TYPE_CHECKING:
    from .trainer import Trainer

BUDGET_PACE_FROM = 5  # the pace of a time-budgeted run is measured from this step ...
BUDGET_FIRST_PLAN = 25  # ... first planned at this one ...
BUDGET_REPLAN_EVERY = 100  # ... and re-planned every this many steps
BUDGET_TARGET = 0.97  # plans aim to end at this fraction of the budget (pace varies)


class Hook:
    """A training-loop hook: override the calls you need (each does nothing here).

    `trainer` is set when the trainer registers the hook. `state_keys` are the keys of the
    checkpoint's training state this hook owns: `state_dict()` returns exactly those (JSON-able
    values: numbers, str, None, lists, dicts), `load_state_dict(state)` gets back those present.
    """

    state_keys: ClassVar[tuple[str, ...]] = ()
    trainer: Trainer

    def before_train(self) -> None:
        """Before the first step of a `train` call (after a resume restored the state)."""

    def before_epoch(self) -> None:
        """Before the loader of an epoch is iterated (`trainer.epoch`; `trainer.step` is a
        multiple of `steps_per_epoch` at an epoch's start, not when resuming inside one)."""

    def before_step(self) -> None:
        """Before the optimizer update of `trainer.batch`."""

    def after_step(self) -> None:
        """After it: `trainer.step` counts it, `trainer.losses` holds its loss terms."""

    def after_train(self) -> None:
        """At the end of a `train` call, also when a step raised."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional)
        """Restores what `state_dict` returned (the keys a checkpoint holds)."""


# --------------------------------------------------------------------------------------
# log.jsonl


class JsonLog:
    """WORK_DIR/log.jsonl: one JSON record a line, written by rank 0 only (`enabled`; elsewhere
    every call does nothing). It counts its lines, so that a checkpoint can record how many
    were written before it and a resume can drop the ones written after (the resumed run
    writes them again)."""

    def __init__(self, path: str | Path, *, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._lines: int | None = None  # counted from the file on first use

    @property
    def lines(self) -> int:
        """Complete lines in the file (0 where it does not exist)."""
        if self._lines is None:
            self._lines = self.path.read_bytes().count(b"\n") if self.path.is_file() else 0
        return self._lines

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        lines = self.lines
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._lines = lines + 1

    def keep_first(self, lines: int) -> int:
        """Drops every line after the first `lines` (and a partial last line); returns how
        many lines were dropped."""
        if not (self.enabled and self.path.is_file()):
            return 0
        text = self.path.read_text().split("\n")
        complete = text[:-1]  # the piece after the last newline is empty or a partial line
        if len(complete) <= lines and not text[-1]:
            self._lines = len(complete)
            return 0
        kept = complete[:lines]
        self._rewrite(kept)
        return len(complete) - len(kept)

    def drop_after_step(self, step: int) -> int:
        """Drops the records whose `step` is past `step` (and unreadable lines, left by a killed
        write); returns how many. For checkpoints that did not record `log_lines`."""
        if not (self.enabled and self.path.is_file()):
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                past = json.loads(line).get("step", 0) > step
            except (json.JSONDecodeError, AttributeError, TypeError):
                past = True
            if past:
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            self._rewrite(kept)
        return dropped

    def _rewrite(self, lines: list[str]) -> None:
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.replace(self.path)
        self._lines = len(lines)


# --------------------------------------------------------------------------------------
# Freezing


class Freeze(Hook):
    """`train.freeze_prefixes`: stops the gradient of every parameter of `model` whose name
    starts with one of `prefixes` at construction (build it before the trainer, which gives
    the optimizer only the parameters that need a gradient); at the start of training keeps
    the modules under them in eval mode (frozen BatchNorm keeps its statistics, dropout is
    off) and, in a fresh run, logs ``{"step": 0, "frozen": prefixes, "parameters": n}``.

    Raises `ConfigError` naming a prefix that matches no parameter."""

    def __init__(self, model: nn.Module, prefixes: Sequence[str]):
        names = [name for name, _ in model.named_parameters()]
        for prefix in prefixes:
            if not any(name.startswith(prefix) for name in names):
                tops = sorted({name.split(".")[0] + "." for name in names})
                raise ConfigError(
                    f"train.freeze_prefixes: {prefix!r} matches no parameter of the model "
                    f"(its parameter names start with {', '.join(tops)})"
                )
        self.model = model
        self.prefixes = list(prefixes)
        for name, parameter in model.named_parameters():
            if name.startswith(tuple(self.prefixes)):
                parameter.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        """The modules under the prefixes (looked up now: SyncBatchNorm conversion replaces
        modules)."""
        prefixes = tuple(self.prefixes)
        return [
            module
            for name, module in self.model.named_modules()
            if name and f"{name}.".startswith(prefixes)
        ]

    def before_train(self) -> None:
        if self.trainer.step == 0:
            frozen = sum(not p.requires_grad for p in self.model.parameters())
            self.trainer.log.write({"step": 0, "frozen": self.prefixes, "parameters": frozen})
        for module in self.frozen_modules():
            module.eval()


# --------------------------------------------------------------------------------------
# Distillation


class Distill(Hook):
    """`train.teacher`: loads the LiDAR-only checkpoint `teacher` at construction and attaches
    it, frozen, to `model.distiller` (`perception.models.distill.load_teacher`; a `ConfigError`
    naming `train.teacher` and the file when it cannot), so that `model` adds its
    `distill/...` losses in training. Every `every` steps (`train.log_every`) and at a `train`
    call's last step it logs ``{"step", "teacher_seconds"}`` (the teacher's forward time so
    far, resumes included; the `TimeBudget` hook leaves it out of the budget: `seconds`).

    State: `teacher` (the checkpoint the run distils from; a resume with another one is a
    `ConfigError`) and `teacher_seconds`. The teacher itself is never saved: the config names
    it, so a resumed run loads it again."""

    state_keys = ("teacher", "teacher_seconds")

    def __init__(self, model: nn.Module, teacher: str | Path, *, every: int = 1):
        from ..models.distill import load_teacher

        load_teacher(model, teacher)
        self.distiller = model.distiller
        self.source = str(self.distiller.teacher_source)
        self.every = every

    def seconds(self) -> float:
        """The teacher's forward time so far (s)."""
        return self.distiller.teacher_seconds

    def after_step(self) -> None:
        t = self.trainer
        if t.is_main and (t.step % self.every == 0 or t.step == t.stop_step):
            t.log.write({"step": t.step, "teacher_seconds": round(self.seconds(), 3)})

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.source, "teacher_seconds": self.seconds()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("teacher")
        if saved is not None and saved != self.source:
            raise ConfigError(
                f"train.teacher: this run's teacher ({self.source}) is not the one its "
                f"checkpoint was trained with ({saved}); resume with the same train.teacher"
            )
        self.distiller.teacher_seconds = float(state.get("teacher_seconds", 0.0))


# --------------------------------------------------------------------------------------
# LiDAR first


class CameraSwitch(Protocol):
    """A fused model whose camera branch can be skipped: `BEVFusion`'s public attributes."""

    camera_enabled: bool  # False: the camera branch is skipped (LiDAR-only model)
    paint_points: bool  # True: the LiDAR branch reads pixel colours (images still needed)


class ImageDecoding(Protocol):
    """A dataset whose image decoding can be switched: `NuScenesDataset.load_images` (False:
    1x1 placeholders). Set on the main process's dataset, it reaches the loader's workers with
    each epoch's keys (`perception.datasets.pipeline.EpochSampler`)."""

    load_images: bool


class LidarFirst(Hook):
    """LiDAR first (`train.camera_start` = f > 0, a fused model): BEVFusion trains its
    LiDAR-only detector, then the fused one from it; here both happen in one run and one LR
    schedule. Until the epoch whose start is nearest f of the (planned) steps, `model` skips
    its camera branch (`camera_enabled` False: with the fuser's zero-initialized camera weights
    it is exactly the LiDAR-only model) and `datasets` decode no images (unless the model
    paints its points with them, `paint_points`, or a dataset was built without images); from
    that epoch on it trains fused, and ``{"step", "epoch", "camera": "joins"}`` is logged.

    The switch is set at every epoch's start (and when resuming inside one); the epoch the
    camera joined is the hook's state (`camera_from_epoch`), so a resumed run switches where
    the uninterrupted one did. Raises ValueError for a model without both branches.
    """

    state_keys = ("camera_from_epoch",)

    def __init__(
        self, *, model: CameraSwitch, datasets: Iterable[ImageDecoding], camera_start: float
    ):
        if not (
            getattr(model, "camera", None) is not None
            and getattr(model, "lidar", None) is not None
            and hasattr(model, "camera_enabled")
        ):
            raise ValueError(
                "train.camera_start > 0 needs a fused model (camera and LiDAR branches, "
                "`camera_enabled`)"
            )
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError(
                "train.camera_start > 0: LidarFirst needs the training dataset(s) to switch "
                "their image decoding: build_hooks(config, model=..., datasets=[dataset])"
            )
        self.model = model
        self.camera_start = camera_start
        # `data.load_images: false` (or no camera) keeps a dataset's decoding off for good
        self.images_configured = [bool(d.load_images) for d in self.datasets]
        self.camera_from_epoch: int | None = None

    def set_phase(self, camera: bool) -> None:
        """Fused (`camera`) or LiDAR-only: the model's branch and the datasets' decoding."""
        self.model.camera_enabled = camera
        painting = bool(getattr(self.model, "paint_points", False))  # paints from the start
        for dataset, configured in zip(self.datasets, self.images_configured, strict=True):
            dataset.load_images = (camera or painting) and configured

    def before_epoch(self) -> None:
        # the epoch start nearest camera_start of the planned steps (the loader switches per
        # epoch; with long epochs "the first start past it" could leave the camera few steps)
        t = self.trainer
        starting = t.step % t.steps_per_epoch == 0
        if (
            self.camera_from_epoch is None
            and starting
            and t.step + t.steps_per_epoch / 2 > self.camera_start * t.total_steps
        ):
            self.camera_from_epoch = t.epoch
            t.log.write({"step": t.step, "epoch": t.epoch, "camera": "joins"})
        self.set_phase(self.camera_from_epoch is not None and t.epoch >= self.camera_from_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"camera_from_epoch": self.camera_from_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.camera_from_epoch = state.get("camera_from_epoch")


# --------------------------------------------------------------------------------------
# Time budget


class TimeBudget(Hook):
    """Measures the training loop's wall time (`train_seconds`, saved with every checkpoint)
    and, with `budget_s`, bounds it on any machine (`train.time_budget_min`).

    After `first_plan` steps of a `train` call the pace (seconds a step, measured from step
    `pace_from` so that start-up is left out) decides how many steps fit in `target` of the
    budget, and the trainer's `total_steps` (the LR schedule's length) becomes that, at most
    the configured steps; the plan is redone every `replan_every` steps with the pace since the
    previous plan (a LiDAR-first run slows down when the camera joins), and the run stops
    (`total_steps` = this step, so the step is logged and saved) if the budget runs out anyway:
    checked at planning steps and every `check_every` steps (`train.log_every`). Each plan and
    the stop are logged (``"time_budget": "planned"`` with ``seconds_per_step``, or
    ``"stopped: time budget spent"``). Under `torchrun` every process plans from the slowest
    process's clock.

    State: `planned_steps` and `train_seconds`; a resume under a budget continues the same
    plan and budget (without one, the configured steps run and the seconds restart).
    `excluded` (seconds, growing; e.g. a distillation teacher's forward time, `Distill`) is
    left out of the measured time.
    `clock` (seconds, monotonic) is injectable for tests. The `pace_from` ... `target`
    defaults are the module's `BUDGET_*` values, read when the hook is built.
    """

    state_keys = ("planned_steps", "train_seconds")

    def __init__(
        self,
        budget_s: float | None,
        *,
        check_every: int = 1,
        clock: Callable[[], float] = time.perf_counter,
        pace_from: int | None = None,
        first_plan: int | None = None,
        replan_every: int | None = None,
        target: float | None = None,
        excluded: Callable[[], float] | None = None,
    ):
        self.budget_s = budget_s
        self.excluded = excluded
        self.excluded_start = 0.0  # `excluded()` when the loop started
        self.check_every = check_every
        self.clock = clock
        self.pace_from = BUDGET_PACE_FROM if pace_from is None else pace_from
        self.first_plan = BUDGET_FIRST_PLAN if first_plan is None else first_plan
        self.replan_every = BUDGET_REPLAN_EVERY if replan_every is None else replan_every
        self.target = BUDGET_TARGET if target is None else target
        self.spent_before = 0.0  # loop seconds before this `train` call (resumes included)
        self.loop_start: float | None = None  # the clock when the loop started
        self.pace_mark: tuple[int, float] | None = None  # (step, spent seconds) to measure from

    def spent(self) -> float:
        """Seconds of training loop so far, this run and before a resume."""
        start = self.loop_start
        if start is None:
            return self.spent_before
        left_out = 0.0 if self.excluded is None else self.excluded() - self.excluded_start
        return self.spent_before + self.clock() - start - left_out

    def before_train(self) -> None:
        self.pace_mark = None
        self.loop_start = self.clock()
        if self.excluded is not None:
            self.excluded_start = self.excluded()

    def after_step(self) -> None:
        if self.budget_s is None:
            return
        t = self.trainer
        step, loop_steps = t.step, t.loop_steps
        if loop_steps == self.pace_from:
            self.pace_mark = (step, t.max_over_processes(self.spent()))
        due = loop_steps == self.first_plan or (
            loop_steps > self.first_plan and step % self.replan_every == 0
        )
        if not due and step % self.check_every:
            return
        spent = t.max_over_processes(self.spent())
        if spent >= self.budget_s:
            t.total_steps = step
            self._log(spent, None, "stopped: time budget spent")
        elif due and self.pace_mark is not None and step > self.pace_mark[0]:
            pace = (spent - self.pace_mark[1]) / (step - self.pace_mark[0])
            fit = int((self.target * self.budget_s - spent) / max(pace, 1e-9))
            # at least one more step (the budget's stop ends a run), never past the configured
            # steps (at the last one, `max` first would run a step more than asked)
            planned = min(t.configured_steps, max(step + 1, step + fit))
            self.pace_mark = (step, spent)  # the next plan measures the pace from here
            if planned != t.total_steps:
                t.total_steps = planned
                self._log(spent, pace, "planned")

    def after_train(self) -> None:
        self.spent_before = self.spent()
        self.loop_start = None

    def _log(self, spent: float, pace: float | None, event: str) -> None:
        t = self.trainer
        record = {"step": t.step, "time_budget": event, "planned_steps": t.total_steps,
                  "train_seconds": round(spent, 3), "budget_seconds": self.budget_s}  # fmt: skip
        if pace is not None:
            record["seconds_per_step"] = round(pace, 5)
        t.log.write(record)

    def state_dict(self) -> dict[str, Any]:
        return {"planned_steps": self.trainer.total_steps, "train_seconds": self.spent()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.budget_s is None:
            return
        self.spent_before = float(state.get("train_seconds", 0.0))
        if "planned_steps" in state:
            self.trainer.total_steps = int(state["planned_steps"])


# --------------------------------------------------------------------------------------
# Progress bar, logging


class ProgressBar(Hook):
    """A tqdm bar over the planned steps with the last loss and the epoch (rank 0, when
    `enabled`)."""

    def __init__(self, *, enabled: bool = True):
        self.enabled = enabled
        self.bar = None

    def before_train(self) -> None:
        from tqdm import tqdm

        t = self.trainer
        self.bar = tqdm(
            total=t.total_steps,
            initial=t.step,
            disable=not (self.enabled and t.is_main),
            dynamic_ncols=True,
            desc="train",
        )

    def after_step(self) -> None:
        t = self.trainer
        self.bar.total = t.total_steps  # a time budget's plan changes it
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{t.losses['total']:.4f}", epoch=t.epoch)

    def after_train(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def require_tensorboard() -> None:
    """`ConfigError` naming the extra to install when `train.tensorboard` is asked for and the
    `tensorboard` package is missing."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "train.tensorboard: true needs the tensorboard package: install the extra, "
            "pip install 'perception-bev[tensorboard]' (or pip install tensorboard), or set "
            "train.tensorboard=false (log.jsonl is written either way)"
        )


def _paste_sum(*counters: dict[str, int]) -> Counter[str]:
    """The counters added key by key (zeros kept: a `Counter` sum would drop them)."""
    out: Counter[str] = Counter()
    for counter in counters:
        out.update(counter)
    return out


class PeriodicLog(Hook):
    """Every `every` steps (`train.log_every`) and at the last step of a `train` call, a
    log.jsonl record ``{"step", "epoch", "loss", "lr", "samples_per_s", "losses"}`` (the loss
    terms averaged over the processes), also to WORK_DIR/tensorboard/ with `tensorboard`
    (rank 0; checked for at construction, on every rank, so all stop before any step).

    GT-paste (`paste`: `data.paste.enabled`): the trainer's batches carry their paste counters
    (`Batch.paste_counts`); the hook adds up those of the batches trained on (over the
    processes, under `torchrun`) and writes, in every record, `paste` (the counters since the
    previous record: `samples`, `requested`, `pasted`, `pasted/<class>`, skipped objects by
    reason ...; perception.generative.paste `GTPaste.stats`) and `paste_total` (since the run's
    first step, resumes included: the totals are its state, `paste_counts`). Without any
    pasted counter neither key is written.
    """

    state_keys = ("paste_counts",)

    def __init__(self, *, every: int, tensorboard: bool = False, paste: bool = False):
        if tensorboard:
            require_tensorboard()
        self.every = every
        self.tensorboard = tensorboard
        self.paste = paste
        self.writer = None  # a SummaryWriter while training, with `tensorboard` (rank 0)
        self.paste_interval: Counter[str] = Counter()
        self.paste_total: Counter[str] = Counter()
        self.last_time, self.last_step = 0.0, 0

    def before_train(self) -> None:
        t = self.trainer
        if self.tensorboard and t.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(t.work_dir / "tensorboard"))
        self.last_time, self.last_step = time.perf_counter(), t.step

    def after_step(self) -> None:
        t = self.trainer
        self.paste_interval.update(t.batch.paste_counts)
        if t.step % self.every and t.step != t.stop_step:
            return
        now = time.perf_counter()
        rate = (t.step - self.last_step) * t.global_batch_size / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, t.step
        record = {
            "step": t.step,
            "epoch": t.epoch,
            "loss": t.losses["total"],
            "lr": t.scheduler.get_last_lr()[0],
            "samples_per_s": rate,
            "losses": {k: v for k, v in t.losses.items() if k != "total"},
        }
        paste = self.paste_counts()  # a collective under torchrun: on every process
        if paste is not None:
            record["paste"], record["paste_total"] = paste
        if t.is_main:
            t.log.write(record)
            self._to_tensorboard(record)

    def paste_counts(self) -> tuple[dict[str, int], dict[str, int]] | None:
        """At a log step (on every process): the GT-paste counters of the batches since the
        previous one, summed over the processes, and the run's totals; None without paste."""
        interval = self.paste_interval
        t = self.trainer
        if t.distributed and self.paste:
            interval = _paste_sum(*(g or {} for g in t.all_gather_object(dict(interval))))
        self.paste_interval = Counter()
        self.paste_total.update(interval)
        if not self.paste_total:
            return None
        return dict(sorted(interval.items())), dict(sorted(self.paste_total.items()))

    def _to_tensorboard(self, record: dict) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if isinstance(value, int | float) and key != "step":
                self.writer.add_scalar(key, value, record["step"])
        for key, value in record["losses"].items():
            self.writer.add_scalar(f"loss/{key}", value, record["step"])
        for key, value in record.get("paste", {}).items():
            self.writer.add_scalar(f"paste/{key}", value, record["step"])

    def after_train(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def state_dict(self) -> dict[str, Any]:
        # the totals so far, the batches since the last record included
        return {"paste_counts": dict(_paste_sum(self.paste_total, self.paste_interval))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.paste_total = Counter(state.get("paste_counts") or {})
        self.paste_interval = Counter()


# --------------------------------------------------------------------------------------
# Evaluation, checkpoints


class PeriodicEval(Hook):
    """Every `every` steps and at the last step of a `train` call: `evaluate(model)` (a dict of
    numbers, e.g. mAP and NDS on a validation split) with the model in eval mode, without
    gradients (every module's training flag is restored after, frozen ones included); logged
    as ``{"step", "epoch", "eval": {...}}``. Called on every process (`evaluate` gathers what
    it needs), logged by rank 0. The last results are its state (`last_eval`): put the hook
    before `PeriodicCheckpoint`, so a checkpoint holds the results of its own step."""

    state_keys = ("last_eval",)

    def __init__(self, *, every: int, evaluate: Callable[[nn.Module], dict[str, float]]):
        self.every = every
        self.evaluate = evaluate
        self.last_eval: dict[str, Any] | None = None

    def after_step(self) -> None:
        t = self.trainer
        if t.step % self.every and t.step != t.stop_step:
            return
        modes = [(module, module.training) for module in t.model.modules()]
        t.model.eval()
        try:
            with torch.no_grad():
                metrics = dict(self.evaluate(t.model))
        finally:
            for module, training in modes:
                module.training = training
        self.last_eval = {"step": t.step, "metrics": metrics}
        t.log.write({"step": t.step, "epoch": t.epoch, "eval": metrics})

    def state_dict(self) -> dict[str, Any]:
        return {"last_eval": self.last_eval}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_eval = state.get("last_eval")


class PeriodicCheckpoint(Hook):
    """Saves a checkpoint (`Trainer.save_checkpoint`: model, optimizer, schedule, RNG and the
    hooks' state; rank 0 writes, every process waits) every `every` steps
    (`train.checkpoint_every`) and at the last step of a `train` call (the planned end, a time
    budget's stop or `until_step`), keeping the newest `keep` (None: all)."""

    def __init__(self, *, every: int, keep: int | None = None):
        self.every = every
        self.keep = keep

    def after_step(self) -> None:
        t = self.trainer
        if t.step % self.every == 0 or t.step == t.stop_step:
            t.save_checkpoint(keep=self.keep)


# --------------------------------------------------------------------------------------
# From a config


def build_hooks(
    config: ExperimentConfig,
    *,
    model: nn.Module,
    datasets: Sequence[ImageDecoding] = (),
    progress: bool = True,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    eval_every: int | None = None,
) -> list[Hook]:
    """The hooks `config.train` asks for, in the order they run: `Freeze` (with
    `freeze_prefixes`; it freezes `model` now, so build the hooks before the `Trainer`),
    `Distill` (with `teacher`; it loads the teacher now and attaches it to `model`),
    `LidarFirst` (with `camera_start` > 0; it switches `model` and the training `datasets`),
    `TimeBudget` (always: it measures `train_seconds`; it plans and stops with
    `time_budget_min`), `ProgressBar` (with `progress`), `PeriodicLog`, `PeriodicEval` (with
    `evaluate`, every `eval_every` steps, default `checkpoint_every`) and `PeriodicCheckpoint`.

    Raises `ConfigError` for a freeze prefix that matches nothing, a teacher that cannot
    be used (missing, corrupt, not LiDAR-only, another grid) or tensorboard without its
    package, ValueError for LiDAR first without a fused model or without `datasets`."""
    tc = config.train
    hooks: list[Hook] = []
    if tc.freeze_prefixes:
        hooks.append(Freeze(model, tc.freeze_prefixes))
    distill = None
    if tc.teacher is not None:
        distill = Distill(model, tc.teacher, every=tc.log_every)
        hooks.append(distill)
    if tc.camera_start > 0:
        hooks.append(LidarFirst(model=model, datasets=datasets, camera_start=tc.camera_start))
    budget_s = None if tc.time_budget_min is None else 60.0 * tc.time_budget_min
    excluded = None if distill is None else distill.seconds
    hooks.append(TimeBudget(budget_s, check_every=tc.log_every, excluded=excluded))
    hooks.append(ProgressBar(enabled=progress))
    hooks.append(
        PeriodicLog(every=tc.log_every, tensorboard=tc.tensorboard, paste=config.data.paste.enabled)
    )
    if evaluate is not None:
        hooks.append(PeriodicEval(every=eval_every or tc.checkpoint_every, evaluate=evaluate))
    hooks.append(PeriodicCheckpoint(every=tc.checkpoint_every, keep=tc.keep_checkpoints))
    return hooks
