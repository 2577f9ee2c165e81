"""tools/benchmark.py runs and writes its rows (speed itself is measured, never asserted)."""

from __future__ import annotations

import hashlib
import json

import pytest

from tools.benchmark import main as benchmark

# every saved result starts with these keys (benchmarks/results/README.md)
RESULT_KEYS = ["date", "machine", "commit", "config_hash", "command"]


def test_model_benchmark_writes_rows(tmp_path):
    out = tmp_path / "model.json"
    code = benchmark(["model", "--config", "configs/bevfusion_tiny_lidar.yaml", "--root",
                      str(tmp_path / "no-data"), "--repeat", "1", "--out", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    names = [row["name"] for row in report["rows"]]
    assert "whole model" in names and "lidar (voxelize + SPVConv)" in names
    assert all(row["ms"] >= 0 for row in report["rows"])
    folded = {row["name"]: row for row in report["rows"] if "BatchNorm folded" in row["name"]}
    assert set(folded) == {"whole model, BatchNorm folded",
                           "lidar (voxelize + SPVConv), BatchNorm folded"}  # fmt: skip
    row = folded["whole model, BatchNorm folded"]
    assert row["baseline"] == "whole model" and row["ratio"] is not None
    assert row["note"].split()[0].isdigit() and int(row["note"].split()[0]) > 0
    assert out.with_suffix(".md").read_text().startswith(report["date"])
    assert list(report)[:5] == RESULT_KEYS and report["command"].startswith(
        "python tools/benchmark.py model"
    )
    from perception.benchmarks.report import config_hash, file_hash
    from perception.config import load_config, save_config

    config = load_config("configs/bevfusion_tiny_lidar.yaml")
    assert report["config_hash"] == config_hash(config)
    # the same number as the sha256 of the config.yaml a run saves beside its checkpoint
    assert file_hash(save_config(config, tmp_path / "config.yaml")) == report["config_hash"]


def test_model_benchmark_times_each_precision_against_float32(tmp_path, capsys):
    from perception.deploy.quantize import bfloat16_unsupported

    if (reason := bfloat16_unsupported(__import__("torch").device("cpu"))) is not None:
        pytest.skip(f"no bfloat16 on this CPU: {reason}")
    out = tmp_path / "model.json"
    code = benchmark(["model", "--config", "configs/bevfusion_tiny_lidar.yaml", "--root",
                      str(tmp_path / "no-data"), "--repeat", "1", "--precision", "float32",
                      "bf16", "--out", str(out)])  # fmt: skip
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out.read_text())["rows"]}
    for stage in ("decoder + head", "whole model"):
        row = rows[f"{stage} (bf16)"]
        assert row["baseline"] == stage and row["ratio"] == pytest.approx(
            rows[stage]["ms"] / row["ms"]
        )
        assert row["note"] == "decoder + head: bf16"
    assert "decoder + head (float32)" not in rows  # float32 is the baseline row itself
    argv = ["model", "--config", "configs/bevfusion_tiny_lidar.yaml", "--precision", "int8"]
    assert benchmark(argv) == 2
    assert "--precision int8 needs --checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_ops_benchmark_quick(tmp_path):
    out = tmp_path / "ops.json"
    assert benchmark(["ops", "--quick", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {row["group"] for row in rows} >= {
        "sparse_conv", "point_to_voxel", "point_to_voxel_fwd_bwd", "voxel_to_point",
        "voxel_to_point_fwd_bwd", "bev_pool", "voxelize", "bev_pool_plan_build_frustum",
        "bev_pool_plan_build_scattered", "bev_pool_depth_plan_build",
    }  # fmt: skip
    assert any(row["ratio"] is not None for row in rows)


def test_jpeg_benchmark_quick(tmp_path):
    out = tmp_path / "jpeg.json"
    assert benchmark(["jpeg", "--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["commit"] and report["machine"]  # provenance of the saved figures
    rows = report["rows"]
    names = {row["name"] for row in rows}
    assert {"opencv imdecode", "ours decode_image (strict)"} <= names
    ours = next(row for row in rows if row["name"] == "ours decode_image (strict)")
    assert ours["baseline"] == "opencv imdecode" and ours["ratio"] > 0
    reduced = [row for row in rows if row["name"] == "reduced decode + transform"]
    assert len(reduced) == 2 and all(r["baseline"] == "full decode + transform" for r in reduced)
    assert "decoded at 300x169" in reduced[0]["note"]  # 800x450 -> 256x96: decoded at 3/8


def _fake_run(root, variant, *, mAP, NDS, vel_err=1.0, seconds=600, threads=1, sets=""):
    work = root / variant
    (work / "test").mkdir(parents=True)
    command = f"OMP_NUM_THREADS={threads} python tools/train.py x {sets}".strip()
    (work / "train_time.json").write_text(
        json.dumps({"variant": variant, "train_seconds": seconds, "steps": 10, "command": command})
    )
    errors = {"trans_err": 0.5, "scale_err": 0.2, "orient_err": 0.4, "vel_err": vel_err,
              "attr_err": 0.2}  # fmt: skip
    summary = {"mean_ap": mAP, "nd_score": NDS, "tp_errors": errors,
               "label_aps": {"car": {"0.5": mAP, "2.0": mAP}, "truck": {"2.0": mAP / 2}}}  # fmt: skip
    (work / "test" / "metrics.json").write_text(
        json.dumps({"summary": summary, "evaluated": {"root": "data/heldout"}})
    )


def test_accuracy_collects_runs_and_judges_targets(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "fused", mAP=0.42, NDS=0.47)
    _fake_run(runs, "lidar", mAP=0.40, NDS=0.46, seconds=1900)  # over the 30 minutes
    _fake_run(runs, "camera", mAP=0.05, NDS=0.10, vel_err=1.1)
    _fake_run(runs, "camera_t1", mAP=0.04, NDS=0.09, vel_err=1.0)
    out = tmp_path / "acc.json"
    assert benchmark(["accuracy", "--runs", str(runs), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result)[:5] == RESULT_KEYS and result["config_hash"] is None  # one per run
    assert result["command"] == f"python tools/benchmark.py accuracy --runs {runs} --out {out}"
    assert [r["variant"] for r in result["runs"]] == ["fused", "lidar", "camera", "camera_t1"]
    met = {c["target"]: c["met"] for c in result["targets"]}
    assert met["fused mAP >= 0.4 and NDS >= 0.45"] is True
    assert met["fusion beats LiDAR only and camera only (NDS and mAP)"] is True
    assert met["camera only: TSM (T=2) lowers mAVE against T=1"] is False
    assert met["lidar: trained within 30 minutes"] is False
    assert "| fused (" in out.with_suffix(".md").read_text()
    assert result["runs"][0]["per_class_ap"] == {"car": 0.42, "truck": 0.21}
    assert result["runs"][0]["camera_start"] == 0.0  # no config.yaml: a run from before
    # a LiDAR-first run says so, read from the resolved config the trainer saved
    (runs / "fused" / "config.yaml").write_text(
        "train:\n  camera_start: 0.5\ndata:\n  sweep_stride: 4\nmodel:\n  paint_points: true\n"
        "  camera:\n    lidar_depth_prior: 5.0\n"
    )
    assert benchmark(["accuracy", "--runs", str(runs), "--out", str(out)]) == 0
    fused = json.loads(out.read_text())["runs"][0]
    assert (fused["camera_start"], fused["sweep_stride"]) == (0.5, 4)
    saved = (runs / "fused" / "config.yaml").read_bytes()
    assert fused["config_hash"] == hashlib.sha256(saved).hexdigest()
    table = out.with_suffix(".md").read_text()
    assert (
        "LiDAR first (camera from 0.5 of the steps), every 4th earlier sweep, points painted"
        " with pixel colours, LiDAR depth logit prior (5) |" in table
    )
    assert fused["paint_points"] and not json.loads(out.read_text())["runs"][1]["paint_points"]
    assert "trained on" not in table  # no data.root: the default world
    assert "perspective" not in table and "flat-ground" not in table  # not in the config: off
    (runs / "camera_t1" / "config.yaml").write_text(
        "model:\n  camera:\n    perspective_loss_weight: 1.0\n    ground_depth_input: -1.84\n"
        "train:\n  init_from: outputs/camera_pretrain\n  freeze_prefixes: [camera.encoder.]\n"
    )
    assert benchmark(["accuracy", "--runs", str(runs), "--out", str(out)]) == 0
    table = out.with_suffix(".md").read_text()
    assert (
        ", flat-ground depth prior, perspective supervision (weight 1), camera encoder "
        "pretrained (`camera_pretrain`), frozen: `camera.encoder.` |" in table
    )
    # a student started from its teacher's fuser, decoder and head (TEACHER_INIT) says so
    (runs / "camera_t1" / "config.yaml").write_text(
        "train:\n  init_from: outputs/distill/lidar\n"
        "  init_prefixes: [fuser., decoder., head.]\n"
    )
    assert benchmark(["accuracy", "--runs", str(runs), "--out", str(out)]) == 0
    table = out.with_suffix(".md").read_text()
    assert ", fuser, decoder, head started from `lidar` |" in table
    assert "camera encoder pretrained" not in table
    assert json.loads(out.read_text())["runs"][3]["init_prefixes"] == [
        "fuser.",
        "decoder.",
        "head.",
    ]
    # a run on another training world (TRAIN_SCENES) names it; the default world does not
    (runs / "fused" / "config.yaml").write_text("data:\n  root: data/synth-train-s100\n")
    (runs / "lidar" / "config.yaml").write_text("data:\n  root: data/synth-train\n")
    assert benchmark(["accuracy", "--runs", str(runs), "--out", str(out)]) == 0
    table = out.with_suffix(".md").read_text()
    assert "| fused (`bevfusion_tiny`, cameras T=1), trained on `synth-train-s100` |" in table
    assert json.loads(out.read_text())["runs"][1]["train_world"] == "data/synth-train"
    assert "| LiDAR only (`bevfusion_tiny_lidar`) |" in table


def test_targets_are_judged_by_the_tool_not_the_library(tmp_path):
    """The library collects figures; the targets and verdicts live in tools/benchmark.py."""
    from perception.benchmarks import accuracy
    from tools import benchmark as tool

    assert not hasattr(accuracy, "TARGET_MAP") and not hasattr(accuracy, "check_targets")
    assert (tool.TARGET_MAP, tool.TARGET_NDS) == (0.40, 0.45)
    _fake_run(tmp_path, "fused", mAP=0.42, NDS=0.47)
    result = accuracy.collect(tmp_path, command="c")
    assert "targets" not in result and "| target |" not in accuracy.markdown(result)
    assert tool.accuracy_targets({r["variant"]: r for r in result["runs"]})[1] == {
        "target": "fused mAP >= 0.4 and NDS >= 0.45", "met": True,
        "evidence": "mAP 0.420, NDS 0.470",
    }  # fmt: skip


def test_accuracy_reports_missing_runs(tmp_path, capsys):
    assert benchmark(["accuracy", "--runs", str(tmp_path), "--out", str(tmp_path / "a.json")]) == 2
    assert "no finished variant" in capsys.readouterr().err
    _fake_run(tmp_path, "fused", mAP=0.1, NDS=0.2)
    assert benchmark(["accuracy", "--runs", str(tmp_path), "--out", str(tmp_path / "a.json")]) == 0
    met = {c["target"]: c["met"] for c in json.loads((tmp_path / "a.json").read_text())["targets"]}
    assert met["fused mAP >= 0.4 and NDS >= 0.45"] is False
    assert met["fusion beats LiDAR only and camera only (NDS and mAP)"] is None


def test_accuracy_compares_fusion_only_at_equal_threads(tmp_path):
    _fake_run(tmp_path, "fused", mAP=0.42, NDS=0.47, threads=2)
    _fake_run(tmp_path, "lidar", mAP=0.40, NDS=0.46, threads=2)
    _fake_run(tmp_path, "camera", mAP=0.05, NDS=0.10, threads=1)  # another mode: not compared
    out = tmp_path / "a.json"
    assert benchmark(["accuracy", "--runs", str(tmp_path), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    met = {c["target"]: c for c in result["targets"]}
    check = met["fusion beats LiDAR only and camera only (NDS and mAP)"]
    assert (
        check["met"] is None
        and "no camera run at the fused run's thread count" in check["evidence"]
    )
    assert [r["threads"] for r in result["runs"]] == [2, 2, 1]
    _fake_run(tmp_path / "b", "fused", mAP=0.30, NDS=0.35, threads=2)
    _fake_run(tmp_path / "b", "lidar", mAP=0.40, NDS=0.46, threads=2)
    assert benchmark(["accuracy", "--runs", str(tmp_path / "b"), "--out", str(out)]) == 0
    met = {c["target"]: c["met"] for c in json.loads(out.read_text())["targets"]}
    assert met["fusion beats LiDAR only and camera only (NDS and mAP)"] is False


def _saved_run(path, ms_ours, ms_base, *, extra=False):
    rows = [
        {"group": "g", "name": "base", "shape": "s", "ms": ms_base, "baseline": None,
         "ratio": None, "note": ""},
        {"group": "g", "name": "ours", "shape": "s", "ms": ms_ours, "baseline": "base",
         "ratio": ms_base / ms_ours, "note": ""},
    ]  # fmt: skip
    if extra:
        rows.append({"group": "g", "name": "extra", "shape": "s", "ms": 1.0, "baseline": None,
                     "ratio": None, "note": ""})  # fmt: skip
    path.write_text(json.dumps({"date": "2026-12-04", "machine": "m", "command": "c",
                                "rows": rows}))  # fmt: skip
    return str(path)


def test_runs_side_by_side(tmp_path, capsys):
    files = [
        _saved_run(tmp_path / "a.json", 10.0, 30.0),
        _saved_run(tmp_path / "b.json", 10.0, 20.0, extra=True),
        _saved_run(tmp_path / "c.json", 10.0, 40.0),
    ]
    assert benchmark(["runs", *files]) == 0
    table = capsys.readouterr().out
    ours = next(line for line in table.splitlines() if line.startswith("| g | ours |"))
    assert ours == "| g | ours | 10.0 | 10.0 | 10.0 | base | 3.00x | 2.00x | 4.00x | 3.00x |"
    extra = next(line for line in table.splitlines() if line.startswith("| g | extra |"))
    assert extra == "| g | extra |  | 1.0 |  |  |  |  |  |  |"
    assert f"- B: `{files[1]}`, 2026-12-04, m" in table


def test_runs_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert benchmark(["runs", str(bad)]) == 2
    assert "bad.json: no 'rows'" in capsys.readouterr().err


def test_time_interleaved_takes_turns():
    from perception.benchmarks.common import time_interleaved

    order = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    timings = time_interleaved(fns, rounds=2, repeat=3)
    assert set(timings) == {"a", "b"} and all(ms >= 0 for ms in timings.values())
    # one warm-up call each, then per round three of a and three of b
    assert order == ["a", "b"] + (["a"] * 3 + ["b"] * 3) * 2


def test_point_voxel_baselines_compute_what_ours_computes():
    """The plain-torch baselines of the point <-> voxel rows give ours' outputs (else the
    ratios would compare different work)."""
    import torch

    from perception.benchmarks import point_voxel_ops as bench
    from perception.ops.point_voxel import point_to_voxel, voxel_to_point

    coords = bench.point_coords(3000, "cpu")
    feats = torch.randn(coords.shape[0], 4)
    extent = torch.floor(coords[:, 1:]).long().amax(dim=0) + 2
    voxels = point_to_voxel(feats, coords, 1)
    torch.testing.assert_close(bench.plain_point_to_voxel(feats, coords, extent), voxels.feats)
    keys = bench._linear_keys(voxels.coords[:, 1:].long(), extent)
    torch.testing.assert_close(
        bench.plain_voxel_to_point(voxels.feats, keys, coords, extent),
        voxel_to_point(voxels, coords),
    )


def test_pairs_tabulates_every_recorded_comparison(tmp_path, capsys):
    budget = "--set seed=3 --set train.time_budget_min=28.5"
    _fake_run(tmp_path / "a", "fused", mAP=0.50, NDS=0.50, sets=budget)
    _fake_run(tmp_path / "a", "lidar", mAP=0.55, NDS=0.52, sets=budget)
    _fake_run(tmp_path / "b", "fused", mAP=0.60, NDS=0.55)
    _fake_run(tmp_path / "b", "lidar", mAP=0.55, NDS=0.52)
    _fake_run(tmp_path / "b", "camera", mAP=0.01, NDS=0.1, vel_err=1.5)
    _fake_run(tmp_path / "b", "camera_t1", mAP=0.02, NDS=0.1, vel_err=1.7)
    _fake_run(tmp_path / "c", "lidar", mAP=0.55, NDS=0.52)  # no partner: no row
    files = []
    for name in "abc":
        files.append(str(tmp_path / f"acc_{name}.json"))
        assert benchmark(["accuracy", "--runs", str(tmp_path / name), "--out", files[-1]]) == 0
    capsys.readouterr()
    out = tmp_path / "pairs.md"
    assert benchmark(["pairs", *files, "--out", str(out)]) == 0
    table = out.read_text()
    assert "fusion ahead on both mAP and NDS in 1 of 2 pairs; at equal wall time" in table
    assert "(both runs fitted to one time budget) in 0 of 1." in table
    rows = [line for line in table.splitlines() if line.startswith("| acc_")]
    assert [row.split(" | ")[0] for row in rows] == ["| acc_a", "| acc_b", "| acc_b"]  # + TSM
    assert "| 3 | - | budget 28.5 min | 10 / 10 | 0.500 | 0.550 | -0.050 |" in rows[0]
    assert rows[0].endswith("| -0.020 | no |")
    assert "| config | - | 10 steps | 10 / 10 | 0.600 | 0.550 | +0.050 |" in rows[1]
    assert rows[1].endswith("| +0.030 | yes |")
    assert "mAVE lower with TSM in 1 of 1 pairs" in table
    assert "| 10 / 10 | 0.010 | 0.020 | 1.500 | 1.700 | yes |" in table
    assert table in capsys.readouterr().out


def test_pairs_backfills_old_records_and_rejects_other_files(tmp_path, capsys):
    _fake_run(tmp_path / "a", "fused", mAP=0.5, NDS=0.5, sets="--set model.paint_points=true")
    _fake_run(tmp_path / "a", "lidar", mAP=0.5, NDS=0.5)
    acc = tmp_path / "acc.json"
    assert benchmark(["accuracy", "--runs", str(tmp_path / "a"), "--out", str(acc)]) == 0
    result = json.loads(acc.read_text())
    for run in result["runs"]:  # a record from before the painting option
        del run["paint_points"]
    acc.write_text(json.dumps(result))
    capsys.readouterr()
    assert benchmark(["pairs", str(acc)]) == 0
    assert "| points painted with pixel colours |" in capsys.readouterr().out
    other = tmp_path / "ops.json"
    other.write_text(json.dumps({"rows": []}))
    assert benchmark(["pairs", str(other)]) == 2
    assert "ops.json: no 'runs' list" in capsys.readouterr().err
    assert benchmark(["pairs", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: cannot read it" in capsys.readouterr().err


def test_node_with_a_missing_bag_is_an_error_and_writes_nothing(tmp_path, capsys):
    """Before: it replayed nothing and overwrote the saved results with zeros, exit 0."""
    out = tmp_path / "node.json"
    argv = ["node", "--bag", str(tmp_path / "no_bag"), "--config", "configs/bevfusion_tiny.yaml",
            "--rates", "1", "--duration", "1", "--sequential-rate", "1", "--out", str(out)]  # fmt: skip
    assert benchmark(argv) == 2
    err = capsys.readouterr().err
    assert err == f"error: --bag {tmp_path / 'no_bag'}: no such rosbag2 " + (
        "(tools/nusc_to_bag.py writes one)\n"
    )
    assert not out.exists()


def test_model_with_a_missing_config_is_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    assert benchmark(["model", "--config", str(missing), "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {missing}: cannot read config") and err.count("\n") == 1


def test_node_target_is_judged_on_the_1x_pipelined_run():
    from tools.benchmark import TARGET_NODE_P99_MS, node_target

    def result(p99, unplanned, rate=1.0, mode="pipelined"):
        run = {"rate": rate, "mode": mode, "latency_p99_ms": p99, "drop_rate": 0.5,
               "unplanned_drop_rate": unplanned, "process_every": 2, "processed_hz": 10.0}  # fmt: skip
        return {"runs": [run]}

    assert ": met (unplanned" in node_target(result(TARGET_NODE_P99_MS, 0.0))
    assert "not met" in node_target(result(TARGET_NODE_P99_MS + 1, 0.0))
    assert "not met" in node_target(result(50.0, 0.01))  # the model fell behind
    assert node_target(result(50.0, 0.0, rate=2.0)) is None
    assert node_target(result(50.0, 0.0, mode="sequential")) is None


def test_distilled_runs_leave_the_teacher_out_and_are_paired_with_the_plain_ones(tmp_path):
    """A distilled student's minutes exclude its teacher's forward passes (logged, reported
    beside); the target is judged; `pairs` sets each student beside the same model without."""
    runs = tmp_path / "runs"
    _fake_run(runs, "camera_t1", mAP=0.02, NDS=0.10, seconds=1700)
    _fake_run(runs, "camera_t1_distill", mAP=0.16, NDS=0.20, seconds=2100)
    work = runs / "camera_t1_distill"
    (work / "config.yaml").write_text("train:\n  teacher: outputs/teacher\n")
    (work / "log.jsonl").write_text(
        '{"step": 10, "losses": {"total": 1.0}}\n{"step": 10, "teacher_seconds": 120.0}\n'
        '{"step": 20, "teacher_seconds": 480.0}\n'
    )
    out = tmp_path / "acc.json"
    assert benchmark(["accuracy", "--runs", str(runs), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    student = next(r for r in result["runs"] if r["variant"] == "camera_t1_distill")
    assert student["train_minutes"] == 27.0 and student["teacher_minutes"] == 8.0
    assert student["teacher"] == "outputs/teacher"
    met = {c["target"]: (c["met"], c["evidence"]) for c in result["targets"]}
    assert met["camera_t1_distill: camera-only mAP >= 0.15"] == (
        True, "mAP 0.160 (without distillation: 0.020)"
    )  # fmt: skip
    assert met["camera_t1_distill: trained within 30 minutes"][0] is True
    table = tmp_path / "pairs.md"
    assert benchmark(["pairs", str(out), "--out", str(table)]) == 0
    text = table.read_text()
    assert "mAP higher with distillation in 1 of 1 pairs" in text
    assert "| T=1 | outputs/teacher | 10 / 10 | 0.160 | 0.020 | 0.200 | 0.100 | yes |" in text
