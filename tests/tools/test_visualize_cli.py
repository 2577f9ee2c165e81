"""tools/visualize.py: what is wrong with the dataroot, version, split or sample number is one
line on stderr with exit status 2, never a traceback."""

from __future__ import annotations

import pytest

from tools.visualize import main as visualize


@pytest.fixture(scope="module")
def world(indexed_world_copy):
    return indexed_world_copy("visualize_cli", max_sweeps=1, max_clip_frames=1)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_missing_root(tmp_path, capsys):
    missing = tmp_path / "no_such_root"
    assert visualize(["--root", str(missing), "--out", str(tmp_path / "s.png")]) == 2
    err = _error_line(capsys)
    assert f"dataroot {missing} does not exist" in err and "rebuild" not in err


def test_wrong_version(world, tmp_path, capsys):
    argv = ["--root", str(world), "--version", "v1.0-trainval", "--out", str(tmp_path / "s.png")]
    assert visualize(argv) == 2
    err = _error_line(capsys)
    assert f"{world / 'v1.0-trainval'} not found" in err and "['v1.0-mini']" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "minival"], "unknown split 'minival'"),
        (["--sample", "99"], "--sample 99: split 'all' has 12 samples"),
        (["--sweeps", "5"], "sweeps=5: the index holds 1..1"),
    ],
)
def test_bad_arguments(world, tmp_path, capsys, args, message):
    out = tmp_path / "s.png"
    assert visualize(["--root", str(world), "--sweeps", "1", "--out", str(out), *args]) == 2
    assert message in _error_line(capsys)
    assert not out.exists()


def test_root_without_an_index_says_how_to_build_it(tiny_world, tmp_path, capsys):
    assert visualize(["--root", str(tiny_world), "--out", str(tmp_path / "s.png")]) == 2
    assert "tools/create_data.py nuscenes" in _error_line(capsys)
