"""Trains a detector from an experiment config.

    python tools/train.py configs/bevfusion_tiny.yaml --work-dir work_dirs/tiny \\
        --set train.max_steps=1000 --set data.root=data/nuscenes
    python tools/train.py configs/bevfusion_tiny.yaml --work-dir work_dirs/tiny --resume

Writes WORK_DIR/config.yaml (the fully resolved config), WORK_DIR/log.jsonl (one JSON line
per `train.log_every` steps), WORK_DIR/checkpoints/step_<N>/ and, with
`--set train.tensorboard=true` (the `tensorboard` extra), WORK_DIR/tensorboard/. `--resume`
continues from the latest checkpoint at the same step, learning rate and data position; where
the work dir has none (a typo?) it says so and starts from scratch, `--resume=must` stops
with an error instead. A distilled run (`train.teacher`, docs/distillation.md) resumes with the
teacher its checkpoint's config names unless `--set train.teacher=` names one (another teacher
than the checkpoint's is refused).

A wall-time budget instead of a fixed length: `--set train.time_budget_min=28` (with
`train.max_steps` or `train.epochs` as the most steps it may run) measures the pace over the
first steps, shortens the LR schedule to the steps that fit in 97% of the budget (re-planned
every 100 steps), and stops at the budget in any case; log.jsonl records each plan
(`"time_budget": "planned"`, with seconds per step). The step count then depends on the
machine, so leave it unset where runs must repeat exactly.

One machine, several GPUs (or CPU processes with gloo): `train.batch_size` is per process,
so the global batch is batch_size x processes:

    torchrun --standalone --nproc-per-node 8 tools/train.py CONFIG --work-dir DIR

Several machines: run the same command on every node with a shared rendezvous endpoint
(any reachable host:port, usually node 0) and the same job id:

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint node0.example:29500 --rdzv-id my-run tools/train.py CONFIG --work-dir DIR

The work dir must be on storage all nodes see if you want to resume (only rank 0 writes it).

What several processes guarantee: W processes of batch b follow one process of batch W x b on
the same samples (BatchNorm statistics and the detection losses' object counts are taken over
the global batch; DDP averages the gradients), up to floating-point summation order: on the
test model the loss curves agree within ~1e-5 relative over a few steps, where per-process
statistics put them 35% apart. Not matched: modality dropout (drawn per process) and the camera
depth loss (a per-process mean). `--resume` is exact on every rank, for any number of data
workers: training randomness is seeded from (seed, rank, step) and augmentation from (seed,
epoch, sample), so a run killed at any point (even with SIGKILL, even inside a checkpoint
write) and resumed ends at the weights of an uninterrupted run, bit for bit, given the same
hardware, world size and `train.deterministic` kernels where the device needs them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Only light imports before the arguments are parsed: --help and usage errors answer at once.
from perception.cli import add_override_option, dataroot_problem, usage_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="experiment config YAML")
    parser.add_argument(
        "--work-dir", help="where checkpoints and logs go (default: work_dirs/<config name>)"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        choices=("auto", "must"),
        help="continue from the work dir's latest checkpoint; where it has none, --resume "
        "(=auto) says so and starts from scratch, --resume=must stops with an error",
    )
    add_override_option(parser, "train.lr=1e-4")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from perception.runtime import set_cpu_threads

    set_cpu_threads()  # numba's worker pool follows torch's threads (OMP_NUM_THREADS)

    from perception.config import ConfigError, load_config, save_config
    from perception.engine import find_latest

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as exc:
        return usage_error(exc)
    work_dir = Path(args.work_dir or Path("work_dirs") / Path(args.config).stem)
    problem = dataroot_problem(config.data.root, config.data.version)
    if problem:
        return usage_error(f"data.root: {problem}")
    resume_note = None
    if args.resume:
        latest = find_latest(work_dir)
        if latest is None:  # e.g. a mistyped work dir: it must not pass for a resumed run
            where = "does not exist" if not work_dir.exists() else "holds no checkpoint"
            if args.resume == "must":
                return usage_error(f"--resume=must: work dir {work_dir} {where}; nothing to resume")
            resume_note = f"--resume: work dir {work_dir} {where}; training from scratch"
        else:
            resume_note = f"--resume: continuing from {latest}"
            # a distilled run's teacher: the checkpoint's config names it, the resume reloads it
            from perception.checkpoint import CheckpointError, read_config

            try:
                saved_teacher = read_config(latest).train.teacher
            except CheckpointError:  # the restore names what is wrong with the checkpoint
                saved_teacher = None
            if config.train.teacher is None and saved_teacher is not None:
                try:
                    config = load_config(
                        args.config, [*args.overrides, f"train.teacher={saved_teacher}"]
                    )
                except ConfigError as exc:
                    return usage_error(exc)
                resume_note += f", distilling from its teacher (train.teacher={saved_teacher})"

    from perception.datasets.pipeline import build_dataloader, build_dataset
    from perception.engine import (
        NonFiniteLossError,
        Trainer,
        build_hooks,
        cleanup_distributed,
        seed_everything,
        setup_distributed,
    )
    from perception.models.builder import build_model

    dist = setup_distributed()
    try:
        if dist.is_main and resume_note:
            print(resume_note, flush=True)
        seed_everything(config.seed, deterministic=config.train.deterministic)
        model = build_model(config)
        try:  # an unknown split, a missing or stale index: ValueErrors naming it
            dataset = build_dataset(config, train=True)
        except ValueError as exc:
            return usage_error(exc)
        if dist.is_main:
            save_config(config, work_dir / "config.yaml")
        loader = build_dataloader(
            dataset,
            batch_size=config.train.batch_size,
            train=True,
            workers=config.train.workers,
            seed=config.seed,
            distributed=dist.world_size > 1,
        )
        try:
            # the hooks get what they switch: the model and the dataset (LiDAR first)
            hooks = build_hooks(
                config, model=model, datasets=[dataset], progress=not args.no_progress
            )
            trainer = Trainer(
                config=config,
                model=model,
                loader=loader,
                work_dir=work_dir,
                device=dist.device,
                resume=bool(args.resume),
                hooks=hooks,
            )
        except ConfigError as exc:  # a setting that does not fit the model built
            return usage_error(exc)
        if dist.is_main:
            budget = config.train.time_budget_min
            budget = f" at most (fitted to a {budget:g} min time budget)" if budget else ""
            print(
                f"training {config.name}: {trainer.total_steps} steps"
                f"{budget}, "
                f"{len(dataset)} samples, global batch "
                f"{config.train.batch_size * dist.world_size} on {dist.world_size} process(es)"
            )
        try:
            last = trainer.train()
        except NonFiniteLossError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if dist.is_main:
            print(f"checkpoints: {work_dir / 'checkpoints'} (latest: {last})")
            print(f"log: {work_dir / 'log.jsonl'}")
        return 0
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
