"""tools/benchmark.py runs and writes its rows (speed itself is measured, never asserted)."""

from __future__ import annotations

import json

import pytest

from tools.benchmark import main as benchmark


def test_model_benchmark_writes_rows(tmp_path):
    out = tmp_path / "model.json"
    code = benchmark(["model", "--config", "configs/bevfusion_tiny_lidar.yaml", "--root",
                      str(tmp_path / "no-data"), "--repeat", "1", "--out", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    names = [row["name"] for row in report["rows"]]
    assert "whole model" in names and "lidar (voxelize + SPVConv)" in names
    assert all(row["ms"] >= 0 for row in report["rows"])
    assert out.with_suffix(".md").read_text().startswith(report["date"])


@pytest.mark.slow
def test_ops_benchmark_quick(tmp_path):
    out = tmp_path / "ops.json"
    assert benchmark(["ops", "--quick", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {row["group"] for row in rows} >= {"sparse_conv"}
    assert any(row["ratio"] is not None for row in rows)
