"""The test report's sample pictures read the data with the config's sweep and clip rules."""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext

import pytest

from perception.config import parse_config
from perception.evaluation import runner
from tests.perception.models.helpers import MICRO


def test_pictures_merge_sweeps_with_the_configs_age_limit(indexed_world_copy, monkeypatch):
    """#28 (c): with data.max_sweep_age 0.06 s (20 Hz sweeps: only the newest earlier one),
    the pictured samples merge no sweep older than that; the dataset's default (0.55 s) would
    merge both earlier sweeps."""
    root = indexed_world_copy("runner_pictures", max_sweeps=3, max_clip_frames=1)
    drawn = []
    monkeypatch.setattr(
        runner, "draw_sample_pictures", lambda sample, _dets, **_: drawn.append(sample)
    )
    for age, oldest in ((0.06, 0.06), (None, 0.2)):
        drawn.clear()
        overrides = [f"data.root={root}", "data.sweeps=3", f"data.max_sweep_age={age or 'null'}"]
        config = parse_config(MICRO, [*overrides, "data.max_clip_frame_age=null"])
        with pytest.warns(UserWarning, match="max_sweep_age=0.06") if age else nullcontext():
            runner._pictures(config, "mini_val", defaultdict(lambda: None), 2, 0.3)
        assert len(drawn) == 2
        lags = [float(s.points[:, 4].max()) for s in drawn]
        assert all(lag <= oldest for lag in lags) and max(lags) > 0.04
