"""ROS 2 message types and their CDR encoding, through rosbags' typestore (no ROS install).

The typestore is rosbags' ROS 2 Humble store plus `vision_msgs` and `autoware_perception_msgs`
registered from the `.msg` text in `deploy/msgdefs.py`. It is built once per process and only
read afterwards (message classes are immutable definitions, not state).

Wire format: every serialized message is the ROS 2 / rmw payload, a 4-byte encapsulation
header (`00 01 00 00`, plain little-endian CDR, XCDR1) followed by the CDR body.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from .msgdefs import ALL_MSGDEFS

ROS_DISTRO = "humble"

# The message types the node speaks.
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
POINT_FIELD = "sensor_msgs/msg/PointField"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
DETECTION3D_ARRAY = "vision_msgs/msg/Detection3DArray"
DETECTED_OBJECTS = "autoware_perception_msgs/msg/DetectedObjects"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"

NODE_MSGTYPES: tuple[str, ...] = (
    POINTCLOUD2,
    COMPRESSED_IMAGE,
    IMAGE,
    CAMERA_INFO,
    TF_MESSAGE,
    DETECTION3D_ARRAY,
    DETECTED_OBJECTS,
    MARKER_ARRAY,
)


class DecodeError(ValueError):
    """CDR bytes that do not decode as the message type they claim to be."""


@lru_cache(maxsize=1)
def typestore() -> Typestore:
    """rosbags' ROS 2 Humble typestore with vision_msgs and autoware_perception_msgs added."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    types: dict[str, Any] = {}
    for name, text in ALL_MSGDEFS.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


def msg_class(msgtype: str) -> type:
    """The rosbags dataclass of `msgtype` (e.g. `sensor_msgs/msg/PointCloud2`)."""
    try:
        return typestore().types[msgtype]
    except KeyError:
        raise KeyError(f"unknown ROS message type {msgtype!r}") from None


def msgdef(msgtype: str) -> str:
    """The concatenated `.msg` definition of `msgtype` (what rosbag2/MCAP schemas hold)."""
    return typestore().generate_msgdef(msgtype, ros_version=2)[0]


def serialize(message: Any, msgtype: str | None = None) -> bytes:
    """CDR bytes (with the 4-byte encapsulation header) of a rosbags message object."""
    msgtype = msgtype or message.__msgtype__
    return bytes(typestore().serialize_cdr(message, msgtype))


def deserialize(cdr: bytes | memoryview, msgtype: str, *, topic: str = "?") -> Any:
    """The message object in `cdr`; raises `DecodeError` naming the topic if it is malformed
    (truncated, wrong type, corrupt lengths)."""
    try:
        return typestore().deserialize_cdr(cdr, msgtype)
    except (SerdeError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise DecodeError(
            f"topic {topic}: {len(cdr)} bytes do not decode as {msgtype}: {exc}"
        ) from None


def dds_type_name(msgtype: str) -> str:
    """The DDS type name rmw_cyclonedds (and every ROS 2 rmw) uses:
    `sensor_msgs/msg/PointCloud2` -> `sensor_msgs::msg::dds_::PointCloud2_`."""
    package, kind, name = msgtype.split("/")
    return f"{package}::{kind}::dds_::{name}_"


def dds_topic_name(topic: str) -> str:
    """The DDS topic of a ROS 2 topic: `/lidar/top` -> `rt/lidar/top`."""
    if not topic.startswith("/"):
        raise ValueError(f"ROS topic {topic!r} must be absolute (start with '/')")
    return "rt" + topic


def stamp_to_ns(stamp: Any) -> int:
    """`builtin_interfaces/Time` -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Any:
    """Integer nanoseconds -> `builtin_interfaces/Time` (floor division: negative times keep
    `nanosec` in [0, 1e9) as ROS requires)."""
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return msg_class("builtin_interfaces/msg/Time")(sec=sec, nanosec=nanosec)


def header(frame_id: str, stamp_ns: int) -> Any:
    return msg_class("std_msgs/msg/Header")(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)
