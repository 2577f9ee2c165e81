"""Create and check datasets in nuScenes format.

    python tools/create_data.py synth --out data/synth --scenes 10 --samples-per-scene 10 --seed 0
    python tools/create_data.py synth --out data/synth-rare --version v1.0-trainval --scenes 30 \
        --val-scenes 3 --seed 1 --rare bicycle,construction_vehicle
    python tools/create_data.py nuscenes --root data/synth --version v1.0-mini
    python tools/create_data.py check --root data/synth --version v1.0-mini
    python tools/create_data.py objects --root data/synth --version v1.0-mini --split mini_train \
        --out data/synth/bank-mini_train
    python tools/create_data.py generated --bank data/synth/bank-mini_train --out data/bank-gen \
        --classes bicycle,construction_vehicle --lidar-generator work_dirs/hart_lidar \
        --camera-generator work_dirs/hart_camera --per-object 4

Subcommands: `synth` writes a synthetic world (see perception.datasets.synth); `nuscenes` builds
the dataset index of any nuScenes dataroot; `check` reports every problem in a dataroot at once
(every table's token fields, and every sensor file, sweeps included, unless --keyframes-only);
`objects` cuts every annotated object of a split out into an object bank
(perception.generative.bank: points in the box frame, camera crops; needs the index);
`generated` makes a bank of generated objects from a real bank's objects of some classes (their
geometry kept, their LiDAR points and/or camera crops from trained generators;
perception.generative.generated_bank), which GT-paste reads like a real one.
Each subcommand is one function taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Only light imports before the arguments are parsed (--help answers at once): the parser's
# defaults are literals, tests/tools/test_cli_help.py checks them against the library's.
SYNTH_VERSIONS = ("v1.0-mini", "v1.0-trainval")  # perception.datasets.synth.writer.VERSIONS
SYNTH_IMAGE_SIZE = (800, 450)  # writer.DEFAULT_IMAGE_SIZE
SYNTH_SAMPLES_PER_SCENE = 10  # writer.DEFAULT_SAMPLES_PER_SCENE
RARE_WEIGHT = 0.15  # perception.datasets.synth.class_weights.RARE_WEIGHT


def synth(args: argparse.Namespace) -> int:
    """Generate a synthetic nuScenes-format world and print where it went."""
    from perception.datasets.synth import generate_world
    from perception.datasets.synth.class_weights import class_weights_option

    class_weights = class_weights_option(args.class_weights, args.rare)
    summary = generate_world(
        args.out,
        version=args.version,
        scenes=args.scenes,
        samples_per_scene=args.samples_per_scene,
        seed=args.seed,
        val_scenes=args.val_scenes,
        image_size=tuple(args.image_size),
        workers=args.workers,
        overwrite=args.overwrite,
        progress=True,
        class_weights=class_weights,
    )
    print(f"wrote {summary.version} world to {summary.out_dir.resolve()}")
    print(
        f"  {summary.scenes} scenes, {summary.samples} samples, {summary.lidar_sweeps} lidar "
        f"sweeps, {summary.images} images, {summary.instances} instances, "
        f"{summary.annotations} annotations in {summary.seconds:.1f} s"
    )
    per_class = ", ".join(f"{k} {v}" for k, v in summary.annotations_per_class.items())
    print(f"  annotations per class: {per_class}")
    if summary.class_weights is not None:
        thinned = {c: w for c, w in summary.class_weights.items() if w != 1.0}
        weights = ", ".join(f"{c} {w:g}" for c, w in thinned.items()) or "all 1"
        print(f"  class weights in the training scenes: {weights} (other classes 1)")
    for split, counts in summary.splits.items():
        both = ", ".join(
            f"{c} {n}/{counts.annotations_per_class[c]}"
            for c, n in counts.instances_per_class.items()
        )
        print(f"  {split} ({counts.scenes} scenes), instances/annotations per class: {both}")
    print(f"  summary in {summary.sidecar}")
    print(f"  load with NuScenes(version={summary.version!r}, dataroot={str(summary.out_dir)!r})")
    return 0


def nuscenes(args: argparse.Namespace) -> int:
    """Build the dataset index of a nuScenes dataroot (real or synthetic)."""
    from perception.datasets.index import build_index

    out = build_index(
        args.root,
        args.version,
        out=args.out,
        max_sweeps=args.max_sweeps,
        max_clip_frames=args.max_clip_frames,
        progress=True,
    )
    print(f"wrote index {out}")
    return 0


def check(args: argparse.Namespace) -> int:
    """Report every problem in a dataroot; exit 1 if there is any."""
    from perception.datasets.checks import check_dataroot

    result = check_dataroot(
        args.root,
        args.version,
        keyframes_only=args.keyframes_only,
        workers=args.workers,
        progress=True,
    )
    for problem in result.problems:
        print(problem)
    scope = result.scope()
    if result.problems:
        print(f"{len(result.problems)} problem(s) in {args.root} ({args.version}; {scope})")
        return 1
    print(f"{args.root} ({args.version}): no problems found ({scope})")
    return 0


def objects(args: argparse.Namespace) -> int:
    """Build the object bank of one split of a dataroot and print what went in."""
    from perception.generative.bank import write_bank  # torch: only for this subcommand

    summary = write_bank(
        args.root,
        args.version,
        args.split,
        args.out,
        workers=args.workers,
        sweeps=args.sweeps,
        margin=args.margin,
        allow_eval_split=args.allow_eval_split,
        overwrite=args.overwrite,
        progress=True,
        shard_samples=args.shard_samples,
    )
    kind = "training" if summary.training else "EVALUATION (never train on it)"
    print(f"wrote {kind} object bank of {args.version} {summary.split} to {summary.out.resolve()}")
    print(
        f"  {summary.samples} samples, {summary.objects} objects, {summary.views} camera views, "
        f"{summary.points} points in {summary.seconds:.1f} s"
    )
    per_class = ", ".join(f"{k} {v}" for k, v in summary.per_class.items())
    print(f"  objects per class: {per_class}")
    return 0


def generated(args: argparse.Namespace) -> int:
    """Build a bank of generated objects from a real bank and print what went in."""
    from pathlib import Path

    if not args.camera_generator and not args.lidar_generator:
        raise ValueError(
            "give --lidar-generator and/or --camera-generator (a trained generator's work dir)"
        )
    classes = [c for c in args.classes.split(",") if c]
    if not classes:
        raise ValueError(f"--classes {args.classes!r}: give at least one class")
    if args.per_object < 1:
        raise ValueError(f"--per-object {args.per_object}: must be >= 1")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: must be >= 1")
    if Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")

    from perception.generative.bank import ObjectBank  # torch: only for this subcommand
    from perception.generative.generated_bank import generate_objects, write_generated_bank

    start = time.perf_counter()
    bank = ObjectBank.open(args.bank, training=True, verify=False)
    objects = generate_objects(
        bank,
        camera_generator=args.camera_generator,
        lidar_generator=args.lidar_generator,
        classes=classes,
        per_object=args.per_object,
        seed=args.seed,
        guidance=args.guidance,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    for name in classes:
        reasons = objects.skipped.get(name, {})
        skipped = sum(reasons.values())
        why = f" ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))})" if skipped else ""
        empty = objects.empty_lidar.get(name, 0)
        print(
            f"  {name}: {objects.generated[name]} generated of {objects.requested[name]} "
            f"requested, {skipped} skipped outside a generator's range{why}"
            + (f", {empty} without a LiDAR point" if empty else "")
        )
    if not objects:
        raise ValueError(
            f"{bank.index_path}: every object of {classes} was skipped (outside the "
            "generators' training ranges); nothing written"
        )
    summary = write_generated_bank(
        objects, args.out, source_bank=bank, include_real=args.with_real, overwrite=args.overwrite
    )
    signals = ", ".join(f"{k} {v}" for k, v in objects.settings["signals"].items())
    real = f", with the {summary.objects - len(objects)} real ones" if args.with_real else ""
    print(f"wrote generated object bank ({signals}{real}) to {summary.out.resolve()}")
    print(
        f"  from {bank.index_path} ({bank.version} {bank.split}), seed {args.seed}: "
        f"{summary.objects} objects, {summary.views} camera views, {summary.points} points "
        f"in {time.perf_counter() - start:.1f} s (generation and writing)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("synth", help="generate a synthetic world in nuScenes format")
    p.add_argument("--out", required=True, help="dataroot to write (tables go in OUT/VERSION)")
    p.add_argument("--version", choices=SYNTH_VERSIONS, default="v1.0-mini")
    p.add_argument("--scenes", type=int, default=10)
    p.add_argument("--samples-per-scene", type=int, default=SYNTH_SAMPLES_PER_SCENE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--val-scenes", type=int, default=None, help="scenes named from the val split (default: "
        "2 for v1.0-mini with >= 3 scenes, else 1; 20%% for v1.0-trainval)",
    )  # fmt: skip
    p.add_argument(
        "--image-size", type=int, nargs=2, metavar=("W", "H"), default=list(SYNTH_IMAGE_SIZE)
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--overwrite", action="store_true", help="replace an existing world in OUT")
    p.add_argument(
        "--class-weights", metavar="C=W,...", help="share of each class's instances the training "
        "scenes keep, 0..1 (e.g. bicycle=0.05,construction_vehicle=0.05; unlisted classes 1, "
        "0 removes a class); val scenes keep the normal mix",
    )  # fmt: skip
    p.add_argument(
        "--rare", metavar="C1,C2", help=f"make these classes rare in the training scenes "
        f"(weight {RARE_WEIGHT:g}: about 10 instances each in a 30-scene world; val scenes "
        "keep the normal mix)",
    )  # fmt: skip
    p.set_defaults(handler=synth)

    p = commands.add_parser("nuscenes", help="build the dataset index of a nuScenes dataroot")
    p.add_argument("--root", required=True, help="the dataroot (holds samples/, sweeps/, VERSION/)")
    p.add_argument("--version", default="v1.0-trainval")
    p.add_argument("--out", help="index file (default ROOT/perception_index_VERSION.json.gz)")
    p.add_argument("--max-sweeps", type=int, default=10, help="LiDAR sweeps per keyframe")
    p.add_argument("--max-clip-frames", type=int, default=6, help="camera frames per clip")
    p.set_defaults(handler=nuscenes)

    p = commands.add_parser("check", help="report every problem in a nuScenes dataroot")
    p.add_argument("--root", required=True)
    p.add_argument("--version", default="v1.0-trainval")
    p.add_argument(
        "--keyframes-only",
        action="store_true",
        help="read only the keyframes' sensor files, not the sweeps (the output counts those "
        "not read)",
    )
    # Sweeps are read by default now; the old flag is accepted and changes nothing.
    p.add_argument("--all-files", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="reader threads")
    p.set_defaults(handler=check)

    p = commands.add_parser("objects", help="build the object bank of a split (for GT-paste)")
    p.add_argument("--root", required=True, help="the dataroot (its index must exist)")
    p.add_argument("--version", default="v1.0-trainval")
    p.add_argument("--split", required=True, help="devkit split, e.g. train or mini_train")
    p.add_argument("--out", required=True, help="bank folder to write (bank.json + shards)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    p.add_argument("--sweeps", type=int, default=10, help="LiDAR sweeps merged per keyframe")
    p.add_argument(
        "--margin", type=float, default=0.0, help="m added around each box when taking its points"
    )
    p.add_argument(
        "--allow-eval-split",
        action="store_true",
        help="build a bank of a split holding evaluation scenes (val, mini_val, test, all); "
        "it is marked as such and refused for training",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing bank in OUT")
    p.add_argument(
        "--shard-samples", type=int, default=8, help="keyframes per shard file (one worker task)"
    )
    p.set_defaults(handler=objects)

    p = commands.add_parser(
        "generated", help="build a bank of generated objects from a real bank (for GT-paste)"
    )
    p.add_argument("--bank", required=True, help="the real training bank (create_data objects)")
    p.add_argument("--out", required=True, help="bank folder to write (bank.json + shards)")
    p.add_argument(
        "--classes", required=True, help="comma-separated classes whose objects are generated"
    )
    p.add_argument(
        "--camera-generator", help="camera generator work dir (default: keep the real crops)"
    )
    p.add_argument(
        "--lidar-generator", help="LiDAR generator work dir (default: keep the real points)"
    )
    p.add_argument("--per-object", type=int, default=1, help="generated objects per real one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, help="classifier-free guidance (the config's)")
    p.add_argument("--batch-size", type=int, default=64, help="objects per generator call")
    p.add_argument(
        "--with-real",
        action="store_true",
        help="the bank also holds the real objects of --classes (real + generated paste)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing bank in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=generated)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileExistsError) as error:  # DataError, IndexFileError, BankFileError
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
