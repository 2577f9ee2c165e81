"""The whole evaluation path through the project's own reader: index -> Sample (LiDAR frame)
-> Detections -> submission (global frame) -> devkit metrics."""

from __future__ import annotations

import json

import pytest

from tools.eval import main as evaluate_cli
from tools.gt_baseline import main as gt_baseline

VERSION = "v1.0-mini"


@pytest.fixture(scope="module")
def world(indexed_world_copy):
    return indexed_world_copy("oracle")


def _score(world, tmp_path, *noise: str) -> dict:
    results = tmp_path / "results.json"
    argv = [
        "--root",
        str(world),
        "--version",
        VERSION,
        "--split",
        "mini_val",
        "--out",
        str(results),
    ]
    assert gt_baseline([*argv, *noise]) == 0
    out = tmp_path / "eval"
    assert evaluate_cli(["--root", str(world), "--version", VERSION, "--split", "mini_val",
                         "--results", str(results), "--out", str(out)]) == 0  # fmt: skip
    return json.loads((out / "metrics.json").read_text())["summary"]


def test_exact_ground_truth_scores_perfectly(world, tmp_path):
    summary = _score(world, tmp_path)
    assert summary["mean_ap"] == pytest.approx(1.0)
    assert summary["nd_score"] >= 0.99
    assert set(summary["mean_dist_aps"]) == {
        "car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle",
        "bicycle", "pedestrian", "traffic_cone",
    }  # fmt: skip
    for name, value in summary["tp_errors"].items():
        assert value == pytest.approx(0.0, abs=1e-3), name


def test_yaw_noise_raises_only_orientation_error(world, tmp_path):
    summary = _score(world, tmp_path, "--noise-yaw", "0.2")
    errors = summary["tp_errors"]
    assert errors["orient_err"] > 0.08
    assert errors["trans_err"] == pytest.approx(0.0, abs=1e-3)
    assert errors["vel_err"] == pytest.approx(0.0, abs=1e-3)
    assert summary["mean_ap"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "minival"], "unknown split 'minival'"),
        # an empty split (no test scene in this world): a message, not a bare ValueError
        (["--split", "test"], "split 'test' holds no samples in v1.0-mini"),
        (["--version", "v1.0-trainval"], "v1.0-trainval not found"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(world, tmp_path, capsys, args, message):
    results = tmp_path / "results.json"
    assert gt_baseline(["--root", str(world), "--out", str(results), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not results.exists()


def test_missing_root_is_named(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert gt_baseline(["--root", str(missing), "--out", str(tmp_path / "r.json")]) == 2
    assert f"error: dataroot {missing} does not exist" in capsys.readouterr().err
