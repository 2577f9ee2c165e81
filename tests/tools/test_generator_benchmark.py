"""tools/generator_benchmark.sh, tools/gan_benchmark.sh and their collectors
(`tools/benchmark.py generator | gan`, `perception.benchmarks.generator`): the scripts parse and
answer --help and bad knobs; the collectors, on eval reports written by the same writer as
tools/eval_generator.py (`evaluate.write_generator_report`) with made-up figures, tabulate them;
the tool (`tools.benchmark.generator_targets`) computes every target's status from those figures;
one slow test runs the generator benchmark end to end in TINY mode on a bank of the tiny world."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from perception.benchmarks import generator as bench
from perception.generative.evaluate import write_generator_report
from tools import benchmark as tool
from tools.benchmark import main as benchmark_main

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = ("tools/generator_benchmark.sh", "tools/gan_benchmark.sh")
SHA = "a" * 64


def _bash(*args: str, env: dict | None = None, timeout: int = 30):
    return subprocess.run(
        ["bash", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


# ---------------------------------------------------------------------------------------------
# The scripts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses_and_answers_help(script):
    assert _bash("-n", script).returncode == 0
    proc = _bash(script, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "SAME CLASSIFIER" in proc.stdout and "TINY=1" in proc.stdout
    assert "tools/benchmark.py" in proc.stdout and not proc.stdout.startswith("#")


def test_generator_script_refuses_bad_arguments(tmp_path):
    proc = _bash("tools/generator_benchmark.sh", str(tmp_path / "o"), "radar")
    assert proc.returncode == 2 and "unknown modality radar" in proc.stderr
    proc = _bash("tools/generator_benchmark.sh", str(tmp_path / "o"), "camera",
                 env={"SEEDS": "1 2"})  # fmt: skip
    assert proc.returncode == 2 and "SEEDS must include 0" in proc.stderr
    missing = {"TRAIN_BANK": str(tmp_path / "nope"), "HELDOUT_BANK": str(tmp_path / "nope")}
    proc = _bash("tools/generator_benchmark.sh", str(tmp_path / "o"), "camera", env=missing)
    assert proc.returncode == 2 and f"{tmp_path / 'nope'}/bank.json: not found" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_gan_script_refuses_bad_knobs(tmp_path):
    out = str(tmp_path / "o")
    proc = _bash("tools/gan_benchmark.sh", out, env={"N_VALUES": "100 1x"})
    assert proc.returncode == 2 and "N_VALUES: 1x is not a count" in proc.stderr
    proc = _bash("tools/gan_benchmark.sh", out, env={"MODES": "both sometimes"})
    assert proc.returncode == 2 and "unknown mode sometimes" in proc.stderr
    proc = _bash("tools/gan_benchmark.sh", out, env={"TRAIN_BANK": str(tmp_path / "nope")})
    assert proc.returncode == 2 and "bank.json: not found" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Reports shaped as tools/eval_generator.py writes them
# ---------------------------------------------------------------------------------------------
def _metrics(kid: float, *, precision: float = 0.7, recall: float = 0.4, fid: float = 5.0):
    return {"fid": fid, "kid_mean": kid, "kid_std": 0.001, "precision": precision,
            "recall": recall, "num_real": 200, "num_fake": 200, "kid_subset_size": 100}  # fmt: skip


def _generation(kid: float, *, floor: float = 0.002, cls: float = 0.9, yaw: float = 0.7, **kw):
    return {
        "num_samples": 200, "num_half_a": 100, "num_half_b": 100, "sample_seconds": 1.0,
        "noise_floor_method": "split by object",
        "generated": _metrics(kid, **kw), "generated_half": _metrics(kid * 1.2, **kw),
        "noise_floor": _metrics(floor),
        "condition_fidelity": {"class": cls, "yaw": yaw, "real_class_acc": 0.9,
                               "real_yaw_acc": 0.6, "fake_class_acc": 0.9 * cls,
                               "fake_yaw_acc": 0.6 * yaw},
    }  # fmt: skip


def _throughput(b1: float, b64: float) -> dict:
    return {"threads": 2, "repeats": 3, "warmup": 1, "batch_sizes": {
        "1": {"images_per_second": b1, "seconds_median": 1 / b1, "seconds": [1 / b1]},
        "64": {"images_per_second": b64, "seconds_median": 64 / b64, "seconds": [64 / b64]},
    }}  # fmt: skip


def _write(path: Path, kind: str, arms: dict, *, sha: str = SHA, train: dict | None = None,
           **extra) -> Path:  # fmt: skip
    results = {
        "generator": {"path": str(path.parent), "kind": kind, "name": kind,
                      "modality": "camera", "training_bank": "bank", "config": {}},
        "classifier": {"path": "OUT/classifier.safetensors", "sha256": sha, "config": {}},
        "held_out": {"bank": "heldout", "version": "v1.0-mini", "num_signals": 200,
                     "num_objects": 150, "left_out_untrained": 0, "per_class": {"car": 200}},
        "seed": 0, "n": None, **extra, "arms": arms,
    }  # fmt: skip
    write_generator_report(
        results, path, command=f"python tools/eval_generator.py {path.parent}", commit="abc1234"
    )
    (path.parent / "train_time.json").write_text(
        json.dumps({"train_seconds": 600, "commit": "abc1234",
                    "command": f"OMP_NUM_THREADS=2 train {path.parent}", **(train or {})})
    )  # fmt: skip
    return path


def _hart_arms(kid_on: float, kid_off: float, *, throughput: bool = False, **kw) -> dict:
    on = {"sampling": {"guidance": 2.0, "residual_steps": 8, "use_residual": True},
          "generation": _generation(kid_on, **kw)}  # fmt: skip
    off = {"sampling": {"guidance": 2.0, "residual_steps": 8, "use_residual": False},
           "generation": _generation(kid_off, **kw)}  # fmt: skip
    if throughput:
        on["throughput"] = _throughput(10.0, 100.0)
        off["throughput"] = _throughput(12.0, 120.0)
    return {"residual_steps=8": on, "no_residual": off}


def _recon(hybrid_mse, hybrid_kid, disc_mse, disc_kid) -> dict:
    return {
        "num_signals": 200, "tokenizer_hybrid": True, "autoencoder_mse": hybrid_mse,
        "hybrid": {"mse": hybrid_mse, **_metrics(hybrid_kid)},
        "discrete": {"mse": 2 * hybrid_mse, **_metrics(2 * hybrid_kid)},
        "discrete_tokenizer": {"tokenizer_hybrid": False, "mse": disc_mse, **_metrics(disc_kid)},
        "mse_ratio_vs_discrete": 0.5, "kid_reduction_vs_discrete": 0.5,
        "mse_ratio_vs_discrete_tokenizer": hybrid_mse / disc_mse,
        "kid_reduction_vs_discrete_tokenizer": 1 - hybrid_kid / disc_kid,
        "discrete_tokenizer_path": "OUT/camera/discrete/seed0",
    }  # fmt: skip


def _generator_runs(root: Path, *, ldm_kids=(0.03, 0.0105), sha_ldm: str = SHA) -> Path:
    """Camera: HART seeds 0-2 (seed 0 with the ablation, throughput, share, CAS), the discrete
    ablation and the baseline at DDIM 8 / 50; LiDAR: HART seed 0 only."""
    cam = root / "camera"
    kids = {0: (0.010, 0.012), 1: (0.011, 0.012), 2: (0.012, 0.013)}
    for seed, (on, off) in kids.items():
        extra = {}
        if seed == 0:
            extra = {
                "reconstruction": _recon(0.004, 0.020, 0.010, 0.025),
                "residual_head_share": {"share": 0.10, "share_by_difference": 0.12,
                                        "batch_size": 64},
                "cas": {"steps": 500, "seed": 0,
                        "generated_only": {"class_acc": 0.5, "yaw_acc": 0.3},
                        "real_few": {"class_acc": 0.6, "yaw_acc": 0.4},
                        "real_few_plus_generated": {"class_acc": 0.65, "yaw_acc": 0.4},
                        "rare": {"bicycle": {"generated_only": 0.2, "real_few": 0.1,
                                             "real_few_plus_generated": 0.3}}},
            }  # fmt: skip
        arms = _hart_arms(on, off, throughput=seed == 0, yaw=0.5, recall=0.2)
        _write(cam / "hart" / f"seed{seed}" / "eval.json", "hart", arms, **extra)
    _write(cam / "discrete" / "seed0" / "eval.json", "hart", _hart_arms(0.02, 0.02))
    ldm = {}
    for steps, kid, b1, b64 in zip((8, 50), ldm_kids, (20.0, 2.0), (200.0, 40.0), strict=True):
        ldm[f"ddim_steps={steps}"] = {"sampling": {"steps": steps, "guidance": 1.0, "eta": 0.0},
                                      "generation": _generation(kid),
                                      "throughput": _throughput(b1, b64)}  # fmt: skip
    _write(cam / "ldm" / "seed0" / "eval.json", "ldm", ldm, sha=sha_ldm)
    _write(root / "lidar" / "hart" / "seed0" / "eval.json", "hart", _hart_arms(0.02, 0.01))
    return root


def _status(targets: list[dict], prefix: str) -> tuple[float | None, str]:
    rows = [t for t in targets if t["target"].startswith(prefix)]
    assert len(rows) == 1, (prefix, [t["target"] for t in targets])
    return rows[0]["value"], rows[0]["status"]


def _judged(result: dict) -> dict:
    """`result` with each modality's targets judged, as `tools/benchmark.py generator` does."""
    for figures in result["figures"].values():
        figures["targets"] = tool.generator_targets(figures)
    return result


def test_the_tool_checks_every_target_on_the_collected_figures(tmp_path):
    result = bench.collect_generator(_generator_runs(tmp_path / "runs"), command="c")
    cam = result["figures"]["camera"]
    assert cam["same_classifier"] and cam["seeds"] == [0, 1, 2]
    targets = tool.generator_targets(cam)
    ratio, status = _status(targets, "hybrid tokenizer reconstruction MSE")
    assert ratio == pytest.approx(0.4) and status == "met"
    reduction, status = _status(targets, "hybrid tokenizer reconstruction KID")
    assert reduction == pytest.approx(0.2) and status == "not met"
    reduction, status = _status(targets, "residual head: generation KID")
    assert reduction == pytest.approx(1 - 0.011 / (0.037 / 3)) and status == "met"
    res = cam["residual"]
    assert res["kid_on"]["mean"] == pytest.approx(0.011)
    assert res["kid_on"]["spread"] == pytest.approx(0.002) and res["kid_on"]["n"] == 3
    assert res["noise_floor_kid"]["mean"] == pytest.approx(0.002)
    assert _status(targets, "condition fidelity, class") == (pytest.approx(0.9), "met")
    assert _status(targets, "condition fidelity, yaw") == (pytest.approx(0.5), "not met")
    assert _status(targets, "precision") == (pytest.approx(0.7), "met")
    assert _status(targets, "recall") == (pytest.approx(0.2), "not met")
    # matched: DDIM 50 (KID 0.0105 <= 0.010 * 1.1); HART 10 / 100 img/s vs 2 / 40
    assert _status(targets, "throughput >= 3x the diffusion baseline at matched KID (within 10%), "
                        "batch 1") == (pytest.approx(5.0), "met")  # fmt: skip
    assert _status(targets, "throughput >= 3x the diffusion baseline at matched KID (within 10%), "
                        "batch 64") == (pytest.approx(2.5), "not met")  # fmt: skip
    check = cam["throughput"]["matched"]["1"]
    assert (
        check["matched_arm"] == "ddim_steps=50" and check["fastest_baseline_arm"] == "ddim_steps=8"
    )
    assert check["speedup_vs_fastest_baseline"] == pytest.approx(0.5)
    assert _status(targets, "residual head <= 15%") == (pytest.approx(0.10), "met")
    assert cam["cas"]["rare"]["bicycle"]["real_few_plus_generated"] == 0.3
    # LiDAR: one HART seed, no ablation, no baseline: measured only what was run
    lidar = tool.generator_targets(result["figures"]["lidar"])
    assert _status(lidar, "hybrid tokenizer reconstruction MSE") == (None, "not measured")
    assert _status(lidar, "residual head: generation KID") == (pytest.approx(-1.0), "not met")
    assert _status(lidar, "throughput") == (None, "not measured")
    assert _status(lidar, "residual head <= 15%") == (None, "not measured")
    assert [r["target"] for r in lidar][2].endswith("(3 seeds; measured 1)")
    assert result["run_commits"] == ["abc1234"] and result["command"] == "c"
    assert len(result["commands"]) == 12  # 6 runs x (train + eval)


def test_a_kid_at_the_noise_floor_is_unresolved_not_a_reduction(tmp_path):
    """A KID without the head <= 0 (the unbiased estimate cannot tell it from real): the ratio
    1 - on/off is undefined, the target says so; FID beside it is reported, not judged."""
    root = tmp_path / "runs" / "camera" / "hart"
    for seed, (on, off) in {0: (0.0016, -0.0001), 1: (0.001, -0.0003), 2: (0.0, -0.0002)}.items():
        arms = _hart_arms(on, off)
        arms["no_residual"]["generation"]["generated"]["fid"] = 0.66
        arms["residual_steps=8"]["generation"]["generated"]["fid"] = 0.68
        extra = {"reconstruction": _recon(0.007, -0.0007, 0.0124, -0.0006)} if seed == 0 else {}
        _write(root / f"seed{seed}" / "eval.json", "hart", arms, **extra)
    result = bench.collect_generator(tmp_path / "runs", command="c")
    res = result["figures"]["camera"]["residual"]
    assert res["kid_reduction"] is None and all(s["kid_reduction"] is None for s in res["per_seed"])
    assert res["fid_reduction"] == pytest.approx(1 - 0.68 / 0.66)
    assert res["fid_off"]["mean"] == pytest.approx(0.66) and res["fid_on"]["n"] == 3
    value, status = _status(tool.generator_targets(result["figures"]["camera"]),
                            "residual head: generation KID")  # fmt: skip
    assert value is None and status.startswith("unresolved: the base arm's KID <= 0")
    tokenizer = result["figures"]["camera"]["tokenizer"]
    assert tokenizer["kid_reduction"] is None and tokenizer["mse_ratio"] == pytest.approx(
        0.007 / 0.0124
    )
    value, status = _status(tool.generator_targets(result["figures"]["camera"]),
                            "hybrid tokenizer reconstruction KID")  # fmt: skip
    assert value is None and status.startswith("unresolved")
    md = bench.generator_markdown(_judged(result))
    assert "| FID on | FID off |" in md and "unresolved" in md


def test_generator_markdown_states_the_checks(tmp_path):
    result = bench.collect_generator(_generator_runs(tmp_path / "runs"))
    assert "| target |" not in bench.generator_markdown(result)  # figures only, no verdicts
    text = bench.generator_markdown(_judged(result))
    assert "### camera" in text and "### lidar" in text
    assert "| residual head <= 15% of sampling time | 0.100 | **met** |" in text
    assert "| recall >= 0.3 | 0.200 | **not met** |" in text
    assert "| hybrid tokenizer reconstruction MSE <= 0.5x the discrete-only tokenizer's | - | " \
           "**not measured** |" in text  # fmt: skip
    assert "| all | 0.0110 ± 0.0010 | 0.0123 ± 0.0005 |" in text
    assert "5.00x vs ddim_steps=50" in text and "**met**" in text
    assert "| LDM | ddim_steps=8 | 0.0300 | 20 | 200 |" in text
    assert "Every run scored by one crop classifier (sha256 aaaaaaaaaaaa)" in text
    assert "    OMP_NUM_THREADS=2 train " in text


def test_no_matched_point_and_another_classifier_are_said(tmp_path):
    runs = _generator_runs(tmp_path / "runs", ldm_kids=(0.05, 0.02), sha_ldm="b" * 64)
    result = _judged(bench.collect_generator(runs))
    cam = result["figures"]["camera"]
    assert not cam["same_classifier"] and len(cam["classifier_sha256"]) == 2
    assert cam["throughput"]["matched"]["64"]["kid_limit"] == pytest.approx(0.011)
    value, status = _status(cam["targets"], "throughput >= 3x the diffusion baseline at "
                                            "matched KID (within 10%), batch 64")  # fmt: skip
    # every baseline arm is worse than HART: the speed-up against the best of them (50 steps,
    # 40 img/s at batch 64; HART 100) bounds the matched one from below
    assert value == pytest.approx(2.5) and status.startswith("not met (lower bound")
    text = bench.generator_markdown(result)
    assert (
        "no baseline arm with KID <= 0.0110 (at least 2.50x: vs the best-KID arm ddim_steps=50"
        in text
    )
    assert "**Warning: the runs were scored by 2 different classifiers" in text


def test_targets_are_judged_by_the_tool_not_the_library(tmp_path):
    """The library collects figures; issue #25's targets and verdicts live in tools/benchmark.py."""
    for name in ("TOKENIZER_MSE_RATIO", "TOKENIZER_KID_REDUCTION", "RESIDUAL_KID_REDUCTION",
                 "RESIDUAL_SEEDS", "CLASS_FIDELITY", "YAW_FIDELITY", "PRECISION", "RECALL",
                 "SPEEDUP", "RESIDUAL_SHARE", "verdict", "_target"):  # fmt: skip
        assert not hasattr(bench, name), name
        assert hasattr(tool, name), name
    assert (tool.TOKENIZER_MSE_RATIO, tool.SPEEDUP, tool.RESIDUAL_SHARE) == (0.5, 3.0, 0.15)
    result = bench.collect_generator(_generator_runs(tmp_path / "runs"))
    figures_json = json.dumps(result)
    assert '"targets"' not in figures_json and '"status"' not in figures_json
    # the speed-up at matched KID stays a figure, with its numbers; the tool judges it
    check = result["figures"]["camera"]["throughput"]["matched"]["1"]
    assert check["speedup"] == pytest.approx(5.0) and check["matched_kid"] == 0.0105
    assert check["kid_limit"] == pytest.approx(0.011)
    assert tool.generator_targets(result["figures"]["camera"])[7] == {
        "target": "throughput >= 3x the diffusion baseline at matched KID (within 10%), batch 1",
        "value": pytest.approx(5.0), "op": ">=", "threshold": 3.0, "status": "met",
        "matched_arm": "ddim_steps=50",
    }  # fmt: skip


def test_verdict_and_spread():
    assert tool.verdict(0.5, "<=", 0.5) == "met" and tool.verdict(0.51, "<=", 0.5) == "not met"
    assert tool.verdict(0.3, ">=", 0.3) == "met" and tool.verdict(None, ">=", 0.3) == (
        "not measured"
    )
    assert tool.verdict(float("nan"), ">=", 0.3) == "not measured"
    with pytest.raises(ValueError, match="op: expected"):
        tool.verdict(1.0, "<", 2.0)
    s = bench.spread([1.0, 3.0, None])
    assert s == {"mean": 2.0, "spread": 2.0, "std": pytest.approx(2**0.5), "n": 2}
    assert bench.spread([]) == {"mean": None, "spread": None, "std": None, "n": 0}


def test_stage_seconds_reads_elapsed_or_sums_the_paces(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [
        {"stage": "tokenizer", "step": 50, "seconds_per_step": 9.0},
        {"stage": "transformer", "step": 50, "seconds_per_step": 0.5},
        {"stage": "transformer", "step": 120, "seconds_per_step": 1.0},
    ]
    log.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert bench.stage_seconds(log, "transformer") == pytest.approx(50 * 0.5 + 70 * 1.0)
    lines[-1]["elapsed_s"] = 123.5
    log.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert bench.stage_seconds(log, "transformer") == 123.5
    with pytest.raises(ValueError, match="no line of stage 'ldm'"):
        bench.stage_seconds(log, "ldm")
    with pytest.raises(ValueError, match="cannot read the training log"):
        bench.stage_seconds(tmp_path / "missing.jsonl", "transformer")


def _gan_runs(root: Path) -> Path:
    kids = {("100", "none", 0): 0.10, ("100", "none", 1): 0.12, ("100", "both", 0): 0.05,
            ("100", "both", 1): 0.07, ("all", "both", 0): 0.02, ("all", "none", 0): 0.021}  # fmt: skip
    for (n, mode, seed), kid in kids.items():
        work = root / f"n{n}" / mode / f"seed{seed}"
        arms = {"default": {"sampling": {}, "generation": _generation(kid)}}
        _write(work / "eval.json", "gan", arms, train={"num_real": n, "mode": mode})
        if n == "100":
            _write(work / "eval_best.json", "gan",
                   {"default": {"sampling": {}, "generation": _generation(kid / 2)}})  # fmt: skip
        (work / "log.jsonl").write_text(
            json.dumps({"stage": "gan", "step": 2, "kid": 0.3, "kid_std": 0.01}) + "\n"
            + json.dumps({"stage": "gan", "step": 3, "loss_d": 1.0}) + "\n"
            + json.dumps({"stage": "gan", "step": 4, "kid": kid, "kid_std": 0.01}) + "\n"
        )  # fmt: skip
    return root


def test_gan_collector_tabulates_n_by_mode(tmp_path):
    result = bench.collect_gan(_gan_runs(tmp_path / "gan"), command="c")
    rows = {(r["num_real"], r["mode"]): r for r in result["figures"]}
    assert list(rows) == [("100", "none"), ("100", "both"), ("all", "none"), ("all", "both")]
    both = rows[("100", "both")]
    assert both["seeds"] == [0, 1] and both["kid"]["mean"] == pytest.approx(0.06)
    assert both["kid"]["spread"] == pytest.approx(0.02)
    assert both["best_kid"]["mean"] == pytest.approx(0.03)
    assert both["noise_floor_kid"]["mean"] == pytest.approx(0.002)
    assert both["kid_reduction_vs_none"] == pytest.approx(1 - 0.06 / 0.11)
    assert rows[("100", "none")]["kid_reduction_vs_none"] is None
    assert rows[("all", "both")]["best_kid"]["n"] == 0
    assert result["runs"][0]["kid_curve"] == [[2, 0.3], [4, 0.10]]
    assert result["same_classifier"]
    text = bench.gan_markdown(result)
    assert "| 100 | both | 0, 1 | 0.0600 ± 0.0100 | 0.0300 ± 0.0050 |" in text
    assert "| 0.0020 ± 0.0000 |" in text and "| 0.455 |" in text
    assert "- n100/none/seed0: 2:0.3000 4:0.1000" in text


def test_benchmark_cli_writes_json_and_markdown(tmp_path, capsys):
    runs = _generator_runs(tmp_path / "runs")
    out = tmp_path / "bench" / "generator_cpu.json"
    assert benchmark_main(["generator", "--runs", str(runs), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"date", "machine", "commit", "run_commits", "command", "commands", "figures"} <= set(
        result
    )
    assert result["command"].startswith("python tools/benchmark.py generator --runs")
    # the tool's verdicts sit inside each modality's figures, as before the split
    targets = result["figures"]["camera"]["targets"]
    assert targets == json.loads(json.dumps(tool.generator_targets(result["figures"]["camera"])))
    assert {t["status"] for t in result["figures"]["lidar"]["targets"]} >= {"not measured"}
    assert "| residual head <= 15% of sampling time | 0.100 | **met** |" in (
        out.with_suffix(".md").read_text()
    )
    assert "### camera" in out.with_suffix(".md").read_text()
    assert "wrote" in capsys.readouterr().out
    gan_out = tmp_path / "bench" / "gan_cpu.json"
    assert benchmark_main(["gan", "--runs", str(_gan_runs(tmp_path / "g")), "--out",
                           str(gan_out)]) == 0  # fmt: skip
    assert json.loads(gan_out.read_text())["figures"][0]["num_real"] == "100"
    picture = gan_out.with_suffix(".kid.png")  # KID against step, one panel per N
    from PIL import Image

    with Image.open(picture) as image:
        assert image.format == "PNG" and image.width > 2 * image.height  # two panels side by side
    assert benchmark_main(["gan", "--runs", str(tmp_path / "empty")]) == 2
    assert "no finished run" in capsys.readouterr().err


def test_a_foreign_report_is_named(tmp_path):
    path = tmp_path / "camera" / "hart" / "seed0" / "eval.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(ValueError, match="eval.json: kind 'something else'"):
        bench.collect_generator(tmp_path)


# ---------------------------------------------------------------------------------------------
# The driver end to end (TINY)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_generator_benchmark_runs_end_to_end_tiny(tiny_train_bank, tiny_val_bank, tmp_path):
    """~100 s on 2 cores: tools/generator_benchmark.sh TINY=1 SEEDS=0 camera on banks of the tiny
    world (train: mini_train, held-out: mini_val; shared, read-only: the script only reads them),
    then the collector on its output."""
    env = {"TINY": "1", "SEEDS": "0", "OMP_NUM_THREADS": "1", "PY": str(REPO / ".venv/bin/python"),
           "TRAIN_BANK": str(tiny_train_bank), "HELDOUT_BANK": str(tiny_val_bank)}  # fmt: skip
    out = tmp_path / "out"
    proc = _bash("tools/generator_benchmark.sh", str(out), "camera", env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for arm in ("hart", "discrete", "ldm"):
        assert (out / "camera" / arm / "seed0" / "eval.json").is_file(), arm
    ldm_cmd = json.loads((out / "camera" / "ldm" / "seed0" / "train_time.json").read_text())
    assert "train.time_budget_s=" in ldm_cmd["command"] and "tokenizer_from=" in ldm_cmd["command"]
    # a second call skips every finished run
    again = _bash("tools/generator_benchmark.sh", str(out), "camera", env=env, timeout=120)
    assert again.returncode == 0 and again.stdout.count("done, skipped") == 3
    result = bench.collect_generator(out)
    cam = result["figures"]["camera"]
    assert cam["same_classifier"] and len(cam["classifier_sha256"]) == 1
    assert cam["tokenizer"] is not None and cam["throughput"]["rows"]
    statuses = {t["status"] for t in tool.generator_targets(cam)}
    known = ("met", "not met", "not measured", "no matched point", "unresolved")
    assert all(s.startswith(known) for s in statuses), statuses
