"""The training loop: AdamW + LR schedule, checkpoints, exact resume, NaN stop, DDP.

    seed_everything(config.seed, deterministic=config.train.deterministic)
    dist = setup_distributed()  # reads torchrun's environment; one process if not launched so
    model = build_model(config)
    dataset = build_dataset(config, train=True)
    loader = build_dataloader(dataset, batch_size=config.train.batch_size, train=True,
                              workers=config.train.workers, seed=config.seed,
                              distributed=dist.world_size > 1)
    Trainer(config=config, model=model, loader=loader, work_dir="work_dirs/x",
            device=dist.device).train()

Steps are counted from 1: step N is the N-th optimizer update, and ``checkpoints/step_N``
holds the state after it. An epoch is `len(loader)` steps; step N lies in epoch
``(N - 1) // len(loader)``. Resuming reads the step from the latest checkpoint, restores the
model, optimizer, schedule and RNG states, sets that epoch and skips the batches of it that
were already seen (the sampler's order depends only on (seed, epoch)).

Randomness drawn during training (e.g. modality dropout) comes from the global Python, numpy
and torch generators, which are reseeded before every step from (seed, rank, step): a resumed
run, on any rank, draws exactly what the uninterrupted one drew. Data augmentation draws from
(seed, epoch, sample index) in the dataset, the same with any number of workers or processes.

A time budget (`train.time_budget_min`) bounds the training loop's wall time on any machine:
after `BUDGET_FIRST_PLAN` steps the pace (seconds a step, measured from `BUDGET_PACE_FROM`,
so start-up is left out) decides how many steps fit in `BUDGET_TARGET` of the budget, and the
schedule's length becomes that (at most the configured steps); the plan is redone every
`BUDGET_REPLAN_EVERY` steps with the pace since the previous plan (a LiDAR-first run slows
down when the camera joins), and the run stops (saving a checkpoint) if
the budget runs out anyway. The planned length and the seconds spent are saved with every
checkpoint, so `--resume` continues the same plan and budget. Under `torchrun` every process
plans from the slowest process's clock.

LiDAR first (`train.camera_start` = f > 0, a fused model): BEVFusion trains its LiDAR-only
detector, then the fused one from it; here both happen in one run and one LR schedule. Until the
epoch whose start is nearest f of the (planned) steps, the model skips its camera branch
(`camera_enabled` False: with the fuser's zero-initialized camera weights it is exactly the
LiDAR-only model) and the loader decodes no images (unless the model paints its points with
them, `model.paint_points`); from that epoch on it trains fused. The
epoch the camera joined is saved with every checkpoint, so a resumed run switches where the
uninterrupted one did.

Under `torchrun` (see `distributed.py`) training follows one process on the global batch:
BatchNorm layers are converted to `SyncBatchNorm` (global-batch statistics), the forward pass
runs inside `global_batch()` (the CenterPoint losses divide by global object counts), and DDP
averages the gradients. With the `EpochSampler` shard order (rank r takes the shuffled indices
r, r + W, ...) and batch b per process, the processes' batches of a step together hold the
samples of the one-process batch of W x b (when W divides the dataset; otherwise the sampler
pads by repetition). What stays different: floating-point summation order (measured on the
micro test model over 4 steps: total loss within 2e-5 relative of one process, loss terms
within 2e-4, AdamW turning tiny gradient differences into lr-sized updates); randomness drawn
in the forward pass (modality dropout draws per rank, not per sample). The camera depth loss
(`model.camera.depth_loss_weight` > 0) averages over the global batch's pixels too. The loss
terms are averaged over the processes for logging and the NaN check (so every process stops
together); only rank 0 writes logs and checkpoints.

GT-paste (`data.paste`) counts what it pasted and skipped per sample, in the loader workers;
each sample carries its counters and collate sums them into `Batch.paste_counts`. The trainer
adds up those of the batches it trains on (over the processes, under `torchrun`) and writes,
in every log.jsonl record, `paste` (the counters of the batches since the previous record:
`samples`, `requested`, `pasted`, `pasted/<class>`, skipped objects by reason `no_free_pose`,
`occluded`, ...; perception.generative.paste `GTPaste.stats`) and `paste_total` (since the
run's first step, resumes included: the totals are saved with every checkpoint). Without
paste neither key is written.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from ..config.loader import ConfigError
from ..config.schema import ExperimentConfig, TrainConfig
from .checkpoint import find_latest, load_checkpoint, load_partial_weights, save_checkpoint
from .distributed import convert_sync_batchnorm, global_batch

LOG_NAME = "log.jsonl"
BUDGET_PACE_FROM = 5  # the pace of a time-budgeted run is measured from this step ...
BUDGET_FIRST_PLAN = 25  # ... first planned at this one ...
BUDGET_REPLAN_EVERY = 100  # ... and re-planned every this many steps
BUDGET_TARGET = 0.97  # plans aim to end at this fraction of the budget (pace varies)


class NonFiniteLossError(RuntimeError):
    """A loss term (or the gradient norm) became NaN or infinite; the message names the step
    and the terms. The state of that step is not saved."""


# --------------------------------------------------------------------------------------
# Process set-up


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seeds Python's, numpy's and torch's global generators. `deterministic` also asks torch
    for deterministic kernels (warning, not failing, where an op has none) and turns off the
    cuDNN autotuner. Call before building the model, so its initial weights are reproducible."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the global generator is what we seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this set before its first call to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@dataclass(frozen=True)
class DistributedInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> DistributedInfo:
    """Initializes the default process group when launched by `torchrun` (``WORLD_SIZE`` > 1):
    NCCL with one GPU per process (``cuda:LOCAL_RANK``) when CUDA is available, else gloo on
    the CPU. Without `torchrun` it starts nothing and returns rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world_size <= 1:
        return DistributedInfo(0, 0, 1, torch.device("cuda" if cuda else "cpu"))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistributedInfo(rank, local_rank, world_size, device)


def seed_step(seed: int, *, rank: int, step: int) -> None:
    """Seeds Python's, numpy's and torch's global generators for training step `step` (counted
    from 1) of process `rank`, independently of what ran before: resuming needs no RNG state
    and every rank's stream is reproducible."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint64)
    random.seed(int(state[0]))
    np.random.seed(int(state[0]) % 2**32)  # noqa: NPY002 (the global generator is what we seed)
    torch.manual_seed(int(state[1]) % 2**63)


def cleanup_distributed() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def _require_tensorboard() -> None:
    """`ConfigError` naming the extra to install when `train.tensorboard` is asked for and the
    `tensorboard` package is missing."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "train.tensorboard: true needs the tensorboard package: install the extra, "
            "pip install 'perception-bev[tensorboard]' (or pip install tensorboard), or set "
            "train.tensorboard=false (log.jsonl is written either way)"
        )


# --------------------------------------------------------------------------------------
# Schedule


def lr_factor(step: int, *, total_steps: int, schedule: str, warmup: float) -> float:
    """The LR multiplier after `step` optimizer updates (0 <= step <= total_steps).

    "cosine": linear warm-up from 0.1 to 1 over the first `warmup` fraction, then cosine decay
    to 0.001. "onecycle": cosine warm-up from 0.04 to 1, then cosine decay to 4e-6 (the
    factors of torch's `OneCycleLR` defaults, without its momentum cycling).
    """
    warmup_steps = max(1, round(warmup * total_steps)) if warmup > 0 else 0
    if schedule == "cosine":
        start, end, warm = 0.1, 1e-3, "linear"
    elif schedule == "onecycle":
        start, end, warm = 1 / 25, 1 / 25 / 1e4, "cos"
    else:
        raise ValueError(f"unknown schedule {schedule!r}; use 'onecycle' or 'cosine'")
    if step < warmup_steps:
        t = step / warmup_steps
        if warm == "linear":
            return start + (1 - start) * t
        return start + (1 - start) * (1 - math.cos(math.pi * t)) / 2
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    t = min(1.0, t)
    return end + (1 - end) * (1 + math.cos(math.pi * t)) / 2


# --------------------------------------------------------------------------------------
# Resuming inside an epoch


class _SkipFirst(Sampler):
    """Iterates `sampler` (re-reading its epoch each time), leaving out its first `skip`."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler = sampler
        self.skip = skip

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)

    def __iter__(self) -> Iterator:
        iterator = iter(self.sampler)
        for _ in range(self.skip):
            next(iterator, None)
        return iterator


def _loader_skipping(loader: DataLoader, batches: int) -> DataLoader:
    """A one-epoch copy of `loader` that starts after its first `batches` batches, without
    loading them."""
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=_SkipFirst(loader.sampler, batches * loader.batch_size),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
    )


# --------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Trains `model` on `loader` (from `build_dataloader`) as `config.train` says, writing
    checkpoints and ``log.jsonl`` under `work_dir`.

    If a process group is initialized (see `setup_distributed`), the model's BatchNorm layers
    are converted in place to `SyncBatchNorm`, it is wrapped in `DistributedDataParallel` and
    `loader` must be built with ``distributed=True``.
    `device` defaults to CUDA when available. `resume` continues from the latest checkpoint
    of `work_dir` (starting fresh if there is none).
    """

    def __init__(
        self,
        *,
        config: ExperimentConfig,
        model: nn.Module,
        loader: DataLoader,
        work_dir: str | Path,
        device: torch.device | str | None = None,
        resume: bool = False,
        progress: bool = True,
    ):
        self.config = config
        self.train_config: TrainConfig = config.train
        self.work_dir = Path(work_dir)
        self.loader = loader
        self.resume = resume
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.distributed = torch_dist.is_available() and torch_dist.is_initialized()
        self.rank = torch_dist.get_rank() if self.distributed else 0
        self.world_size = torch_dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main

        if self.distributed and self.world_size > 1:
            model = convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        # before DDP, which hooks the parameters that need a gradient when it wraps the model
        self.frozen_modules = self._freeze(config.train.freeze_prefixes)
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model: nn.Module = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=ids,
                find_unused_parameters=any(p > 0 for p in config.model.modality_dropout)
                or config.train.camera_start > 0,
            )
        else:
            self.ddp_model = self.model

        if len(loader) == 0:
            raise ValueError("the data loader yields no batches (dataset smaller than a batch?)")
        self.steps_per_epoch = len(loader)
        tc = self.train_config
        self.configured_steps = tc.max_steps or tc.epochs * self.steps_per_epoch
        self.total_steps = self.configured_steps  # shortened by a time budget's plans
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=tc.lr,
            weight_decay=tc.weight_decay,
        )
        schedule, warmup = tc.schedule, tc.warmup
        # reads total_steps at every step: a time budget's plan changes the schedule's length
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(
                step, total_steps=self.total_steps, schedule=schedule, warmup=warmup
            ),
        )
        self.budget_s = None if tc.time_budget_min is None else 60.0 * tc.time_budget_min
        self.clock = time.perf_counter  # the budget's clock (tests replace it)
        self.spent_before = 0.0  # loop seconds of the run before a resume
        self.pace_mark: tuple[int, float] | None = None  # (step, spent seconds) to measure from
        self.loop_start: float | None = None  # the clock when `train`'s loop started
        self.amp = tc.amp and self.device.type == "cuda"
        self.step = 0
        self.last_checkpoint: Path | None = None
        self.tensorboard = None  # a SummaryWriter while `train` runs, with `train.tensorboard`
        if tc.tensorboard:  # on every rank: all stop together, before any step
            _require_tensorboard()
        self.camera_from_epoch: int | None = None  # LiDAR first: the epoch the camera joined
        # GT-paste counters of the batches trained on: since the last log record, and in all
        self.paste_interval: Counter[str] = Counter()
        self.paste_total: Counter[str] = Counter()
        if tc.camera_start > 0 and not (
            getattr(self.model, "camera", None) is not None
            and getattr(self.model, "lidar", None) is not None
            and hasattr(self.model, "camera_enabled")
        ):
            raise ValueError(
                "train.camera_start > 0 needs a fused model (camera and LiDAR branches, "
                "`camera_enabled`)"
            )
        # LiDAR first turns image decoding off and on; `data.load_images: false` keeps it off
        self.images_configured = tc.camera_start > 0 and loader.sampler.dataset.load_images

    # -- pieces ------------------------------------------------------------------------

    def _restore(self) -> bool:
        """Restores the latest checkpoint of the work dir; False when there is none."""
        latest = find_latest(self.work_dir)
        if latest is None:
            return False
        state = load_checkpoint(
            latest, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler
        )
        saved_len = state.extra.get("steps_per_epoch")
        if saved_len is not None and saved_len != self.steps_per_epoch:
            raise ValueError(
                f"{state.path}: saved with {saved_len} steps per epoch, the loader now has "
                f"{self.steps_per_epoch}; resume with the same batch size, world size and data"
            )
        self.step = state.step
        self.last_checkpoint = state.path
        self.camera_from_epoch = state.extra.get("camera_from_epoch")
        self.paste_total = Counter(state.extra.get("paste_counts") or {})
        self.paste_interval = Counter()
        if self.budget_s is not None:
            self.spent_before = float(state.extra.get("train_seconds", 0.0))
            self.total_steps = int(state.extra.get("planned_steps", self.total_steps))
        return True

    def _save(self) -> None:
        if self.is_main:
            self.last_checkpoint = save_checkpoint(
                self.work_dir,
                step=self.step,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                config=self.config,
                epoch=(self.step - 1) // self.steps_per_epoch,
                extra={
                    "steps_per_epoch": self.steps_per_epoch,
                    "world_size": self.world_size,
                    "planned_steps": self.total_steps,
                    "train_seconds": self._spent(),
                    "camera_from_epoch": self.camera_from_epoch,
                    # the totals so far, the batches since the last log record included
                    "paste_counts": dict(self._paste_sum(self.paste_total, self.paste_interval)),
                },
                keep=self.train_config.keep_checkpoints,
            )
        if self.distributed:
            torch_dist.barrier()

    def _reduce(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """Loss terms averaged over the processes, as floats (one device sync)."""
        names = sorted(losses)
        values = torch.stack([losses[n].detach().float() for n in names])
        if self.distributed:
            torch_dist.all_reduce(values)
            values /= self.world_size
        return dict(zip(names, values.tolist(), strict=True))

    @staticmethod
    def _paste_sum(*counters: dict[str, int]) -> Counter[str]:
        """The counters added key by key (zeros kept: a `Counter` sum would drop them)."""
        out: Counter[str] = Counter()
        for counter in counters:
            out.update(counter)
        return out

    def _paste_counts(self) -> tuple[dict[str, int], dict[str, int]] | None:
        """At a log step (on every process): the GT-paste counters of the batches since the
        previous one, summed over the processes, and the run's totals; None without paste."""
        interval = self.paste_interval
        if self.distributed and self.config.data.paste.enabled:
            gathered: list[dict[str, int] | None] = [None] * self.world_size
            torch_dist.all_gather_object(gathered, dict(interval))
            interval = self._paste_sum(*(g or {} for g in gathered))
        self.paste_interval = Counter()
        self.paste_total.update(interval)
        if not self.paste_total:
            return None
        return dict(sorted(interval.items())), dict(sorted(self.paste_total.items()))

    def _log(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.work_dir / LOG_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key != "step":
                    self.tensorboard.add_scalar(key, value, record["step"])
            for key, value in record["losses"].items():
                self.tensorboard.add_scalar(f"loss/{key}", value, record["step"])
            for key, value in record.get("paste", {}).items():
                self.tensorboard.add_scalar(f"paste/{key}", value, record["step"])

    def _spent(self) -> float:
        """Seconds of training loop so far, this run and before a resume (0 before `train`)."""
        start = self.loop_start
        return self.spent_before + (0.0 if start is None else self.clock() - start)

    def _slowest(self, seconds: float) -> float:
        """The largest of `seconds` over the processes (every process plans the same)."""
        if not self.distributed:
            return seconds
        value = torch.tensor([seconds], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return float(value.item())

    def _follow_budget(self, loop_steps: int) -> None:
        """With a time budget, after each step (`loop_steps` of them in this `train` call): at
        planning steps, sets `total_steps` to the steps that fit; at planning and logging
        steps, ends the run (`total_steps` = this step) once the budget is spent."""
        step = self.step
        if loop_steps == BUDGET_PACE_FROM:
            self.pace_mark = (step, self._slowest(self._spent()))
        due = loop_steps == BUDGET_FIRST_PLAN or (
            loop_steps > BUDGET_FIRST_PLAN and step % BUDGET_REPLAN_EVERY == 0
        )
        if not due and step % self.train_config.log_every:
            return
        spent = self._slowest(self._spent())
        if spent >= self.budget_s:
            self.total_steps = step
            self._log_budget(spent, None, "stopped: time budget spent")
        elif due and self.pace_mark is not None and step > self.pace_mark[0]:
            pace = (spent - self.pace_mark[1]) / (step - self.pace_mark[0])
            fit = int((BUDGET_TARGET * self.budget_s - spent) / max(pace, 1e-9))
            planned = max(step + 1, min(self.configured_steps, step + fit))
            self.pace_mark = (step, spent)  # the next plan measures the pace from here
            if planned != self.total_steps:
                self.total_steps = planned
                self._log_budget(spent, pace, "planned")

    def _set_camera(self, epoch: int, starting: bool) -> None:
        """LiDAR first: at the start of an epoch (`starting`), lets the camera join at the epoch
        start nearest `camera_start` of the planned steps (the loader switches per epoch; with
        long epochs "the first start past it" could leave the camera far fewer steps); sets the
        model and the loader to the epoch's phase (also when resuming mid-epoch)."""
        if (
            self.camera_from_epoch is None
            and starting
            and self.step + self.steps_per_epoch / 2
            > self.train_config.camera_start * self.total_steps
        ):
            self.camera_from_epoch = epoch
            if self.is_main:
                with open(self.work_dir / LOG_NAME, "a") as f:
                    f.write(json.dumps({"step": self.step, "epoch": epoch, "camera": "joins"}))
                    f.write("\n")
        on = self.camera_from_epoch is not None and epoch >= self.camera_from_epoch
        self.model.camera_enabled = on
        painting = getattr(self.model, "paint_points", False)  # paints from the first step
        self.loader.sampler.dataset.load_images = (on or painting) and self.images_configured

    def _log_budget(self, spent: float, pace: float | None, event: str) -> None:
        if not self.is_main:
            return
        record = {"step": self.step, "time_budget": event, "planned_steps": self.total_steps,
                  "train_seconds": round(spent, 3), "budget_seconds": self.budget_s}  # fmt: skip
        if pace is not None:
            record["seconds_per_step"] = round(pace, 5)
        with open(self.work_dir / LOG_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _open_tensorboard(self):
        """A SummaryWriter on WORK_DIR/tensorboard/ with `train.tensorboard` (rank 0 only);
        log.jsonl is written in any case."""
        if not (self.train_config.tensorboard and self.is_main):
            return None
        _require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.work_dir / "tensorboard"))

    def _train_step(self, batch) -> dict[str, float]:
        """One optimizer update; raises `NonFiniteLossError` before touching the weights."""
        batch = batch.to(self.device)
        seed_step(self.config.seed, rank=self.rank, step=self.step + 1)
        autocast = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16) if self.amp else nullcontext()
        )
        with autocast, global_batch():
            losses = self.ddp_model(batch)
        total = sum(losses.values())
        values = self._reduce(losses)
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:
            shown = ", ".join(f"{name}={values[name]}" for name in bad)
            raise NonFiniteLossError(
                f"step {self.step + 1}: non-finite loss in {shown}; last good checkpoint: "
                f"{self.last_checkpoint or 'none'}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.train_config.grad_clip is not None:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.train_config.grad_clip)
            if not torch.isfinite(norm):
                raise NonFiniteLossError(
                    f"step {self.step + 1}: non-finite gradient norm ({norm.item()}) with finite "
                    f"losses; last good checkpoint: {self.last_checkpoint or 'none'}"
                )
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        values["total"] = sum(v for k, v in values.items() if k != "total")
        return values

    def _freeze(self, prefixes: list[str]) -> list[nn.Module]:
        """Stops the gradient of every parameter under `prefixes` (`train.freeze_prefixes`);
        returns the modules under them, which `train` keeps in eval mode."""
        if not prefixes:
            return []
        names = [name for name, _ in self.model.named_parameters()]
        for prefix in prefixes:
            if not any(name.startswith(prefix) for name in names):
                tops = sorted({name.split(".")[0] + "." for name in names})
                raise ConfigError(
                    f"train.freeze_prefixes: {prefix!r} matches no parameter of the model "
                    f"(its parameter names start with {', '.join(tops)})"
                )
        for name, parameter in self.model.named_parameters():
            if name.startswith(tuple(prefixes)):
                parameter.requires_grad_(False)
        return [
            module
            for name, module in self.model.named_modules()
            if name and f"{name}.".startswith(tuple(prefixes))
        ]

    # -- the loop ----------------------------------------------------------------------

    def train(self, *, until_step: int | None = None) -> Path | None:
        """Runs to `total_steps` (or stops early after `until_step`, saving a checkpoint there,
        as if interrupted: the schedule still spans `total_steps`). Returns the last
        checkpoint directory (None off rank 0 when nothing was saved there)."""
        from tqdm import tqdm

        tc = self.train_config
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if not (self.resume and self._restore()) and tc.init_from:
            loaded = load_partial_weights(tc.init_from, self.model, tc.init_prefixes)
            if self.is_main:
                record = {"step": self.step, "init_from": tc.init_from, "weights": len(loaded)}
                with open(self.work_dir / LOG_NAME, "a") as f:
                    f.write(json.dumps(record) + "\n")
        if tc.freeze_prefixes and self.step == 0 and self.is_main:
            frozen = sum(not p.requires_grad for p in self.model.parameters())
            with open(self.work_dir / LOG_NAME, "a") as f:
                f.write(json.dumps({"step": 0, "frozen": tc.freeze_prefixes, "parameters": frozen}))
                f.write("\n")
        stop = min(self.total_steps, until_step or self.total_steps)
        if self.step >= stop:
            return self.last_checkpoint
        self.tensorboard = self._open_tensorboard()
        global_batch = (self.loader.batch_size or 1) * self.world_size
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.progress,
            dynamic_ncols=True,
            desc="train",
        )
        self.model.train()
        for module in self.frozen_modules:  # frozen BatchNorm keeps its statistics
            module.eval()
        last_log_time, last_log_step = time.perf_counter(), self.step
        self.loop_start = self.clock()
        loop_steps = 0
        try:
            while self.step < stop:
                epoch, seen = divmod(self.step, self.steps_per_epoch)
                self.loader.dataset.set_epoch(epoch)
                if tc.camera_start > 0:
                    self._set_camera(epoch, starting=seen == 0)
                loader = _loader_skipping(self.loader, seen) if seen else self.loader
                for batch in loader:
                    values = self._train_step(batch)
                    self.paste_interval.update(batch.paste_counts)
                    loop_steps += 1
                    if self.budget_s is not None:
                        self._follow_budget(loop_steps)
                        stop = min(self.total_steps, until_step or self.total_steps)
                        bar.total = self.total_steps
                    bar.update(1)
                    bar.set_postfix(loss=f"{values['total']:.4f}", epoch=epoch)
                    if self.step % tc.log_every == 0 or self.step == stop:
                        now = time.perf_counter()
                        steps = self.step - last_log_step
                        rate = steps * global_batch / max(now - last_log_time, 1e-9)
                        last_log_time, last_log_step = now, self.step
                        losses = {k: v for k, v in values.items() if k != "total"}
                        record = {
                            "step": self.step,
                            "epoch": epoch,
                            "loss": values["total"],
                            "lr": self.scheduler.get_last_lr()[0],
                            "samples_per_s": rate,
                            "losses": losses,
                        }
                        paste = self._paste_counts()
                        if paste is not None:
                            record["paste"], record["paste_total"] = paste
                        self._log(record)
                    if self.step % tc.checkpoint_every == 0 or self.step == stop:
                        self._save()
                    if self.step >= stop:
                        break
        finally:
            bar.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
        return self.last_checkpoint
