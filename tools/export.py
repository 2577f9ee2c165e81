"""Exports a trained detector's dense parts to ONNX and checks them against PyTorch.

    python tools/export.py --config configs/bevfusion_tiny.yaml \\
        --checkpoint work_dirs/bevfusion_tiny --out work_dirs/bevfusion_tiny/onnx

--checkpoint is a checkpoint directory (``.../checkpoints/step_<N>``) or a work dir (its latest
checkpoint); without --config the checkpoint's own config.yaml is used. Writes to OUT:
``camera_encoder_clip.onnx`` and ``camera_encoder_stream.onnx`` (EfficientViT + TSM + FPN
neck; only for configs with a camera branch), ``bev_decoder_head.onnx`` (BEV decoder +
detection head) and ``export.json`` (shapes, opset, parity diffs, file sizes). The LiDAR branch,
the camera view transform (BEV pooling), the fuser and box decoding + NMS stay in PyTorch; see
perception.deploy.export.

Every graph is run in onnxruntime and compared with eager PyTorch; the exit status is 1 when a
difference exceeds --tolerance (relative to the output's scale), 2 on an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# Only light imports before the arguments are parsed: --help and usage errors answer at once.
from perception.cli import add_override_option, usage_error

if TYPE_CHECKING:
    from perception.config import ExperimentConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", help="experiment config YAML (default: the checkpoint's config.yaml)"
    )
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint directory or a work dir (its latest)"
    )
    parser.add_argument("--out", required=True, help="folder for the .onnx files and export.json")
    add_override_option(parser, "data.clip_frames=3")
    parser.add_argument("--batch-size", type=int, default=1, help="traced batch size (default 1)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="max |onnx - eager| allowed, relative to max |eager| per output " "(default 1e-4)",
    )
    parser.add_argument(
        "--no-stream", action="store_true", help="skip the streaming camera encoder"
    )
    parser.add_argument(
        "--static-batch", action="store_true", help="fixed batch axis (default: dynamic)"
    )
    return parser


def _export_inputs(config: ExperimentConfig) -> tuple:
    """What fixes the exported graphs: the model and its input shapes."""
    d = config.data
    return (config.model, d.clip_frames, d.cameras, d.point_range, config.augment.image.final_size)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from perception.runtime import set_cpu_threads

    set_cpu_threads()  # numba's worker pool follows torch's threads (OMP_NUM_THREADS)

    from perception.checkpoint import (
        CONFIG_FILE,
        CheckpointError,
        resolve_checkpoint,
        weights_sha256,
    )
    from perception.config import ConfigError, load_config
    from perception.deploy.export import (
        DEFAULT_OPSET,
        DEFAULT_TOLERANCE,
        REPORT_FILE,
        ExportError,
        export_onnx,
        format_report,
    )
    from perception.models.loading import load_model

    opset = DEFAULT_OPSET if args.opset is None else args.opset
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    try:
        checkpoint = resolve_checkpoint(args.checkpoint)
        config_path = Path(args.config) if args.config else checkpoint / CONFIG_FILE
        config = load_config(config_path, args.overrides)
        model, info = load_model(checkpoint, config)
        print(f"loaded {checkpoint} into the model of {config_path}")
        if _export_inputs(info.saved_config) != _export_inputs(config):
            print(
                f"note: the model or input shapes of {config_path} differ from the "
                f"checkpoint's {CONFIG_FILE}; exporting with {config_path}"
            )
        report = export_onnx(
            model,
            config,
            args.out,
            batch_size=args.batch_size,
            opset=opset,
            tolerance=tolerance,
            stream=not args.no_stream,
            dynamic_batch=not args.static_batch,
            meta={
                "checkpoint": str(checkpoint.resolve()),
                "model_sha256": weights_sha256(checkpoint),
                "config": str(config_path),
            },
        )
    except (CheckpointError, ConfigError, ExportError, FileNotFoundError, ValueError) as e:
        return usage_error(e)
    print(format_report(report))
    print(f"report: {(Path(args.out) / REPORT_FILE).resolve()}")
    if not report.passed:
        print(f"error: ONNX outputs differ from PyTorch beyond {tolerance:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
