"""Collecting the rare-class GT-paste benchmark (`tools/paste_benchmark.sh`) into one table.

The script leaves, per run, `OUT/<model>/<paste>/seed<S>/` with `train_time.json` (model,
paste variant, seed, wall seconds, steps, the train command, the commit), `test/metrics.json`
(`tools/test.py` on the held-out world: official devkit summary) and the trainer's
`log.jsonl` (its last `paste_total`: what the paste added and skipped). This module reads them
back (`accuracy.read_run` for the metrics) and writes `benchmarks/results/paste_cpu.json` plus a
Markdown table beside it: per model x paste variant x seed the AP of the rare classes and the
mAP, then per model x variant the mean and spread (max - min) over the seeds. A run that pasted
generated objects (`data.paste.source=generated`) is told apart by its generators (the kind of
each, from the pasted bank's `bank.json`), so the same variant from two generators (HART and
the GAN, in OUT dirs of their own, collected together) makes two rows.
"""

from __future__ import annotations

import datetime
import json
import statistics
from pathlib import Path
from typing import Any

import yaml

from .accuracy import read_run
from .report import git_commit, machine_description

MODELS: dict[str, str] = {
    "fused": "fused (`bevfusion_tiny`, cameras T=1)",
    "lidar": "LiDAR only (`bevfusion_tiny_lidar`)",
}
PASTE_VARIANTS: dict[str, str] = {
    "none": "no paste",
    "lidar": "LiDAR-only paste (`data.paste.cameras=false`)",
    "multimodal": "multimodal paste (LiDAR + cameras)",
    "generated": "generated objects only (`data.paste.source=generated`; LiDAR model: points, "
    "fused: points + crops)",
    "generated_real": "real + generated objects (`create_data.py generated --with-real`)",
}
RARE_CLASSES = ("bicycle", "construction_vehicle")


def _pasted(work: Path) -> dict[str, int] | None:
    """The last `paste_total` of the run's log.jsonl (None: no paste, or no log)."""
    path = work / "log.jsonl"
    if not path.is_file():
        return None
    total = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON record ({exc})") from None
        if isinstance(record, dict) and "paste_total" in record:
            total = record["paste_total"]
    return total


def _generators(work: Path) -> dict[str, str] | None:
    """Modality -> generator kind of the bank a run pasted generated objects from (its
    config.yaml's `data.paste`), None for a run without generated objects or without a config.
    ValueError naming the file when the bank's record cannot be read."""
    config_path = work / "config.yaml"
    if not config_path.is_file():
        return None
    try:
        config = yaml.safe_load(config_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{config_path}: cannot read the run's config ({exc})") from None
    paste = (config.get("data") or {}).get("paste") or {}
    if not paste.get("enabled") or paste.get("source") != "generated":
        return None
    bank_path = Path(str(paste.get("bank"))) / "bank.json"
    try:
        generation = json.loads(bank_path.read_text())["generation"]
        return {m: str(g["kind"]) for m, g in sorted(generation["generators"].items())}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{bank_path} (data.paste.bank of {config_path}): no generators' record ({exc!r})"
        ) from None


def _generator_label(run: dict[str, Any]) -> str:
    generators = run.get("generators")
    return ", ".join(f"{m} {k}" for m, k in generators.items()) if generators else ""


def read_paste_run(work: Path) -> dict[str, Any]:
    """One run's record: `accuracy.read_run`'s (mAP, NDS, per-class AP, command, ...) plus the
    model, paste variant, seed, commit and the paste's totals. ValueError naming the file."""
    timing_path = work / "train_time.json"
    try:
        timing = json.loads(timing_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{timing_path}: cannot read the run's record ({exc})") from None
    missing = [k for k in ("model", "paste", "seed") if k not in timing]
    if missing:
        raise ValueError(f"{timing_path}: no {', '.join(missing)} (not paste_benchmark.sh's)")
    try:
        run = read_run(work)
    except KeyError as exc:
        raise ValueError(f"{work}: a record lacks the field {exc}") from None
    aps = run["per_class_ap"]
    absent = [c for c in RARE_CLASSES if c not in aps]
    if absent:
        raise ValueError(f"{work / 'test' / 'metrics.json'}: no AP of {', '.join(absent)}")
    run.update(
        model=timing["model"],
        paste=timing["paste"],
        seed=int(timing["seed"]),
        commit=timing.get("commit"),
        pasted=_pasted(work),
        generators=_generators(work),
        work_dir=str(work),
    )
    return run


def _order(run: dict[str, Any]) -> tuple:
    model, paste = run["model"], run["paste"]
    return (
        list(MODELS).index(model) if model in MODELS else len(MODELS),
        model,
        list(PASTE_VARIANTS).index(paste) if paste in PASTE_VARIANTS else len(PASTE_VARIANTS),
        paste,
        _generator_label(run),
        run["seed"],
    )


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, paste variant, generators): the seeds, and per figure (each rare class's AP, mAP, NDS)
    the mean, the spread (max - min) and the sample standard deviation (None for one seed)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in sorted(runs, key=_order):
        groups.setdefault((run["model"], run["paste"], _generator_label(run)), []).append(run)
    rows = []
    for (model, paste, _), members in groups.items():
        row: dict[str, Any] = {
            "model": model,
            "paste": paste,
            "generators": members[0].get("generators"),
            "seeds": [r["seed"] for r in members],
            "steps": sorted({r["steps"] for r in members}),
        }
        figures = {c: [r["per_class_ap"][c] for r in members] for c in RARE_CLASSES}
        figures["mAP"] = [r["mAP"] for r in members]
        figures["NDS"] = [r["NDS"] for r in members]
        for name, values in figures.items():
            row[name] = {
                "mean": statistics.fmean(values),
                "spread": max(values) - min(values),
                "std": statistics.stdev(values) if len(values) > 1 else None,
            }
        rows.append(row)
    return rows


def markdown(result: dict[str, Any]) -> str:
    rare = " | ".join(f"AP {c}" for c in RARE_CLASSES)
    lines = [
        f"| model | paste | seeds | steps | {rare} | mAP | NDS |",
        "|---|---|---|---:|" + "---:|" * (len(RARE_CLASSES) + 2),
    ]

    def cell(figure: dict[str, Any]) -> str:
        if figure["std"] is None:
            return f"{figure['mean']:.3f}"
        return f"{figure['mean']:.3f} ± {figure['spread'] / 2:.3f}"

    def generators(row: dict[str, Any]) -> str:
        label = _generator_label(row)
        return f" ({label})" if label else ""

    for row in result["summary"]:
        lines.append(
            f"| {MODELS.get(row['model'], row['model'])} "
            f"| {PASTE_VARIANTS.get(row['paste'], row['paste'])}{generators(row)} "
            f"| {', '.join(str(s) for s in row['seeds'])} "
            f"| {', '.join(str(s) for s in row['steps'])} | "
            + " | ".join(cell(row[c]) for c in (*RARE_CLASSES, "mAP", "NDS"))
            + " |"
        )
    lines += [
        "",
        "Mean over the seeds ± half the spread (max - min). Per run (AP: the devkit's, mean "
        "over the 0.5, 1, 2, 4 m match distances; pasted: objects the paste added in training, "
        "from log.jsonl):",
        "",
        f"| model | paste | seed | {rare} | mAP | NDS | train minutes | pasted (of requested) "
        "| commit |",
        "|---|---|---:|" + "---:|" * (len(RARE_CLASSES) + 4) + "---|",
    ]
    for r in result["runs"]:
        pasted = r.get("pasted")
        shown = f"{pasted.get('pasted', 0)} of {pasted.get('requested', 0)}" if pasted else "-"
        lines.append(
            f"| {r['model']} | {r['paste']}{generators(r)} | {r['seed']} | "
            + " | ".join(f"{r['per_class_ap'][c]:.3f}" for c in RARE_CLASSES)
            + f" | {r['mAP']:.3f} | {r['NDS']:.3f} | {r['train_minutes']} | {shown} "
            f"| {r.get('commit') or '?'} |"
        )
    commands = sorted({r["train_command"] for r in result["runs"]})
    lines += ["", "Train commands:", "", *(f"    {c}" for c in commands)]
    return "\n".join(lines)


def collect(runs_dirs: str | Path | list[str | Path], *, command: str = "") -> dict[str, Any]:
    """Every finished run under the `runs_dirs` (each `<model>/<paste>/seed<S>/` with
    train_time.json and test/metrics.json), sorted, with the per-(model, variant, generators)
    summary over seeds."""
    dirs = [Path(d) for d in (runs_dirs if isinstance(runs_dirs, list) else [runs_dirs])]
    works = []
    for runs_dir in dirs:
        found = sorted(
            p.parent
            for p in runs_dir.glob("*/*/seed*/train_time.json")
            if (p.parent / "test" / "metrics.json").is_file()
        )
        if not found:
            raise ValueError(
                f"{runs_dir}: no finished run (<model>/<paste>/seed<S>/ with train_time.json "
                "and test/metrics.json)"
            )
        works += found
    runs = sorted((read_paste_run(w) for w in works), key=_order)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "commit": git_commit(),
        "command": command,
        "runs": runs,
        "summary": summarize(runs),
    }


def write(result: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(
        f"{result['date']}, {result['machine']}, collected at {result['commit'] or '?'}: "
        f"`{result['command']}`\n\n{markdown(result)}\n"
    )
    return out
