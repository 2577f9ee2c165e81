"""Collecting the accuracy benchmark (`tools/accuracy_benchmark.sh`) into one JSON and table.

The script leaves, per variant, `OUT/<variant>/train_time.json` (wall seconds, steps, the train
command) and `OUT/<variant>/test/metrics.json` (`tools/test.py`: official devkit summary). This
module reads them back and writes `benchmarks/results/accuracy_cpu*.json` plus a Markdown table
beside it: nothing is copied by hand. It returns figures only: the targets they are judged
against live with the benchmark script (`tools/benchmark.py`), which adds its verdicts as the
result's ``targets`` before writing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from .report import file_hash, provenance, with_provenance

VARIANTS: dict[str, str] = {
    "fused": "fused (`bevfusion_tiny`, cameras T=1)",
    "lidar": "LiDAR only (`bevfusion_tiny_lidar`)",
    "camera": "camera only, TSM T=2 (`bevfusion_tiny_camera`)",
    "camera_t1": "camera only, T=1, TSM off",
    "camera_distill": "camera only, TSM T=2, distilled from a LiDAR-only teacher",
    "camera_t1_distill": "camera only, T=1, TSM off, distilled from a LiDAR-only teacher",
}
TP_ERRORS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")
# the world tools/accuracy_benchmark.sh trains on by default (30 scenes, seed 1)
DEFAULT_TRAIN_WORLD = "synth-train"
CAMERA_ENCODER = "camera.encoder."  # PRETRAINED's init prefix (the only one before TEACHER_INIT)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the run's record ({exc})") from exc


def _run_config(work: Path) -> dict[str, Any]:
    """The run's resolved config (`config.yaml`, saved by the trainer); {} when absent (runs
    from before the trainer saved it)."""
    path = work / "config.yaml"
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: cannot read the run's config ({exc})") from exc


def _teacher_seconds(log: Path) -> float:
    """The teacher's forward seconds a distilled run logged (its last `teacher_seconds`
    record: the total so far); 0 without a teacher or a log."""
    seconds = 0.0
    if not log.is_file():
        return seconds
    for line in log.read_text().splitlines():
        if '"teacher_seconds"' in line:
            try:
                seconds = float(json.loads(line)["teacher_seconds"])
            except (ValueError, KeyError, TypeError):
                continue
    return seconds


def read_run(work: Path) -> dict[str, Any]:
    """One variant's record from its work directory."""
    timing = _read_json(work / "train_time.json")
    metrics = _read_json(work / "test" / "metrics.json")
    summary = metrics["summary"]
    command = timing.get("command", "")
    config = _run_config(work)
    data = config.get("data") or {}
    model = config.get("model") or {}
    camera = model.get("camera") or {}
    threads = re.search(r"OMP_NUM_THREADS=(\d+)", command)
    teacher_seconds = _teacher_seconds(work / "log.jsonl")
    return {
        "variant": timing["variant"],
        "train_command": command,
        # sha256 of the run's saved resolved config (None: runs from before the trainer saved it)
        "config_hash": file_hash(work / "config.yaml"),
        # training threads (the accuracy script's modes: 1 = two runs side by side, 2 = alone)
        "threads": int(threads.group(1)) if threads else None,
        "steps": timing["steps"],
        # LiDAR first: the fraction of the steps trained before the camera joined (fused only)
        # (0 when absent: runs from before the option)
        "camera_start": float((config.get("train") or {}).get("camera_start", 0.0)),
        # every k-th earlier LiDAR sweep merged (1: consecutive; absent: before the option)
        "sweep_stride": int(data.get("sweep_stride", 1)),
        # camera options beyond the config's defaults (0 / None: off, or runs from before them)
        "perspective_loss_weight": float(camera.get("perspective_loss_weight") or 0.0),
        "ground_depth_input": camera.get("ground_depth_input"),
        "lidar_depth_prior": float(camera.get("lidar_depth_prior") or 0.0),
        # LiDAR points painted with the pixel colours (fused only; absent: before the option)
        "paint_points": bool(model.get("paint_points", False)),
        # the run whose weights started part of the model (None: from scratch): the camera
        # encoder (PRETRAINED) or a distilled student's fuser, decoder and head (TEACHER_INIT)
        "camera_init_from": (config.get("train") or {}).get("init_from"),
        # the weights it started (train.init_prefixes; [] = all; absent: camera.encoder.)
        "init_prefixes": list((config.get("train") or {}).get("init_prefixes") or []),
        # weights not trained (train.freeze_prefixes; [] when absent)
        "frozen": list((config.get("train") or {}).get("freeze_prefixes") or []),
        # the world it trained on (None: runs from before the trainer saved its config)
        "train_world": data.get("root"),
        # a distilled student's wall time less its teacher's forward passes (reported beside,
        # not counted, as a pretrained backbone's minutes are not; docs/distillation.md)
        "train_minutes": round((timing["train_seconds"] - teacher_seconds) / 60.0, 1),
        "teacher": (config.get("train") or {}).get("teacher"),
        "teacher_minutes": round(teacher_seconds / 60.0, 1),
        "mAP": summary["mean_ap"],
        "NDS": summary["nd_score"],
        "tp_errors": {k: summary["tp_errors"][k] for k in TP_ERRORS},
        # the devkit's class AP: the mean over its match distances (0.5, 1, 2, 4 m)
        "per_class_ap": {
            c: sum(aps.values()) / len(aps) for c, aps in summary["label_aps"].items()
        },
        "test_world": metrics["evaluated"]["root"],
    }


def _label(run: dict[str, Any]) -> str:
    label = VARIANTS.get(run["variant"], run["variant"])
    if run.get("camera_start"):
        label += f", LiDAR first (camera from {run['camera_start']:g} of the steps)"
    k = run.get("sweep_stride", 1)
    if k > 1:
        ordinal = {2: "nd", 3: "rd"}.get(k % 10 if k % 100 not in (12, 13) else 0, "th")
        label += f", every {k}{ordinal} earlier sweep"
    if run.get("paint_points"):
        label += ", points painted with pixel colours"
    if run.get("ground_depth_input") is not None:
        label += ", flat-ground depth prior"
    if run.get("lidar_depth_prior"):
        label += f", LiDAR depth logit prior ({run['lidar_depth_prior']:g})"
    if run.get("perspective_loss_weight"):
        label += f", perspective supervision (weight {run['perspective_loss_weight']:g})"
    if run.get("camera_init_from"):
        name = Path(run["camera_init_from"]).name
        prefixes = run.get("init_prefixes") or [CAMERA_ENCODER]
        if prefixes == [CAMERA_ENCODER]:
            label += f", camera encoder pretrained (`{name}`)"
        else:
            parts = ", ".join(p.rstrip(".") for p in prefixes)
            label += f", {parts} started from `{name}`"
    if run.get("frozen"):
        label += ", frozen: " + ", ".join(f"`{prefix}`" for prefix in run["frozen"])
    world = run.get("train_world")
    if world and Path(world).name != DEFAULT_TRAIN_WORLD:
        label += f", trained on `{Path(world).name}`"
    return label


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| variant | threads | steps x batch 2 | train minutes | mAP | NDS | mATE | mASE | mAOE "
        "| mAVE | mAAE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        e = r["tp_errors"]
        lines.append(
            f"| {_label(r)} | {r.get('threads') or '?'} "
            f"| {r['steps']} | {r['train_minutes']} "
            f"| {r['mAP']:.3f} | {r['NDS']:.3f} | "
            + " | ".join(f"{e[k]:.3f}" for k in TP_ERRORS)
            + " |"
        )
    classes = list(result["runs"][0]["per_class_ap"]) if result["runs"] else []
    lines += ["", "AP per class (mean over the 0.5, 1, 2, 4 m match distances, as the devkit):", ""]
    lines.append("| variant | " + " | ".join(classes) + " |")
    lines.append("|---|" + "---:|" * len(classes))
    for r in result["runs"]:
        lines.append(
            f"| {r['variant']} | "
            + " | ".join(f"{r['per_class_ap'][c]:.3f}" for c in classes)
            + " |"
        )
    if result.get("targets"):  # the verdicts tools/benchmark.py added
        lines += ["", "| target | met | on |", "|---|---|---|"]
        for c in result["targets"]:
            met = {True: "yes", False: "**no**", None: "not run"}[c["met"]]
            lines.append(f"| {c['target']} | {met} | {c['evidence']} |")
    return "\n".join(lines)


def collect(
    runs_dir: str | Path, *, conditions: str = "", command: str | None = None
) -> dict[str, Any]:
    """Every variant found under `runs_dir`, in `VARIANTS` order: the one result layout
    (`report.provenance`'s keys; ``config_hash`` per run, as each run saved its own config),
    then ``conditions`` and ``runs``. No verdicts: `tools/benchmark.py` judges."""
    runs_dir = Path(runs_dir)
    runs = {
        v: read_run(runs_dir / v)
        for v in VARIANTS
        if (runs_dir / v / "train_time.json").is_file()
        and (runs_dir / v / "test" / "metrics.json").is_file()
    }
    if not runs:
        raise ValueError(f"{runs_dir}: no finished variant (train_time.json + test/metrics.json)")
    return with_provenance(
        {"conditions": conditions, "runs": list(runs.values())}, provenance(command)
    )


def write(result: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(
        f"{result['date']}, {result['machine']}, commit {result.get('commit')}\n\n"
        f"`{result.get('command')}`\n\n{result['conditions']}\n\n{markdown(result)}\n"
    )
    return out


def _how_trained(run: dict[str, Any]) -> str:
    """'budget M min' for a run fitted to a time budget, else 'N steps'."""
    budget = re.search(r"train\.time_budget_min=(\S+)", run.get("train_command", ""))
    return f"budget {float(budget.group(1)):g} min" if budget else f"{run['steps']} steps"


def _seed(run: dict[str, Any]) -> str:
    seed = re.search(r"(?<![.\w])seed=(\d+)", run.get("train_command", ""))
    return seed.group(1) if seed else "config"


# record field -> the config key that sets it: records collected before a field existed lack it,
# and their train command's `--set KEY=VALUE` still says what ran
_OVERRIDES = {
    "camera_start": ("train.camera_start", float),
    "sweep_stride": ("data.sweep_stride", int),
    "perspective_loss_weight": ("model.camera.perspective_loss_weight", float),
    "ground_depth_input": ("model.camera.ground_depth_input", float),
    "lidar_depth_prior": ("model.camera.lidar_depth_prior", float),
    "paint_points": ("model.paint_points", lambda v: v.lower() == "true"),
    "camera_init_from": ("train.init_from", str),
    "init_prefixes": ("train.init_prefixes", lambda v: [p for p in v.strip("[]").split(",") if p]),
    "train_world": ("data.root", str),
}


def _backfill(run: dict[str, Any]) -> dict[str, Any]:
    """`run` with the fields its record lacks read from its train command's overrides."""
    run = dict(run)
    for field, (key, parse) in _OVERRIDES.items():
        if field not in run:
            found = re.search(rf"--set {re.escape(key)}=(\S+)", run.get("train_command", ""))
            if found:
                run[field] = parse(found.group(1))
    return run


def _options(run: dict[str, Any]) -> str:
    """The run's label past the variant's own name ('-' for none)."""
    rest = _label(_backfill(run))[len(VARIANTS.get(run["variant"], run["variant"])) :]
    return rest.lstrip(", ") or "-"


def _cpu(result: dict[str, Any]) -> str:
    return str(result.get("machine", "?")).split(",")[0].replace("(R)", "").strip()


def pairs(results: dict[str, dict[str, Any]]) -> str:
    """Every recorded comparison in `results` (file name -> collected result) as two Markdown
    tables: fused against LiDAR only (both in one file: one run each, same conditions), and
    camera only T=2 against T=1 (the TSM target). Each row says how the two runs were trained
    (both fitted to one time budget = equal wall time) and which way the target went."""

    def sign(x: float) -> str:
        return f"{x:+.3f}"

    fusion = [
        "| file | CPU | threads | seed | fused run's options | trained (fused / LiDAR) "
        "| steps (fused / LiDAR) | mAP fused | mAP LiDAR | mAP diff | NDS fused | NDS LiDAR "
        "| NDS diff | fusion ahead on both |",
        "|---|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    tsm = [
        "| file | CPU | threads | options | steps (T=2 / T=1) | mAP T=2 | mAP T=1 "
        "| mAVE T=2 | mAVE T=1 | TSM lowers mAVE |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---|",
    ]
    distill = [
        "| file | CPU | threads | frames | teacher | steps (distilled / not) | mAP distilled "
        "| mAP not | NDS distilled | NDS not | distilled ahead (mAP) |",
        "|---|---|---:|---|---|---|---:|---:|---:|---:|---|",
    ]
    fused_pairs: list[tuple[bool, bool]] = []  # (equal wall time, fusion ahead) a pair
    tsm_lower: list[bool] = []
    distill_ahead: list[bool] = []
    for name, result in results.items():
        runs = {r["variant"]: r for r in result["runs"]}
        f, lidar = runs.get("fused"), runs.get("lidar")
        if f is not None and lidar is not None:
            ahead = f["mAP"] > lidar["mAP"] and f["NDS"] > lidar["NDS"]
            how = (_how_trained(f), _how_trained(lidar))
            fused_pairs.append((how[0] == how[1] and how[0].startswith("budget"), ahead))
            threads = f.get("threads") if f.get("threads") == lidar.get("threads") else "?"
            fusion.append(
                f"| {name} | {_cpu(result)} | {threads or '?'} | {_seed(f)} | {_options(f)} "
                f"| {how[0] if how[0] == how[1] else ' / '.join(how)} "
                f"| {f['steps']} / {lidar['steps']} | {f['mAP']:.3f} | {lidar['mAP']:.3f} "
                f"| {sign(f['mAP'] - lidar['mAP'])} | {f['NDS']:.3f} | {lidar['NDS']:.3f} "
                f"| {sign(f['NDS'] - lidar['NDS'])} | {'yes' if ahead else 'no'} |"
            )
        t2, t1 = runs.get("camera"), runs.get("camera_t1")
        if t2 is not None and t1 is not None:
            v2, v1 = t2["tp_errors"]["vel_err"], t1["tp_errors"]["vel_err"]
            tsm_lower.append(v2 < v1)
            tsm.append(
                f"| {name} | {_cpu(result)} | {t2.get('threads') or '?'} | {_options(t2)} "
                f"| {t2['steps']} / {t1['steps']} | {t2['mAP']:.3f} | {t1['mAP']:.3f} "
                f"| {v2:.3f} | {v1:.3f} | {'yes' if v2 < v1 else 'no'} |"
            )
        for student, plain, frames in (
            ("camera_distill", "camera", "T=2"),
            ("camera_t1_distill", "camera_t1", "T=1"),
        ):
            d, p = runs.get(student), runs.get(plain)
            if d is None or p is None:
                continue
            # ahead as the table shows it (3 decimals): a 4th-decimal difference is a tie
            ahead = round(d["mAP"], 3) > round(p["mAP"], 3)
            distill_ahead.append(ahead)
            distill.append(
                f"| {name} | {_cpu(result)} | {d.get('threads') or '?'} | {frames} "
                f"| {d.get('teacher') or '?'} | {d['steps']} / {p['steps']} | {d['mAP']:.3f} "
                f"| {p['mAP']:.3f} | {d['NDS']:.3f} | {p['NDS']:.3f} "
                f"| {'yes' if ahead else 'no'} |"
            )
    timed = [ahead for equal_time, ahead in fused_pairs if equal_time]
    lines = [
        f"Fused against LiDAR only: fusion ahead on both mAP and NDS in "
        f"{sum(a for _, a in fused_pairs)} of {len(fused_pairs)} pairs; at equal wall time (both "
        f"runs fitted to one time budget) in {sum(timed)} of {len(timed)}.",
        "",
        *(fusion if fused_pairs else ["(no file holds both a fused and a LiDAR-only run)"]),
        "",
        f"Camera only, TSM (T=2) against T=1: mAVE lower with TSM in {sum(tsm_lower)} of "
        f"{len(tsm_lower)} pairs (read it beside the pair's mAP: at mAP ~0.01 mAVE is measured "
        "on a handful of matches).",
        "",
        *(tsm if tsm_lower else ["(no file holds both camera-only runs)"]),
        "",
        f"Camera only, distilled from a LiDAR-only teacher against the same model without: "
        f"mAP higher with distillation in {sum(distill_ahead)} of {len(distill_ahead)} pairs.",
        "",
        *(distill if distill_ahead else ["(no file holds a distilled and a plain camera run)"]),
    ]
    return "\n".join(lines)
