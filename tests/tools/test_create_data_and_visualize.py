"""tools/create_data.py (nuscenes, check) and tools/visualize.py on a tiny generated world."""

from __future__ import annotations

import shutil

import cv2
import pytest

from tools.create_data import main as create_data
from tools.visualize import main as visualize

VERSION = "v1.0-mini"


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("tools") / "world"
    shutil.copytree(tiny_world, root)
    return root


def test_index_check_and_picture(world, tmp_path, capsys):
    assert create_data(["check", "--root", str(world), "--version", VERSION]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert create_data(["nuscenes", "--root", str(world), "--version", VERSION]) == 0
    assert (world / f"perception_index_{VERSION}.json.gz").is_file()
    out = tmp_path / "s.png"
    assert (
        visualize(["--root", str(world), "--version", VERSION, "--sample", "1", "--out", str(out)])
        == 0
    )
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[0] > 100 and picture.shape[1] > picture.shape[0]


def test_check_fails_on_a_damaged_root(world, tmp_path, capsys):
    root = tmp_path / "damaged"
    shutil.copytree(world, root)
    (root / VERSION / "sample_annotation.json").write_text("{not json")
    assert create_data(["check", "--root", str(root), "--version", VERSION]) == 1
    out = capsys.readouterr().out
    assert "sample_annotation.json: not valid JSON" in out and "1 problem(s)" in out


def test_index_of_a_broken_root_names_the_problem(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        create_data(["nuscenes", "--root", str(tmp_path), "--version", VERSION])
    assert exit_info.value.code == 2
    assert "tools/create_data.py check" in capsys.readouterr().err


def test_check_reads_sweeps_by_default_and_says_what_keyframes_only_skips(world, tmp_path, capsys):
    root = tmp_path / "no_sweep"
    shutil.copytree(world, root)
    sweep = next((root / "sweeps" / "LIDAR_TOP").iterdir())
    sweep.unlink()
    for flags in ([], ["--all-files"]):  # --all-files: the old flag, now the default
        assert create_data(["check", "--root", str(root), "--version", VERSION, *flags]) == 1
        out = capsys.readouterr().out
        assert f"{sweep.name}: LiDAR file is missing" in out and "1 problem(s)" in out
        assert "NOT read" not in out
    assert (
        create_data(["check", "--root", str(root), "--version", VERSION, "--keyframes-only"]) == 0
    )
    out = capsys.readouterr().out
    assert "no problems found" in out and "NOT read: " in out and "LiDAR sweep file(s)" in out
