"""Draws one sample: the six camera images with projected GT boxes beside a BEV view of the
merged LiDAR sweeps with GT boxes (range rings every 10 m, labelled).

Only the boxes the official evaluation scores are drawn: boxes beyond their class's evaluation
range from the ego (50 m for vehicles, 40 m for pedestrians, motorcycles and bicycles, 30 m for
barriers and traffic cones) and boxes without a LiDAR point are left out. One colour a class
(legend on the BEV); a cross marks each box's front face on the cameras, a tick its front in
the BEV.

    python tools/visualize.py --root data/synth-mini --version v1.0-mini --sample 0 --out s0.png

`--paste BANK` first pastes objects of an object bank into the sample (GT-paste, as
`data.paste` in training: LiDAR points with occlusion, boxes added, and the crops composited
into the cameras where perception.generative.paste_camera is present) and outlines the pasted
boxes in magenta:

    python tools/visualize.py --root data/synth-mini --split mini_train --sample 25 \\
        --paste data/bank-synth-mini-train --paste-seed 2 \\
        --paste-classes bicycle=2,construction_vehicle=2,motorcycle=1 --out docs/paste.png

(docs/paste.png; the bank: tools/create_data.py objects --root data/synth-mini --version
v1.0-mini --split mini_train --out data/bank-synth-mini-train)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Only light imports before the arguments are parsed: --help and usage errors answer at once.
from perception.cli import dataroot_problem, usage_error
from perception.datasets.sensors import DEFAULT_MAX_SWEEP_AGE_S


def _seconds_or_none(text: str) -> float | None:
    if text.lower() in ("none", "null"):
        return None
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds or 'none', got {text}")
    return value


def _class_counts(text: str) -> dict[str, int]:
    counts = {}
    for item in text.split(","):
        name, sep, count = item.partition("=")
        try:
            counts[name.strip()] = int(count) if sep else 1
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: expected CLASS=COUNT") from None
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="nuScenes dataroot (with its index built)")
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--split", default="all", help="devkit split to index into (default: all)")
    parser.add_argument("--sample", type=int, default=0, help="sample number within the split")
    parser.add_argument("--sweeps", type=int, default=10)
    parser.add_argument(
        "--max-sweep-age",
        type=_seconds_or_none,
        default=DEFAULT_MAX_SWEEP_AGE_S,
        help="seconds: earlier sweeps older than this are not merged, as data.max_sweep_age "
        f"(default {DEFAULT_MAX_SWEEP_AGE_S}; 'none': no limit)",
    )
    parser.add_argument("--camera-width", type=int, default=400, help="width of each camera tile")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--paste", metavar="BANK", help="paste objects of this object bank")
    parser.add_argument(
        "--paste-classes",
        type=_class_counts,
        default={"bicycle": 2, "construction_vehicle": 1, "motorcycle": 1},
        metavar="C=N,...",
        help="with --paste: objects per class (default bicycle=2,construction_vehicle=1,"
        "motorcycle=1)",
    )
    parser.add_argument("--paste-seed", type=int, default=0, help="with --paste: its random seed")
    parser.add_argument(
        "--paste-lidar-only",
        action="store_true",
        help="with --paste: LiDAR only (the cameras do not show the pasted objects)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = dataroot_problem(args.root, args.version)
    if problem:
        return usage_error(problem)

    import cv2

    from perception.datasets.nuscenes import NuScenesDataset
    from perception.visualization import draw_sample

    # An unknown split, a missing or stale index, bad --sweeps, a missing data file: each a
    # ValueError (DataError, IndexFileError, ...) naming it.
    try:
        dataset = NuScenesDataset(
            args.root,
            args.version,
            args.split,
            sweeps=args.sweeps,
            max_sweep_age=args.max_sweep_age,
        )
        if not 0 <= args.sample < len(dataset):
            return usage_error(
                f"--sample {args.sample}: split {args.split!r} has {len(dataset)} samples"
            )
        sample = dataset[args.sample]
        pasted = None
        if args.paste:
            sample, pasted = _paste(args, sample)
    except ValueError as exc:  # also a config or bank that cannot be used (naming it)
        return usage_error(exc)
    picture = draw_sample(sample, camera_width=args.camera_width, pasted=pasted)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(
        str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]
    )
    print(
        f"sample {sample.token} ({len(sample.points)} points, {len(sample.gt_boxes)} boxes) -> {out}"
    )
    if args.paste:
        for record in sample.pasted:
            x, y = record["box"][:2]
            print(
                f"  pasted {record['class']} (bank object {record['bank_index']}) at "
                f"({x:.1f}, {y:.1f}) m, {record['points']} points"
            )
    return 0


def _paste(args, sample):
    """The sample with `--paste` applied and the pasted boxes; ValueError naming what is
    wrong with the bank or the classes."""
    import numpy as np
    import torch

    from perception.config.loader import parse_config
    from perception.generative.paste import build_paste, camera_compositor
    from perception.structures import Boxes3D

    cameras = not args.paste_lidar_only and camera_compositor() is not None
    if not args.paste_lidar_only and not cameras:
        print("note: perception.generative.paste_camera is absent: LiDAR-only paste")
    paste_config = {
        "enabled": True,
        "bank": args.paste,
        "cameras": cameras,
        "classes": {name: {"count": n} for name, n in args.paste_classes.items()},
    }
    config = parse_config(
        {"data": {"version": args.version, "paste": paste_config}}, source="--paste"
    )
    paste = build_paste(config)
    sample = paste(sample, np.random.default_rng(args.paste_seed))
    stats = paste.stats()
    print(f"paste: {stats['pasted']} of {stats['requested']} objects placed ({paste.summary()})")
    boxes = [r["box"] for r in sample.pasted]
    return sample, Boxes3D(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 9))


if __name__ == "__main__":
    sys.exit(main())
