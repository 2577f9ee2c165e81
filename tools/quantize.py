"""Post-training INT8 of an exported detector's decoder-head graph (onnxruntime static
quantization; perception.deploy.quantize), calibrated on training samples and checked against
the float graph on held-out ones.

    python tools/export.py --checkpoint W --out W/onnx
    python tools/quantize.py W/onnx --checkpoint W [--samples 200] [--held-out 20] \\
        [--keep-float 3] [--set data.root=...]

Reads OUT/bev_decoder_head.onnx (tools/export.py writes it); calibration inputs are the fused
BEV maps of `--samples` samples of `data.train_split` (test-time transforms: no augmentation),
the check runs on `--held-out` samples of `data.val_split`. Writes next to the float graph:
``bev_decoder_head_int8.onnx``; with ``--keep-float N`` also the per-layer sensitivity ranking
and ``bev_decoder_head_mixed.onnx`` (the N most sensitive layers kept in float); and
``quantize.json`` (relative output errors, sizes, the ranking, the command).
Exit status 2 on an error (a missing export, an empty or mismatched calibration set).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from perception.cli import add_override_option, usage_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("export_dir", help="tools/export.py's --out folder")
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint directory or a work dir (its latest)"
    )
    parser.add_argument("--config", help="experiment config (default: the checkpoint's)")
    add_override_option(parser, "data.root=data/synth-mini")
    parser.add_argument("--samples", type=int, default=200, help="calibration samples (train)")
    parser.add_argument("--held-out", type=int, default=20, help="check samples (val split)")
    parser.add_argument(
        "--keep-float",
        type=int,
        default=0,
        help="also write a mixed-precision graph keeping this many most sensitive layers float",
    )
    parser.add_argument(
        "--sensitivity-samples",
        type=int,
        default=32,
        help="calibration samples for each layer's one-layer-INT8 graph of the sensitivity "
        "ranking (the first N of --samples; the final graphs use all of them)",
    )
    return parser


def _batches(dataset, n: int):
    from perception.datasets.collate import collate_samples

    count = min(n, len(dataset))
    step = max(1, len(dataset) // max(count, 1))
    for i in range(0, step * count, step):
        yield collate_samples([dataset[i]])


def _exported_sha(path: Path) -> str | None:
    """export.json's model_sha256 (None: no export.json, or one written before it was kept)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    value = report.get("model_sha256") if isinstance(report, dict) else None
    return value if isinstance(value, str) else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.samples < 1 or args.held_out < 1:
        return usage_error("--samples and --held-out must be >= 1")
    from perception.runtime import set_cpu_threads

    set_cpu_threads()
    from perception.checkpoint import (
        CONFIG_FILE,
        CheckpointError,
        resolve_checkpoint,
        weights_sha256,
    )
    from perception.config import ConfigError, load_config
    from perception.datasets.pipeline import build_dataset
    from perception.deploy.export import DECODER_HEAD_FILE
    from perception.deploy.export import REPORT_FILE as EXPORT_REPORT
    from perception.deploy.quantize import (
        GRAPH_FILES,
        REPORT_FILE,
        QuantizationError,
        decoder_head_calibration,
        most_sensitive,
        output_error,
        quantize_graph,
        sensitivity,
    )
    from perception.models.loading import load_model

    export_dir = Path(args.export_dir)
    fp32 = export_dir / DECODER_HEAD_FILE
    if not fp32.is_file():
        return usage_error(f"{fp32}: not found (python tools/export.py ... --out {export_dir})")
    try:
        checkpoint = resolve_checkpoint(args.checkpoint)
        sha = weights_sha256(checkpoint)
        exported = _exported_sha(export_dir / EXPORT_REPORT)
        if exported is not None and exported != sha:
            raise QuantizationError(
                f"{export_dir / EXPORT_REPORT}: model_sha256 {exported[:12]}... is not the "
                f"checkpoint's ({checkpoint}: {sha[:12]}...): export this checkpoint first"
            )
        config = load_config(Path(args.config or checkpoint / CONFIG_FILE), args.overrides)
        model, _ = load_model(checkpoint, config)
        train = build_dataset(config, config.data.train_split, train=False)
        val = build_dataset(config, config.data.val_split, train=False)
        print(f"calibration: {min(args.samples, len(train))} samples of {config.data.train_split}")
        calibration = decoder_head_calibration(model, _batches(train, args.samples))
        held_out = decoder_head_calibration(model, _batches(val, args.held_out))
        int8 = quantize_graph(fp32, export_dir / GRAPH_FILES["int8"], calibration)
        report = {
            "command": " ".join(["python", "tools/quantize.py", *(argv or sys.argv[1:])]),
            "checkpoint": str(checkpoint),
            "model_sha256": sha,
            "calibration_samples": len(calibration),
            "held_out_samples": len(held_out),
            "graphs": {
                "int8": {
                    "file": int8.name,
                    "size_bytes": int8.stat().st_size,
                    "relative_error": output_error(fp32, int8, held_out),
                },
            },
            "float_size_bytes": fp32.stat().st_size,
        }
        if args.keep_float > 0:
            print("per-layer sensitivity (one layer INT8 at a time) ...", flush=True)
            subset = calibration[: max(1, args.sensitivity_samples)]
            ranking = sensitivity(fp32, subset, held_out)
            report["sensitivity_samples"] = len(subset)
            keep = most_sensitive(ranking, args.keep_float)
            mixed = quantize_graph(
                fp32, export_dir / GRAPH_FILES["mixed"], calibration, exclude=keep
            )
            report["sensitivity"] = ranking
            report["graphs"]["mixed"] = {
                "file": mixed.name,
                "kept_float": keep,
                "size_bytes": mixed.stat().st_size,
                "relative_error": output_error(fp32, mixed, held_out),
            }
    except (CheckpointError, ConfigError, QuantizationError, FileNotFoundError, ValueError) as e:
        return usage_error(e)
    for name, graph in report["graphs"].items():
        worst = max(graph["relative_error"].items(), key=lambda kv: kv[1])
        print(
            f"{name}: {graph['file']} ({graph['size_bytes'] / 1e6:.2f} MB, float "
            f"{report['float_size_bytes'] / 1e6:.2f} MB); worst relative output error "
            f"{worst[1]:.4f} ({worst[0]})"
        )
    out = export_dir / REPORT_FILE
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
