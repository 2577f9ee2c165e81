"""`make demo` puts its numbers in context: the oracle's folder says it is one, and the end
says the detector's figures come from a smoke run and where the 30-minute figures are."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_commands() -> str:
    if shutil.which("make") is None:
        pytest.skip("needs GNU make")
    # -n: print the recipe only; the stamp made "up to date" so no setup recipe is listed
    proc = subprocess.run(
        ["make", "-n", "demo", "STAMP=Makefile", "DEMO_STEPS=150"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return proc.stdout


def test_the_oracle_has_a_folder_of_its_own(demo_commands):
    oracle = [line for line in demo_commands.splitlines() if "gt_baseline.py" in line]
    assert oracle and "outputs/demo/oracle/" in oracle[0]
    scoring = [line for line in demo_commands.splitlines() if "tools/eval.py" in line]
    assert scoring and scoring[0].endswith("--out outputs/demo/oracle")
    assert "outputs/demo/eval" not in demo_commands


def test_the_end_says_what_to_expect_and_where_the_real_figures_are(demo_commands):
    end = demo_commands[demo_commands.index("tools/test.py") :]
    assert "150-step smoke run" in end and "expect mAP near 0" in end
    assert "30 CPU minutes" in end and "BENCHMARKS.md" in end
    assert "outputs/demo/test/report.html" in end
