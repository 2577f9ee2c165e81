"""Tests a trained detector on a split: nuScenes metrics, latency, robustness, an HTML report.

    python tools/test.py configs/bevfusion_tiny.yaml work_dirs/tiny --split mini_val \\
        --out work_dirs/tiny/test
    python tools/test.py CONFIG work_dirs/tiny/checkpoints/step_1000 --out DIR \\
        --drop-sensors CAM_FRONT lidar_half_beams --robustness --set data.root=data/nuscenes

CHECKPOINT is a checkpoint directory (`checkpoints/step_<N>`) or a work dir (its latest
checkpoint). Writes OUT/results_nusc.json (the submission), OUT/metrics.json and
OUT/metrics.md (the devkit's metrics, with AP by distance band), OUT/latency.json,
OUT/config.yaml and OUT/report.html (self-contained); with --robustness also
OUT/robustness/<setting>/ for all sensors, LiDAR only, cameras only, CAM_FRONT dropped and
LiDAR beams halved. A model that keeps no box above its score threshold (an early
checkpoint) gets the devkit's all-zero metrics, with a note saying why (metrics.md, the report,
stderr), and exits 0; usage errors exit 2, a checkpoint or data that fails mid-run 1.

--drop-sensors takes any of: lidar, cameras, lidar_half_beams, or camera channels
(CAM_FRONT, ...). Several processes (each infers a shard; process 0 writes):

    torchrun --standalone --nproc-per-node 2 tools/test.py CONFIG CHECKPOINT --out DIR

--precision int8 (or mixed) scores the model with its decoder and head run as the
checkpoint's quantized ONNX graph (tools/export.py, then tools/quantize.py; --onnx-dir, default
CHECKPOINT/onnx): the accuracy of the INT8 node; --precision bf16 runs them under bfloat16
autocast (refused where the CPU has no bfloat16 kernels). The report names the precision.
"""

from __future__ import annotations

import argparse
import shlex
import sys

# Only light imports before the arguments are parsed: --help and usage errors answer at once.
from perception.cli import (
    add_override_option,
    add_precision_options,
    dataroot_problem,
    usage_error,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="experiment config YAML (builds the model)")
    parser.add_argument("checkpoint", help="checkpoint directory or work dir (latest checkpoint)")
    parser.add_argument("--split", help="split to test (default: the config's data.val_split)")
    parser.add_argument("--out", required=True, help="folder for results, metrics and report")
    parser.add_argument(
        "--drop-sensors",
        nargs="+",
        default=[],
        metavar="SENSOR",
        help="sensors to drop before the model: lidar, cameras, lidar_half_beams or camera "
        "channels (CAM_FRONT, CAM_FRONT_LEFT, ...)",
    )
    parser.add_argument(
        "--robustness",
        action="store_true",
        help="also test with LiDAR only, cameras only, CAM_FRONT dropped, LiDAR beams halved",
    )
    add_override_option(parser, "data.root=data/nuscenes")
    parser.add_argument("--batch-size", type=int, default=1, help="samples per forward (1)")
    parser.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    parser.add_argument("--pictures", type=int, default=4, help="samples drawn in the report")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_precision_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")  # exits with 2
    from perception.runtime import set_cpu_threads

    set_cpu_threads()  # numba's worker pool follows torch's threads (OMP_NUM_THREADS)

    import torch

    from perception.checkpoint import CheckpointError, resolve_checkpoint
    from perception.config import ConfigError, load_config
    from perception.datasets.io import DataError
    from perception.deploy.quantize import QuantizationError, use_precision
    from perception.engine import cleanup_distributed, setup_distributed
    from perception.evaluation import SplitError, SubmissionError, split_sample_tokens
    from perception.evaluation.inference import check_drop_sensors
    from perception.evaluation.runner import evaluate_checkpoint

    # Usage errors (exit code 2) are found before any work starts.
    try:
        config = load_config(args.config, args.overrides)
        problem = dataroot_problem(config.data.root, config.data.version)
        if problem:
            return usage_error(f"data.root: {problem}")
        drop = check_drop_sensors(args.drop_sensors)
        split = args.split or config.data.val_split
        split_sample_tokens(config.data.root, config.data.version, split)
        resolve_checkpoint(args.checkpoint)
    # SplitError is a ValueError, CheckpointNotFoundError a FileNotFoundError
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        return usage_error(exc)

    dist = setup_distributed()
    try:
        try:
            outcome = evaluate_checkpoint(
                config,
                args.checkpoint,
                split=split,
                out_dir=args.out,
                drop_sensors=drop,
                robustness=args.robustness,
                progress=not args.no_progress,
                device=dist.device,
                batch_size=args.batch_size,
                workers=args.workers,
                num_pictures=args.pictures,
                prepare=lambda model: use_precision(
                    model,
                    config,
                    args.precision,
                    checkpoint=args.checkpoint,
                    onnx_dir=args.onnx_dir,
                    threads=torch.get_num_threads(),
                    fold_bn=args.fold_bn,
                ),
                command=shlex.join(
                    ["tools/test.py", *(argv if argv is not None else sys.argv[1:])]
                ),
            )
        except (
            CheckpointError,
            SubmissionError,
            DataError,
            SplitError,
            QuantizationError,
        ) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if not dist.is_main:
            return 0
        out = outcome.out_dir
        if outcome.metrics is None:
            print(f"error: not evaluated: {outcome.eval_error}", file=sys.stderr)
            print(f"results: {outcome.results_path.resolve()}")
            print(f"report:  {outcome.report_path.resolve()}")
            return 1
        print((out / "metrics.md").read_text())
        if outcome.note:  # all-zero metrics (a model that kept no box): also on stderr
            print(f"note: {outcome.note}", file=sys.stderr)
        print(f"results: {outcome.results_path.resolve()}")
        print(f"metrics: {(out / 'metrics.json').resolve()}")
        print(f"report:  {outcome.report_path.resolve()}")
        return 0
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
