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
