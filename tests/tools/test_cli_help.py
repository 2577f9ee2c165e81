"""Every tool parses its arguments before the heavy imports: `--help` answers without importing
torch (10-40 s on a cold disk), and a usage error is one line with exit status 2."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from perception.cli import dataroot_problem

REPO = Path(__file__).resolve().parents[2]
TOOLS = sorted(p.name for p in (REPO / "tools").glob("*.py"))

# Runs a tool's `--help` as `python tools/<name>.py --help` would, then says whether torch (or
# anything under it) was imported on the way.
_PROBE = """
import runpy, sys
script = sys.argv[1]
sys.argv = [script, *sys.argv[2:]]
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "numpy", "cv2", "nuscenes") if m in sys.modules)
print("HEAVY:", ",".join(heavy), "EXIT:", code)
"""


def _probe(*args: str) -> tuple[list[str], str, str]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("HEAVY:"), proc.stdout + proc.stderr
    heavy, code = last.removeprefix("HEAVY:").split("EXIT:")
    return [m for m in heavy.strip().split(",") if m], code.strip(), proc.stdout + proc.stderr


def test_every_tool_is_covered():
    assert len(TOOLS) >= 11 and "train.py" in TOOLS and "test.py" in TOOLS


# A tool whose imports still come before parsing would be listed here (as a strict xfail).
_NOT_YET: dict[str, str] = {}


@pytest.mark.parametrize(
    "tool",
    [
        pytest.param(t, marks=pytest.mark.xfail(reason=_NOT_YET[t], strict=True))
        if t in _NOT_YET
        else t
        for t in TOOLS
    ],
)
def test_help_imports_no_torch(tool):
    heavy, code, output = _probe(f"tools/{tool}", "--help")
    assert code == "0", output
    assert "usage:" in output
    assert "torch" not in heavy, f"tools/{tool} --help imported {heavy}"


def test_create_data_help_states_the_library_defaults():
    """create_data.py's parser defaults are literals (no import before parsing): they must be
    the generator's."""
    import importlib.util

    from perception.datasets.synth import class_weights, writer

    spec = importlib.util.spec_from_file_location("create_data_tool", REPO / "tools/create_data.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.SYNTH_VERSIONS == writer.VERSIONS
    assert tool.SYNTH_IMAGE_SIZE == writer.DEFAULT_IMAGE_SIZE
    assert tool.SYNTH_SAMPLES_PER_SCENE == writer.DEFAULT_SAMPLES_PER_SCENE
    assert tool.RARE_WEIGHT == class_weights.RARE_WEIGHT


def test_export_help_states_the_library_defaults():
    """The defaults in export's --help are literals (no import before parsing): they must be
    the library's."""
    from perception.deploy.export import DEFAULT_OPSET, DEFAULT_TOLERANCE

    _, code, output = _probe("tools/export.py", "--help")
    assert code == "0"
    flat = " ".join(output.split())
    assert f"--opset OPSET ONNX opset (default {DEFAULT_OPSET})" in flat
    tolerance = re.search(r"per output \(default ([0-9.e-]+)\)", flat)
    assert tolerance and float(tolerance.group(1)) == DEFAULT_TOLERANCE, flat


def test_dataroot_problem_names_the_path(tmp_path):
    assert "does not exist" in dataroot_problem(tmp_path / "nowhere", "v1.0-mini")
    (tmp_path / "v1.0-mini").mkdir()
    (tmp_path / "v1.0-mini" / "scene.json").write_text("[]")
    assert dataroot_problem(tmp_path, "v1.0-mini") is None
    problem = dataroot_problem(tmp_path, "v1.0-trainval")
    assert f"{tmp_path / 'v1.0-trainval'} not found" in problem and "['v1.0-mini']" in problem
