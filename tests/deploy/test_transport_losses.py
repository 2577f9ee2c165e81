"""Real-size clouds cross DDS between processes, and what does not arrive is counted: holes in a
topic's stamp cadence, keep-last overflow, DDS lost/rejected statuses, and samples Cyclone
dropped as undecodable (corrupt CDR)."""

from __future__ import annotations

import os
import socket
import struct
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
    StampCadence,
    _padded,
    header_stamp_ns,
    process_sockets,
    wait_for_match,
)

TOPIC = "/lidar/top"
PERIOD_NS = 50_000_000  # 20 Hz


def _cloud_cdr(n_points: int, stamp_ns: int, *, ring: bool = False) -> bytes:
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(n_points, 4)).astype(np.float32)
    extra: tuple[str, ...] = ()
    if ring:
        pts = np.concatenate([pts, rng.integers(0, 32, (n_points, 1)).astype(np.float32)], 1)
        extra = ("ring",)
    msg = convert.points_to_pointcloud2(pts, frame_id="lidar_top", stamp_ns=stamp_ns, extra=extra)
    return messages.serialize(msg)


def _with_stamp(cdr: bytes, stamp_ns: int) -> bytes:
    return cdr[:4] + struct.pack("<iI", *divmod(stamp_ns, 1_000_000_000)) + cdr[12:]


def test_header_stamp_is_read_without_deserializing():
    cdr = _cloud_cdr(3, 1_700_000_000_123_456_789)
    assert header_stamp_ns(cdr) == 1_700_000_000_123_456_789
    assert header_stamp_ns(_with_stamp(cdr, 5)) == 5
    assert header_stamp_ns(cdr[:8]) is None


def test_stamp_cadence_counts_holes_not_jitter_or_restarts():
    cadence = StampCadence()
    stamps = [i * PERIOD_NS for i in range(8)]
    stamps += [10 * PERIOD_NS, 11 * PERIOD_NS + PERIOD_NS // 4]  # 2 missing; then jitter
    stamps += [3 * PERIOD_NS, 4 * PERIOD_NS, 4 * PERIOD_NS]  # a loop restarts; a repeat
    missing = [cadence.add(s) for s in stamps]
    assert missing == [0] * 8 + [2] + [0] * 4
    assert (cadence.gaps, cadence.missing) == (1, 2)


def test_in_process_counts_keep_last_overflow_and_stamp_holes():
    bus = InProcessTransport()
    pub = bus.publisher(TOPIC, messages.POINTCLOUD2)
    sub = bus.subscribe(TOPIC, messages.POINTCLOUD2, depth=4)
    cdr = _cloud_cdr(10, 0)
    for i in range(8):  # 4 overflow the keep-last queue...
        pub.publish_cdr(_with_stamp(cdr, i * PERIOD_NS))
    assert len(sub.take()) == 4
    for i in range(8, 16):  # ... and leave no hole: the stamps taken so far are 4..7
        pub.publish_cdr(_with_stamp(cdr, i * PERIOD_NS))
        sub.take()
    pub.publish_cdr(_with_stamp(cdr, 19 * PERIOD_NS))
    sub.take()
    stats = bus.stats()
    assert stats["sample_lost"] == stats["sample_lost/lidar/top"] == 4
    assert stats["stamp_gaps/lidar/top"] == 1 and stats["stamp_missing/lidar/top"] == 3
    assert stats["corrupt_cdr"] == 0


def test_dds_subscription_counts_stamp_holes(dds_domain):
    with DdsTransport(dds_domain) as a, DdsTransport(dds_domain) as b:
        pub = a.publisher(TOPIC, messages.POINTCLOUD2)
        sub = b.subscribe(TOPIC, messages.POINTCLOUD2, reliable=True, depth=20)
        assert wait_for_match([pub, sub], 1, 10.0)
        cdr = _cloud_cdr(100, 0)
        stamps = [i * PERIOD_NS for i in (*range(8), 10, 11)]  # 8 and 9 never sent
        for stamp in stamps:
            pub.publish_cdr(_with_stamp(cdr, stamp))
        got = []
        deadline = time.monotonic() + 5
        while len(got) < len(stamps) and time.monotonic() < deadline:
            got += b.wait([sub], 0.5) and sub.take()
        assert [header_stamp_ns(r.cdr) for r in got] == stamps
        stats = b.stats()
    assert stats["stamp_gaps"] == 1 and stats["stamp_missing/lidar/top"] == 2
    assert stats["sample_lost"] == 0 and stats["sample_rejected"] == 0
    assert stats["corrupt_cdr"] == 0 and stats["receive_buffer_bytes"] > 0


# A publisher in another process: raw CDR from a file, header stamps rewritten at 20 Hz.
_PUBLISHER = textwrap.dedent(
    """
    import struct, sys, time
    from perception.deploy.transport import DdsTransport, wait_for_match
    domain, path, count, hz, reliable = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:6])
    cdr = open(path, "rb").read()
    with DdsTransport(int(domain)) as t:
        pub = t.publisher("/lidar/top", "sensor_msgs/msg/PointCloud2", reliable=bool(reliable))
        if not wait_for_match([pub], 1, 20.0):
            sys.exit("no subscriber")
        time.sleep(0.2)
        for i in range(int(count)):
            start = time.perf_counter()
            stamp = 1_000_000_000 + i * 50_000_000
            pub.publish_cdr(cdr[:4] + struct.pack("<iI", *divmod(stamp, 10**9)) + cdr[12:])
            time.sleep(max(0.0, 1 / hz - (time.perf_counter() - start)))
        sys.stdin.read()  # the writer stays until the test is done
    """
)


def _publish_from_another_process(domain, tmp_path, cdr, count, hz, reliable):
    path = tmp_path / "cloud.cdr"
    path.write_bytes(cdr)
    args = [str(domain), str(path), str(count), str(hz), str(int(reliable))]
    return subprocess.Popen(
        [sys.executable, "-c", _PUBLISHER, *args],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _receive(transport, sub, proc, count, timeout_s):
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline and proc.poll() is None:
        got += transport.wait([sub], 0.5) and sub.take()
    return got


def _skip_unless_buffers_hold(transport, sample_bytes, pub_reliable):
    granted = transport.stats()["receive_buffer_bytes"] // 2  # the kernel reports twice
    if not pub_reliable and granted < 2 * sample_bytes:
        pytest.skip(
            f"best effort needs receive buffers of 2 x {sample_bytes} B; the kernel granted "
            f"{granted} B (raise net.core.rmem_max or run with CAP_NET_ADMIN)"
        )


# (publisher reliable, subscription reliable)
QOS = pytest.mark.parametrize(
    "pub_reliable, sub_reliable",
    [(False, False), (True, False), (True, True)],
    ids=["best_effort", "reliable_to_best_effort", "reliable"],
)


@QOS
def test_nuscenes_size_clouds_cross_processes_without_loss(
    dds_domain, tmp_path, pub_reliable, sub_reliable
):
    """~35k points x 5 fields (x, y, z, intensity, ring: 630 kB), 20 clouds at 20 Hz into a
    subscription like the node's (best effort, keep-last 20) and a reliable one."""
    cdr = _cloud_cdr(35_000, 0, ring=True)
    with DdsTransport(dds_domain) as t:
        _skip_unless_buffers_hold(t, len(cdr), pub_reliable)
        sub = t.subscribe(TOPIC, messages.POINTCLOUD2, reliable=sub_reliable, depth=20)
        proc = _publish_from_another_process(dds_domain, tmp_path, cdr, 20, 20, pub_reliable)
        try:
            got = _receive(t, sub, proc, 20, 30)
            stats = t.stats()
        finally:
            proc.communicate("", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert [header_stamp_ns(r.cdr) for r in got] == [10**9 + i * PERIOD_NS for i in range(20)]
    assert got[-1].cdr == _padded(_with_stamp(cdr, 10**9 + 19 * PERIOD_NS))
    losses = ("sample_lost", "stamp_gaps", "corrupt_cdr", "socket_drops")
    assert {k: stats[k] for k in losses} == dict.fromkeys(losses, 0)


@pytest.mark.slow
@QOS
def test_128_beam_clouds_cross_processes(dds_domain, tmp_path, pub_reliable, sub_reliable):
    """2M points (32 MB) a cloud, 6 at 10 Hz: all arrive in order, best effort too (the
    transport's receive buffers hold two such clouds); the time they took is printed."""
    cdr = _cloud_cdr(2_000_000, 0)
    with DdsTransport(dds_domain) as t:
        _skip_unless_buffers_hold(t, len(cdr), pub_reliable)
        sub = t.subscribe(TOPIC, messages.POINTCLOUD2, reliable=sub_reliable, depth=4)
        proc = _publish_from_another_process(dds_domain, tmp_path, cdr, 6, 10, pub_reliable)
        try:
            start = time.perf_counter()
            got = _receive(t, sub, proc, 6, 60)
            elapsed = time.perf_counter() - start
            stats = t.stats()
        finally:
            proc.communicate("", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [header_stamp_ns(r.cdr) for r in got] == [10**9 + i * PERIOD_NS for i in range(6)]
    assert all(len(r.cdr) >= 32_000_000 for r in got)
    print(
        f"\n32 MB clouds (publisher reliable {pub_reliable}, subscription {sub_reliable}): "
        f"6 in {elapsed:.2f} s"
    )
    assert stats["stamp_gaps"] == 0 and stats["sample_lost"] == 0


def _shrink_receive_buffers(transport, size):
    for info in process_sockets():
        if info.inode in transport._domain.udp_inodes:
            with socket.socket(fileno=os.dup(info.fd)) as dup:
                dup.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def test_best_effort_subscription_gets_a_reliable_publishers_clouds_with_small_buffers(
    dds_domain, tmp_path
):
    """The receive buffers a default net.core.rmem_max (208 kB) allows lose most 630 kB
    clouds in bursts; a reliable publisher's reach a best-effort subscription all the same
    (its reliable twin gets the lost fragments resent), once each, in order."""
    cdr = _cloud_cdr(35_000, 0, ring=True)
    with DdsTransport(dds_domain) as t:
        _shrink_receive_buffers(t, 212_992)
        sub = t.subscribe(TOPIC, messages.POINTCLOUD2, depth=20)
        proc = _publish_from_another_process(dds_domain, tmp_path, cdr, 20, 20, reliable=True)
        try:
            got = _receive(t, sub, proc, 20, 30)
            got += t.wait([sub], 0.3) and sub.take()  # a duplicate would be here
        finally:
            proc.communicate("", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert [header_stamp_ns(r.cdr) for r in got] == [10**9 + i * PERIOD_NS for i in range(20)]


def test_datagrams_the_kernel_drops_are_counted(dds_domain, tmp_path):
    """With a receive buffer far too small for a 630 kB best-effort cloud (as a default
    net.core.rmem_max of 208 kB would be), the cloud's fragments overflow it and vanish
    before Cyclone sees them: `socket_drops` counts them."""
    with DdsTransport(dds_domain) as t:
        _shrink_receive_buffers(t, 4096)
        sub = t.subscribe(TOPIC, messages.POINTCLOUD2, depth=5)
        cdr = _cloud_cdr(35_000, 0, ring=True)
        proc = _publish_from_another_process(dds_domain, tmp_path, cdr, 3, 20, reliable=False)
        try:
            deadline = time.monotonic() + 20
            while t.stats()["socket_drops"] == 0 and time.monotonic() < deadline:
                t.wait([sub], 0.1)
            stats = t.stats()
        finally:
            proc.communicate("", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert stats["socket_drops"] > 0


# A publisher that does not import the project: cyclonedds alone, the ROS 2 IDL types written
# out by hand, rclpy's default QoS (reliable, keep-last 10); CYCLONEDDS_URI from the fixture.
_INDEPENDENT_PUBLISHER = textwrap.dedent(
    """
    import sys, time
    from dataclasses import dataclass
    import numpy as np
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.idl import IdlStruct
    from cyclonedds.idl.types import int32, uint32, uint8, sequence
    from cyclonedds.pub import DataWriter
    from cyclonedds.qos import Policy, Qos
    from cyclonedds.topic import Topic
    from cyclonedds.util import duration

    @dataclass
    class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
        sec: int32
        nanosec: uint32

    @dataclass
    class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
        stamp: Time
        frame_id: str

    @dataclass
    class PointField(IdlStruct, typename="sensor_msgs::msg::dds_::PointField_"):
        name: str
        offset: uint32
        datatype: uint8
        count: uint32

    @dataclass
    class PointCloud2(IdlStruct, typename="sensor_msgs::msg::dds_::PointCloud2_"):
        header: Header
        height: uint32
        width: uint32
        fields: sequence[PointField]
        is_bigendian: bool
        point_step: uint32
        row_step: uint32
        data: sequence[uint8]
        is_dense: bool

    domain, count, n_points = (int(a) for a in sys.argv[1:4])
    dp = DomainParticipant(domain)
    topic = Topic(dp, "rt/lidar/top", PointCloud2)
    writer = DataWriter(dp, topic, qos=Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.History.KeepLast(10)))
    data = np.random.default_rng(0).normal(size=(n_points, 5)).astype(np.float32).tobytes()
    fields = [PointField(n, 4 * i, 7, 1) for i, n in enumerate(("x", "y", "z", "intensity", "ring"))]
    t0 = time.monotonic()
    while not writer.get_matched_subscriptions() and time.monotonic() - t0 < 20:
        time.sleep(0.05)
    time.sleep(0.3)
    payload = list(data)
    start = time.perf_counter()
    for i in range(count):
        stamp = 1_000_000_000 + i * 50_000_000
        writer.write(PointCloud2(Header(Time(*divmod(stamp, 10**9)), "lidar_top"), 1, n_points, fields, False, 20, 20 * n_points, payload, True))
    print(f"published {count} in {time.perf_counter() - start:.2f} s", flush=True)
    sys.stdin.read()
    """
)


def test_an_independent_publishers_clouds_reach_a_best_effort_subscription(dds_domain):
    """ROS 2 naming and XTypes match a publisher built without the project: 20 nuScenes-size
    clouds (35k points x 5 float fields), written back to back, all arrive, once, in order."""
    with DdsTransport(dds_domain) as t:
        sub = t.subscribe(TOPIC, messages.POINTCLOUD2, depth=20)
        proc = subprocess.Popen(
            [sys.executable, "-c", _INDEPENDENT_PUBLISHER, str(dds_domain), "20", "35000"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            got = _receive(t, sub, proc, 20, 30)
            got += t.wait([sub], 0.3) and sub.take()  # a duplicate would be here
            stats = t.stats()
        finally:
            proc.communicate("", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert [header_stamp_ns(r.cdr) for r in got] == [10**9 + i * PERIOD_NS for i in range(20)]
    cloud = got[-1].message()
    assert (cloud.width, len(cloud.data), cloud.fields[4].name) == (35_000, 700_000, "ring")
    assert stats["stamp_gaps"] == stats["socket_drops"] == stats["corrupt_cdr"] == 0


def _rtps_data(writer_guid: bytes, seq: int, payload: bytes) -> bytes:
    """One RTPS message holding one DATA submessage (little-endian, no inline QoS) from
    `writer_guid` (16 bytes), addressed to every reader."""
    body = struct.pack("<HH", 0, 16) + bytes(4) + writer_guid[12:]
    body += struct.pack("<iI", seq >> 32, seq & 0xFFFFFFFF) + payload
    return (
        b"RTPS"
        + bytes([2, 1, 0x01, 0x10])  # protocol 2.1, vendor Eclipse Cyclone DDS
        + writer_guid[:12]
        + bytes([0x15, 0x05])  # DATA, flags: little-endian | data present
        + struct.pack("<H", len(body))
        + body
    )


def test_corrupt_cdr_and_malformed_packets_dropped_inside_dds_are_counted(dds_domain, tmp_path):
    """A sample whose CDR does not decode as its type never reaches the reader (Cyclone drops
    it with a warning on stderr); the transport counts it per topic. The corrupt sample is
    injected on loopback under the real remote writer's identity; then a truncated RTPS
    packet, which Cyclone drops as malformed."""
    before = {s.fd for s in process_sockets()}
    with DdsTransport(dds_domain) as t:
        own_ports = [
            s.port for s in process_sockets() if s.fd not in before and s.protocol == "udp"
        ]
        sub = t.subscribe(TOPIC, messages.POINTCLOUD2, depth=5)
        proc = _publish_from_another_process(dds_domain, tmp_path, _cloud_cdr(50, 0), 2, 20, True)
        try:
            assert len(_receive(t, sub, proc, 2, 30)) == 2
            (writer,) = sub.reader.get_matched_publications()
            guid = sub.reader.get_matched_publication_data(writer).key.bytes
            corrupt = b"\x00\x01\x00\x00" + b"\xff" * 40  # frame_id length 4 GB
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                for port in own_ports:
                    udp.sendto(_rtps_data(guid, 3, corrupt), ("127.0.0.1", port))
            deadline = time.monotonic() + 5
            while t.stats()["corrupt_cdr"] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            stats = t.stats()
            assert sub.take() == []
            assert stats["malformed_packets"] == 0
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.sendto(_rtps_data(guid, 4, corrupt)[:44], ("127.0.0.1", own_ports[-1]))
            deadline = time.monotonic() + 5
            while t.stats()["malformed_packets"] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            malformed = t.stats()["malformed_packets"]
        finally:
            proc.communicate("", timeout=30)
    assert stats["corrupt_cdr"] == stats["corrupt_cdr/lidar/top"] == 1
    assert malformed == 1
