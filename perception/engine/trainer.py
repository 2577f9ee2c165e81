"""The training loop: AdamW + LR schedule, checkpoints, exact resume, NaN stop, DDP.

    seed_everything(config.seed, deterministic=config.train.deterministic)
    dist = setup_distributed()  # reads torchrun's environment; one process if not launched so
    model = build_model(config)
    dataset = build_dataset(config, train=True)
    loader = build_dataloader(dataset, batch_size=config.train.batch_size, train=True,
                              workers=config.train.workers, seed=config.seed,
                              distributed=dist.world_size > 1)
    hooks = build_hooks(config, model=model, datasets=[dataset])  # before the Trainer
    Trainer(config=config, model=model, loader=loader, work_dir="work_dirs/x",
            device=dist.device, hooks=hooks).train()

Steps are counted from 1: step N is the N-th optimizer update, and ``checkpoints/step_N``
holds the state after it. An epoch is `len(loader)` steps; step N lies in epoch
``(N - 1) // len(loader)``. Resuming reads the step from the latest checkpoint, restores the
model, optimizer, schedule and RNG states, sets that epoch and skips the batches of it that
were already seen (the sampler's order depends only on (seed, epoch)).

Randomness drawn during training (e.g. modality dropout) comes from the global Python, numpy
and torch generators, which are reseeded before every step from (seed, rank, step): a resumed
run, on any rank, draws exactly what the uninterrupted one drew. Data augmentation draws from
(seed, epoch, sample index) in the dataset, the same with any number of workers or processes.

What varies between runs is a hook (`hooks.py`, detectron2 style), built from the config by
`build_hooks` and called by the loop at fixed points, each with its own state in the
checkpoint: `Freeze` (`train.freeze_prefixes`), `LidarFirst` (`train.camera_start`: the camera
branch and the images join part-way), `TimeBudget` (`train.time_budget_min`), `ProgressBar`,
`PeriodicLog` (log.jsonl, GT-paste counters, tensorboard), `PeriodicEval` (an evaluation
function, optional) and `PeriodicCheckpoint`. A resume drops the log.jsonl lines written after
the checkpoint it continues from (the checkpoint records how many there were: `log_lines`),
so the resumed run's lines are not there twice.

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
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from ..config.schema import ExperimentConfig, TrainConfig
from ..distributed import is_distributed, world_size
from ..distributed import rank as process_rank
from .checkpoint import find_latest, load_checkpoint, load_partial_weights, save_checkpoint
from .distributed import convert_sync_batchnorm, global_batch
from .hooks import Hook, JsonLog, build_hooks

LOG_NAME = "log.jsonl"
# training-state keys of the trainer itself (the hooks' own keys sit beside them)
TRAINER_STATE_KEYS = ("steps_per_epoch", "world_size", "log_lines")


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
    if is_distributed():
        torch_dist.destroy_process_group()


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
    """Trains `model` on `loader` (from `build_dataloader`), calling `hooks` around each step,
    with AdamW and the LR schedule of `config.train`; returns the last checkpoint written under
    `work_dir` (by the `PeriodicCheckpoint` hook).

    `hooks` (see `hooks.py`): None builds those of the config (`build_hooks(config,
    model=model, progress=progress)`; LiDAR first then needs them built by the caller, with
    the datasets to switch). Given hooks are built before the trainer (a `Freeze` hook freezes
    parameters the optimizer must leave out) and `progress` is theirs to say.

    If a process group is initialized (see `setup_distributed`), the model's BatchNorm layers
    are converted in place to `SyncBatchNorm`, it is wrapped in `DistributedDataParallel` and
    `loader` must be built with ``distributed=True``.
    `device` defaults to CUDA when available. `resume` continues from the latest checkpoint
    of `work_dir` (starting fresh if there is none).

    What hooks read and set: `step` (optimizer updates done), `epoch`, `steps_per_epoch`,
    `loop_steps` (updates in this `train` call), `configured_steps`, `total_steps` (the LR
    schedule's length: a time budget sets it), `stop_step`, `batch` and `losses` (of the
    current step), `model`, `scheduler`, `log` (log.jsonl), `global_batch_size`, `is_main`,
    `distributed`, `world_size`, `work_dir`, `last_checkpoint`; `save_checkpoint`,
    `max_over_processes` and `all_gather_object`.
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
        hooks: Sequence[Hook] | None = None,
    ):
        self.config = config
        self.train_config: TrainConfig = config.train
        self.work_dir = Path(work_dir)
        self.loader = loader
        self.resume = resume
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.distributed = is_distributed()
        self.rank = process_rank()
        self.world_size = world_size()
        self.is_main = self.rank == 0
        self.log = JsonLog(self.work_dir / LOG_NAME, enabled=self.is_main)

        if self.distributed and self.world_size > 1:
            model = convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        if hooks is None:  # freezes before DDP, which hooks the parameters that need a gradient
            hooks = build_hooks(config, model=self.model, progress=progress)
        self.hooks: list[Hook] = []
        self.register_hooks(hooks)
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
        self.global_batch_size = (loader.batch_size or 1) * self.world_size
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
        self.amp = tc.amp and self.device.type == "cuda"
        self.step = 0
        self.epoch = 0
        self.loop_steps = 0
        self.until_step: int | None = None
        self.batch = None  # the batch of the current step
        self.losses: dict[str, float] = {}  # its loss terms (averaged over processes), `total`
        self.last_checkpoint: Path | None = None

    def register_hooks(self, hooks: Sequence[Hook]) -> None:
        """Appends `hooks` (called in this order); their state keys must be distinct."""
        taken = {key: "the trainer" for key in TRAINER_STATE_KEYS}
        for hook in self.hooks:
            taken.update(dict.fromkeys(hook.state_keys, type(hook).__name__))
        for hook in hooks:
            for key in hook.state_keys:
                if key in taken:
                    raise ValueError(
                        f"{type(hook).__name__}: state key {key!r} is already {taken[key]}'s"
                    )
                taken[key] = type(hook).__name__
            hook.trainer = self
            self.hooks.append(hook)

    @property
    def stop_step(self) -> int:
        """The step this `train` call ends at: `total_steps`, or `until_step` if earlier."""
        return min(self.total_steps, self.until_step or self.total_steps)

    # -- state -------------------------------------------------------------------------

    def training_state(self) -> dict:
        """The JSON training state saved with a checkpoint: the trainer's keys (steps per
        epoch, world size, log.jsonl lines so far) and every hook's `state_dict()`."""
        state = {
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.world_size,
            "log_lines": self.log.lines,
        }
        for hook in self.hooks:
            hook_state = hook.state_dict()
            if set(hook_state) != set(hook.state_keys):
                raise RuntimeError(
                    f"{type(hook).__name__}.state_dict() returned keys {sorted(hook_state)}, "
                    f"its state_keys are {sorted(hook.state_keys)}"
                )
            state.update(hook_state)
        return state

    def save_checkpoint(self, *, keep: int | None = None) -> None:
        """Writes ``checkpoints/step_<step>`` (rank 0; every process waits for it), keeping the
        newest `keep`."""
        if self.is_main:
            self.last_checkpoint = save_checkpoint(
                self.work_dir,
                step=self.step,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                config=self.config,
                epoch=(self.step - 1) // self.steps_per_epoch,
                extra=self.training_state(),
                keep=keep,
            )
        if self.distributed:
            torch_dist.barrier()

    def _restore(self) -> bool:
        """Restores the latest checkpoint of the work dir (the hooks' state included) and drops
        the log.jsonl lines written after it; False when there is none."""
        latest = find_latest(self.work_dir)
        if latest is None:
            return False
        state = load_checkpoint(
            latest, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler
        )
        extra = state.extra
        saved_len = extra.get("steps_per_epoch")
        if saved_len is not None and saved_len != self.steps_per_epoch:
            raise ValueError(
                f"{state.path}: saved with {saved_len} steps per epoch, the loader now has "
                f"{self.steps_per_epoch}; resume with the same batch size, world size and data"
            )
        self.step = state.step
        self.last_checkpoint = state.path
        # the resumed run writes again what came after the checkpoint
        if extra.get("log_lines") is not None:
            self.log.keep_first(int(extra["log_lines"]))
        else:  # a checkpoint from before `log_lines`
            self.log.drop_after_step(self.step)
        for hook in self.hooks:
            hook.load_state_dict({key: extra[key] for key in hook.state_keys if key in extra})
        return True

    def _resume_or_init(self) -> None:
        """`resume`: the latest checkpoint; else (or where there is none) `train.init_from`."""
        tc = self.train_config
        if not (self.resume and self._restore()) and tc.init_from:
            loaded = load_partial_weights(tc.init_from, self.model, tc.init_prefixes)
            self.log.write({"step": self.step, "init_from": tc.init_from, "weights": len(loaded)})

    # -- collectives (no-ops in one process) -------------------------------------------

    def _reduce(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """Loss terms averaged over the processes, as floats (one device sync)."""
        names = sorted(losses)
        values = torch.stack([losses[n].detach().float() for n in names])
        if self.distributed:
            torch_dist.all_reduce(values)
            values /= self.world_size
        return dict(zip(names, values.tolist(), strict=True))

    def max_over_processes(self, value: float) -> float:
        """The largest of `value` over the processes (e.g. the slowest clock)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
        return float(tensor.item())

    def all_gather_object(self, obj) -> list:
        """`obj` of every process, by rank (a JSON-able or picklable object)."""
        if not self.distributed:
            return [obj]
        gathered: list = [None] * self.world_size
        torch_dist.all_gather_object(gathered, obj)
        return gathered

    # -- the loop ----------------------------------------------------------------------

    def run_step(self, batch) -> dict[str, float]:
        """One optimizer update on `batch`; returns the loss terms averaged over the processes
        and their sum (`total`). Raises `NonFiniteLossError` before touching the weights."""
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

    def _call(self, stage: str) -> None:
        for hook in self.hooks:
            getattr(hook, stage)()

    def train(self, *, until_step: int | None = None) -> Path | None:
        """Runs to `total_steps` (or stops early after `until_step`, saving a checkpoint there,
        as if interrupted: the schedule still spans `total_steps`). Returns the last
        checkpoint directory (None off rank 0 when nothing was saved there)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.until_step = until_step
        self._resume_or_init()
        if self.step >= self.stop_step:
            return self.last_checkpoint
        self.model.train()
        self.loop_steps = 0
        try:
            self._call("before_train")
            while self.step < self.stop_step:
                self.epoch, seen = divmod(self.step, self.steps_per_epoch)
                self.loader.dataset.set_epoch(self.epoch)
                self._call("before_epoch")  # e.g. LiDAR first: switches before loading
                loader = _loader_skipping(self.loader, seen) if seen else self.loader
                for batch in loader:
                    self.batch = batch
                    self._call("before_step")
                    self.losses = self.run_step(batch)
                    self.loop_steps += 1
                    self._call("after_step")
                    if self.step >= self.stop_step:
                        break
        finally:
            self.batch = None
            self._call("after_train")
        return self.last_checkpoint
