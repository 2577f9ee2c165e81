"""Publish/subscribe of ROS 2 messages as CDR bytes: over DDS (Cyclone, ROS 2 naming) so a ROS 2
system on rmw_cyclonedds sees the topics, or in-process (queues) for tests.

Both transports have the same API:

    transport.publisher(topic, msgtype, *, reliable=True, transient_local=False, depth=10)
        -> Publisher with .publish(message, stamp_ns=None) and .publish_cdr(cdr, stamp_ns=None)
    transport.subscribe(topic, msgtype, *, depth=10, reliable=False, transient_local=False)
        -> Subscription with .take(max_samples=None) -> list[Received]
    transport.wait(subscriptions, timeout_s) -> the subscriptions holding samples

A subscription keeps the last `depth` samples (keep-last): a slow reader loses the oldest, the
latest frame always arrives. `Received.message()` deserializes lazily, so stale frames can be
dropped without paying for it.

QoS defaults follow ROS 2 compatibility rules: a reliable publisher matches every
subscriber; a best-effort subscription matches every publisher (sensor drivers often publish
best-effort). Ask for `reliable=True` on a subscription when every sample matters.

DDS specifics: topic `rt<ros topic>`, type `pkg::msg::dds_::Type_`, data representation XCDR1
(what ROS 2 sends), and each sample's payload is exactly the rosbags CDR (4-byte encapsulation
header + body), written and taken through cyclonedds' raw serdata calls.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .messages import dds_topic_name, deserialize, serialize, typestore

# -- configuration ------------------------------------------------------------------------


def loopback_config(
    *, interface: str = "lo", peers: Sequence[str] = ("127.0.0.1",), max_participants: int = 32
) -> str:
    """A CYCLONEDDS_URI XML that keeps DDS on one machine: only `interface`, no multicast,
    unicast discovery to `peers` for up to `max_participants` participants per domain.

    (Cyclone's own default picks the first external interface and discovers by multicast,
    which leaks test traffic onto the network and fails on hosts without multicast.)
    """
    peer_xml = "".join(f'<Peer address="{p}"/>' for p in peers)
    return (
        '<CycloneDDS xmlns="https://cdds.io/config"><Domain id="any">'
        f'<General><Interfaces><NetworkInterface name="{interface}"/></Interfaces>'
        "<AllowMulticast>false</AllowMulticast><MaxMessageSize>65500B</MaxMessageSize></General>"
        '<Internal><SocketReceiveBufferSize min="default" max="4MiB"/></Internal>'
        "<Discovery><ParticipantIndex>auto</ParticipantIndex>"
        f"<MaxAutoParticipantIndex>{max_participants}</MaxAutoParticipantIndex>"
        f"<Peers>{peer_xml}</Peers></Discovery>"
        "</Domain></CycloneDDS>"
    )


LOOPBACK = "loopback"  # DdsTransport(config=LOOPBACK): use loopback_config()


# -- common types -------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One sample as it arrived: CDR bytes plus the publisher's and our clocks (ns)."""

    topic: str
    msgtype: str
    cdr: bytes = field(repr=False)
    source_time_ns: int
    receive_time_ns: int

    def message(self) -> Any:
        """The deserialized message (raises `messages.DecodeError` naming the topic)."""
        return deserialize(self.cdr, self.msgtype, topic=self.topic)


def _check_msgtype(msgtype: str) -> None:
    if msgtype not in typestore().types:
        raise KeyError(f"unknown ROS message type {msgtype!r}")


def _padded(cdr: bytes) -> bytes:
    """CDR padded to a multiple of 4 with the pad count in the encapsulation options' low bits
    (XTypes 7.6.3.1.2), as Cyclone's own serializer does; readers ignore the padding."""
    pad = -len(cdr) % 4
    if not pad:
        return cdr
    return cdr[:3] + bytes([(cdr[3] & 0xFC) | pad]) + cdr[4:] + b"\0" * pad


# -- in-process ---------------------------------------------------------------------------


class InProcessTransport:
    """Topics as in-memory queues inside one process; samples are CDR bytes, as on DDS."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._subscriptions: dict[str, list[_InProcessSubscription]] = {}
        self._types: dict[str, str] = {}

    def _declare(self, topic: str, msgtype: str) -> None:
        _check_msgtype(msgtype)
        dds_topic_name(topic)  # validates the name
        known = self._types.setdefault(topic, msgtype)
        if known != msgtype:
            raise ValueError(f"topic {topic} carries {known}, not {msgtype}")

    def publisher(
        self,
        topic: str,
        msgtype: str,
        *,
        reliable: bool = True,
        transient_local: bool = False,
        depth: int = 10,
    ) -> _InProcessPublisher:
        with self._lock:
            self._declare(topic, msgtype)
        return _InProcessPublisher(self, topic, msgtype)

    def subscribe(
        self,
        topic: str,
        msgtype: str,
        *,
        depth: int = 10,
        reliable: bool = False,
        transient_local: bool = False,
    ) -> _InProcessSubscription:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        with self._lock:
            self._declare(topic, msgtype)
            sub = _InProcessSubscription(self, topic, msgtype, depth)
            self._subscriptions.setdefault(topic, []).append(sub)
        return sub

    def _deliver(self, topic: str, msgtype: str, cdr: bytes, stamp_ns: int | None) -> None:
        now = time.time_ns()
        sample = Received(topic, msgtype, cdr, now if stamp_ns is None else stamp_ns, now)
        with self._lock:
            for sub in self._subscriptions.get(topic, ()):
                sub._queue.append(sample)
            self._lock.notify_all()

    def _remove(self, sub: _InProcessSubscription) -> None:
        with self._lock:
            subs = self._subscriptions.get(sub.topic, [])
            if sub in subs:
                subs.remove(sub)

    def wait(self, subscriptions: Sequence[Any], timeout_s: float) -> list[Any]:
        """Blocks until one of `subscriptions` holds a sample or `timeout_s` passes; returns
        those holding samples."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                ready = [s for s in subscriptions if s._queue]
                left = deadline - time.monotonic()
                if ready or left <= 0:
                    return ready
                self._lock.wait(left)

    def close(self) -> None:
        with self._lock:
            self._subscriptions.clear()

    def __enter__(self) -> InProcessTransport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class _InProcessPublisher:
    transport: InProcessTransport = field(repr=False)
    topic: str
    msgtype: str

    def publish(self, message: Any, stamp_ns: int | None = None) -> None:
        self.publish_cdr(serialize(message, self.msgtype), stamp_ns)

    def publish_cdr(self, cdr: bytes, stamp_ns: int | None = None) -> None:
        self.transport._deliver(self.topic, self.msgtype, bytes(cdr), stamp_ns)

    def matched(self) -> int:
        return len(self.transport._subscriptions.get(self.topic, ()))

    def close(self) -> None:
        pass


@dataclass(eq=False)
class _InProcessSubscription:
    transport: InProcessTransport = field(repr=False)
    topic: str
    msgtype: str
    depth: int
    _queue: deque = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._queue = deque(maxlen=self.depth)

    def take(self, max_samples: int | None = None) -> list[Received]:
        with self.transport._lock:
            n = len(self._queue) if max_samples is None else min(max_samples, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def matched(self) -> int:
        return 1 if self.topic in self.transport._types else 0

    def close(self) -> None:
        self.transport._remove(self)


# -- DDS ----------------------------------------------------------------------------------

# Cyclone allows one configured domain object per domain id per process and deleting it
# deletes every participant on it; the process keeps each one it creates (mirrors Cyclone's
# own process-wide domain table).
_DOMAINS: dict[int, Any] = {}
_DOMAINS_LOCK = threading.Lock()


def _ensure_domain(domain_id: int, config: str | None) -> None:
    from cyclonedds.core import DDSException
    from cyclonedds.domain import Domain

    if config is None:
        return  # Cyclone reads CYCLONEDDS_URI itself when the participant is created
    with _DOMAINS_LOCK:
        if domain_id in _DOMAINS:
            return
        try:
            _DOMAINS[domain_id] = Domain(domain_id, config)
        except DDSException:
            pass  # created by someone else in this process (a participant already exists)


class DdsTransport:
    """ROS 2-compatible topics over Cyclone DDS.

    Args:
        domain_id: DDS domain (ROS_DOMAIN_ID); default: the environment's ROS_DOMAIN_ID or 0.
        config: `LOOPBACK` (default: this machine only, see `loopback_config`), an XML string
            or file URI, or None to let Cyclone read CYCLONEDDS_URI / use its defaults. The
            first transport of a domain id in a process sets that domain's configuration.
    """

    def __init__(self, domain_id: int | None = None, *, config: str | None = LOOPBACK):
        from cyclonedds.domain import DomainParticipant

        if domain_id is None:
            domain_id = int(os.environ.get("ROS_DOMAIN_ID", "0"))
        self.domain_id = domain_id
        _ensure_domain(domain_id, loopback_config() if config == LOOPBACK else config)
        self.participant = DomainParticipant(domain_id)
        self._topics: dict[str, Any] = {}
        self._entities: list[Any] = []

    def _qos(self, *, reliable: bool, transient_local: bool, depth: int):
        from cyclonedds.qos import Policy, Qos
        from cyclonedds.util import duration

        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        return Qos(
            Policy.Reliability.Reliable(max_blocking_time=duration(milliseconds=100))
            if reliable
            else Policy.Reliability.BestEffort,
            Policy.Durability.TransientLocal if transient_local else Policy.Durability.Volatile,
            Policy.History.KeepLast(depth),
            Policy.DataRepresentation(use_cdrv0_representation=True),
        )

    def _topic(self, topic: str, msgtype: str):
        from cyclonedds.topic import Topic

        from .idl import idl_type

        _check_msgtype(msgtype)
        existing = self._topics.get(topic)
        if existing is not None:
            if existing[1] != msgtype:
                raise ValueError(f"topic {topic} carries {existing[1]}, not {msgtype}")
            return existing[0]
        dds_topic = Topic(self.participant, dds_topic_name(topic), idl_type(msgtype))
        self._topics[topic] = (dds_topic, msgtype)
        return dds_topic

    def publisher(
        self,
        topic: str,
        msgtype: str,
        *,
        reliable: bool = True,
        transient_local: bool = False,
        depth: int = 10,
    ) -> _DdsPublisher:
        from cyclonedds.pub import DataWriter

        qos = self._qos(reliable=reliable, transient_local=transient_local, depth=depth)
        writer = DataWriter(self.participant, self._topic(topic, msgtype), qos=qos)
        self._entities.append(writer)
        return _DdsPublisher(topic, msgtype, writer)

    def subscribe(
        self,
        topic: str,
        msgtype: str,
        *,
        depth: int = 10,
        reliable: bool = False,
        transient_local: bool = False,
    ) -> _DdsSubscription:
        from cyclonedds.core import InstanceState, ReadCondition, SampleState, ViewState
        from cyclonedds.sub import DataReader

        qos = self._qos(reliable=reliable, transient_local=transient_local, depth=depth)
        reader = DataReader(self.participant, self._topic(topic, msgtype), qos=qos)
        condition = ReadCondition(reader, SampleState.Any | ViewState.Any | InstanceState.Alive)
        self._entities.append(reader)
        return _DdsSubscription(topic, msgtype, depth, reader, condition)

    def wait(self, subscriptions: Sequence[_DdsSubscription], timeout_s: float) -> list:
        """Blocks until one of `subscriptions` holds a sample or `timeout_s` passes; returns
        those holding samples."""
        from cyclonedds.core import WaitSet

        ready = [s for s in subscriptions if s._has_data()]
        if ready or timeout_s <= 0:
            return ready
        waitset = WaitSet(self.participant)
        for s in subscriptions:
            waitset.attach(s._condition)
        try:
            waitset.wait(int(timeout_s * 1e9))
        finally:
            for s in subscriptions:
                waitset.detach(s._condition)
        return [s for s in subscriptions if s._has_data()]

    def close(self) -> None:
        """Deletes this transport's participant (and its readers and writers)."""
        participant, self.participant = self.participant, None
        self._entities.clear()
        self._topics.clear()
        if participant is not None:
            participant.__del__()

    def __enter__(self) -> DdsTransport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class _DdsPublisher:
    topic: str
    msgtype: str
    writer: Any

    def publish(self, message: Any, stamp_ns: int | None = None) -> None:
        """Serializes with rosbags and writes; `stamp_ns` becomes the DDS source timestamp
        (default: now)."""
        self.publish_cdr(serialize(message, self.msgtype), stamp_ns)

    def publish_cdr(self, cdr: bytes, stamp_ns: int | None = None) -> None:
        from cyclonedds._clayer import ddspy_write, ddspy_write_ts
        from cyclonedds.core import DDSException

        data = _padded(bytes(cdr))
        ret = (
            ddspy_write(self.writer._ref, data)
            if stamp_ns is None
            else ddspy_write_ts(self.writer._ref, data, int(stamp_ns))
        )
        if ret < 0:
            raise DDSException(ret, f"writing a sample on {self.topic}")

    def matched(self) -> int:
        """How many subscriptions currently match (discovery takes a moment)."""
        return len(self.writer.get_matched_subscriptions())

    def close(self) -> None:
        self.writer.__del__()


@dataclass(eq=False)
class _DdsSubscription:
    topic: str
    msgtype: str
    depth: int
    reader: Any = field(repr=False)
    _condition: Any = field(repr=False)

    def _has_data(self) -> bool:
        return bool(self._condition.triggered)

    def take(self, max_samples: int | None = None) -> list[Received]:
        from cyclonedds._clayer import ddspy_take
        from cyclonedds.core import DDSException, InstanceState, SampleState, ViewState

        mask = SampleState.Any | ViewState.Any | InstanceState.Any
        ret = ddspy_take(self.reader._ref, mask, max_samples or self.depth)
        if isinstance(ret, int):
            raise DDSException(ret, f"taking samples on {self.topic}")
        now = time.time_ns()
        return [
            Received(self.topic, self.msgtype, data, info.source_timestamp, now)
            for data, info in ret
            if info.valid_data
        ]

    def matched(self) -> int:
        return len(self.reader.get_matched_publications())

    def close(self) -> None:
        self.reader.__del__()


def wait_for_match(endpoints: Sequence[Any], count: int = 1, timeout_s: float = 5.0) -> bool:
    """Waits until every publisher/subscription in `endpoints` matches at least `count` peers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(e.matched() >= count for e in endpoints):
            return True
        time.sleep(0.01)
    return all(e.matched() >= count for e in endpoints)
