"""Measures a trained object generator against real held-out objects and writes the figures of
issues #25 / #26 as JSON (`perception.generative.evaluate`).

    python tools/eval_generator.py work_dirs/hart_camera --held-out-bank data/synth-heldout-bank-val \\
        --n 1000 --steps 8,16 --no-residual --throughput --out outputs/hart_camera_eval.json

WORK is a generator work dir (tools/train_generator.py), a stage dir or one checkpoint. The
held-out bank may be an evaluation bank (tools/create_data.py objects --split val
--allow-eval-split); it must come from the training bank's dataset version, and its signals are
cut with the generator's data settings (modality, size / grid, min_visibility / min_points,
classes). Held-out rows of a class or sensor the generator never trained on are left out (and
counted in the report).

The features are the crop classifier WORK/classifier.safetensors (or --classifier PATH): score
every generator you compare with the same classifier file (its path and sha256 are in the
report). Written: per sampling arm (one per --steps value of the residual head and
--residual-temperatures value, plus the discrete-only arm with --no-residual) generated-vs-real FID / KID / precision / recall with the
real-vs-real noise floor at equal set sizes and the condition fidelity; the tokenizer's
reconstruction, hybrid vs discrete-only (and a second, hybrid=False tokenizer with
--discrete-tokenizer); with --throughput images per second at batch 1 and 64 on --threads
threads and the residual head's share of sampling time; with --cas the classification
accuracy score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Only light imports before the arguments are parsed: --help and usage errors answer at once.
from perception.cli import usage_error


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers")
    return values


def _temperatures(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None
    if not values or not all(0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers in [0, 1]")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("work", help="generator work dir or checkpoint directory")
    parser.add_argument(
        "--held-out-bank", required=True, help="object bank of the real held-out objects"
    )
    parser.add_argument(
        "--n", type=int, help="held-out signals to use (a seeded random subset; default all)"
    )
    parser.add_argument(
        "--out", help="the report (JSON; default WORK/eval_generator.json beside the work dir)"
    )
    parser.add_argument("--seed", type=int, default=0, help="subset, split, sampling, KID seed")
    parser.add_argument("--batch-size", type=int, default=64, help="conditions per sample call")
    parser.add_argument(
        "--steps",
        type=_positive_ints,
        help="residual head DDIM steps, comma-separated: one arm each (default: the config's)",
    )
    parser.add_argument(
        "--residual-temperatures",
        type=_temperatures,
        help="std of the residual head's starting noise, comma-separated in [0, 1]: one arm "
        "each per --steps value (default: the config's sampling.residual_temperature)",
    )
    parser.add_argument(
        "--no-residual",
        action="store_true",
        help="also measure the discrete-only arm (residual head off: the ablation)",
    )
    parser.add_argument("--guidance", type=float, help="classifier-free guidance (config's)")
    parser.add_argument(
        "--classifier", help="crop classifier (default WORK/classifier.safetensors)"
    )
    parser.add_argument(
        "--discrete-tokenizer",
        help="work dir of a generator trained with tokenizer.hybrid=false (tokenizer ablation)",
    )
    parser.add_argument(
        "--throughput",
        action="store_true",
        help="images per second per batch size, and the residual head's share of the time",
    )
    parser.add_argument(
        "--throughput-batch-sizes", type=_positive_ints, default=[1, 64], help="default 1,64"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads while timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per batch size")
    parser.add_argument(
        "--cas",
        action="store_true",
        help="classification accuracy score (reads the generator's training bank)",
    )
    parser.add_argument("--cas-n", type=int, default=512, help="generated training crops (CAS)")
    parser.add_argument("--cas-steps", type=int, default=500, help="CAS classifier steps")
    parser.add_argument(
        "--rare-classes", help="comma-separated rare classes: the real-few (+ generated) arms"
    )
    parser.add_argument("--few", type=int, default=10, help="real crops kept per rare class")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="cpu",
        help="where the generator, tokenizers and classifier run (default cpu; auto: cuda when "
        "available); throughput is then that device's",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _bank_index(path: str) -> Path:
    path = Path(path)
    return path if path.name == "bank.json" else path / "bank.json"


def _check_args(args: argparse.Namespace) -> str | None:
    for name in ("n", "batch_size", "threads", "repeats", "cas_n", "cas_steps", "few"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return f"--{name.replace('_', '-')} {value}: must be >= 1"
    if not Path(args.work).exists():
        return f"{args.work}: no such generator work dir or checkpoint"
    if not _bank_index(args.held_out_bank).is_file():
        return (
            f"--held-out-bank: {_bank_index(args.held_out_bank)} not found (build one with "
            "python tools/create_data.py objects --root DIR --version V --split val "
            "--allow-eval-split --out BANK)"
        )
    if args.discrete_tokenizer and not Path(args.discrete_tokenizer).exists():
        return f"--discrete-tokenizer: {args.discrete_tokenizer}: no such work dir or checkpoint"
    return None


def _training_version(bank: str) -> str | None:
    """The dataset version of the generator's training bank (None when it is not here)."""
    import json

    try:
        return json.loads(_bank_index(bank).read_text())["dataset"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fmt(value: object, spec: str = ".4g") -> str:
    return format(value, spec) if isinstance(value, float | int) else "-"


def _table(results: dict) -> str:
    lines = [
        f"{'arm':<22} {'FID':>9} {'KID':>18} {'prec':>6} {'recall':>6} "
        f"{'cls fid':>7} {'yaw fid':>7}  img/s",
    ]
    floor = None
    for name, arm in results["arms"].items():
        g, c = arm["generation"]["generated"], arm["generation"]["condition_fidelity"]
        speed = arm.get("throughput", {}).get("batch_sizes", {})
        rate = " ".join(f"b{b}:{_fmt(v['images_per_second'], '.3g')}" for b, v in speed.items())
        lines.append(
            f"{name:<22} {_fmt(g['fid']):>9} {_fmt(g['kid_mean'], '.4f')}+-"
            f"{_fmt(g['kid_std'], '.4f'):<7} {_fmt(g['precision'], '.3f'):>6} "
            f"{_fmt(g['recall'], '.3f'):>6} {_fmt(c['class'], '.3f'):>7} "
            f"{_fmt(c['yaw'], '.3f'):>7}  {rate}"
        )
        half, floor = arm["generation"]["generated_half"], arm["generation"]["noise_floor"]
        lines.append(
            f"{'  half A vs gen B':<22} {_fmt(half['fid']):>9} {_fmt(half['kid_mean'], '.4f'):>18} "
            f"{_fmt(half['precision'], '.3f'):>6} {_fmt(half['recall'], '.3f'):>6}"
        )
    if floor is not None:
        lines.append(
            f"{'noise floor A vs B':<22} {_fmt(floor['fid']):>9} "
            f"{_fmt(floor['kid_mean'], '.4f'):>18} {_fmt(floor['precision'], '.3f'):>6} "
            f"{_fmt(floor['recall'], '.3f'):>6}"
        )
    recon = results.get("reconstruction", {})
    for name in ("hybrid", "discrete", "discrete_tokenizer"):
        if name in recon:
            r = recon[name]
            lines.append(
                f"{'recon ' + name:<22} {_fmt(r['fid']):>9} {_fmt(r['kid_mean'], '.4f'):>18} "
                f"{_fmt(r['precision'], '.3f'):>6} {_fmt(r['recall'], '.3f'):>6}  "
                f"mse {_fmt(r['mse'])}"
            )
    share = results.get("residual_head_share")
    if share:
        lines.append(
            f"residual head share of sampling time: {share['share']:.3f} "
            f"(by on/off difference {share['share_by_difference']:.3f}, batch {share['batch_size']})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = _check_args(args)
    if problem:
        return usage_error(problem)

    import torch

    from perception.checkpoint import CheckpointError
    from perception.generative import evaluate
    from perception.generative.bank import BankFileError
    from perception.generative.conditions import SENSOR_NAMES
    from perception.generative.hart.train import resolve_device
    from perception.generative.metrics import load_crop_classifier
    from perception.generative.registry import load_any_generator
    from perception.structures.classes import CLASS_NAMES

    progress = not args.no_progress
    try:
        device = resolve_device(args.device, field="--device")
        loaded = load_any_generator(args.work)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        return usage_error(exc)
    model, config, ranges = loaded.model.to(device), loaded.config, loaded.ranges
    work = Path(args.work)
    data = config.data

    classifier_path = Path(args.classifier) if args.classifier else work / "classifier.safetensors"
    if not classifier_path.is_file():
        return usage_error(f"--classifier: {classifier_path} not found (tools/train_generator.py "
                           "writes WORK/classifier.safetensors; or pass --classifier PATH)")  # fmt: skip
    try:
        classifier = load_crop_classifier(classifier_path)
    except Exception as exc:  # safetensors' own errors, another kind or format version
        return usage_error(f"--classifier: {classifier_path}: not a crop classifier ({exc})")
    classifier.to(device)
    if (classifier.in_channels, classifier.image_size) != (data.in_channels, data.signal_size):
        return usage_error(
            f"--classifier: {classifier_path} takes {classifier.in_channels}-channel "
            f"{classifier.image_size}x{classifier.image_size} signals; the generator makes "
            f"{data.in_channels}-channel {data.signal_size}x{data.signal_size} {data.modality} "
            "signals"
        )

    discrete_tokenizer = None
    if args.discrete_tokenizer:
        try:
            other = load_any_generator(args.discrete_tokenizer)
        except (CheckpointError, FileNotFoundError, ValueError) as exc:
            return usage_error(f"--discrete-tokenizer: {exc}")
        other_config = other.config
        if not hasattr(other.model, "tokenizer"):
            return usage_error(
                f"--discrete-tokenizer: {args.discrete_tokenizer} is a {other.kind!r} "
                "generator without a tokenizer"
            )
        if (other_config.data.modality, other_config.data.signal_size) != (
            data.modality,
            data.signal_size,
        ):
            return usage_error(
                f"--discrete-tokenizer: {args.discrete_tokenizer} is a "
                f"{other_config.data.modality} {other_config.data.signal_size} generator, "
                f"{args.work} a {data.modality} {data.signal_size} one"
            )
        discrete_tokenizer = other.model.tokenizer.to(device)

    version = data.version or _training_version(data.bank)
    try:
        real = evaluate.held_out_signals(
            args.held_out_bank, data, version=version, progress=progress
        )
    except (BankFileError, ValueError) as exc:
        return usage_error(f"--held-out-bank: {exc}")
    known_classes = [CLASS_NAMES.index(c) for c in ranges.counts]
    known_sensors = [SENSOR_NAMES.index(s) for s in ranges.sensors]
    keep = torch.isin(real.conditions.label, torch.tensor(known_classes)) & torch.isin(
        real.conditions.sensor, torch.tensor(known_sensors)
    )  # [N]
    if not bool(keep.any()):
        return usage_error(
            f"--held-out-bank: {args.held_out_bank} has no {data.modality} signal of a class "
            f"and sensor the generator trained on ({sorted(ranges.counts)})"
        )
    dropped = int((~keep).sum())
    real = evaluate.RealSignals(
        real.signals[keep], real.conditions.index(keep), real.object_index[keep]
    )

    arms = _arms(args, loaded)

    def sampler(settings: dict):
        return lambda conds, generator: loaded.sample(conds, generator=generator, **settings)

    print(
        f"{config.name} ({data.modality}): {len(real)} held-out signals from "
        f"{args.held_out_bank} ({dropped} of untrained classes/sensors left out); "
        f"classifier {classifier_path}"
    )
    results: dict = {
        "generator": {
            "path": str(args.work),
            "kind": loaded.kind,
            "name": config.name,
            "modality": data.modality,
            "training_bank": data.bank,
            "config": config.model_dump(mode="json"),
        },
        "classifier": {
            "path": str(classifier_path),
            "sha256": _sha256(classifier_path),
            "config": classifier.config,
        },
        "held_out": {
            "bank": str(args.held_out_bank),
            "version": version,
            "num_signals": len(real),
            "num_objects": int(torch.unique(real.object_index).numel()),
            "left_out_untrained": dropped,
            "per_class": {
                CLASS_NAMES[c]: int(v)
                for c, v in enumerate(torch.bincount(real.conditions.label).tolist())
                if v
            },
        },
        "seed": args.seed,
        "n": args.n,
        "device": str(device),
    }
    if hasattr(model, "tokenizer"):  # HART, latent diffusion: the tokenizer's reconstruction
        results["reconstruction"] = evaluate.reconstruction_metrics(
            model.tokenizer,
            real,
            classifier,
            discrete_tokenizer=discrete_tokenizer,
            seed=args.seed,
        )
        if discrete_tokenizer is not None:
            results["reconstruction"]["discrete_tokenizer_path"] = str(args.discrete_tokenizer)
    results["arms"] = {}
    for name, settings in arms.items():
        print(f"arm {name}: sampling {min(args.n or len(real), len(real))} signals")
        arm = {"sampling": settings}
        arm["generation"] = evaluate.generation_metrics(
            sampler(settings),
            real,
            classifier,
            n=args.n,
            seed=args.seed,
            batch_size=args.batch_size,
            progress=progress,
        )
        if args.throughput:
            arm["throughput"] = evaluate.throughput(
                sampler(settings),
                real.conditions,
                batch_sizes=args.throughput_batch_sizes,
                repeats=args.repeats,
                threads=args.threads,
                seed=args.seed,
            )
        results["arms"][name] = arm
    if args.throughput and getattr(model, "residual_head", None) is not None:
        first = next(iter(arms.values()))
        results["residual_head_share"] = evaluate.residual_head_share(
            model,
            real.conditions,
            batch_size=max(args.throughput_batch_sizes),
            repeats=args.repeats,
            threads=args.threads,
            seed=args.seed,
            sample_kwargs={k: v for k, v in first.items() if k != "use_residual"},
        )
    if args.cas:
        try:
            results["cas"] = _cas(args, config, real, first_arm=next(iter(arms.values())),
                                  sampler=sampler, progress=progress)  # fmt: skip
        except (BankFileError, ValueError) as exc:
            return usage_error(f"--cas: {exc}")

    out = Path(args.out) if args.out else work / "eval_generator.json"
    command = "python tools/eval_generator.py " + " ".join(sys.argv[1:] if argv is None else argv)
    evaluate.write_generator_report(results, out, command=command)
    print(_table(results))
    print(f"wrote {out}")
    return 0


def _arms(args: argparse.Namespace, loaded) -> dict[str, dict]:
    """The sampling settings of each arm to measure. HART: one arm per residual-head step count
    (--steps, default the config's), plus the discrete-only arm (--no-residual, or a generator
    without a head). The latent diffusion baseline: one arm per DDIM step count (--steps, default
    8, 16, 32, 50). Other kinds: their default settings."""
    if loaded.kind == "ldm":
        s = loaded.config.sampling
        guidance = s.guidance if args.guidance is None else args.guidance
        return {
            f"ddim_steps={steps}": {"steps": steps, "guidance": guidance, "eta": s.eta}
            for steps in args.steps or [8, 16, 32, 50]
        }
    if loaded.kind != "hart":
        return {"default": {}}
    s = loaded.config.sampling
    base = {
        "guidance": s.guidance if args.guidance is None else args.guidance,
        "temperature": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
    }
    arms: dict[str, dict] = {}
    if loaded.model.residual_head is not None:
        for steps in args.steps or [s.residual_steps]:
            for temperature in args.residual_temperatures or [s.residual_temperature]:
                name = f"residual_steps={steps}"
                if temperature != s.residual_temperature:
                    name += f",residual_temperature={temperature:g}"
                arms[name] = {
                    **base,
                    "residual_steps": steps,
                    "residual_temperature": temperature,
                    "use_residual": True,
                }
    if args.no_residual or loaded.model.residual_head is None:
        arms["no_residual"] = {**base, "residual_steps": s.residual_steps, "use_residual": False}
    return arms


def _cas(args, config, real, *, first_arm, sampler, progress) -> dict:
    """Classification accuracy score: generated crops for class-balanced training conditions;
    real-few = the training crops with each rare class cut to --few."""
    import torch

    from perception.generative import evaluate
    from perception.generative.hart.train import load_training_signals
    from perception.structures.classes import CLASS_NAMES

    train = load_training_signals(config.data, progress=progress)
    labels = train.conditions.label
    counts = torch.bincount(labels, minlength=len(CLASS_NAMES)).double()  # [K]
    g = torch.Generator().manual_seed(args.seed)
    rows = torch.multinomial(1.0 / counts[labels], args.cas_n, replacement=True, generator=g)
    conds = train.conditions.index(rows)
    fake = evaluate.generate_signals(
        sampler(first_arm), conds, seed=args.seed, batch_size=args.batch_size, progress=progress
    )
    generated = evaluate.RealSignals(fake, conds, torch.full((len(conds),), -1))
    rare = args.rare_classes.split(",") if args.rare_classes else []
    few = None
    if rare:
        unknown = [c for c in rare if c not in CLASS_NAMES]
        if unknown:
            raise ValueError(f"--rare-classes: unknown classes {unknown}")
        keep = torch.ones(len(train), dtype=torch.bool)
        for c in rare:
            of_class = (labels == CLASS_NAMES.index(c)).nonzero().squeeze(1)
            chosen = of_class[torch.randperm(len(of_class), generator=g)[: args.few]]
            keep[of_class] = False
            keep[chosen] = True
        few = evaluate.RealSignals(
            train.signals[keep], train.conditions.index(keep), train.object_index[keep]
        )
    result = evaluate.cas_metrics(
        generated,
        real,
        real_train_few=few,
        rare_classes=rare,
        steps=args.cas_steps,
        seed=args.seed,
        progress=progress,
    )
    result.update({"num_generated": args.cas_n, "few_per_rare_class": args.few if rare else None})
    return result


if __name__ == "__main__":
    sys.exit(main())
