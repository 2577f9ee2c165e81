"""Checks on incoming messages. Each failure raises `InvalidMessage` naming the topic, the field
and the problem, with a short `reason` code the node counts drops by."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field


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
    """The last accepted stamp per topic; rejects out-of-order and duplicate stamps.

    A stamp more than `time_jump_ns` earlier than a topic's last one is a time jump (a bag
    replay looping, a simulator reset), not disorder: `check` then forgets every topic's
    history and returns `"time_jump"` so the node can reset its state too. `None` disables
    jump detection (every step back is out of order).

    One tracker belongs to one node; it is plain per-instance state.
    """

    time_jump_ns: int | None = 2_000_000_000
    last_ns: dict[str, int] = field(default_factory=dict)

    def check(self, topic: str, stamp_ns: int) -> str:
        """Accepts `stamp_ns` on `topic` and returns `"ok"` or `"time_jump"`; raises
        `InvalidMessage` (`out_of_order` or `duplicate_stamp`) without recording it."""
        last = self.last_ns.get(topic)
        if last is not None and stamp_ns <= last:
            back = last - stamp_ns
            if self.time_jump_ns is not None and back > self.time_jump_ns:
                self.last_ns.clear()
                self.last_ns[topic] = stamp_ns
                return "time_jump"
            if back == 0:
                raise InvalidMessage(
                    topic, "header.stamp", "duplicate_stamp", f"stamp {stamp_ns} ns seen twice"
                )
            raise InvalidMessage(
                topic,
                "header.stamp",
                "out_of_order",
                f"stamp {stamp_ns} ns is {back / 1e6:.3f} ms before the last one ({last} ns)",
            )
        self.last_ns[topic] = stamp_ns
        return "ok"

    def reset(self, topic: str | None = None) -> None:
        """Forgets one topic's last stamp, or every topic's."""
        if topic is None:
            self.last_ns.clear()
        else:
            self.last_ns.pop(topic, None)
