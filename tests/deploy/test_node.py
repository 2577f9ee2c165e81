"""The node on real messages of a tiny-world bag: bad input is rejected, counted by reason and
leaves the state alone; stale cameras are masked (degraded output); slow models drop stale
clouds; time jumps and the reset topic reset the state; pipelined equals sequential; recording
and diagnostics."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time

import cv2
import numpy as np
import pytest
import torch

from perception.config import parse_config
from perception.deploy.bag import read_bag, write_nuscenes_bag
from perception.deploy.messages import deserialize, msg_class, ns_to_stamp, serialize, stamp_to_ns
from perception.deploy.node import (
    DIAGNOSTICS_TOPIC,
    OBJECTS_TOPIC,
    RESET_TOPIC,
    STATUS_TOPIC,
    NodeOptions,
    PerceptionNode,
    Recorder,
    diagnostic_values,
)
from perception.deploy.transport import InProcessTransport, Received
from perception.models.builder import build_model
from tests.deploy.node_helpers import SCENE, node_raw

LIDAR = "/lidar/top"
DIAGNOSTIC_ARRAY = "diagnostic_msgs/msg/DiagnosticArray"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def config(tiny_world):
    return parse_config(node_raw(tiny_world))


@pytest.fixture(scope="module")
def model(config):
    torch.manual_seed(0)
    return build_model(config).eval()


@pytest.fixture(scope="module")
def messages(tiny_world, tmp_path_factory):
    """Every message of the scene's bag: (topic, msgtype, cdr), in bag order."""
    out = tmp_path_factory.mktemp("node_msgs") / "scene"
    write_nuscenes_bag(tiny_world, SCENE, out)
    return [(t, m, cdr) for t, m, _, cdr in read_bag(out)]


def _received(topic, msgtype, cdr):
    now = time.time_ns()
    return Received(topic, msgtype, bytes(cdr), now, now)


def _until_cloud(messages, n):
    """The messages up to and including the n-th cloud, and the rest."""
    clouds = [i for i, (t, _, _) in enumerate(messages) if t == LIDAR]
    cut = clouds[n - 1] + 1
    return messages[:cut], messages[cut:]


def _feed(node, items):
    """Hands messages to the node's decode stage directly (no transport, no threads)."""
    for topic, msgtype, cdr in items:
        node.handle(_received(topic, msgtype, cdr))


def _step(node, items):
    """Hands messages to the node one by one on this thread and runs each cloud it sends to the
    model at once, as its model thread would: no threads, no waits on the wall clock."""
    for topic, msgtype, cdr in items:
        node.handle(_received(topic, msgtype, cdr))
        node.run_entry()
    node.finish_pending()
    node.run_entry()


def _publish(node, items):
    """Publishes messages on the node's transport one by one, each waited for."""
    publishers, fed = {}, node.handled
    for topic, msgtype, cdr in items:
        publishers.setdefault(topic, node.transport.publisher(topic, msgtype)).publish_cdr(cdr)
        fed += 1
        assert node.wait_idle(fed, 30)
    assert node.flush(30)


def _edit(cdr, msgtype, change):
    msg = copy.deepcopy(deserialize(cdr, msgtype))
    change(msg)
    return serialize(msg, msgtype)


def _node(model, config, **options):
    options = {"pipelined": False, "wall_timeout": False, "process": lambda s: False, **options}
    return PerceptionNode(model, config, InProcessTransport(), NodeOptions(**options))


def _fields(names):
    def change(msg):
        msg.fields = [f for f in msg.fields if f.name not in names]

    return change


def _set(**values):
    def change(msg):
        for key, value in values.items():
            setattr(msg, key, value)

    return change


def _truncate(msg):
    msg.data = msg.data[:-7]


def _nan(msg):
    data = msg.data.copy()
    data[:4] = np.array([np.nan], np.float32).view(np.uint8)  # x of the first point
    msg.data = data


def _tenfold(msg):
    msg.data = np.tile(msg.data, 10)
    msg.width = msg.width * 10
    msg.row_step = msg.row_step * 10


def _frame(frame_id):
    def change(msg):
        msg.header.frame_id = frame_id

    return change


def _shift_stamp(delta_ns):
    def change(msg):
        msg.header.stamp = ns_to_stamp(stamp_to_ns(msg.header.stamp) + delta_ns)

    return change


BAD_CLOUDS = {
    "missing_field": _fields({"z"}),
    "point_step": _set(point_step=10),
    "truncated": _truncate,
    "big_endian": _set(is_bigendian=True),
    "too_large": _tenfold,
    "unknown_frame": _frame("lidar_bogus"),
    "missing_transform": _shift_stamp(30 * 10**9),  # far from any ego pose
    "out_of_order": _shift_stamp(-60_000_000),  # before the previous cloud
    "duplicate_stamp": _shift_stamp(-50_000_000),  # sentinel: replaced by the last stamp
}


@pytest.mark.parametrize("reason", sorted(BAD_CLOUDS))
def test_bad_cloud_is_rejected_counted_and_keeps_state(model, config, messages, reason):
    head, rest = _until_cloud(messages, 3)
    between, rest = _until_cloud(rest, 1)
    *between, cloud = between  # the TF and images before the next cloud, then the cloud
    width = deserialize(cloud[2], cloud[1]).width
    node = _node(model, config, max_points=3 * width)  # a 10x cloud is junk
    _feed(node, head + between)
    history = list(node.sweeps.history)
    assert len(history) == 2
    edit = BAD_CLOUDS[reason]
    if reason == "duplicate_stamp":
        edit = _shift_stamp(history[-1].stamp_ns - _stamp(cloud[2], cloud[1]))
    node.handle(_received(LIDAR, cloud[1], _edit(cloud[2], cloud[1], edit)))
    assert node.stats.rejected == {reason: 1}
    assert list(node.sweeps.history) == history  # state kept
    _feed(node, [cloud])  # the node carries on: the good cloud is accepted
    assert node.sweeps.history[-1].stamp_ns == _stamp(cloud[2], cloud[1])
    assert node.stats.rejected == {reason: 1}


def test_nonfinite_points_dropped_by_default_rejected_on_request(model, config, messages):
    head, rest = _until_cloud(messages, 2)
    cloud = next(m for m in rest if m[0] == LIDAR)
    bad = _edit(cloud[2], cloud[1], _nan)
    dropping = _node(model, config)
    _feed(dropping, head)
    dropping.handle(_received(LIDAR, cloud[1], bad))
    assert dropping.stats.rejected == {} and dropping.stats.nonfinite_points == 1
    rejecting = _node(model, config, nonfinite="reject")
    _feed(rejecting, head)
    rejecting.handle(_received(LIDAR, cloud[1], bad))
    assert rejecting.stats.rejected == {"non_finite": 1}


def _corrupt_jpeg(msg):
    msg.data = msg.data[: len(msg.data) // 2]


def _small_jpeg(msg):
    ok, jpg = cv2.imencode(".jpg", np.zeros((20, 30, 3), np.uint8))
    msg.data = jpg.reshape(-1)


def _segment(raw: bytes, marker: bytes) -> tuple[int, int]:
    """(offset, length) of the first JPEG segment with `marker` (e.g. b"\\xff\\xc4")."""
    at = raw.index(marker)
    return at, int.from_bytes(raw[at + 2 : at + 4], "big")


def _broken_huffman(msg):
    """Headers intact (size, markers), the first Huffman table's symbols bogus: OpenCV cannot
    decode it either, so before #28 the camera was masked and the next cloud dropped."""
    raw = bytearray(msg.data.tobytes())
    at, length = _segment(bytes(raw), b"\xff\xc4")
    raw[at + 21 : at + 2 + length] = b"\xee" * (length - 19)  # after class/id and 16 counts
    msg.data = np.frombuffer(bytes(raw), np.uint8)


def _noise_scan(msg):
    """Valid headers and end marker around random scan data: libjpeg decodes noise."""
    raw = msg.data.tobytes()
    at, length = _segment(raw, b"\xff\xda")
    start = at + 2 + length
    noise = np.random.default_rng(0).integers(0, 255, len(raw) - start - 2, np.uint8)
    msg.data = np.frombuffer(raw[:start] + noise.tobytes() + b"\xff\xd9", np.uint8)


BAD_IMAGES = {  # name: (edit, reason)
    "truncated": (_corrupt_jpeg, "corrupt_image"),
    "broken_huffman": (_broken_huffman, "corrupt_image"),
    "noise_scan": (_noise_scan, "corrupt_image"),
    "declared_png": (_set(format="png"), "corrupt_image"),
    "image_size": (_small_jpeg, "image_size"),
    "unknown_frame": (_frame("cam_bogus"), "unknown_frame"),
    "duplicate_stamp": (None, "duplicate_stamp"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_is_rejected_counted_and_keeps_state(model, config, messages, name):
    head, rest = _until_cloud(messages, 2)
    node = _node(model, config)
    _feed(node, head)
    topic, msgtype, cdr = next(m for m in rest if m[0] == "/cam_front/image/compressed")
    info = next(m for m in rest if m[0] == "/cam_front/camera_info")
    _feed(node, [info])
    before = list(node.histories["CAM_FRONT"].frames)
    edit, reason = BAD_IMAGES[name]
    if name == "duplicate_stamp":
        bad = _edit(cdr, msgtype, _shift_stamp(before[-1].stamp_ns - _stamp(cdr, msgtype)))
    else:
        bad = _edit(cdr, msgtype, edit)
    node.handle(_received(topic, msgtype, bad))
    assert node.stats.rejected == {reason: 1}
    assert list(node.histories["CAM_FRONT"].frames) == before
    node.handle(_received(topic, msgtype, cdr))
    assert node.histories["CAM_FRONT"].latest.stamp_ns == _stamp(cdr, msgtype)


def test_a_broken_image_is_rejected_at_arrival_and_costs_no_cloud(model, config, messages):
    """#28 item 8: an image whose headers pass the arrival checks but which cannot be decoded
    is rejected at arrival, once; it never enters the camera's history, so no later cloud masks
    the camera for it or fails to rebuild the camera's TSM cache from it."""
    head, _ = _until_cloud(messages, 6)
    fronts = [i for i, m in enumerate(head) if m[0] == "/cam_front/image/compressed"]
    i = fronts[1]
    topic, msgtype, cdr = head[i]
    raw = deserialize(cdr, msgtype).data
    bad = _edit(cdr, msgtype, _broken_huffman)
    assert cv2.imdecode(raw, cv2.IMREAD_COLOR) is not None  # the original decodes
    assert cv2.imdecode(deserialize(bad, msgtype).data, cv2.IMREAD_COLOR) is None
    jobs = []
    node = _node(model, config, process=None)
    node.on_result = jobs.append
    _step(node, head[:i] + [(topic, msgtype, bad)] + head[i + 1 :])
    assert node.stats.rejected == {"corrupt_image": 1}
    assert node.stats.dropped == {} and node.stats.camera_errors == {}
    assert node.stats.processed == len(jobs) == 6
    assert all("CAM_FRONT" not in job.masked for job in jobs[1:])  # the first cloud has none
    assert node.stats.resets == {}


def test_process_every_runs_one_cloud_in_n_and_counts_the_others(model, config, messages):
    """`process_every=2` (a 20 Hz LiDAR at 10 Hz): the first cloud and every second one after
    it run the model; the others are counted as dropped by policy, and still reach the model
    as the next processed cloud's earlier sweeps (its points equal those of the every-cloud
    run)."""
    head, _ = _until_cloud(messages, 6)
    clouds = [_stamp(cdr, m) for t, m, cdr in head if t == LIDAR]
    every, half = [], []
    node = _node(model, config, process=None)
    node.on_result = every.append
    _step(node, head)
    node = _node(model, config, process=None, process_every=2)
    node.on_result = half.append
    _step(node, head)
    assert [j.stamp_ns for j in half] == clouds[0::2]
    assert node.stats.processed == 3 and node.stats.dropped == {"policy": 3}
    by_stamp = {j.stamp_ns: j for j in every}
    for job in half:
        assert torch.equal(job.batch.points, by_stamp[job.stamp_ns].batch.points)
    with pytest.raises(ValueError, match="process_every must be >= 1"):
        NodeOptions(process_every=0)


def test_images_decoded_ahead_in_parallel_equal_decoding_in_turn(model, config, messages):
    """The receive thread hands each batch's images to `decode_workers` threads before handling
    the batch in order: the same frames, the same rejections as decoding each in turn."""
    head, _ = _until_cloud(messages, 5)
    i = [i for i, m in enumerate(head) if m[0] == "/cam_front/image/compressed"][-1]
    topic, msgtype, cdr = head[i]
    items = head[:i] + [(topic, msgtype, _edit(cdr, msgtype, _noise_scan))] + head[i + 1 :]
    in_turn = _node(model, config, decode_workers=1)
    _feed(in_turn, items)
    ahead = _node(model, config, decode_workers=2)
    threads, decode = set(), ahead._decode_received

    def recording(received):
        threads.add(threading.current_thread().name)
        return decode(received)

    ahead._decode_received = recording
    try:
        for k in range(0, len(items), 7):
            ahead.handle_batch([_received(*m) for m in items[k : k + 7]])
    finally:
        ahead.stop()
    assert threads and all(name.startswith("node-decode") for name in threads)
    assert ahead.stats.rejected == in_turn.stats.rejected == {"corrupt_image": 1}
    for camera in config.data.cameras:
        got, expected = ahead.histories[camera].frames, in_turn.histories[camera].frames
        assert [f.stamp_ns for f in got] == [f.stamp_ns for f in expected] != []
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a.image, b.image)


def test_a_camera_failing_in_the_model_stages_is_masked_alone_and_counted(model, config, messages):
    """#28 item 8: a camera whose frame cannot be used in pre-processing (CAM_FRONT) or whose
    TSM cache cannot be rebuilt (CAM_BACK) is masked for the cloud and counted; the cloud is
    processed with the other cameras, not dropped."""
    head, rest = _until_cloud(messages, 5)
    stamp = _stamp(head[-1][2], head[-1][1])
    node = _node(model, config, process=stamp.__eq__)
    status = node.transport.subscribe(DIAGNOSTICS_TOPIC, "diagnostic_msgs/msg/DiagnosticArray")
    _feed(node, head + _until_cloud(rest, 1)[0])  # the next cloud ends the wait for cameras
    job = node._entry.take_waiting()
    assert job is not None and job.stamp_ns == stamp
    front, back = config.data.cameras.index("CAM_FRONT"), config.data.cameras.index("CAM_BACK")
    unusable = np.zeros((3, 5, 5), np.uint8)  # not the model's image size
    clip = job.clips[front]
    job.clips[front] = [*clip[:-1], dataclasses.replace(clip[-1], image=unusable)]
    clip = job.clips[back]
    assert clip[0].seq < clip[-1].seq  # an earlier frame to rebuild the TSM cache from
    job.clips[back] = [dataclasses.replace(f, image=unusable) for f in clip[:-1]] + [clip[-1]]
    done = []
    node.on_result = done.append
    node._entry.put(job)
    assert node.run_entry()
    assert done == [job] and node.stats.processed == 1 and node.stats.dropped == {}
    assert node.stats.camera_errors == {"CAM_FRONT": 1, "CAM_BACK": 1}
    assert {"CAM_FRONT", "CAM_BACK"} <= set(job.masked)
    mask = job.batch.camera_mask[0]
    assert not mask[front] and not mask[back] and mask.sum() == 6 - len(job.masked)
    node.publish_diagnostics()
    values = diagnostic_values(deserialize(status.take()[-1].cdr, DIAGNOSTIC_ARRAY))
    assert values["camera_errors/CAM_FRONT"] == values["camera_errors/CAM_BACK"] == "1"


def _stamp(cdr, msgtype):
    return stamp_to_ns(deserialize(cdr, msgtype).header.stamp)


def test_undecodable_bytes_are_rejected(model, config, messages):
    node = _node(model, config)
    node.handle(_received(LIDAR, "sensor_msgs/msg/PointCloud2", b"\x00\x01\x00\x00\x05"))
    assert node.stats.rejected == {"undecodable": 1}


def test_a_dead_camera_is_masked_without_waiting(model, config, messages):
    """No CAM_BACK images at all: its clouds go to the model at once with CAM_BACK masked,
    and the status says degraded."""
    jobs = []
    node = _node(model, config, process=None)
    node.on_result = jobs.append
    head, _ = _until_cloud(messages, 4)
    kept = [m for m in head if m[0] != "/cam_back/image/compressed"]
    transport = node.transport
    status = transport.subscribe(STATUS_TOPIC, "diagnostic_msgs/msg/DiagnosticArray", depth=50)
    _step(node, kept)  # on this thread: nothing depends on how busy the machine is
    with_cameras = [j for j in jobs if len(j.masked) < 6]
    assert with_cameras, "some clouds saw camera images"
    assert all("CAM_BACK" in j.masked and j.degraded for j in jobs)
    assert not torch.any(
        with_cameras[-1].batch.camera_mask[0, config.data.cameras.index("CAM_BACK")]
    )
    statuses = [deserialize(r.cdr, r.msgtype) for r in status.take()]
    assert len(statuses) == len(jobs)
    assert all(s.status[0].level == 1 and "CAM_BACK" in s.status[0].message for s in statuses)
    assert node.stats.masked["CAM_BACK"] == len(jobs)


def test_a_camera_older_than_the_delay_is_masked(model, config, messages):
    node = _node(model, config, process=None)
    head, rest = _until_cloud(messages, 6)
    # CAM_FRONT's images stop after the first one: later clouds are > 0.12 s past it
    first = next(i for i, m in enumerate(head) if m[0] == "/cam_front/image/compressed")
    head = [m for i, m in enumerate(head) if i <= first or m[0] != "/cam_front/image/compressed"]
    _feed(node, head)
    node.finish_pending()
    job = node._entry.get(0.01)
    node._preprocess(job)  # what the pre-process stage would do
    assert "CAM_FRONT" in job.masked and job.frames[config.data.cameras.index("CAM_FRONT")] is None
    assert node.pending is None


def test_slow_model_drops_stale_clouds_and_counts_them(model, config, messages):
    node = _node(model, config, process=None, camera_wait_s=0.0)
    slow = node.stages.lidar

    def slow_lidar(batch):
        time.sleep(0.2)
        return slow(batch)

    node.stages.lidar = slow_lidar
    head, _ = _until_cloud(messages, 8)
    with node:
        _feed(node, head)  # as fast as they decode: far faster than 5 clouds/s
        node.flush()
        assert node.wait_idle(node.handled, 30)
    clouds = 8
    assert node.stats.dropped.get("stale", 0) >= 1
    assert node.stats.processed + node.stats.dropped["stale"] == clouds
    assert node._in_flight == 0


def test_a_replay_restarted_slightly_back_resets_the_state_once(model, config, messages, caplog):
    """#28 item 13: a bag restarted 0.1 s back (far less than `time_jump_s`) moves every topic
    back together: a jump back in time, not disorder. The node resets once, loses only the
    messages before it could tell (until `time_jump_series` topics were behind), and takes the
    replay afresh."""
    head, _ = _until_cloud(messages, 3)
    node = _node(model, config)
    _feed(node, head)
    assert len(node.sweeps.history) == 2 and node.histories["CAM_FRONT"].latest is not None
    generation = node.generation
    with caplog.at_level("WARNING", logger="perception.deploy.node"):
        _feed(node, head)  # the bag again: every stamp steps back by at most 0.1 s
    assert node.stats.resets == {"time_jump": 1} and node.generation == generation + 1
    # /tf, the first cloud and /tf again were behind before a third topic (a CameraInfo) was
    assert sum(node.stats.rejected.values()) == node.stats.rejected["out_of_order"] == 3
    assert "jump back in time" in caplog.text
    assert len(node.sweeps.history) == 2  # the replay's clouds after the jump
    assert node.histories["CAM_FRONT"].latest.stamp_ns == max(
        _stamp(c, m) for t, m, c in head if t == "/cam_front/image/compressed"
    )
    assert node.publish_diagnostics()["resets"] == {"time_jump": 1}


def test_one_late_message_is_out_of_order_not_a_jump(model, config, messages):
    """A single message behind its topic (a late sample) is rejected alone; the state stays."""
    head, rest = _until_cloud(messages, 3)
    node = _node(model, config)
    _feed(node, head)
    history = list(node.sweeps.history)
    late = next(m for m in reversed(head) if m[0] == "/cam_front/image/compressed")
    _feed(node, [late[:2] + (_edit(late[2], late[1], _shift_stamp(-1)),)])
    assert node.stats.rejected == {"out_of_order": 1} and node.stats.resets == {}
    _feed(node, rest[:20])
    assert node.stats.resets == {} and list(node.sweeps.history)[0] == history[1]


def test_time_jump_and_reset_topic_reset_the_state(model, config, messages):
    head, _ = _until_cloud(messages, 3)
    node2 = _node(model, config, time_jump_s=0.05)
    _feed(node2, head)
    _feed(node2, head)  # now a jump: state reset, the replay is accepted afresh
    assert node2.stats.resets["time_jump"] == 1
    assert node2.stats.rejected == {}
    assert len(node2.sweeps.history) == 2
    node2.handle(
        _received(RESET_TOPIC, "std_msgs/msg/Empty", serialize(msg_class("std_msgs/msg/Empty")()))
    )
    assert node2.stats.resets["reset_topic"] == 1
    assert len(node2.sweeps.history) == 0 and node2.histories["CAM_FRONT"].latest is None
    assert node2.generation == 2


def _run_jobs(model, config, messages, **options):
    jobs = {}
    node = _node(model, config, process=None, **options)
    node.on_result = lambda job: jobs.__setitem__(job.stamp_ns, job.detections)
    head, _ = _until_cloud(messages, 5)
    _step(node, head)
    return jobs, node


@pytest.mark.slow
def test_pipelined_equals_sequential_and_records(model, config, messages, tmp_path):
    sequential, _ = _run_jobs(model, config, messages)
    recorder = Recorder(tmp_path / "rec")
    jobs = {}
    node = _node(model, config, process=None, pipelined=True)
    node.recorder = recorder
    node.on_result = lambda job: jobs.__setitem__(job.stamp_ns, job.detections)
    transport = node.transport
    objects = transport.subscribe(
        OBJECTS_TOPIC, "autoware_perception_msgs/msg/DetectedObjects", depth=50
    )
    diagnostics = transport.subscribe(DIAGNOSTICS_TOPIC, "diagnostic_msgs/msg/DiagnosticArray")
    head, _ = _until_cloud(messages, 5)
    with node:
        _publish(node, head)
        summary = node.publish_diagnostics()
    recorder.close()
    assert set(jobs) == set(sequential) and len(jobs) == 5
    for stamp, dets in jobs.items():
        assert torch.equal(dets.boxes.tensor, sequential[stamp].boxes.tensor)
    published = [deserialize(r.cdr, r.msgtype) for r in objects.take()]
    assert sorted(stamp_to_ns(m.header.stamp) for m in published) == sorted(jobs)
    assert {m.header.frame_id for m in published} == {"lidar_top"}
    values = diagnostic_values(
        deserialize(diagnostics.take()[-1].cdr, "diagnostic_msgs/msg/DiagnosticArray")
    )
    assert values["processed"] == "5" == str(summary["processed"])
    for stage in ("camera", "lidar", "voxelize", "fuse_head", "receive_to_publish"):
        assert f"latency/{stage}/p99_ms" in values
    recorded = {t for t, *_ in read_bag(tmp_path / "rec")}
    assert {LIDAR, "/cam_front/image/compressed", OBJECTS_TOPIC, "/perception/detections",
            "/perception/markers", STATUS_TOPIC, DIAGNOSTICS_TOPIC} <= recorded  # fmt: skip


@pytest.mark.slow
def test_over_dds_the_node_publishes_detections(model, config, messages, dds_domain):
    """The same node on Cyclone DDS (loopback, a private domain): a second participant plays
    the sensors and receives DetectedObjects stamped with the clouds' stamps."""
    from perception.deploy.transport import DdsTransport, wait_for_match

    head, _ = _until_cloud(messages, 3)
    with DdsTransport(dds_domain) as node_side, DdsTransport(dds_domain) as sensors:
        options = NodeOptions(pipelined=True, wall_timeout=True)
        node = PerceptionNode(model, config, node_side, options)
        objects = sensors.subscribe(
            OBJECTS_TOPIC, "autoware_perception_msgs/msg/DetectedObjects", depth=10, reliable=True
        )
        publishers = {}
        for topic, msgtype, _ in head:
            if topic not in publishers:
                publishers[topic] = sensors.publisher(
                    topic, msgtype, transient_local=topic == "/tf_static", depth=50
                )
        assert wait_for_match(list(publishers.values()), 1, 10)
        with node:
            for topic, _, cdr in head:
                publishers[topic].publish_cdr(cdr)
                time.sleep(0.002)
            deadline = time.monotonic() + 30
            received = []
            while len(received) < 1 and time.monotonic() < deadline:
                sensors.wait([objects], 0.2)
                received += [deserialize(r.cdr, r.msgtype) for r in objects.take()]
        clouds = {_stamp(cdr, m) for t, m, cdr in head if t == LIDAR}
        assert received and {stamp_to_ns(m.header.stamp) for m in received} <= clouds
        assert node.stats.rejected == {}


@pytest.mark.slow
def test_static_camera_extrinsics_keep_the_pooling_plan_cached(model, config, messages):
    """With ego motion between image and cloud stamps compensated (the default, as the
    dataset) the camera geometry changes every cloud; with the static mounts it does not."""
    cache = model.camera.view_transform.plan_cache
    head, _ = _until_cloud(messages, 14)  # clouds with every camera present
    counts = {}
    for motion in (True, False):
        cache.clear()
        hits = cache.hits
        node = _node(model, config, process=None, camera_motion=motion)
        _step(node, head)
        counts[motion] = cache.hits - hits
        assert node.stats.processed == 14
    assert counts[False] > counts[True]


def test_sweeps_and_clip_frames_older_than_the_config_ages_are_left_out_and_counted(
    model, tiny_world, messages, caplog
):
    """#28 (a): the node applies the dataset's age rules from the config: an earlier sweep more
    than `data.max_sweep_age` before the cloud is not merged, a clip stops at a frame more than
    `data.max_clip_frame_age` before the cloud and is padded; both are counted in the stats,
    the per-cloud status and /perception/diagnostics, and the log names the keys at fault."""
    # 20 Hz clouds: with 3 sweeps the older earlier one is 0.1 s back; 12 Hz cameras: the
    # chosen frame is the nearest to the cloud, so the one before it is > 0.04 s before it
    config = parse_config(node_raw(tiny_world, max_sweep_age=0.06, max_clip_frame_age=0.03))
    jobs = []
    node = _node(model, config, process=None, temporal="clip")
    node.on_result = jobs.append
    status = node.transport.subscribe(STATUS_TOPIC, DIAGNOSTIC_ARRAY, depth=50)
    diagnostics = node.transport.subscribe(DIAGNOSTICS_TOPIC, DIAGNOSTIC_ARRAY)
    head, _ = _until_cloud(messages, 6)
    with caplog.at_level("WARNING", logger="perception.deploy.node"):
        _step(node, head)
    assert len(jobs) == 6
    assert [j.stale_sweeps for j in jobs] == [0, 0, 1, 1, 1, 1]
    for job in jobs:
        assert 0 <= float(job.batch.points[:, 5].max()) <= 0.06
        lags = job.batch.camera_time_lag[0][job.batch.camera_mask[0]]  # [cameras, T]
        assert torch.equal(lags[:, 0], lags[:, 1])  # padded with the chosen frame
    assert sum(j.stale_clip_frames for j in jobs) > 0
    assert node.stats.stale_sweeps == 4
    assert node.stats.stale_clip_frames == sum(j.stale_clip_frames for j in jobs)
    assert "data.sweeps=3 with data.sweep_stride=1 reach 0.10 s back" in caplog.text
    node.publish_diagnostics()
    values = diagnostic_values(deserialize(diagnostics.take()[-1].cdr, DIAGNOSTIC_ARRAY))
    assert values["stale_sweeps"] == "4"
    assert values["stale_clip_frames"] == str(node.stats.stale_clip_frames)
    per_cloud = [diagnostic_values(deserialize(r.cdr, DIAGNOSTIC_ARRAY)) for r in status.take()]
    assert [v["stale_sweeps"] for v in per_cloud] == ["0", "0", "1", "1", "1", "1"]

    # the defaults (0.55 s) leave this stretch of the bag alone
    node = _node(model, config.model_copy(update={"data": parse_config(node_raw(tiny_world)).data}))
    _step(node, head)
    assert node.stats.stale_sweeps == 0 and node.stats.stale_clip_frames == 0


def test_a_crop_below_the_horizon_is_warned_once_per_camera(
    model, tiny_world, indexed_world_copy, messages, caplog
):
    """#28 (b): the dataset's horizon check runs on each camera's CameraInfo and static mount:
    a test crop that keeps (almost) nothing above the horizon is logged once per camera, with
    the camera's name, and counted in /perception/diagnostics; the node runs on. The dataset
    refuses the same config for the same cameras."""
    from perception.datasets.pipeline import build_dataset

    # 4x the fit: the crop is the bottom quarter of each image, below the horizon
    raw = node_raw(tiny_world)
    raw["augment"] = {"image": {**raw["augment"]["image"], "test_scale": 4.0}}
    config = parse_config(raw)
    indexed = indexed_world_copy("node_horizon", max_sweeps=3, max_clip_frames=2)
    with pytest.raises(ValueError, match="CAM_FRONT .320x180.*rows above the horizon"):
        build_dataset(config, "mini_val", train=False, root=indexed)
    node = _node(model, config, process=None)
    diagnostics = node.transport.subscribe(DIAGNOSTICS_TOPIC, DIAGNOSTIC_ARRAY)
    head, _ = _until_cloud(messages, 4)
    with caplog.at_level("WARNING", logger="perception.deploy.node"):
        _step(node, head)
    assert node.stats.processed == 4
    assert node.stats.crop_below_horizon == {c: 1 for c in config.data.cameras}
    warned = [r.getMessage() for r in caplog.records if "above the horizon" in r.getMessage()]
    assert len(warned) == len(config.data.cameras)
    assert any(m.startswith("node: CAM_FRONT (320x180") for m in warned)
    node.publish_diagnostics()
    values = diagnostic_values(deserialize(diagnostics.take()[-1].cdr, DIAGNOSTIC_ARRAY))
    assert values["crop_below_horizon/CAM_FRONT"] == "1"

    fine = _node(model, parse_config(node_raw(tiny_world)), process=None)
    _step(fine, head)
    assert fine.stats.crop_below_horizon == {} and fine.stats.processed == 4
