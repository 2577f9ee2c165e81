"""Samples a trained object generator and writes a grid picture of the samples with their
conditions, plus a JSON of what was sampled and how.

    python tools/sample_generator.py work_dirs/hart_camera --class bicycle --n 64 --out grid.png
    python tools/sample_generator.py work_dirs/hart_lidar --class bicycle,car --n 16 --out lidar.png

CKPT is a generator work dir (tools/train_generator.py), a stage dir or one checkpoint. Each
class gets N samples at view angles evenly around the object, the class's middle trained size
(or --size W,L,H), the middle trained depth (or --depth) and one sensor (--sensor, default
the first the generator trained on). A condition outside the trained range is refused with an
error naming it. Writes OUT (PNG) and OUT with .json (conditions, generator, sampling settings).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from perception.cli import usage_error


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected W,L,H in metres") from None
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three positive numbers W,L,H")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="generator work dir or checkpoint directory")
    parser.add_argument(
        "--class", dest="classes", help="comma-separated classes (default: every trained class)"
    )
    parser.add_argument("--n", type=int, default=16, help="samples per class (default 16)")
    parser.add_argument("--out", default="grid.png", help="the picture (PNG)")
    parser.add_argument("--sensor", help="CAM_FRONT, ... or LIDAR_TOP (default: first trained)")
    parser.add_argument("--size", type=_floats, help="W,L,H in metres (default: class middle)")
    parser.add_argument("--depth", type=float, help="metres (default: middle of training)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance (config's)")
    parser.add_argument("--temperature", type=float, help="logit temperature (config's)")
    parser.add_argument("--top-k", type=int, help="top-k truncation, 0 off (config's)")
    parser.add_argument("--residual-steps", type=int, help="residual head DDIM steps (config's)")
    parser.add_argument("--steps", type=int, help="ldm: DDIM steps (config's)")
    parser.add_argument("--truncation", type=float, help="gan: z ~ N(0, t^2) (config's)")
    parser.add_argument(
        "--no-residual", action="store_true", help="decode the discrete tokens only (ablation)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--columns", type=int, help="grid columns (default: N)")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="cpu",
        help="where to sample (default cpu; auto: cuda when available); the seed's samples "
        "differ between devices",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n < 1:
        return usage_error(f"--n {args.n}: must be >= 1")
    if not Path(args.checkpoint).exists():
        return usage_error(f"{args.checkpoint}: no such generator work dir or checkpoint")
    import json

    import torch

    from perception.checkpoint import CheckpointError
    from perception.generative.hart.train import resolve_device
    from perception.generative.registry import load_any_generator
    from perception.generative.sampling import describe_condition, grid_conditions
    from perception.visualization.generated import save_signal_grid

    try:
        device = resolve_device(args.device, field="--device")
        loaded = load_any_generator(args.checkpoint)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        return usage_error(exc)
    loaded.model.to(device)  # checkpoints load on the CPU
    config, ranges = loaded.config, loaded.ranges
    classes = args.classes.split(",") if args.classes else None
    try:
        conds = grid_conditions(
            ranges, classes=classes, n=args.n, sensor=args.sensor, size=args.size, depth=args.depth
        )
    except ValueError as exc:
        return usage_error(exc)
    # the config's sampling defaults, then the flags given (each must mean something to this kind)
    settings = config.sampling.model_dump()
    if loaded.kind == "hart":
        settings["use_residual"] = True
    given = {
        "guidance": args.guidance,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "residual_steps": args.residual_steps,
        "steps": args.steps,
        "truncation": args.truncation,
        "use_residual": False if args.no_residual else None,
    }
    for key, value in given.items():
        if value is None:
            continue
        if key not in settings:
            flag = "--no-residual" if key == "use_residual" else "--" + key.replace("_", "-")
            return usage_error(f"{flag}: a {loaded.kind!r} generator has no {key}")
        settings[key] = value
    generator = torch.Generator().manual_seed(args.seed)
    out = loaded.sample(conds, generator=generator, **settings)
    titles = [describe_condition(conds, i) for i in range(len(conds))]
    modality = config.data.modality
    path = save_signal_grid(
        out.signals.cpu(),
        args.out,
        modality=modality,
        titles=titles,
        columns=args.columns or args.n,
        suptitle=f"{config.name} ({loaded.kind}, {modality}), seed {args.seed}",
    )
    record = {
        "generator": str(args.checkpoint),
        "kind": loaded.kind,
        "modality": modality,
        "seed": args.seed,
        "device": str(device),
        "sampling": settings,
        "conditions": conds.to_dict(),
        "command": "python tools/sample_generator.py " + " ".join(argv or sys.argv[1:]),
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(f"wrote {path} and {path.with_suffix('.json')} ({len(conds)} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
