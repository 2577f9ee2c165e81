"""tools/test.py: a micro checkpoint tested on the tiny world writes the submission, the metrics
and a self-contained report; usage errors are clear and exit with 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.perception.evaluation.test_inference import make_micro_checkpoint
from tools.test import main as run_cli

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def micro(indexed_world_copy, tmp_path_factory) -> tuple[Path, Path]:
    """(config path, work dir) of a random micro model on a private tiny world."""
    root = indexed_world_copy("test_cli", max_sweeps=1, max_clip_frames=2)
    return make_micro_checkpoint(root, tmp_path_factory.mktemp("test_cli"), step=5)


@pytest.fixture(scope="module")
def tested(micro, tmp_path_factory) -> tuple[Path, str]:
    """One plain run (all sensors) of the CLI: its output dir and what it printed."""
    import contextlib
    import io

    config, work = micro
    out = tmp_path_factory.mktemp("tested") / "out"
    printed = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: runs before the function-scoped `one_thread`
    with contextlib.redirect_stdout(printed):
        code = run_cli([str(config), str(work), "--split", "mini_val", "--out", str(out),
                          "--no-progress", "--pictures", "2"])  # fmt: skip
    torch.set_num_threads(threads)
    assert code == 0
    return out, printed.getvalue()


def test_writes_results_metrics_and_report(tested):
    out, printed = tested
    for name in ("results_nusc.json", "metrics.json", "metrics.md", "report.html",
                 "latency.json", "config.yaml"):  # fmt: skip
        assert (out / name).is_file(), name
    results = json.loads((out / "results_nusc.json").read_text())
    assert len(results["results"]) == 8
    assert results["meta"]["use_camera"] and results["meta"]["use_lidar"]
    content = json.loads((out / "metrics.json").read_text())
    assert content["evaluated"]["split"] == "mini_val"
    assert [b["lo"] for b in content["range_bands"]] == [0.0, 20.0, 30.0]
    assert (out / "metrics.md").read_text() in printed
    assert str((out / "report.html").resolve()) in printed

    page = (out / "report.html").read_text()
    for section in ("summary", "per-class", "pr-curves", "distance", "bev", "cameras",
                    "latency", "robustness", "config"):  # fmt: skip
        assert f'<h2 id="{section}">' in page, section
    # PR curves + distance bars + (BEV + cameras) for each of the 2 samples drawn.
    assert page.count("data:image/png;base64,") == 2 + 2 * 2
    run = json.loads((out / "latency.json").read_text())["run"]
    assert run["step"] == "5" and run["checkpoint"].endswith("step_5")
    assert "step_5" in page and "LiDAR branch (incl. voxelization)" in page
    latency = json.loads((out / "latency.json").read_text())["latency_ms"]
    assert latency["total"]["n"] == 8


def test_dropping_lidar_changes_the_results(micro, tested, tmp_path):
    config, work = micro
    out = tmp_path / "out"
    code = run_cli([str(config), str(work / "checkpoints" / "step_5"), "--split", "mini_val",
                      "--out", str(out), "--no-progress", "--pictures", "0",
                      "--drop-sensors", "lidar"])  # fmt: skip
    assert code == 0
    dropped = json.loads((out / "results_nusc.json").read_text())
    full = json.loads((tested[0] / "results_nusc.json").read_text())
    assert dropped["meta"]["use_lidar"] is False and dropped["meta"]["use_camera"] is True
    assert dropped["results"] != full["results"]
    assert "lidar" in json.loads((out / "latency.json").read_text())["run"]["sensors dropped"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "val"], "split 'val' belongs to the *-trainval database"),
        (["--split", "nonsense"], "unknown split 'nonsense'"),
        (["--drop-sensors", "radar"], "unknown sensors to drop ['radar']"),
        (["--set", "model.bogus=1"], "model.bogus: unknown key"),
        (["--set", "data.root=/no/such/root"], "data.root: dataroot /no/such/root does not exist"),
        (["--set", "data.version=v1.0-trainval"], "v1.0-trainval not found"),
    ],
)
def test_usage_errors_exit_2(micro, tmp_path, capsys, args, message):
    config, work = micro
    code = run_cli([str(config), str(work), "--out", str(tmp_path / "out"), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "out").exists()


def test_unknown_split_lists_the_valid_ones(micro, tmp_path, capsys):
    config, work = micro
    assert run_cli([str(config), str(work), "--out", str(tmp_path), "--split", "bogus"]) == 2
    assert "mini_val" in capsys.readouterr().err


def test_missing_checkpoint_names_the_path(micro, tmp_path, capsys):
    config, _ = micro
    missing = tmp_path / "no_such_run"
    assert run_cli([str(config), str(missing), "--out", str(tmp_path / "out")]) == 2
    assert f"error: checkpoint not found: {missing}" in capsys.readouterr().err
    empty = tmp_path / "empty_work_dir"
    empty.mkdir()
    assert run_cli([str(config), str(empty), "--out", str(tmp_path / "out")]) == 2
    assert f"error: {empty}: no checkpoint here" in capsys.readouterr().err


def test_checkpoint_of_another_model_is_an_error(micro, tmp_path, capsys):
    config, work = micro
    code = run_cli([str(config), str(work), "--out", str(tmp_path / "out"), "--no-progress",
                      "--set", "model.fuser_channels=8"])  # fmt: skip
    assert code == 1
    assert "does not fit the model" in capsys.readouterr().err


@pytest.mark.slow
def test_robustness_table(micro, tmp_path):
    config, work = micro
    out = tmp_path / "out"
    code = run_cli([str(config), str(work), "--out", str(out), "--no-progress",
                      "--pictures", "1", "--robustness"])  # fmt: skip
    assert code == 0
    page = (out / "report.html").read_text()
    settings = ("all_sensors", "lidar_only", "cameras_only", "cam_front_dropped",
                "lidar_beams_halved")  # fmt: skip
    maps = {}
    for name in settings:
        metrics = json.loads((out / "robustness" / name / "metrics.json").read_text())
        maps[name] = metrics["summary"]["mean_ap"]
    for title in ("all sensors", "LiDAR only", "cameras only", "CAM_FRONT dropped",
                  "LiDAR beams halved"):  # fmt: skip
        assert f"<td>{title}</td>" in page
    main = json.loads((out / "metrics.json").read_text())["summary"]["mean_ap"]
    assert maps["all_sensors"] == main
    results = {
        name: json.loads((out / "robustness" / name / "results_nusc.json").read_text())
        for name in settings
    }
    # Each setting changed the inputs, hence the detections.
    for name in settings[1:]:
        assert results[name]["results"] != results["all_sensors"]["results"], name


@pytest.mark.slow
def test_torchrun_two_processes_write_what_one_writes(micro, tmp_path):
    """Bit-equal results: both runs use one thread a process (CPU reductions are ordered
    differently with more threads, which moves the last float32 bits)."""
    config, work = micro
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = [str(config), str(work), "--split", "mini_val", "--no-progress", "--pictures", "1"]
    script = str(REPO / "tools" / "test.py")
    subprocess.run(
        [sys.executable, script, *args, "--out", str(tmp_path / "one")],
        check=True, env=env, timeout=600, cwd=REPO,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         script, *args, "--out", str(tmp_path / "two")],
        check=True, env=env, timeout=600, cwd=REPO,
    )  # fmt: skip
    one = json.loads((tmp_path / "one" / "results_nusc.json").read_text())
    two = json.loads((tmp_path / "two" / "results_nusc.json").read_text())
    assert list(two["results"]) == list(one["results"])
    assert two == one
    assert "x 2 process(es)" in (tmp_path / "two" / "report.html").read_text()


def test_no_box_at_all_writes_zero_metrics_and_says_why(micro, tmp_path, capsys):
    """An early checkpoint keeps no box above the score threshold: all-zero metrics (the
    devkit's values for classes without predictions), the reason in metrics.md, metrics.json,
    the report and on stderr, exit 0 (before: exit 1 and no metrics)."""
    config, work = micro
    out = tmp_path / "out"
    code = run_cli([str(config), str(work), "--out", str(out), "--no-progress",
                    "--pictures", "0", "--set", "model.head.score_threshold=1.0"])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert "note: no metric to read: the model kept no box above its score threshold" in (
        captured.err
    )
    assert "(model.head.score_threshold = 1)" in captured.err
    content = json.loads((out / "metrics.json").read_text())
    summary = content["summary"]
    assert summary["mean_ap"] == 0.0 and summary["nd_score"] == 0.0
    assert all(v == 1.0 for v in summary["tp_errors"].values())
    assert set(summary["mean_dist_aps"].values()) == {0.0}
    assert sum(content["evaluated"]["num_gt"].values()) > 0
    assert sum(content["evaluated"]["num_pred"].values()) == 0
    assert "kept no box" in content["evaluated"]["note"]
    assert [b["lo"] for b in content["range_bands"]] == [0.0, 20.0, 30.0]
    for name in ("metrics_summary.json", "metrics_details.json"):
        assert (out / name).is_file(), name
    markdown = (out / "metrics.md").read_text()
    assert "kept no box" in markdown and markdown in captured.out
    page = (out / "report.html").read_text()
    assert "Not evaluated" not in page and "kept no box above its score threshold" in page
