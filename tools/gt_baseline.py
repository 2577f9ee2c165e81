"""Writes ground-truth-derived predictions as a nuScenes submission: an oracle that checks the
evaluation path end to end (exact GT scores mAP 1), or shows how a metric responds to noise.

    python tools/gt_baseline.py --root data/synth-mini --version v1.0-mini --split mini_val --out R.json
    python tools/gt_baseline.py ... --noise-xy 0.2     # mATE rises, the other errors stay ~0
"""

from __future__ import annotations

import argparse
import sys

# Only light imports before the arguments are parsed: --help and usage errors answer at once.
from perception.cli import dataroot_problem, usage_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="nuScenes dataroot (with its index built)")
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--split", default="mini_val", help="devkit split (default: mini_val)")
    parser.add_argument("--out", required=True, help="submission JSON to write")
    parser.add_argument("--noise-xy", type=float, default=0.0, help="centre noise std, m")
    parser.add_argument("--noise-size", type=float, default=0.0, help="relative size noise std")
    parser.add_argument("--noise-yaw", type=float, default=0.0, help="yaw noise std, rad")
    parser.add_argument("--noise-velocity", type=float, default=0.0, help="velocity noise std, m/s")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = dataroot_problem(args.root, args.version)
    if problem:
        return usage_error(problem)

    import torch
    from tqdm import tqdm

    from perception.datasets.nuscenes import NuScenesDataset
    from perception.evaluation import SubmissionWriter
    from perception.evaluation.oracle import OracleNoise, oracle_detections

    try:  # an unknown or empty split, a missing or stale index: ValueErrors naming it
        dataset = NuScenesDataset(args.root, args.version, args.split, sweeps=1, load_images=False)
        noise = OracleNoise(args.noise_xy, args.noise_size, args.noise_yaw, args.noise_velocity)
    except ValueError as exc:
        return usage_error(exc)
    generator = torch.Generator().manual_seed(args.seed)
    writer = SubmissionWriter(use_camera=False, use_lidar=False)
    for i in tqdm(range(len(dataset)), desc="oracle", unit="sample"):
        sample = dataset[i]
        writer.add(
            oracle_detections(sample, noise, generator), sample.lidar_to_ego, sample.ego_to_global
        )
    path = writer.write(args.out, sample_tokens=dataset.tokens)
    print(f"wrote {len(dataset)} samples of GT-derived predictions ({noise}) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
