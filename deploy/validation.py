"""Checks on incoming messages. Each failure raises `InvalidMessage` naming the topic, the field
and the problem, with a short `reason` code the node counts drops by."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class InvalidMessage(ValueError):
    """An incoming message the node must drop.

    Attributes: `topic`, `field` (the message field at fault, dotted), `reason` (a short code:
    one of `REASONS`), `problem` (what is wrong, in words).
    """

    def __init__(self, topic: str, field: str, reason: str, problem: str):
        if reason not in REASONS:
            raise ValueError(f"unknown InvalidMessage reason {reason!r}; one of {REASONS}")
        self.topic = topic
        self.field = field
        self.reason = reason
        self.problem = problem
        super().__init__(f"topic {topic}: field {field}: {problem} [{reason}]")


REASONS: tuple[str, ...] = (
    "undecodable",  # the CDR bytes do not decode as the topic's message type
    "missing_field",  # PointCloud2 lacks x, y or z (or a field has an unusable datatype)
    "point_step",  # point_step/row_step inconsistent with the fields or the width
    "truncated",  # data shorter (or longer) than height * row_step
    "big_endian",  # is_bigendian true: the node reads little-endian clouds only
    "non_finite",  # NaN/inf points with the policy `reject`
    "too_large",  # more points (or bytes) than the configured limit
    "corrupt_image",  # a compressed image that is not a complete, decodable JPEG/PNG
    "image_size",  # image size differs from the CameraInfo's
    "image_layout",  # raw Image with an unknown encoding or a step/data mismatch
    "camera_info",  # CameraInfo with a singular or malformed K
    "unknown_frame",  # frame_id not among the node's known frames
    "out_of_order",  # stamp earlier than the topic's last one
    "duplicate_stamp",  # stamp equal to the topic's last one
)


def check_frame(topic: str, frame_id: str, known_frames: Collection[str] | None) -> None:
    """Raises `InvalidMessage(reason="unknown_frame")` if `known_frames` is given and lacks
    `frame_id`."""
    if known_frames is not None and frame_id not in known_frames:
        raise InvalidMessage(
            topic,
            "header.frame_id",
            "unknown_frame",
            f"frame {frame_id!r} is not one of the known frames {sorted(known_frames)}",
        )


@dataclass
class StampTracker:
    """The last accepted stamp per stamp series (a topic, or a topic's TF frame pair); rejects
    out-of-order and duplicate stamps.

    A jump back in time (a bag replay restarted or looping, a simulator reset) is not disorder:
    `check` then forgets every series' history and returns `"time_jump"` so the node can reset
    its state too (as ROS time sources and tf2 do on "jump back in time"). It is recognised

    - at once, when one series steps back by more than `time_jump_ns`;
    - or, however small the step, when `jump_series` series are behind their last stamps at
      the same time (each stepped back and has not moved forward since), at stamps within
      `time_jump_ns` of each other: a restarted replay moves every sensor back together, while
      one late message moves one series and the next message of that series is ahead again.
      The few messages that stepped back before the jump was recognised stay rejected. A
      repeated stamp is not a step back (a publisher with a constant stamp is no jump).

    `time_jump_ns=None` disables jump detection (every step back is out of order).
    One tracker belongs to one node; it is plain per-instance state.
    """

    time_jump_ns: int | None = 2_000_000_000
    jump_series: int = 3
    last_ns: dict[str, int] = field(default_factory=dict)
    behind_ns: dict[str, int] = field(default_factory=dict)  # series behind: the stamp it sent
    last_jump_ns: int = 0  # how far back the last recognised jump went (from the newest stamp)

    def __post_init__(self) -> None:
        if self.jump_series < 1:
            raise ValueError(f"jump_series must be >= 1, got {self.jump_series}")

    def check(self, topic: str, stamp_ns: int, series: str | None = None) -> str:
        """Accepts `stamp_ns` on `topic` (the stamp series `topic` or `topic:series`) and
        returns `"ok"` or `"time_jump"`; raises `InvalidMessage` (`out_of_order` or
        `duplicate_stamp`) without recording it."""
        key = topic if series is None else f"{topic}:{series}"
        last = self.last_ns.get(key)
        if last is None or stamp_ns > last:
            self.last_ns[key] = stamp_ns
            self.behind_ns.pop(key, None)
            return "ok"
        back = last - stamp_ns
        if self.time_jump_ns is not None and back > 0:
            behind = self.behind_ns
            behind[key] = stamp_ns
            for other, stamp in list(behind.items()):  # a stale series is not part of this jump
                if abs(stamp - stamp_ns) > self.time_jump_ns:
                    del behind[other]
            if back > self.time_jump_ns or len(behind) >= self.jump_series:
                self.last_jump_ns = max(self.last_ns.values()) - stamp_ns
                self.reset()
                self.last_ns[key] = stamp_ns
                return "time_jump"
        where = "" if series is None else f"{series}: "
        if back == 0:
            raise InvalidMessage(
                topic, "header.stamp", "duplicate_stamp", f"{where}stamp {stamp_ns} ns seen twice"
            )
        raise InvalidMessage(
            topic,
            "header.stamp",
            "out_of_order",
            f"{where}stamp {stamp_ns} ns is {back / 1e6:.3f} ms before the last one ({last} ns)",
        )

    def reset(self, topic: str | None = None) -> None:
        """Forgets one topic's last stamp (and its TF series), or every series'."""
        if topic is None:
            self.last_ns.clear()
            self.behind_ns.clear()
            return
        for table in (self.last_ns, self.behind_ns):
            for key in [k for k in table if k == topic or k.startswith(f"{topic}:")]:
                del table[key]


# -- compressed images: cheap header checks at arrival (decoding is perception.datasets.io) --


def check_image_markers(topic: str, raw: bytes, image_format: str = "") -> None:
    """A JPEG must start with SOI and end with EOI (a truncated JPEG decodes to a grey-filled
    image, not an error, in libjpeg); otherwise it must carry the PNG signature. Raises
    `InvalidMessage` (`corrupt_image`)."""
    if raw[:3] == b"\xff\xd8\xff":
        if not raw.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise InvalidMessage(
                topic, "data", "corrupt_image", f"JPEG of {len(raw)} bytes has no end marker"
            )
    elif raw[:8] != b"\x89PNG\r\n\x1a\n":
        shown = f" (format {image_format!r})" if image_format else ""
        raise InvalidMessage(
            topic, "data", "corrupt_image", f"{len(raw)} bytes are neither JPEG nor PNG{shown}"
        )


def encoded_image_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF or a PNG's IHDR header, None if not found."""
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) >= 24:
        return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    i = 2
    while i + 4 <= len(raw):
        if raw[i] != 0xFF:
            return None
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(raw[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(raw):
                return None
            return int.from_bytes(raw[i + 7 : i + 9], "big"), int.from_bytes(
                raw[i + 5 : i + 7], "big"
            )
        i += 2 + length
    return None


def check_encoded_image(message: Any, *, topic: str, expected_size: tuple[int, int] | None) -> None:
    """The cheap checks of a CompressedImage at arrival, without decoding it: a JPEG with both
    end markers or a PNG signature, and a header size equal to `expected_size` (width, height).
    Raises `InvalidMessage` (`corrupt_image`, `image_size`)."""
    raw = np.asarray(message.data, np.uint8).tobytes()
    check_image_markers(topic, raw)
    size = encoded_image_size(raw)
    if size is None:
        raise InvalidMessage(topic, "data", "corrupt_image", "no image size in the header")
    if expected_size is not None and size != tuple(expected_size):
        raise InvalidMessage(
            topic,
            "data",
            "image_size",
            f"image is {size[0]}x{size[1]}, CameraInfo says {expected_size[0]}x{expected_size[1]}",
        )
