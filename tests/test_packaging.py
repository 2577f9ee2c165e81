"""The wheel holds exactly the one import root `perception` (ops/ and deploy/ inside it)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_only_perception_packages(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_levels = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_levels == {"perception"}
    packages = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith("__init__.py")}
    for expected in ("perception", "perception.ops", "perception.deploy", "perception.datasets"):
        assert expected in packages
    assert not any(p.startswith(("ops", "deploy", "tools", "tests", "data")) for p in packages)
