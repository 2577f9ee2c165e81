"""perception.benchmarks.node runs a short replay and reports its figures (speed itself is
measured by the benchmark, never asserted)."""

from __future__ import annotations

import pytest
import torch

from perception.benchmarks.node import markdown, replay_run
from perception.config import parse_config
from perception.deploy.bag import write_nuscenes_bag
from perception.models.builder import build_model
from tests.deploy.node_helpers import SCENE, node_raw


@pytest.fixture
def replay_setup(tiny_world, tmp_path):
    """(bag, model, config): a seeded micro model and a bag of one tiny-world scene."""
    torch.set_num_threads(1)
    config = parse_config(node_raw(tiny_world))
    torch.manual_seed(0)
    model = build_model(config).eval()
    bag = tmp_path / "bag"
    write_nuscenes_bag(tiny_world, SCENE, bag)
    return bag, model, config


@pytest.mark.slow
def test_replay_run_reports_rates_drops_latency_and_memory(replay_setup):
    bag, model, config = replay_setup
    run = replay_run(bag, model, config, rate=2.0, duration_s=1.5, pipelined=True, warmup_s=0.5)
    assert run["mode"] == "pipelined" and run["rate"] == 2.0
    assert run["clouds_received_hz"] > 0 and run["processed"] >= 0
    assert run["rss_start_mb"] > 0 and run["rss_end_mb"] > 0
    assert 0 <= run["drop_rate"] <= 1
    table = markdown({"runs": [run]})
    assert "| 2.0x | pipelined |" in table


@pytest.mark.slow
def test_replay_run_with_the_live_view_and_reduced_decode(replay_setup):
    bag, model, config = replay_setup
    run = replay_run(
        bag, model, config, rate=2.0, duration_s=1.5, pipelined=True, warmup_s=0.5,
        reduced_decode=True, foxglove=True,
    )  # fmt: skip
    assert run["mode"] == "pipelined + foxglove view, reduced decode"
    assert run["clouds_received_hz"] > 0 and "image_decode" in run["stage_p50_ms"]
