"""tools/eval.py: a thin script over perception.evaluation.evaluate."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
from nuscenes import NuScenes

from tests.perception.evaluation.gt_oracle import write_gt_submission

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "eval.py"


@pytest.fixture(scope="module")
def eval_main():
    return runpy.run_path(str(SCRIPT), run_name="eval_cli")["main"]


@pytest.fixture(scope="module")
def results(tiny_world, tmp_path_factory) -> Path:
    nusc = NuScenes("v1.0-mini", str(tiny_world), verbose=False)
    return write_gt_submission(nusc, "mini_val", tmp_path_factory.mktemp("cli") / "results.json")


def _args(root, results, out, split="mini_val") -> list[str]:
    return [
        "--root", str(root), "--version", "v1.0-mini", "--split", split,
        "--results", str(results), "--out", str(out),
        "--devkit-config", "detection_cvpr_2019",
    ]  # fmt: skip


def test_writes_metrics_and_prints_table(eval_main, tiny_world, results, tmp_path, capsys):
    out = tmp_path / "eval"
    assert eval_main(_args(tiny_world, results, out)) == 0
    printed = capsys.readouterr().out
    content = json.loads((out / "metrics.json").read_text())
    table = (out / "metrics.md").read_text()
    assert table in printed
    assert str((out / "metrics.json").resolve()) in printed
    assert f"| mAP | {content['summary']['mean_ap']:.4f} |" in table
    assert content["evaluated"]["results"] == str(results.resolve())
    # The devkit's own prints are silenced: only the table and the file names are printed.
    assert "Per-class results" not in printed


def test_missing_results_file_is_a_clear_error(eval_main, tiny_world, tmp_path, capsys):
    missing = tmp_path / "absent.json"
    assert eval_main(_args(tiny_world, missing, tmp_path / "eval")) != 0
    assert f"error: results file not found: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_split_of_another_version_is_a_clear_error(
    eval_main, tiny_world, results, tmp_path, capsys
):
    assert eval_main(_args(tiny_world, results, tmp_path / "eval", split="val")) != 0
    assert "split 'val' belongs to the *-trainval database" in capsys.readouterr().err
