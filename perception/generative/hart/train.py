"""Training a HART-style generator in three stages (`tools/train_generator.py`).

1. classifier  the crop classifier (class + yaw bin) on the training signals: the features of
               the tokenizer's feature loss and of the metrics (no downloaded weights exist).
2. tokenizer   the hybrid tokenizer: reconstruction + commitment + feature loss.
3. transformer the condition embedding, the scale-wise transformer and the residual diffusion
               head, on the frozen tokenizer (HART trains the tokenizer first, then the rest).

Work dir layout::

    WORK/config.yaml                   the resolved HARTConfig
    WORK/conditions.json               the training conditions' range (checked at sampling)
    WORK/log.jsonl                     one line per `train.log_every` steps, with the stage
    WORK/classifier.safetensors        the crop classifier (metrics.save_crop_classifier)
    WORK/tokenizer/checkpoints/...     the whole generator during stage 2 (+ its optimizer)
    WORK/transformer/checkpoints/...   the whole generator during stage 3 (+ its optimizer):
                                       its latest checkpoint is the trained generator

`resume=True` continues the latest stage from its latest checkpoint, at the same step, learning
rate and batch draws (each step's batch and noise come from a generator seeded with
(seed, stage, step)).

Device (`train.device`, `train.amp`): the model trains on `resolve_device(train.device)`; the
training signals stay on the CPU and each step's batch rows are drawn there (as before) and moved
to the device, so the batch draws do not depend on the device. On CUDA the loss's noise comes from
a CUDA generator seeded with the step generator's seed (a CPU generator cannot draw CUDA tensors),
and `train.amp` runs the loss under bfloat16 autocast (ignored on the CPU, as the detector's
trainer does, with a logged note). CPU runs are bit-identical to runs before the device option
existed; CUDA runs are deterministic in their draws but not bit-exact (kernel choice, atomics).
Checkpoints are device-independent (safetensors on the CPU; a resume loads them into the model
already on the device), so a CUDA-trained generator samples on the CPU and vice versa.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import BaseModel
from tqdm import tqdm

from ...checkpoint import find_latest, load_checkpoint, save_checkpoint
from ...config import load_config, save_config
from ...engine.trainer import lr_factor, seed_everything
from ..bank import ObjectBank
from ..conditions import ConditionRange, ObjectConditions
from ..config import GeneratorDataConfig, HARTConfig
from ..crops import SignalSet, bank_signals
from ..metrics import load_crop_classifier, save_crop_classifier, train_crop_classifier
from .model import HARTGenerator, build_hart

__all__ = [
    "SignalSet",
    "STAGES",
    "autocast",
    "load_generator",
    "load_training_signals",
    "resolve_device",
    "train_hart",
    "training_device",
]

STAGES = ("classifier", "tokenizer", "transformer")
LOG_NAME = "log.jsonl"
CONDITIONS_NAME = "conditions.json"
CLASSIFIER_NAME = "classifier.safetensors"


def load_training_signals(data: GeneratorDataConfig, *, progress: bool = True) -> SignalSet:
    """The crops (camera) or occupancy grids (LiDAR) of a training bank's objects (the bank
    must be a training bank: no evaluation-split object)."""
    bank = ObjectBank.open(data.bank, version=data.version, training=True)
    return bank_signals(bank, data, progress=progress)


def flip_batch(
    signals: torch.Tensor, conditions: ObjectConditions, flip: torch.Tensor
) -> tuple[torch.Tensor, ObjectConditions]:
    """Mirrors the rows `flip` [B] bool left-right: the last axis of the signal (the image's
    columns, the grid's box-frame y) and the view angle's sign (seen from the mirrored side)."""
    signals = torch.where(flip[:, None, None, None], signals.flip(-1), signals)
    angle = torch.where(flip, -conditions.view_angle, conditions.view_angle)
    return signals, dataclasses.replace(conditions, view_angle=angle)


def stage_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The generator of one training step's draws (batch rows, flips, noise): a function of
    (seed, stage name, step) only, so a resumed run draws what an uninterrupted one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(stage.encode()) + step)


def resolve_device(name: str, *, field: str = "train.device") -> torch.device:
    """The torch device of a config's `device` value: "auto" is CUDA when torch sees a GPU, else
    the CPU; "cuda" without one is a ValueError naming `field` (a config key or a flag)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{field}: 'cuda', but torch {torch.__version__} sees no CUDA GPU "
                f"(built with CUDA {torch.version.cuda}); use 'auto' or 'cpu'"
            )
        return torch.device("cuda")
    raise ValueError(f"{field}: unknown device {name!r} (auto, cpu, cuda)")


def training_device(
    train: BaseModel, log: Callable[[str], None] | None = None
) -> tuple[torch.device, bool]:
    """(device, amp) of a generator config's `train` section: `train.device` resolved, and
    whether bfloat16 autocast runs (`train.amp` on CUDA; on the CPU it is ignored, like the
    detector's trainer, and `log` gets a note). A section without the fields trains on the CPU
    without autocast."""
    device = resolve_device(getattr(train, "device", "cpu"))
    amp = bool(getattr(train, "amp", False))
    if amp and device.type != "cuda":
        if log is not None:
            log(f"note: train.amp is ignored on {device.type} (bfloat16 autocast is CUDA only)")
        amp = False
    elif log is not None and device.type != "cpu":
        log(f"device: {device}{' with bfloat16 autocast' if amp else ''}")
    return device, amp


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on `device` when `amp`, else nothing (CPU runs never autocast)."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def noise_generator(step_generator: torch.Generator, device: torch.device) -> torch.Generator:
    """The generator of a step's loss noise on `device`: the step generator itself on the CPU
    (so CPU runs draw exactly as before), else a generator on `device` seeded with the step
    generator's seed (a function of (seed, stage, step): resumes still repeat the draws)."""
    if device.type == "cpu":
        return step_generator
    return torch.Generator(device=device).manual_seed(step_generator.initial_seed())


def append_log(work_dir: Path, record: dict) -> None:
    with (work_dir / LOG_NAME).open("a") as f:
        f.write(json.dumps(record) + "\n")


def drop_log_after(work_dir: Path, stage: str, step: int) -> int:
    """Removes the log.jsonl lines of `stage` past `step` (written after the checkpoint a run
    resumes from, and written again by the resumed run); returns how many."""
    path = work_dir / LOG_NAME
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("stage") == stage and record.get("step", 0) > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        tmp.replace(path)
    return dropped


def run_stage(
    stage: str,
    *,
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    loss_fn: Callable[[torch.Tensor, ObjectConditions, torch.Generator], dict],
    data: SignalSet,
    config: BaseModel,
    work_dir: Path,
    steps: int,
    lr: float,
    resume: bool,
    progress: bool,
    log: Callable[[str], None],
    extra: dict | None = None,
    time_budget_s: float | None = None,
) -> None:
    """One training stage of a generator: AdamW, warm-up + cosine LR, gradient clipping at 1,
    log.jsonl lines and checkpoints of `model` (+ optimizer) under WORK/<stage>/.

    `config` is the generator's config (any kind): its `train` section gives seed, batch_size,
    weight_decay, warmup, log_every, checkpoint_every, and `data.flip` the mirroring; it is
    saved with every checkpoint and is the schema a resume validates. `time_budget_s`: stop at
    the first checkpoint after that much training time (summed over resumes, kept in the
    checkpoint as `elapsed_s`); the LR schedule then follows the larger of the step and the
    time fractions.

    `model` moves to `train.device` (`training_device`) before the optimizer is built and a
    checkpoint is loaded; `data` stays where it is (the CPU) and each step's batch moves to the
    device; `loss_fn` runs under bfloat16 autocast when `train.amp` applies."""
    train = config.train
    schema = type(config)
    stage_dir = work_dir / stage
    device, amp = training_device(train)
    model.to(device)  # in place: `params` stay the same Parameter objects
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=train.weight_decay)
    start, spent = 0, 0.0
    extra = {
        "stage": stage,
        "conditions": json.loads((work_dir / CONDITIONS_NAME).read_text()),
        **(extra or {}),
    }
    if resume and find_latest(stage_dir) is not None:
        state = load_checkpoint(stage_dir, model=model, optimizer=optimizer, schema=schema)
        start, spent = state.step, float(state.extra.get("elapsed_s", 0.0))
        dropped = drop_log_after(work_dir, stage, start)
        log(
            f"{stage}: resumed at step {start} from {state.path}"
            + (f" ({dropped} log line(s) past it dropped)" if dropped else "")
        )
    budget = time_budget_s
    if start >= steps or (budget is not None and spent >= budget):
        return
    bar = tqdm(total=steps, initial=start, desc=stage, disable=not progress, unit="step")
    sums: dict[str, float] = {}
    count, tic, began = 0, time.perf_counter(), time.perf_counter()
    for step in range(start, steps):
        position = step
        if budget is not None:
            elapsed = spent + time.perf_counter() - began
            position = max(step, round(min(elapsed / budget, 1.0) * steps))
        factor = lr_factor(position, total_steps=steps, schedule="cosine", warmup=train.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        generator = stage_generator(train.seed, stage, step)
        rows = torch.randint(len(data), (min(train.batch_size, len(data)),), generator=generator)
        signals, conditions = data.signals[rows], data.conditions.index(rows)
        if config.data.flip:
            mirror = torch.rand(len(rows), generator=generator) < 0.5
            signals, conditions = flip_batch(signals, conditions, mirror)
        signals, conditions = signals.to(device), conditions.to(device)  # no-ops on the CPU
        with autocast(device, amp):
            losses = loss_fn(signals, conditions, noise_generator(generator, device))
        total = losses["total"].float()
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"{stage} step {step}: the loss is {float(total)}; the last good checkpoint is "
                f"{find_latest(stage_dir)}"
            )
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        count += 1
        bar.update(1)
        done = step + 1
        elapsed = spent + time.perf_counter() - began
        if done % train.log_every == 0 or done == steps:
            record = {"stage": stage, "step": done, "lr": lr * factor}
            record.update({k: v / count for k, v in sums.items()})
            record["seconds_per_step"] = (time.perf_counter() - tic) / count
            record["elapsed_s"] = elapsed
            append_log(work_dir, record)
            bar.set_postfix({k: f"{v / count:.4g}" for k, v in sums.items() if k != "total"})
            sums, count, tic = {}, 0, time.perf_counter()
        if done % train.checkpoint_every == 0 or done == steps:
            save_checkpoint(
                stage_dir,
                step=done,
                model=model,
                optimizer=optimizer,
                config=config,
                extra={**extra, "elapsed_s": elapsed},
            )
            if budget is not None and elapsed >= budget:
                log(f"{stage}: time budget {budget:g} s spent at step {done} ({elapsed:.0f} s)")
                break
    bar.close()


def train_hart(
    config: HARTConfig,
    work_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Trains the generator `config` describes into `work_dir`; returns the directory of the
    trained generator's checkpoint (WORK/transformer/checkpoints/step_<N>)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    train = config.train
    device, _ = training_device(train, log)  # a bad train.device fails before any work
    save_config(config, work_dir / "config.yaml")
    seed_everything(train.seed)
    data = load_training_signals(config.data, progress=progress)
    labels = data.conditions.label
    counts = torch.bincount(labels).tolist()
    log(
        f"{config.name}: {len(data)} {config.data.modality} signals "
        f"{tuple(data.signals.shape[1:])} from {config.data.bank} "
        f"(per class label: { {i: c for i, c in enumerate(counts) if c} })"
    )
    ranges = ConditionRange.fit(data.conditions)
    (work_dir / CONDITIONS_NAME).write_text(json.dumps(ranges.to_dict(), indent=1))
    model = build_hart(config).to(device)

    # 1. the crop classifier (frozen afterwards; trained on the CPU, then moved to the device)
    classifier = None
    if train.classifier_steps > 0:
        classifier_path = work_dir / CLASSIFIER_NAME
        if resume and classifier_path.is_file():
            classifier = load_crop_classifier(classifier_path)
            log(f"classifier: loaded {classifier_path}")
        else:
            classifier = train_crop_classifier(
                data.signals,
                labels,
                data.conditions.view_angle,
                steps=train.classifier_steps,
                batch_size=train.batch_size,
                generator=torch.Generator().manual_seed(train.seed),
                progress=progress,
            )
            save_crop_classifier(classifier, classifier_path)
        classifier.to(device).eval().requires_grad_(False)

    # 2. the tokenizer
    tokenizer = model.tokenizer
    feature_fn = classifier.features if classifier is not None else None
    resume_transformer = resume and find_latest(work_dir / "transformer") is not None
    if not resume_transformer:

        def tokenizer_loss(x, conds, generator):
            return tokenizer.loss(x, feature_fn=feature_fn, generator=generator)

        tokenizer.train()
        run_stage(
            "tokenizer",
            model=model,
            params=list(tokenizer.parameters()),
            loss_fn=tokenizer_loss,
            data=data,
            config=config,
            work_dir=work_dir,
            steps=train.tokenizer_steps,
            lr=train.lr,
            resume=resume,
            progress=progress,
            log=log,
        )

    # 3. the transformer and the residual head on the frozen tokenizer
    tokenizer.eval().requires_grad_(False)
    if not resume_transformer:
        scale = model.fit_residual_scale(data.signals.to(device))
        log(f"transformer: the residual tokens' std is {scale:.4g} (the head's unit)")
    trainable = [p for name, p in model.named_parameters() if not name.startswith("tokenizer.")]
    model.transformer.train()

    def transformer_loss(x, conds, generator):
        return model.transformer_loss(x, conds, generator=generator)

    run_stage(
        "transformer",
        model=model,
        params=trainable,
        loss_fn=transformer_loss,
        data=data,
        config=config,
        work_dir=work_dir,
        steps=train.transformer_steps,
        lr=train.transformer_lr,
        resume=resume_transformer,
        progress=progress,
        log=log,
    )
    latest = find_latest(work_dir / "transformer")
    log(f"trained generator: {latest}")
    return latest


def load_trained(
    path: str | Path,
    *,
    kind: str,
    stage: str,
    schema: type[BaseModel],
    build: Callable[[BaseModel], torch.nn.Module],
) -> tuple[torch.nn.Module, BaseModel, ConditionRange]:
    """A trained generator of any kind from a checkpoint directory, a stage dir or a work dir
    (its `stage`'s latest checkpoint): (model in eval mode on the CPU, its config, the training
    conditions' range). A checkpoint of another kind raises ValueError naming `kind`."""
    from ..registry import generator_kind_of

    path = Path(path)
    if (path / stage).is_dir():
        path = path / stage
    latest = path if (path / "model.safetensors").is_file() else find_latest(path)
    try:
        found = generator_kind_of(latest or path)
    except FileNotFoundError:
        found = None
    if found is not None and found != kind:
        raise ValueError(f"{latest or path}: kind is {found!r}, not {kind!r}: another generator")
    if latest is None:
        raise FileNotFoundError(
            f"{path}: no {kind} generator checkpoint (train one with tools/train_generator.py)"
        )
    config = load_config(latest / "config.yaml", schema=schema)
    model = build(config)
    state = load_checkpoint(latest, model=model, restore_rng=False, schema=schema)
    ranges = ConditionRange.from_dict(state.extra["conditions"])
    return model.eval(), config, ranges


def load_generator(path: str | Path) -> tuple[HARTGenerator, HARTConfig, ConditionRange]:
    """The trained HART generator of a checkpoint directory, a stage dir or a work dir (its
    transformer stage), with its config and the training conditions' range, in eval mode."""
    return load_trained(path, kind="hart", stage="transformer", schema=HARTConfig, build=build_hart)
