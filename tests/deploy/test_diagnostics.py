"""The node's diagnostics builders on their own (no node, no threads): the aggregate status is
WARN exactly when something was dropped, rejected, degraded or lost in transport."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from perception.deploy.diagnostics import (
    NodeStats,
    diagnostic_values,
    frame_status,
    node_status,
    summary_line,
)


def _summary(**changes):
    stats = NodeStats()
    stats.received["/lidar/top"] = 5
    stats.processed = 5
    stats.add_latency("receive_to_publish", 80.0)
    summary = stats.summary()
    summary.update(changes)
    return summary


@pytest.mark.parametrize(
    ("changes", "level"),
    [
        ({}, 0),
        ({"dropped": {"stale": 1}}, 1),
        ({"rejected": {"truncated": 2}}, 1),
        ({"degraded": 1}, 1),
        ({"transport": {"sample_lost": 3}}, 1),
        ({"transport": {"sample_lost": 0}}, 0),
    ],
)
def test_node_status_level(changes, level):
    message = node_status(_summary(**changes), "/lidar/top", 7)
    assert message.status[0].level == level
    values = diagnostic_values(message)
    assert values["clouds_received"] == "5" and values["processed"] == "5"
    assert values["latency/receive_to_publish/p99_ms"] == "80.0"


def test_frame_status_names_masked_cameras():
    job = SimpleNamespace(
        stamp_ns=9, frame_id="LIDAR_TOP", detections=[1, 2], batch=SimpleNamespace(points=[0] * 4),
        masked=("CAM_BACK",), degraded=True, tsm_gaps=0, stale_sweeps=1, stale_clip_frames=0,
        times_ms={"camera": 12.5},
    )  # fmt: skip
    message = frame_status(job)
    assert message.status[0].level == 1
    assert message.status[0].message == "degraded: cameras masked CAM_BACK"
    assert diagnostic_values(message)["objects"] == "2"
    assert diagnostic_values(message)["camera_ms"] == "12.5"


def test_summary_line():
    assert "processed 5" in summary_line(_summary()) and "p99 80.0 ms" in summary_line(_summary())
