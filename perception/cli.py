"""What the `tools/*.py` scripts share before any work starts, importing no torch: each tool
builds its parser and parses the command line with these, so `--help` and usage errors
answer at once (importing torch takes 10-40 s on a cold disk); the heavy imports follow.

Every tool reports a usage error (a bad argument, a missing dataroot, an unknown split) as
one line, ``error: <what is wrong, and where>`` on stderr, with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

USAGE_ERROR = 2  # the exit status of a usage error (argparse's own, too)


def add_override_option(parser: argparse.ArgumentParser, example: str) -> None:
    """The tools' repeatable `--set KEY=VALUE` (into `args.overrides`, for `load_config`)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value, e.g. --set {example} (repeatable)",
    )


def usage_error(message: object) -> int:
    """Prints ``error: <message>`` on stderr; returns `USAGE_ERROR` for `main` to return."""
    print(f"error: {message}", file=sys.stderr)
    return USAGE_ERROR


def dataroot_problem(root: str | Path, version: str) -> str | None:
    """What is wrong with `root` as a nuScenes dataroot of `version`, in one line naming the
    path; None when it has the version's folder. (Cheap: looks at directories only; what is
    inside is `tools/create_data.py check`'s job.)"""
    root = Path(root)
    if not root.exists():
        return f"dataroot {root} does not exist (set the path of a nuScenes dataroot)"
    if not root.is_dir():
        return f"dataroot {root} is not a directory"
    if not (root / version).is_dir():
        held = sorted(p.parent.name for p in root.glob("*/scene.json"))
        holds = f"it holds {held}" if held else "it holds no version folder with a scene.json"
        return f"{root / version} not found: {root} has no nuScenes version {version!r} ({holds})"
    return None


PRECISION_CHOICES = ("float32", "bf16", "int8", "mixed")  # = perception.deploy.quantize.PRECISIONS


def add_precision_options(parser: argparse.ArgumentParser) -> None:
    """`--precision` (what runs the decoder and head: the model in float32 or under bfloat16
    autocast, or its INT8 / mixed-precision graph from tools/quantize.py), `--onnx-dir` (where those graphs are;
    default: CHECKPOINT/onnx) and `--fold-bn` (BatchNorms folded into the layers before them)."""
    parser.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="float32",
        help="decoder + head: the model (float32), the model under bfloat16 autocast (bf16: "
        "where the CPU or GPU has bfloat16 kernels) or its quantized ONNX graph on onnxruntime "
        "(int8, mixed: tools/export.py, then tools/quantize.py; mixed: --keep-float N)",
    )
    parser.add_argument(
        "--onnx-dir",
        help="folder of the quantized graphs and quantize.json (default: CHECKPOINT/onnx)",
    )
    parser.add_argument(
        "--fold-bn",
        action="store_true",
        help="fold every BatchNorm into the conv or linear layer before it (inference only; "
        "the same outputs up to float rounding: perception/deploy/fold.py)",
    )
