"""rosbag2 recordings: one nuScenes scene written as a bag of ROS 2 sensor topics, and real-time
replay of a bag onto a transport.

Bag layout (`write_nuscenes_bag`), every stamp the nuScenes timestamp (us -> ns), each
message's bag log time equal to its header stamp:

| topic | type | rate | frame |
|---|---|---|---|
| `/lidar/top` | PointCloud2 (x, y, z, intensity float32, ring uint16) | 20 Hz, every sweep | `lidar_top` |
| `/cam_front/image/compressed`, ... (6) | CompressedImage, the original JPEG bytes | 12 Hz | `cam_front`, ... |
| `/cam_front/camera_info`, ... (6) | CameraInfo, one per image | 12 Hz | `cam_front`, ... |
| `/tf` | TFMessage `map -> base_link` | every ego pose | - |
| `/tf_static` | TFMessage `base_link -> <sensor>`, once, transient-local | - | - |
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from perception.datasets.io import read_points
from perception.datasets.sensors import pose_matrix, read_table

if TYPE_CHECKING:  # the transport module imports DDS lazily; only its protocol here
    from .transport import Transport

from .convert import (
    StampedTransform,
    calibration_to_camera_info,
    jpeg_to_compressed_image,
    points_to_pointcloud2,
    transforms_to_tf_message,
)
from .messages import (
    CAMERA_INFO,
    COMPRESSED_IMAGE,
    POINTCLOUD2,
    TF_MESSAGE,
    serialize,
    typestore,
)

LIDAR_CHANNEL = "LIDAR_TOP"
MAP_FRAME = "map"
BASE_FRAME = "base_link"
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"


def frame_of(channel: str) -> str:
    """nuScenes channel -> ROS frame id: `CAM_FRONT` -> `cam_front`."""
    return channel.lower()


def image_topic(channel: str) -> str:
    return f"/{frame_of(channel)}/image/compressed"


def camera_info_topic(channel: str) -> str:
    return f"/{frame_of(channel)}/camera_info"


def lidar_topic(channel: str = LIDAR_CHANNEL) -> str:
    return "/" + frame_of(channel).replace("_", "/", 1)  # LIDAR_TOP -> /lidar/top


def _qos(*, transient_local: bool, depth: int = 10):
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    forever = QosTime(sec=2147483647, nsec=4294967295)  # rclcpp's "infinite" as rosbag2 dumps it
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=1 if transient_local else depth,
        reliability=QosReliability.RELIABLE,
        durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        deadline=forever,
        lifespan=forever,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=forever,
        avoid_ros_namespace_conventions=False,
    )


@dataclass(frozen=True)
class _Event:
    stamp_ns: int
    order: int  # tie-break: tf before the data that needs it
    topic: str
    make: Callable[[], Any]  # builds the message when written (keeps memory flat)


def write_nuscenes_bag(
    root: str | Path,
    scene: str,
    out: str | Path,
    *,
    version: str = "v1.0-mini",
    storage: str = "mcap",
) -> dict[str, int]:
    """Writes scene `scene` of the nuScenes dataroot `root` as a rosbag2 directory `out`
    (`storage` "mcap" or "sqlite3"; bag metadata version 8). Returns messages per topic.

    Reads the JSON tables directly (no devkit index needed), so it works on any dataroot, real
    or synthetic. Every LiDAR sweep and camera frame of the scene is written.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    root, out = Path(root), Path(out)
    tables = {
        name: read_table(root, version, name)
        for name in ("scene", "sample", "sample_data", "calibrated_sensor", "sensor", "ego_pose")
    }
    scenes = {s["name"]: s for s in tables["scene"]}
    if scene not in scenes:
        raise ValueError(f"{root}/{version}: no scene {scene!r}; it has {sorted(scenes)}")
    scene_token = scenes[scene]["token"]
    sample_tokens = {s["token"] for s in tables["sample"] if s["scene_token"] == scene_token}
    calibrated = {c["token"]: c for c in tables["calibrated_sensor"]}
    sensors = {s["token"]: s for s in tables["sensor"]}
    poses = {p["token"]: p for p in tables["ego_pose"]}
    records = sorted(
        (sd for sd in tables["sample_data"] if sd["sample_token"] in sample_tokens),
        key=lambda sd: sd["timestamp"],
    )
    if not records:
        raise ValueError(f"{root}/{version}: scene {scene!r} has no sample_data")

    events: list[_Event] = []
    static: dict[str, np.ndarray] = {}
    pose_stamps: set[int] = set()
    for sd in records:
        cs = calibrated[sd["calibrated_sensor_token"]]
        channel = sensors[cs["sensor_token"]]["channel"]
        modality = sensors[cs["sensor_token"]]["modality"]
        frame = frame_of(channel)
        stamp = int(sd["timestamp"]) * 1000
        static.setdefault(frame, pose_matrix(cs["translation"], cs["rotation"]))
        pose = poses[sd["ego_pose_token"]]
        pose_ns = int(pose["timestamp"]) * 1000
        if pose_ns not in pose_stamps:
            pose_stamps.add(pose_ns)
            ego = pose_matrix(pose["translation"], pose["rotation"])
            events.append(
                _Event(
                    pose_ns,
                    0,
                    TF_TOPIC,
                    lambda ego=ego, t=pose_ns: transforms_to_tf_message(
                        [StampedTransform(MAP_FRAME, BASE_FRAME, t, ego)]
                    ),
                )
            )
        path = root / sd["filename"]
        if modality == "lidar":
            events.append(
                _Event(
                    stamp,
                    2,
                    lidar_topic(channel),
                    lambda path=path, frame=frame, stamp=stamp: points_to_pointcloud2(
                        read_points(path), frame_id=frame, stamp_ns=stamp, extra=("ring",)
                    ),
                )
            )
        elif modality == "camera":
            k = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
            w, h = int(sd["width"]), int(sd["height"])
            events.append(
                _Event(
                    stamp,
                    1,
                    camera_info_topic(channel),
                    lambda k=k, w=w, h=h, frame=frame, stamp=stamp: calibration_to_camera_info(
                        k, width=w, height=h, frame_id=frame, stamp_ns=stamp
                    ),
                )
            )
            events.append(
                _Event(
                    stamp,
                    2,
                    image_topic(channel),
                    lambda path=path, frame=frame, stamp=stamp: jpeg_to_compressed_image(
                        path.read_bytes(), frame_id=frame, stamp_ns=stamp
                    ),
                )
            )
    first = records[0]["timestamp"] * 1000
    static_msg = transforms_to_tf_message(
        [StampedTransform(BASE_FRAME, f, first, m) for f, m in sorted(static.items())]
    )
    events.append(_Event(min(first, min(pose_stamps)), -1, TF_STATIC_TOPIC, lambda: static_msg))
    events.sort(key=lambda e: (e.stamp_ns, e.order, e.topic))

    msgtypes = {TF_TOPIC: TF_MESSAGE, TF_STATIC_TOPIC: TF_MESSAGE}
    for e in events:
        if e.topic.endswith("/image/compressed"):
            msgtypes[e.topic] = COMPRESSED_IMAGE
        elif e.topic.endswith("/camera_info"):
            msgtypes[e.topic] = CAMERA_INFO
        elif e.topic not in msgtypes:
            msgtypes[e.topic] = POINTCLOUD2
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    counts: Counter[str] = Counter()
    with Writer(out, version=8, storage_plugin=plugin) as writer:
        connections = {
            topic: writer.add_connection(
                topic,
                msgtype,
                typestore=typestore(),
                offered_qos_profiles=[_qos(transient_local=topic == TF_STATIC_TOPIC)],
            )
            for topic, msgtype in sorted(msgtypes.items())
        }
        for e in events:
            writer.write(connections[e.topic], e.stamp_ns, serialize(e.make(), msgtypes[e.topic]))
            counts[e.topic] += 1
    return dict(counts)


# -- reading and replay -------------------------------------------------------------------


def read_bag(
    path: str | Path, topics: Iterable[str] | None = None
) -> Iterable[tuple[str, str, int, bytes]]:
    """Yields `(topic, msgtype, log_time_ns, cdr)` of a rosbag2 in log-time order."""
    from rosbags.rosbag2 import Reader

    wanted = None if topics is None else set(topics)
    with Reader(path) as reader:
        connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
        for conn, timestamp, raw in reader.messages(connections=connections):
            yield conn.topic, conn.msgtype, timestamp, raw


def bag_topics(path: str | Path) -> dict[str, tuple[str, int]]:
    """`topic -> (msgtype, message count)` of a rosbag2."""
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}


@dataclass
class ReplayStats:
    """Messages published per topic, loops completed, and how late publishing ran (ms)."""

    counts: Counter
    loops: int = 0
    max_lag_ms: float = 0.0


def replay_bag(
    path: str | Path,
    transport: Transport,
    *,
    rate: float | None = 1.0,
    loop: bool = False,
    max_loops: int | None = None,
    topics: Sequence[str] | None = None,
    wait_for_subscribers_s: float = 0.0,
    should_stop: Callable[[], bool] = lambda: False,
    on_loop: Callable[[int, ReplayStats], None] | None = None,
    after_publish: Callable[[str], None] | None = None,
) -> ReplayStats:
    """Publishes a bag's messages on `transport` at `rate` x real time, as recorded (CDR bytes
    and header stamps untouched). With `loop`, starts over after the last message (stamps jump
    back to the bag's start: a node sees a time jump) until `max_loops` passes or
    `should_stop()` (asked before each message). `/tf_static` is published transient-local
    (late joiners get it). The one replay loop: the CLI (`tools/replay.py`, `tools/node.py
    --bag`), the node benchmark and the deterministic `replay_into_node` all publish through it.

    `rate` None: no pacing, each message right after the previous one's `after_publish(topic)`
    returned (e.g. a wait until the node handled it: deterministic replay).
    `wait_for_subscribers_s`: before starting, wait up to this long for each publisher to
    match a subscriber (DDS discovery takes a moment; unmatched volatile samples are lost).
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 (or None: unpaced), got {rate}")
    available = bag_topics(path)
    chosen = sorted(available) if topics is None else list(topics)
    missing = [t for t in chosen if t not in available]
    if missing:
        raise ValueError(f"{path}: no topics {missing}; it has {sorted(available)}")
    known = typestore().types
    unknown = [t for t in chosen if available[t][0] not in known]
    if unknown:
        raise ValueError(
            f"{path}: topics {unknown} have message types this typestore lacks "
            f"({sorted({available[t][0] for t in unknown})}); leave them out with --topics"
        )
    publishers = {
        t: transport.publisher(
            t,
            available[t][0],
            transient_local=t == TF_STATIC_TOPIC,
            depth=1 if t == TF_STATIC_TOPIC else 10,
        )
        for t in chosen
    }
    if wait_for_subscribers_s > 0:
        from .transport import wait_for_match

        wait_for_match(list(publishers.values()), 1, wait_for_subscribers_s)
    stats = ReplayStats(Counter())
    while True:
        wall_start = time.monotonic()
        bag_start = None
        for topic, _, log_ns, cdr in read_bag(path, chosen):
            if should_stop():
                return stats
            if bag_start is None:
                bag_start = log_ns
            if rate is not None:
                due = wall_start + (log_ns - bag_start) / 1e9 / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing to the recorded clock, not synchronisation
                else:
                    stats.max_lag_ms = max(stats.max_lag_ms, -delay * 1e3)
            publishers[topic].publish_cdr(cdr)
            stats.counts[topic] += 1
            if after_publish is not None:
                after_publish(topic)
        stats.loops += 1
        if on_loop is not None:
            on_loop(stats.loops, stats)
        if not loop or (max_loops is not None and stats.loops >= max_loops):
            return stats
