"""tools/visualize.py merges sweeps with the dataset's age limit (--max-sweep-age)."""

from __future__ import annotations

import re

import pytest

from tools.visualize import main as visualize


def _points(capsys) -> int:
    return int(re.search(r"\((\d+) points", capsys.readouterr().out).group(1))


def test_max_sweep_age_limits_the_merged_sweeps(indexed_world_copy, tmp_path, capsys):
    """#28 (c): 0.06 s keeps only the newest earlier sweep (20 Hz); the default (0.55 s, as
    data.max_sweep_age) and 'none' merge both."""
    world = indexed_world_copy("visualize_sweeps", max_sweeps=3, max_clip_frames=1)
    base = [
        "--root",
        str(world),
        "--sweeps",
        "3",
        "--sample",
        "1",
        "--out",
        str(tmp_path / "s.png"),
    ]
    counts = {}
    for age in (None, "0.06", "none", "0.01"):
        assert visualize(base + ([] if age is None else ["--max-sweep-age", age])) == 0
        counts[age] = _points(capsys)
    assert counts[None] == counts["none"] > counts["0.06"] > counts["0.01"]
    with pytest.raises(SystemExit) as exited:
        visualize([*base, "--max-sweep-age", "-1"])
    assert exited.value.code == 2 and "must be > 0 seconds or 'none'" in capsys.readouterr().err
