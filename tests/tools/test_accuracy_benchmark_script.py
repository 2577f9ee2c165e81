"""tools/accuracy_benchmark.sh refuses contradictory settings before it builds any world."""

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "accuracy_benchmark.sh"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TEACHER_INIT": "1"}, "TEACHER_INIT=1 needs TEACHER=DIR"),
        (
            {"TEACHER_INIT": "1", "TEACHER": "t", "PRETRAINED": "p"},
            "TEACHER_INIT=1 and PRETRAINED both set train.init_from",
        ),
        ({"FREEZE_ENCODER": "1"}, "FREEZE_ENCODER needs PRETRAINED"),
    ],
)
def test_contradictory_settings_are_refused_by_name(tmp_path, env, message):
    base = {k: v for k, v in os.environ.items() if k not in ("TEACHER", "PRETRAINED")}
    run = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out"), "camera_t1_distill"],
        env={**base, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and message in run.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written
