"""Collecting the generator benchmarks into one JSON and Markdown tables.

`tools/generator_benchmark.sh` (issue #25) leaves `OUT/<modality>/<arm>/seed<S>/` with
`eval.json` (`tools/eval_generator.py`'s report, `evaluate.write_generator_report`) and
`train_time.json` (the train command, wall seconds, commit); arms `hart` (the hybrid generator,
every seed), `discrete` (the tokenizer ablation, seed 0) and `ldm` (the latent diffusion
baseline, seed 0). `tools/gan_benchmark.sh` (issue #26) leaves `OUT/n<N>/<mode>/seed<S>/` with
`eval.json` (the final generator), `eval_best.json` (the checkpoint of the lowest logged KID),
`train_time.json` and the GAN's `log.jsonl` (its KID against the training step).

`collect_generator` / `collect_gan` read them back into one JSON-able dict (date, machine, the
collector's commit and the runs' commits, every train and eval command, the per-run figures
and the summaries); `generator_markdown` / `gan_markdown` print the tables. Figures only: issue
#25's targets and their verdicts live with the benchmark script (`tools/benchmark.py`,
`generator_targets`), which adds them as each modality's ``targets`` before printing and
writing; the Markdown has a targets table where they are present.
"""

from __future__ import annotations

import datetime
import json
import math
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

EVAL_NAME, BEST_EVAL_NAME, TRAIN_NAME = "eval.json", "eval_best.json", "train_time.json"
REPORT_KIND = "perception.generator-eval"  # perception.generative.evaluate.REPORT_KIND
# What "matched KID" means in the speed-up figure: a baseline arm matches HART when its KID is
# at most HART's plus this fraction of |HART's| (a definition of the figure, not a target).
MATCHED_KID = 0.10
GAN_MODES = ("none", "both", "reals_only")


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def spread(values: Iterable[float | None]) -> dict[str, Any]:
    """`mean`, `spread` (max - min), `std` (sample; None for one value), `n` of the finite
    values (mean None when there is none)."""
    xs = [v for v in values if _finite(v)]
    return {
        "mean": statistics.fmean(xs) if xs else None,
        "spread": max(xs) - min(xs) if xs else None,
        "std": statistics.stdev(xs) if len(xs) > 1 else None,
        "n": len(xs),
    }


def _get(record: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return record


def _ratio_reduction(value: float | None, base: float | None) -> float | None:
    """1 - value / base (None when either is missing or base <= 0: an unbiased KID at or below
    zero is indistinguishable from real at the set size, and a ratio to it means nothing)."""
    if not (_finite(value) and _finite(base)) or base <= 0:
        return None
    return 1.0 - value / base


def stage_seconds(log_path: str | Path, stage: str) -> float:
    """Training seconds of one stage from a generator's log.jsonl: the `elapsed_s` of the stage's
    last line (summed over resumes by the training loop), else the sum of
    `seconds_per_step * steps since the previous line`. ValueError when the stage has no line."""
    path = Path(log_path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the training log ({exc})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON record ({exc})") from None
        if isinstance(record, dict) and record.get("stage") == stage:
            records.append(record)
    if not records:
        raise ValueError(f"{path}: no line of stage {stage!r}")
    if _finite(records[-1].get("elapsed_s")):
        return float(records[-1]["elapsed_s"])
    total, previous = 0.0, 0
    for record in records:
        step, pace = record.get("step"), record.get("seconds_per_step")
        if _finite(step) and _finite(pace):
            total += pace * max(step - previous, 0)
            previous = step
    return total


def _read_json(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a JSON object")
    return record


def read_eval(path: str | Path) -> dict[str, Any]:
    """One `tools/eval_generator.py` report; ValueError naming the file when it is not one."""
    path = Path(path)
    report = _read_json(path)
    if report.get("kind") != REPORT_KIND or not isinstance(report.get("arms"), dict):
        raise ValueError(
            f"{path}: kind {report.get('kind')!r}, not a {REPORT_KIND!r} report with arms "
            "(tools/eval_generator.py writes them)"
        )
    return report


def _seed_of(name: str, path: Path) -> int:
    if not name.startswith("seed") or not name[4:].isdigit():
        raise ValueError(f"{path}: expected a seed<S> folder, got {name!r}")
    return int(name[4:])


def _run_meta(work: Path, report: dict[str, Any]) -> dict[str, Any]:
    timing = _read_json(work / TRAIN_NAME) if (work / TRAIN_NAME).is_file() else {}
    return {
        "work_dir": str(work),
        "eval_commit": report.get("commit"),
        "eval_command": report.get("command"),
        "eval_date": report.get("date"),
        "train_commit": timing.get("commit"),
        "train_command": timing.get("command"),
        "train_seconds": timing.get("train_seconds"),
        "classifier_sha256": _get(report, "classifier", "sha256"),
        "classifier_path": _get(report, "classifier", "path"),
        "generator_kind": _get(report, "generator", "kind"),
    }


def _arm_figures(arm: dict[str, Any]) -> dict[str, Any]:
    """The figures of one sampling arm of a report (None where absent)."""
    gen = _get(arm, "generation") or {}
    speed = _get(arm, "throughput", "batch_sizes") or {}
    return {
        "sampling": arm.get("sampling"),
        "kid": _get(gen, "generated", "kid_mean"),
        "kid_std": _get(gen, "generated", "kid_std"),
        "fid": _get(gen, "generated", "fid"),
        "precision": _get(gen, "generated", "precision"),
        "recall": _get(gen, "generated", "recall"),
        "kid_half": _get(gen, "generated_half", "kid_mean"),
        "noise_floor_kid": _get(gen, "noise_floor", "kid_mean"),
        "noise_floor_fid": _get(gen, "noise_floor", "fid"),
        "class_fidelity": _get(gen, "condition_fidelity", "class"),
        "yaw_fidelity": _get(gen, "condition_fidelity", "yaw"),
        "num_samples": gen.get("num_samples"),
        "images_per_second": {b: _get(v, "images_per_second") for b, v in speed.items()},
    }


def _commands(runs: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for run in runs:
        for key in ("train_command", "eval_command", "best_eval_command"):
            command = run.get(key)
            if command and command not in seen:
                seen.append(command)
    return seen


def _header(runs: list[dict[str, Any]], command: str) -> dict[str, Any]:
    from .report import git_commit, machine_description

    run_commits = sorted(
        {c for r in runs for c in (r.get("train_commit"), r.get("eval_commit")) if c}
    )
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "commit": git_commit(),
        "run_commits": run_commits,
        "command": command,
    }


# ---------------------------------------------------------------------------------------------
# Issue #25: HART vs its ablations and the latent diffusion baseline
# ---------------------------------------------------------------------------------------------
def _residual_arm(arms: dict[str, Any]) -> str | None:
    """The first arm sampled with the residual head (None: none was)."""
    for name, arm in arms.items():
        if _get(arm, "sampling", "use_residual") is True:
            return name
    return None


def _recon_arm(recon: dict[str, Any], name: str) -> dict[str, Any]:
    r = recon.get(name) or {}
    return {k: r.get(k) for k in ("mse", "kid_mean", "kid_std", "fid")}


def _tokenizer_figures(hart: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The reconstruction ablation of the first HART run evaluated with --discrete-tokenizer."""
    for run in hart:
        recon = run["reconstruction"]
        if isinstance(recon, dict) and isinstance(recon.get("discrete_tokenizer"), dict):
            hybrid = _recon_arm(recon, "hybrid")
            ablation = _recon_arm(recon, "discrete_tokenizer")
            return {
                "seed": run["seed"],
                "hybrid": hybrid,
                "discrete_same_tokenizer": _recon_arm(recon, "discrete"),
                "discrete_tokenizer": ablation,
                "mse_ratio": recon.get("mse_ratio_vs_discrete_tokenizer"),
                # from the KIDs themselves: None where the ablation's is <= 0 (noise floor)
                "kid_reduction": _ratio_reduction(hybrid["kid_mean"], ablation["kid_mean"]),
                "fid_reduction": _ratio_reduction(hybrid["fid"], ablation["fid"]),
                "discrete_tokenizer_path": recon.get("discrete_tokenizer_path"),
            }
    return None


def _throughput_figures(hart: list[dict[str, Any]], ldm: list[dict[str, Any]]) -> dict:
    """Quality-vs-speed rows (HART arms and baseline DDIM arms with KID and images/s) and, per
    batch size, HART's speed-up over the fastest baseline arm whose KID is at most HART's plus
    `MATCHED_KID` of |HART's KID| (a baseline at least as good as HART, within 10%): `speedup`
    and `matched_arm` None where no baseline arm matched (`kid_limit` says the bound), and no
    `kid_limit` either where nothing was measured (no HART or baseline throughput)."""
    rows = []
    for generator, runs in (("HART", hart), ("LDM", ldm)):
        for run in runs:
            for name, fig in run["arms"].items():
                if fig["images_per_second"]:
                    rows.append({"generator": generator, "seed": run["seed"], "arm": name,
                                 "kid": fig["kid"], "images_per_second": fig["images_per_second"]})  # fmt: skip
    reference = next(
        (
            r
            for run in hart
            for r in rows
            if r["generator"] == "HART" and r["seed"] == run["seed"]
            and r["arm"] == run["residual_arm"]
        ),
        None,
    )  # fmt: skip
    checks = {}
    batch_sizes = sorted({b for r in rows for b in r["images_per_second"]}, key=int)
    for b in batch_sizes:
        base = [
            r
            for r in rows
            if r["generator"] == "LDM"
            and _finite(r["images_per_second"].get(b))
            and r["images_per_second"][b] > 0
        ]
        hart_ips = _get(reference, "images_per_second", b) if reference else None
        if reference is None or not base or not _finite(hart_ips) or not _finite(reference["kid"]):
            checks[b] = {"speedup": None, "matched_arm": None}
            continue
        limit = reference["kid"] + MATCHED_KID * abs(reference["kid"])
        matched = [r for r in base if _finite(r["kid"]) and r["kid"] <= limit]
        fastest = max(base, key=lambda r: r["images_per_second"][b])
        check = {
            "hart_arm": reference["arm"],
            "hart_kid": reference["kid"],
            "hart_images_per_second": hart_ips,
            "kid_limit": limit,
            "speedup_vs_fastest_baseline": hart_ips / fastest["images_per_second"][b],
            "fastest_baseline_arm": fastest["arm"],
        }
        if not matched:
            check.update(speedup=None, matched_arm=None)
            rated = [r for r in base if _finite(r["kid"])]
            if rated:
                # every baseline arm is worse than HART: an arm that matched it would need more
                # steps than the best one measured, so be slower: a lower bound on the speed-up
                best_kid = min(rated, key=lambda r: r["kid"])
                check.update(
                    speedup_lower_bound=hart_ips / best_kid["images_per_second"][b],
                    best_kid_baseline_arm=best_kid["arm"],
                    best_baseline_kid=best_kid["kid"],
                )
        else:
            best = max(matched, key=lambda r: r["images_per_second"][b])
            check.update(
                speedup=hart_ips / best["images_per_second"][b],
                matched_arm=best["arm"],
                matched_kid=best["kid"],
            )
        checks[b] = check
    return {"rows": rows, "matched": checks}


def generator_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The summaries of one modality's runs (`collect_generator`'s); no verdicts
    (`tools/benchmark.py` judges them)."""
    hart = sorted((r for r in runs if r["arm"] == "hart"), key=lambda r: r["seed"])
    discrete = [r for r in runs if r["arm"] == "discrete"]
    ldm = [r for r in runs if r["arm"] == "ldm"]
    hashes = sorted({r["classifier_sha256"] for r in runs if r["classifier_sha256"]})
    per_seed = []
    for run in hart:
        on = run["arms"].get(run["residual_arm"]) if run["residual_arm"] else None
        off = run["arms"].get("no_residual")
        per_seed.append({
            "seed": run["seed"],
            "kid_on": _get(on, "kid"), "kid_off": _get(off, "kid"),
            "kid_reduction": _ratio_reduction(_get(on, "kid"), _get(off, "kid")),
            "fid_on": _get(on, "fid"), "fid_off": _get(off, "fid"),
            "fid_reduction": _ratio_reduction(_get(on, "fid"), _get(off, "fid")),
            "noise_floor_fid": _get(on or off, "noise_floor_fid"),
            "noise_floor_kid": _get(on or off, "noise_floor_kid"),
            "class_fidelity": _get(on, "class_fidelity"), "yaw_fidelity": _get(on, "yaw_fidelity"),
            "precision": _get(on, "precision"), "recall": _get(on, "recall"),
        })  # fmt: skip
    paired = [s for s in per_seed if _finite(s["kid_on"]) and _finite(s["kid_off"])]
    on_kid = spread(s["kid_on"] for s in paired)
    off_kid = spread(s["kid_off"] for s in paired)
    residual = {
        "per_seed": per_seed,
        "kid_on": on_kid,
        "kid_off": off_kid,
        "kid_reduction": _ratio_reduction(on_kid["mean"], off_kid["mean"]),
        "kid_reduction_per_seed": spread(s["kid_reduction"] for s in paired),
        "noise_floor_kid": spread(s["noise_floor_kid"] for s in per_seed),
        # FID beside it (steadier at these set sizes; reported, not judged)
        "fid_on": spread(s["fid_on"] for s in per_seed),
        "fid_off": spread(s["fid_off"] for s in per_seed),
        "fid_reduction_per_seed": spread(s["fid_reduction"] for s in per_seed),
        "noise_floor_fid": spread(s["noise_floor_fid"] for s in per_seed),
    }
    residual["fid_reduction"] = _ratio_reduction(
        residual["fid_on"]["mean"], residual["fid_off"]["mean"]
    )
    quality = {k: spread(s[k] for s in per_seed)
               for k in ("class_fidelity", "yaw_fidelity", "precision", "recall")}  # fmt: skip
    tokenizer = _tokenizer_figures(hart)
    throughput = _throughput_figures(hart, ldm)
    share_run = next((r for r in hart if r["residual_head_share"]), None)
    share = share_run["residual_head_share"] if share_run else None
    cas_run = next((r for r in hart if r["cas"]), None)
    return {
        "same_classifier": len(hashes) <= 1,
        "classifier_sha256": hashes,
        "seeds": [r["seed"] for r in hart],
        "tokenizer": tokenizer,
        "residual": residual,
        "quality": quality,
        "throughput": throughput,
        "residual_head_share": share,
        "cas": cas_run["cas"] if cas_run else None,
        "discrete_generation": {a: f for r in discrete for a, f in r["arms"].items()},
    }


def read_generator_run(path: Path) -> dict[str, Any]:
    """One run of tools/generator_benchmark.sh from its eval.json (OUT/<modality>/<arm>/seed<S>/)."""
    report = read_eval(path)
    work = path.parent
    arms = {name: _arm_figures(arm) for name, arm in report["arms"].items()}
    return {
        "modality": work.parent.parent.name,
        "arm": work.parent.name,
        "seed": _seed_of(work.name, path),
        **_run_meta(work, report),
        "residual_arm": _residual_arm(report["arms"]),
        "arms": arms,
        "reconstruction": report.get("reconstruction"),
        "residual_head_share": report.get("residual_head_share"),
        "cas": report.get("cas"),
    }


def collect_generator(runs_dir: str | Path, *, command: str = "") -> dict[str, Any]:
    """Every finished run under `runs_dir` (`<modality>/<arm>/seed<S>/eval.json`) with the
    per-modality figures (no verdicts: `tools/benchmark.py` adds each modality's `targets`)."""
    runs_dir = Path(runs_dir)
    paths = sorted(runs_dir.glob(f"*/*/seed*/{EVAL_NAME}"))
    if not paths:
        raise ValueError(
            f"{runs_dir}: no finished run (<modality>/<arm>/seed<S>/{EVAL_NAME}: "
            "tools/generator_benchmark.sh writes them)"
        )
    runs = [read_generator_run(p) for p in paths]
    modalities = sorted({r["modality"] for r in runs}, key=lambda m: (m != "camera", m))
    return {
        **_header(runs, command),
        "commands": _commands(runs),
        "runs": runs,
        "figures": {
            m: generator_figures([r for r in runs if r["modality"] == m]) for m in modalities
        },  # fmt: skip
    }


def _f(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if _finite(value) else "-"


def _mean_spread(figure: dict[str, Any] | None, spec: str = ".4f") -> str:
    if not figure or figure.get("mean") is None:
        return "-"
    if figure["n"] < 2:
        return _f(figure["mean"], spec)
    return f"{_f(figure['mean'], spec)} ± {_f(figure['spread'] / 2, spec)}"


def _targets_md(targets: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | measured | status |", "|---|---:|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {_f(t['value'], '.3f')} | **{t['status']}** |")
    return lines


def generator_markdown(result: dict[str, Any]) -> str:
    lines: list[str] = []
    for modality, fig in result["figures"].items():
        runs = [r for r in result["runs"] if r["modality"] == modality]
        lines += [f"### {modality}", ""]
        if not fig["same_classifier"]:
            lines += [f"**Warning: the runs were scored by {len(fig['classifier_sha256'])} "
                      "different classifiers; their KIDs do not compare.**", ""]  # fmt: skip
        elif fig["classifier_sha256"]:
            lines += [f"Every run scored by one crop classifier (sha256 "
                      f"{fig['classifier_sha256'][0][:12]}).", ""]  # fmt: skip
        if fig.get("targets"):  # the verdicts tools/benchmark.py added
            lines += ["Targets (issue #25):", "", *_targets_md(fig["targets"]), ""]
        tok = fig["tokenizer"]
        if tok:
            lines += [
                f"Tokenizer ablation (reconstruction of the held-out signals, seed {tok['seed']}):",
                "",
                "| tokenizer | MSE | KID | FID |",
                "|---|---:|---:|---:|",
            ]
            for name, label in (("hybrid", "hybrid (discrete + residual)"),
                                ("discrete_same_tokenizer", "hybrid tokenizer, discrete only"),
                                ("discrete_tokenizer", "discrete-only tokenizer (ablation)")):  # fmt: skip
                r = tok[name]
                lines.append(f"| {label} | {_f(r['mse'], '.5f')} | {_f(r['kid_mean'])} "
                             f"| {_f(r['fid'], '.3g')} |")  # fmt: skip
            lines += [f"MSE ratio hybrid / discrete-only tokenizer {_f(tok['mse_ratio'], '.3f')}, "
                      f"KID reduction {_f(tok['kid_reduction'], '.3f')} ('-': the ablation's "
                      "KID <= 0, at the noise floor), FID reduction "
                      f"{_f(tok.get('fid_reduction'), '.3f')}.", ""]  # fmt: skip
        res = fig["residual"]
        lines += [
            "Residual head on vs off (generation, KID mean ± half the spread over seeds "
            f"{', '.join(str(s) for s in fig['seeds'])}):",
            "",
            "| seed | KID on | KID off | reduction | noise floor KID | class fid | yaw fid "
            "| precision | recall |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in res["per_seed"]:
            lines.append(
                f"| {s['seed']} | {_f(s['kid_on'])} | {_f(s['kid_off'])} "
                f"| {_f(s['kid_reduction'], '.3f')} | {_f(s['noise_floor_kid'])} "
                f"| {_f(s['class_fidelity'], '.3f')} | {_f(s['yaw_fidelity'], '.3f')} "
                f"| {_f(s['precision'], '.3f')} | {_f(s['recall'], '.3f')} |"
            )
        q = fig["quality"]
        lines += [
            f"| all | {_mean_spread(res['kid_on'])} | {_mean_spread(res['kid_off'])} "
            f"| {_f(res['kid_reduction'], '.3f')} | {_mean_spread(res['noise_floor_kid'])} "
            f"| {_mean_spread(q['class_fidelity'], '.3f')} "
            f"| {_mean_spread(q['yaw_fidelity'], '.3f')} | {_mean_spread(q['precision'], '.3f')} "
            f"| {_mean_spread(q['recall'], '.3f')} |",
            "",
            "(reduction in the last row: 1 - mean KID on / mean KID off; '-' where the KID "
            "without the head is <= 0, at the noise floor, where a ratio means nothing)",
            "",
            "The same by FID (steadier than KID at these set sizes; reported, not judged):",
            "",
            "| seed | FID on | FID off | reduction | noise floor FID |",
            "|---:|---:|---:|---:|---:|",
        ]
        for s in res["per_seed"]:
            lines.append(
                f"| {s['seed']} | {_f(s['fid_on'])} | {_f(s['fid_off'])} "
                f"| {_f(s['fid_reduction'], '.3f')} | {_f(s['noise_floor_fid'])} |"
            )
        lines += [
            f"| all | {_mean_spread(res['fid_on'])} | {_mean_spread(res['fid_off'])} "
            f"| {_f(res['fid_reduction'], '.3f')} | {_mean_spread(res['noise_floor_fid'])} |",
            "",
        ]
        tp = fig["throughput"]
        if tp["rows"]:
            sizes = sorted({b for r in tp["rows"] for b in r["images_per_second"]}, key=int)
            lines += [
                "Quality vs speed (images per second on the eval's threads):",
                "",
                "| generator | arm | KID | " + " | ".join(f"img/s b{b}" for b in sizes) + " |",
                "|---|---|---:|" + "---:|" * len(sizes),
            ]
            for r in tp["rows"]:
                lines.append(
                    f"| {r['generator']} | {r['arm']} | {_f(r['kid'])} | "
                    + " | ".join(_f(r["images_per_second"].get(b), ".3g") for b in sizes)
                    + " |"
                )
            for b, c in tp["matched"].items():
                if "kid_limit" not in c:
                    lines.append(f"- batch {b}: not measured")
                    continue
                matched = (
                    f"{_f(c['speedup'], '.2f')}x vs {c['matched_arm']} (KID "
                    f"{_f(c.get('matched_kid'))} <= {_f(c['kid_limit'])})"
                    if c["matched_arm"] else f"no baseline arm with KID <= {_f(c['kid_limit'])}"
                )  # fmt: skip
                if c.get("speedup_lower_bound") is not None:
                    matched += (
                        f" (at least {_f(c['speedup_lower_bound'], '.2f')}x: vs the best-KID "
                        f"arm {c['best_kid_baseline_arm']}, KID {_f(c['best_baseline_kid'])})"
                    )
                lines.append(
                    f"- batch {b}: HART {c['hart_arm']} {_f(c['hart_images_per_second'], '.3g')} "
                    f"img/s at KID {_f(c['hart_kid'])}; {matched}; vs the "
                    f"fastest baseline arm ({c['fastest_baseline_arm']}) "
                    f"{_f(c['speedup_vs_fastest_baseline'], '.2f')}x"
                )
            lines.append("")
        share = fig["residual_head_share"]
        if share:
            lines += [f"Residual head share of sampling time: {_f(share.get('share'), '.3f')} "
                      f"(by on/off difference {_f(share.get('share_by_difference'), '.3f')}, "
                      f"batch {share.get('batch_size')}).", ""]  # fmt: skip
        cas = fig["cas"]
        if cas:
            arms = [a for a in ("generated_only", "real_few", "real_few_plus_generated")
                    if isinstance(cas.get(a), dict)]  # fmt: skip
            lines += [
                "Classification accuracy score (a classifier trained on each set, tested on real "
                "held-out crops):",
                "",
                "| trained on | class acc | yaw acc | "
                + " | ".join(f"{c} acc" for c in cas.get("rare", {}))
                + " |",
                "|---|---:|---:|" + "---:|" * len(cas.get("rare", {})),
            ]
            for a in arms:
                lines.append(
                    f"| {a} | {_f(cas[a].get('class_acc'), '.3f')} "
                    f"| {_f(cas[a].get('yaw_acc'), '.3f')} | "
                    + " | ".join(_f(v.get(a), ".3f") for v in cas.get("rare", {}).values())
                    + " |"
                )
            lines.append("")
        lines += [
            "Runs:",
            "",
            "| arm | seed | sampling arm | KID | FID | precision | recall | train minutes "
            "| commit |",
            "|---|---:|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in runs:
            minutes = _f(r["train_seconds"] / 60, ".1f") if _finite(r["train_seconds"]) else "-"
            for name, a in r["arms"].items():
                lines.append(
                    f"| {r['arm']} | {r['seed']} | {name} | {_f(a['kid'])} | {_f(a['fid'], '.3g')} "
                    f"| {_f(a['precision'], '.3f')} | {_f(a['recall'], '.3f')} | {minutes} "
                    f"| {r['train_commit'] or r['eval_commit'] or '?'} |"
                )
        lines.append("")
    lines += ["Commands:", "", *(f"    {c}" for c in result["commands"])]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Issue #26: the DiffAugment GAN grid
# ---------------------------------------------------------------------------------------------
def _kid_curve(work: Path) -> list[list[float]]:
    path = work / "log.jsonl"
    if not path.is_file():
        return []
    curve = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and _finite(record.get("kid")) and _finite(record.get("step")):
            curve.append([record["step"], record["kid"]])
    return curve


def _n_key(n: str) -> tuple[int, int]:
    return (1, 0) if n == "all" else (0, int(n))


def read_gan_run(path: Path) -> dict[str, Any]:
    """One run of tools/gan_benchmark.sh from its eval.json (OUT/n<N>/<mode>/seed<S>/)."""
    report = read_eval(path)
    work = path.parent
    n_dir = work.parent.parent.name
    if not n_dir.startswith("n") or not (n_dir[1:].isdigit() or n_dir[1:] == "all"):
        raise ValueError(f"{path}: expected an n<N> folder, got {n_dir!r}")
    final = _arm_figures(next(iter(report["arms"].values())))
    run = {
        "num_real": n_dir[1:],
        "mode": work.parent.name,
        "seed": _seed_of(work.name, path),
        **_run_meta(work, report),
        "final": final,
        "best": None,
        "best_eval_command": None,
        "kid_curve": _kid_curve(work),
    }
    best_path = work / BEST_EVAL_NAME
    if best_path.is_file():
        best = read_eval(best_path)
        run["best"] = _arm_figures(next(iter(best["arms"].values())))
        run["best_eval_command"] = best.get("command")
    return run


def gan_figures(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (N, mode): the seeds and each figure's mean / spread / std over them, the noise
    floor beside, and KID's reduction against the no-augmentation arm of the same N."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in sorted(runs, key=_gan_order):
        groups.setdefault((run["num_real"], run["mode"]), []).append(run)
    rows = []
    for (n, mode), members in groups.items():
        row: dict[str, Any] = {"num_real": n, "mode": mode, "seeds": [r["seed"] for r in members]}
        for key in ("kid", "fid", "precision", "recall", "class_fidelity", "yaw_fidelity",
                    "kid_half", "noise_floor_kid"):  # fmt: skip
            row[key] = spread(r["final"][key] for r in members)
        row["best_kid"] = spread(_get(r["best"], "kid") for r in members)
        rows.append(row)
    none_kid = {r["num_real"]: r["kid"]["mean"] for r in rows if r["mode"] == "none"}
    for row in rows:
        row["kid_reduction_vs_none"] = (
            None if row["mode"] == "none"
            else _ratio_reduction(row["kid"]["mean"], none_kid.get(row["num_real"]))
        )  # fmt: skip
    return rows


def _gan_order(run: dict[str, Any]) -> tuple:
    mode = run["mode"]
    rank = GAN_MODES.index(mode) if mode in GAN_MODES else len(GAN_MODES)
    return (_n_key(run["num_real"]), rank, mode, run["seed"])


def collect_gan(runs_dir: str | Path, *, command: str = "") -> dict[str, Any]:
    """Every finished run under `runs_dir` (`n<N>/<mode>/seed<S>/eval.json`) with the per
    (N, mode) summary."""
    runs_dir = Path(runs_dir)
    paths = sorted(runs_dir.glob(f"n*/*/seed*/{EVAL_NAME}"))
    if not paths:
        raise ValueError(
            f"{runs_dir}: no finished run (n<N>/<mode>/seed<S>/{EVAL_NAME}: "
            "tools/gan_benchmark.sh writes them)"
        )
    runs = sorted((read_gan_run(p) for p in paths), key=_gan_order)
    hashes = sorted({r["classifier_sha256"] for r in runs if r["classifier_sha256"]})
    return {
        **_header(runs, command),
        "commands": _commands(runs),
        "same_classifier": len(hashes) <= 1,
        "classifier_sha256": hashes,
        "runs": runs,
        "figures": gan_figures(runs),
    }


def gan_markdown(result: dict[str, Any]) -> str:
    lines: list[str] = []
    if not result["same_classifier"]:
        lines += [f"**Warning: the runs were scored by {len(result['classifier_sha256'])} "
                  "different classifiers; their KIDs do not compare.**", ""]  # fmt: skip
    elif result["classifier_sha256"]:
        lines += [f"Every run scored by one crop classifier (sha256 "
                  f"{result['classifier_sha256'][0][:12]}).", ""]  # fmt: skip
    lines += [
        "KID (all held-out vs as many generated), mean ± half the spread over the seeds; "
        "half-B KID beside the real-vs-real noise floor at the same set sizes; reduction: "
        "1 - KID / KID without augmentation at the same N:",
        "",
        "| N real | augment | seeds | KID | best-ckpt KID | half-B KID | noise floor KID | FID "
        "| precision | recall | class fid | yaw fid | KID reduction vs none |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["figures"]:
        lines.append(
            f"| {row['num_real']} | {row['mode']} | {', '.join(str(s) for s in row['seeds'])} "
            f"| {_mean_spread(row['kid'])} | {_mean_spread(row['best_kid'])} "
            f"| {_mean_spread(row['kid_half'])} | {_mean_spread(row['noise_floor_kid'])} "
            f"| {_mean_spread(row['fid'], '.3g')} | {_mean_spread(row['precision'], '.3f')} "
            f"| {_mean_spread(row['recall'], '.3f')} "
            f"| {_mean_spread(row['class_fidelity'], '.3f')} "
            f"| {_mean_spread(row['yaw_fidelity'], '.3f')} "
            f"| {_f(row['kid_reduction_vs_none'], '.3f')} |"
        )
    lines += [
        "",
        "KID during training (log.jsonl, the training KID subset), per run: step:KID",
        "",
    ]
    for r in result["runs"]:
        curve = " ".join(f"{int(s)}:{k:.4f}" for s, k in r["kid_curve"]) or "-"
        lines.append(f"- n{r['num_real']}/{r['mode']}/seed{r['seed']}: {curve}")
    lines += ["", "Commands:", "", *(f"    {c}" for c in result["commands"])]
    return "\n".join(lines)


def write(result: dict[str, Any], out: str | Path, markdown: Callable[[dict], str]) -> Path:
    """`out` (JSON) and a Markdown file beside it (date, machine, commits, the tables)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, allow_nan=False))
    runs = ", ".join(result["run_commits"]) or "?"
    out.with_suffix(".md").write_text(
        f"{result['date']}, {result['machine']}, runs at {runs}, collected at "
        f"{result['commit'] or '?'}: `{result['command']}`\n\n{markdown(result)}\n"
    )
    return out
