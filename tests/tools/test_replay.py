"""tools/replay.py and `replay_bag`: every message, in order, at the bag's pace (scaled)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from perception.deploy import convert, messages
from perception.deploy.bag import replay_bag
from perception.deploy.transport import InProcessTransport, loopback_config

START = 1_700_000_000_000_000_000
LIDAR_NS = 50_000_000  # 20 Hz
CAM_NS = 83_333_333  # 12 Hz
DURATION_NS = 600_000_000


def _write_bag(path: Path) -> dict[str, list[int]]:
    """A 0.6 s bag: clouds at 20 Hz, images at 12 Hz, one tf_static. Returns stamps per topic."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    pts = np.zeros((10, 4), np.float32)
    events = [(START + i * LIDAR_NS, "/lidar/top") for i in range(DURATION_NS // LIDAR_NS + 1)]
    events += [
        (START + i * CAM_NS, "/cam_front/image/compressed")
        for i in range(DURATION_NS // CAM_NS + 1)
    ]
    events.append((START, "/tf_static"))
    events.sort()
    types = {"/lidar/top": messages.POINTCLOUD2, "/cam_front/image/compressed": messages.COMPRESSED_IMAGE,
             "/tf_static": messages.TF_MESSAGE}  # fmt: skip
    stamps: dict[str, list[int]] = {t: [] for t in types}
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {
            t: writer.add_connection(t, m, typestore=messages.typestore()) for t, m in types.items()
        }
        for stamp, topic in events:
            if topic == "/lidar/top":
                msg = convert.points_to_pointcloud2(pts, frame_id="lidar_top", stamp_ns=stamp)
            elif topic == "/tf_static":
                msg = convert.transforms_to_tf_message(
                    [convert.StampedTransform("base_link", "lidar_top", stamp, np.eye(4))]
                )
            else:
                msg = convert.jpeg_to_compressed_image(
                    b"\xff\xd8\xff\xd9", frame_id="cam_front", stamp_ns=stamp
                )
            writer.write(conns[topic], stamp, messages.serialize(msg))
            stamps[topic].append(stamp)
    return stamps


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "bag"
    return path, _write_bag(path)


def _stamps(received) -> list[int]:
    out = []
    for r in received:
        msg = r.message()
        header = msg.transforms[0].header if r.msgtype == messages.TF_MESSAGE else msg.header
        out.append(messages.stamp_to_ns(header.stamp))
    return out


@pytest.mark.parametrize("rate", [1.0, 3.0])
def test_replay_in_process_all_messages_in_order_at_rate(small_bag, rate):
    path, stamps = small_bag
    bus = InProcessTransport()
    subs = {t: bus.subscribe(t, m, depth=100) for t, m in [
        ("/lidar/top", messages.POINTCLOUD2), ("/cam_front/image/compressed", messages.COMPRESSED_IMAGE)]}  # fmt: skip
    arrivals = []
    start = time.monotonic()
    start_ns = time.time_ns()  # the clock of Received.receive_time_ns
    stats = replay_bag(path, bus, rate=rate, topics=list(subs))
    elapsed = time.monotonic() - start
    for topic, sub in subs.items():
        got = sub.take()
        assert _stamps(got) == stamps[topic]
        arrivals += [(r.receive_time_ns, s) for r, s in zip(got, _stamps(got))]
        assert stats.counts[topic] == len(stamps[topic])
    assert "/tf_static" not in stats.counts
    expected = DURATION_NS / 1e9 / rate
    # paced, not dumped: it takes the bag's duration / rate; the upper bound is loose because
    # a loaded CI machine may delay a publish, which pacing must absorb rather than fail on
    assert expected * 0.95 <= elapsed <= 2 * expected + 2.0
    # pacing: no message arrives before its stamp (bag time) / rate after the replay began
    # (lateness under load is allowed; arriving early would mean the bag was dumped)
    arrivals.sort()
    wall = (np.array([a for a, _ in arrivals]) - start_ns) / 1e9
    bag = (np.array([s for _, s in arrivals]) - START) / 1e9 / rate
    assert (wall - bag).min() > -0.005


def test_replay_loop_jumps_back_in_time(small_bag):
    path, stamps = small_bag
    bus = InProcessTransport()
    sub = bus.subscribe("/lidar/top", messages.POINTCLOUD2, depth=100)
    stats = replay_bag(path, bus, rate=4.0, loop=True, max_loops=2, topics=["/lidar/top"])
    assert stats.loops == 2 and stats.counts["/lidar/top"] == 2 * len(stamps["/lidar/top"])
    assert _stamps(sub.take()) == stamps["/lidar/top"] * 2


def test_replay_unknown_topic_is_an_error(small_bag):
    with pytest.raises(ValueError, match="no topics"):
        replay_bag(small_bag[0], InProcessTransport(), topics=["/nope"])


@pytest.mark.slow
def test_replay_cli_over_dds(small_bag, monkeypatch):
    """tools/replay.py in its own process; a DDS subscriber here gets every cloud in order."""
    pytest.importorskip("cyclonedds")
    from perception.deploy.transport import DdsTransport

    path, stamps = small_bag
    monkeypatch.setenv("CYCLONEDDS_URI", loopback_config())
    domain = 200 + (sys.hexversion + id(path)) % 30
    tool = Path(__file__).parents[2] / "tools" / "replay.py"
    with DdsTransport(domain) as t:
        sub = t.subscribe("/lidar/top", messages.POINTCLOUD2, reliable=True, depth=100)
        cmd = [sys.executable, str(tool), str(path), "--rate", "2", "--domain-id", str(domain),
               "--wait-subscribers", "15", "--topics", "/lidar/top", "/tf_static"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        time.sleep(0.3)
        got = sub.take()
    assert _stamps(got) == stamps["/lidar/top"]
    assert f"/lidar/top {len(stamps['/lidar/top'])}".split() == proc.stdout.splitlines()[-3].split()
