"""Publish/subscribe: in-process queues and DDS on loopback (one process and two)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from perception.deploy import convert, messages
from perception.deploy.transport import (
    DdsTransport,
    InProcessTransport,
    _padded,
    loopback_config,
    wait_for_match,
)

TOPIC = "/lidar/top"


def _cloud(n: int, stamp_ns: int, seed: int = 0):
    pts = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    return convert.points_to_pointcloud2(pts, frame_id="lidar_top", stamp_ns=stamp_ns), pts


def test_loopback_config_stays_on_loopback():
    xml = loopback_config()
    assert '<NetworkInterface name="lo"/>' in xml
    assert "<AllowMulticast>false</AllowMulticast>" in xml
    assert '<Peer address="127.0.0.1"/>' in xml


def test_padding_sets_the_encapsulation_option_bits():
    cdr = messages.serialize(messages.header("ab", 3))  # 19 bytes
    padded = _padded(cdr)
    assert len(padded) == 20 and padded[3] == 1 and padded[4:19] == cdr[4:]
    assert messages.deserialize(padded, "std_msgs/msg/Header").frame_id == "ab"
    assert _padded(padded) == padded


def test_in_process_delivers_cdr_in_order_to_every_subscriber():
    bus = InProcessTransport()
    pub = bus.publisher(TOPIC, messages.POINTCLOUD2)
    subs = [bus.subscribe(TOPIC, messages.POINTCLOUD2, depth=10) for _ in range(2)]
    for i in range(5):
        pub.publish(_cloud(8, i)[0])
    assert bus.wait(subs, 0.1) == subs
    for sub in subs:
        got = sub.take()
        assert [messages.stamp_to_ns(r.message().header.stamp) for r in got] == list(range(5))
    assert bus.wait(subs, 0.01) == []


def test_in_process_keep_last_depth_keeps_the_newest():
    bus = InProcessTransport()
    pub = bus.publisher(TOPIC, messages.POINTCLOUD2)
    sub = bus.subscribe(TOPIC, messages.POINTCLOUD2, depth=2)
    for i in range(5):
        pub.publish(_cloud(4, i)[0])
    assert [messages.stamp_to_ns(r.message().header.stamp) for r in sub.take()] == [3, 4]


def test_in_process_rejects_a_second_type_on_a_topic():
    bus = InProcessTransport()
    bus.publisher(TOPIC, messages.POINTCLOUD2)
    with pytest.raises(ValueError, match="carries sensor_msgs/msg/PointCloud2"):
        bus.subscribe(TOPIC, messages.IMAGE)
    with pytest.raises(KeyError, match="unknown ROS message type"):
        bus.subscribe("/x", "foo_msgs/msg/Bar")


def test_dds_loopback_two_participants_one_process(dds_domain):
    """A PointCloud2 goes from one participant to another with ROS 2 names, byte-exact."""
    with DdsTransport(dds_domain) as a, DdsTransport(dds_domain) as b:
        pub = a.publisher(TOPIC, messages.POINTCLOUD2)
        sub = b.subscribe(TOPIC, messages.POINTCLOUD2, reliable=True, depth=5)
        assert wait_for_match([pub, sub], 1, 10.0), "DDS discovery on loopback failed"
        topic = a._topics[TOPIC][0]
        assert (topic.name, topic.typename) == (
            "rt/lidar/top",
            "sensor_msgs::msg::dds_::PointCloud2_",
        )
        msg, pts = _cloud(20_000, 123)
        pub.publish(msg, stamp_ns=456)
        assert b.wait([sub], 5.0) == [sub]
        (got,) = sub.take()
        assert got.source_time_ns == 456
        assert got.cdr.rstrip(b"\0") == _padded(messages.serialize(msg)).rstrip(b"\0")
        cloud = convert.pointcloud2_to_points(got.message(), topic=TOPIC)
        np.testing.assert_array_equal(cloud.points, pts)
        assert cloud.stamp_ns == 123


def test_dds_keep_last_depth(dds_domain):
    with DdsTransport(dds_domain) as a, DdsTransport(dds_domain) as b:
        pub = a.publisher("/tf", messages.TF_MESSAGE)
        sub = b.subscribe("/tf", messages.TF_MESSAGE, reliable=True, depth=2)
        assert wait_for_match([pub, sub], 1, 10.0)
        for i in range(6):
            tf = convert.transforms_to_tf_message(
                [convert.StampedTransform("map", "base_link", i, np.eye(4))]
            )
            pub.publish(tf)
        assert b.wait([sub], 5.0) == [sub]
        time.sleep(0.3)  # the rest arrive; the reader keeps the newest two
        stamps = [
            convert.tf_message_to_transforms(r.message(), topic="/tf")[0].stamp_ns
            for r in sub.take()
        ]
        assert stamps == [4, 5]


_PUBLISHER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from perception.deploy import convert, messages
    from perception.deploy.transport import DdsTransport, wait_for_match
    domain, count, n_points, hz = (int(a) for a in sys.argv[1:5])
    pts = np.random.default_rng(0).normal(size=(n_points, 4)).astype(np.float32)
    with DdsTransport(domain) as t:
        pub = t.publisher("/lidar/top", messages.POINTCLOUD2)
        if not wait_for_match([pub], 1, 20.0):
            sys.exit("no subscriber")
        time.sleep(0.2)
        ser = []
        for i in range(count):
            start = time.perf_counter()
            msg = convert.points_to_pointcloud2(pts, frame_id="lidar_top", stamp_ns=time.time_ns())
            cdr = messages.serialize(msg)
            ser.append(time.perf_counter() - start)
            pub.publish_cdr(cdr)
            time.sleep(max(0.0, 1 / hz - (time.perf_counter() - start)))
        time.sleep(0.5)
        print(f"serialize_ms_p50={1e3 * float(np.median(ser)):.2f}")
    """
)


@pytest.mark.slow
def test_dds_two_processes_1mb_clouds_at_20hz(dds_domain):
    """A second process publishes 1 MB clouds (65536 points) at 20 Hz; all arrive, in order,
    with the latency from the header stamp (publisher's clock) to our take printed."""
    count, n_points = 40, 65536
    with DdsTransport(dds_domain) as t:
        sub = t.subscribe(TOPIC, messages.POINTCLOUD2, reliable=True, depth=count)
        proc = subprocess.Popen(
            [sys.executable, "-c", _PUBLISHER, str(dds_domain), str(count), str(n_points), "20"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        stamps, latency_ms = [], []
        deadline = time.monotonic() + 60
        while len(stamps) < count and time.monotonic() < deadline and proc.poll() is None:
            for r in t.wait([sub], 0.5) and sub.take():
                msg = r.message()
                stamp = messages.stamp_to_ns(msg.header.stamp)
                stamps.append(stamp)
                latency_ms.append((r.receive_time_ns - stamp) / 1e6)
                assert len(msg.data) == n_points * 16
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert len(stamps) == count and stamps == sorted(stamps)
    p50, p99 = np.percentile(latency_ms, [50, 99])
    print(
        f"\n1 MB cloud, 2 processes, 20 Hz: latency p50 {p50:.2f} ms p99 {p99:.2f} ms; {out.strip()}"
    )
    assert p99 < 100, latency_ms  # generous: shared CI cores; the measured figure is printed
