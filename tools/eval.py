"""Evaluates a nuScenes detection submission with the official devkit metrics.

    python tools/eval.py --root data/nuscenes --version v1.0-trainval --split val \\
        --results work_dirs/run/results_nusc.json --out work_dirs/run/eval

Writes OUT/metrics.json (the devkit's summary plus what was evaluated), OUT/metrics.md (the
table printed here) and the devkit's own metrics_summary.json / metrics_details.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Only light imports before the arguments are parsed: --help and usage errors answer at once.
from perception.cli import usage_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="nuScenes dataroot")
    parser.add_argument("--version", default="v1.0-trainval", help="e.g. v1.0-trainval, v1.0-mini")
    parser.add_argument("--split", default="val", help="devkit split, e.g. val, mini_val")
    parser.add_argument("--results", required=True, help="submission JSON to evaluate")
    parser.add_argument("--out", required=True, help="folder for the metrics files")
    parser.add_argument(
        "--devkit-config",
        default="detection_cvpr_2019",
        help="devkit detection config name or path to its JSON (default: detection_cvpr_2019)",
    )
    parser.add_argument(
        "--render-curves", action="store_true", help="let the devkit draw PR/TP curves"
    )
    parser.add_argument("--verbose", action="store_true", help="show the devkit's own output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from perception.evaluation import EvaluationError, SplitError, SubmissionError, evaluate

    try:
        evaluate(
            args.root,
            args.version,
            args.split,
            args.results,
            args.out,
            devkit_config=args.devkit_config,
            render_curves=args.render_curves,
            verbose=args.verbose,
        )
    except (FileNotFoundError, SplitError, SubmissionError, EvaluationError) as e:
        return usage_error(e)
    out = Path(args.out)
    print((out / "metrics.md").read_text())
    print(f"metrics: {(out / 'metrics.json').resolve()}")
    print(f"table:   {(out / 'metrics.md').resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
