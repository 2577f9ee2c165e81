"""Trains an object generator from a generator config (`configs/generative/*.yaml`).

    python tools/train_generator.py configs/generative/hart_camera.yaml --work-dir work_dirs/hart_cam \\
        --set data.bank=data/synth-train-rare-bank-train
    python tools/train_generator.py configs/generative/hart_camera.yaml --work-dir work_dirs/hart_cam --resume

The config's `kind` says which generator: `hart` (configs/generative/hart_*.yaml), `ldm` (the
latent diffusion transformer it is measured against, on a trained HART's frozen tokenizer:
configs/generative/ldm_camera.yaml), `gan` (the class-conditional DiffAugment GAN:
configs/generative/gan_camera.yaml). The HART-style generator trains in three stages: the crop
classifier (its features drive the tokenizer's feature loss and the metrics), the hybrid
tokenizer, then the scale-wise transformer and the residual diffusion head on the frozen
tokenizer (`perception.generative.hart.train`). WORK/log.jsonl has one line per
`train.log_every` steps with the stage; the trained generator is WORK/transformer/checkpoints/
latest, which `tools/sample_generator.py WORK` reads. `--resume` continues the latest stage at
the same step and batch draws.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Only light imports before the arguments are parsed: --help and usage errors answer at once.
from perception.cli import add_override_option, usage_error

KINDS = ("hart", "ldm", "gan")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="generator config YAML (configs/generative/)")
    parser.add_argument(
        "--work-dir", help="where checkpoints and logs go (default: work_dirs/<config name>)"
    )
    parser.add_argument(
        "--kind",
        choices=KINDS,
        help="which generator (default: the config's `kind`); must match the config",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the latest stage from its checkpoint"
    )
    add_override_option(parser, "train.tokenizer_steps=500")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from perception.config import ConfigError
    from perception.generative.registry import load_generator_config

    try:
        config = load_generator_config(args.config, args.overrides)
    except ConfigError as exc:
        return usage_error(exc)
    if args.kind and args.kind != config.kind:
        return usage_error(f"--kind {args.kind}: {args.config} is a {config.kind!r} config")
    if not (Path(config.data.bank) / "bank.json").is_file():  # every kind learns from a bank
        return usage_error(
            f"data.bank: {config.data.bank} holds no bank.json (build one with "
            "python tools/create_data.py objects --root DIR --version V --split S --out BANK)"
        )
    work_dir = Path(args.work_dir or Path("work_dirs") / Path(args.config).stem)

    from perception.runtime import set_cpu_threads

    set_cpu_threads(config.train.threads)  # the script's choice (None: torch's), numba's too
    from perception.checkpoint import CheckpointError
    from perception.generative.bank import BankFileError
    from perception.generative.registry import train_generator

    try:
        latest = train_generator(
            config, work_dir, resume=args.resume, progress=not args.no_progress
        )
    except (BankFileError, CheckpointError, FileNotFoundError, ValueError) as exc:
        return usage_error(exc)
    print(
        f"generator: {latest}\nsamples:   python tools/sample_generator.py {work_dir} --out grid.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
