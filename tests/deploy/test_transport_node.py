"""The transport's loss counters reach the node's /perception/diagnostics and its final stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perception.config import parse_config
from perception.deploy import convert, messages
from perception.deploy.node import (
    DIAGNOSTICS_TOPIC,
    NodeOptions,
    PerceptionNode,
    diagnostic_values,
    summary_json,
)
from perception.deploy.transport import InProcessTransport
from perception.models.builder import build_model
from tests.deploy.node_helpers import node_raw

PERIOD_NS = 50_000_000


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return parse_config(node_raw(tmp_path_factory.mktemp("no_world")))


def test_stamp_holes_in_the_cloud_stream_show_in_diagnostics_and_stats(config):
    torch.manual_seed(0)
    transport = InProcessTransport()
    node = PerceptionNode(build_model(config).eval(), config, transport, NodeOptions())
    diagnostics = transport.subscribe(DIAGNOSTICS_TOPIC, "diagnostic_msgs/msg/DiagnosticArray")
    clouds = transport.publisher(node.lidar_topic, messages.POINTCLOUD2)
    points = np.zeros((4, 4), np.float32)
    stamps = [10**9 + i * PERIOD_NS for i in (*range(8), 11)]  # 8, 9 and 10 lost on the way
    with node:
        for stamp in stamps:
            clouds.publish(
                convert.points_to_pointcloud2(points, frame_id="lidar_top", stamp_ns=stamp)
            )
        assert node.wait_idle(len(stamps), timeout_s=30)
        summary = node.publish_diagnostics()
    status = messages.deserialize(diagnostics.take()[-1].cdr, "diagnostic_msgs/msg/DiagnosticArray")
    values = diagnostic_values(status)
    assert values["transport/stamp_gaps/lidar/top"] == "1"
    assert values["transport/stamp_missing"] == "3"
    assert values["transport/sample_lost"] == "0"
    assert status.status[0].level == 1  # WARN
    assert summary["transport"]["stamp_missing/lidar/top"] == 3
    assert '"stamp_gaps/lidar/top": 1' in summary_json(node.stats)
