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
best-effort). Ask for `reliable=True` on a subscription when every sample matters. Over DDS a
best-effort subscription still receives a reliable publisher's samples reliably (a reliable
twin reader takes them, lost fragments are resent instead of losing a 32 MB cloud; the
best-effort reader keeps the best-effort publishers), each sample once.

DDS specifics: topic `rt<ros topic>`, type `pkg::msg::dds_::Type_`, data representation XCDR1
(what ROS 2 sends), and each sample's payload is exactly the rosbags CDR (4-byte encapsulation
header + body), written and taken through cyclonedds' raw serdata calls.

Losses are counted, never silent: `transport.stats()` is a flat mapping (what the node puts in
`/perception/diagnostics` and its final stats) of, per subscribed topic and in total,
`sample_lost` / `sample_rejected` (the DDS reader statuses; in-process: keep-last overflow),
`stamp_gaps` / `stamp_missing` (holes in the header stamps' cadence: a sample lost anywhere on
its way, in DDS fragments or in a full reader cache, leaves one), `corrupt_cdr` (samples
Cyclone could not deserialize and dropped: counted from its log, which the loopback
configuration routes to a file of the transport's; other configurations report no count) and,
for the whole domain, `socket_drops` (datagrams the kernel dropped on Cyclone's sockets, their
receive buffer full: how a best-effort cloud too big for the buffer vanishes) and
`malformed_packets` (RTPS packets Cyclone dropped as malformed, from its log as above).

The loopback configuration (the default) keeps DDS on this machine: unicast over `lo` only, and
its receive sockets, which Cyclone always binds to the wildcard address, are bound to the `lo`
device (SO_BINDTODEVICE), so nothing arriving on another interface reaches them.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import logging
import os
import re
import socket
import statistics
import struct
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .messages import dds_topic_name, deserialize, serialize, typestore

log = logging.getLogger(__name__)

# -- configuration ------------------------------------------------------------------------


# Sized for real clouds: a 128-beam LiDAR sweep is ~2M points (32 MB), nuScenes' ~35k points x
# 5 fields. Samples travel in fragments as large as a loopback datagram allows (fewer, bigger
# datagrams: less per-packet work for Cyclone's receive thread); the kernel caps the socket
# buffer at net.core.rmem_max, `stats()` reports what it granted.
FRAGMENT_SIZE = "61440B"
MAX_MESSAGE_SIZE = "65500B"
RECEIVE_BUFFER_BYTES = 64 << 20  # two 32 MB clouds in flight
SOCKET_RECEIVE_BUFFER_MAX = f"{RECEIVE_BUFFER_BYTES >> 20}MiB"
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux


def loopback_config(
    *,
    interface: str = "lo",
    peers: Sequence[str] = ("127.0.0.1",),
    max_participants: int = 32,
    log_file: str | Path | None = None,
) -> str:
    """A CYCLONEDDS_URI XML that keeps DDS on one machine: only `interface`, no multicast,
    unicast discovery to `peers` for up to `max_participants` participants per domain, large
    fragments and receive buffers (see `FRAGMENT_SIZE`). `log_file`: Cyclone's warnings and
    errors also go there (how `DdsTransport` counts samples Cyclone dropped as undecodable).

    (Cyclone's own default picks the first external interface and discovers by multicast,
    which leaks test traffic onto the network and fails on hosts without multicast.)
    """
    peer_xml = "".join(f'<Peer address="{p}"/>' for p in peers)
    tracing = (
        "<Tracing><Verbosity>warning</Verbosity>"
        f"<OutputFile>{log_file}</OutputFile><AppendToFile>true</AppendToFile></Tracing>"
        if log_file is not None
        else ""
    )
    return (
        '<CycloneDDS xmlns="https://cdds.io/config"><Domain id="any">'
        f'<General><Interfaces><NetworkInterface name="{interface}"/></Interfaces>'
        "<AllowMulticast>false</AllowMulticast>"
        f"<MaxMessageSize>{MAX_MESSAGE_SIZE}</MaxMessageSize>"
        f"<MaxRexmitMessageSize>{MAX_MESSAGE_SIZE}</MaxRexmitMessageSize>"
        f"<FragmentSize>{FRAGMENT_SIZE}</FragmentSize></General>"
        f'<Internal><SocketReceiveBufferSize min="default" max="{SOCKET_RECEIVE_BUFFER_MAX}"/>'
        "</Internal>"
        "<Discovery><ParticipantIndex>auto</ParticipantIndex>"
        f"<MaxAutoParticipantIndex>{max_participants}</MaxAutoParticipantIndex>"
        f"<Peers>{peer_xml}</Peers></Discovery>"
        f"{tracing}"
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


# -- loss accounting ----------------------------------------------------------------------


def header_stamp_ns(cdr: bytes) -> int | None:
    """The `std_msgs/Header` stamp of a message whose first field is its header, read from the
    CDR without deserializing the rest (sec int32, nanosec uint32 right after the 4-byte
    encapsulation header, whose low bit says little-endian); None if too short."""
    if len(cdr) < 12:
        return None
    sec, nanosec = struct.unpack_from("<iI" if cdr[1] & 1 else ">iI", cdr, 4)
    return sec * 1_000_000_000 + nanosec


@cache
def _starts_with_header(msgtype: str) -> bool:
    fields = typestore().fielddefs[msgtype][1]
    return bool(fields) and fields[0][0] == "header" and fields[0][1][1] == "std_msgs/msg/Header"


class StampCadence:
    """Holes in one topic's header-stamp series. The expected period is the median of the last
    `window` intervals (once `min_intervals` are seen); an interval longer than `tolerance`
    periods is a gap with round(interval / period) - 1 samples missing. A repeated stamp is
    ignored; a stamp before the previous one (a source restarted or a bag looping) starts the
    series over."""

    def __init__(self, *, window: int = 20, min_intervals: int = 5, tolerance: float = 1.5):
        self.window, self.min_intervals, self.tolerance = window, min_intervals, tolerance
        self.intervals: deque[int] = deque(maxlen=window)
        self.last_ns: int | None = None
        self.gaps = 0
        self.missing = 0

    def add(self, stamp_ns: int) -> int:
        """Records one stamp; returns how many samples are missing just before it."""
        last, self.last_ns = self.last_ns, stamp_ns
        if last is None or stamp_ns < last:
            self.intervals.clear()
            return 0
        interval = stamp_ns - last
        if interval == 0:
            return 0
        missing = 0
        if len(self.intervals) >= self.min_intervals:
            period = statistics.median(self.intervals)
            if interval > self.tolerance * period:
                missing = max(1, round(interval / period) - 1)
                self.gaps += 1
                self.missing += missing
        if not missing:  # a gap is not a period
            self.intervals.append(interval)
        return missing


@dataclass
class _TopicLosses:
    """Loss counters of one subscription (the transport sums them per topic)."""

    msgtype: str
    cadence: StampCadence = field(default_factory=StampCadence)
    sample_lost: int = 0
    sample_rejected: int = 0

    def taken(self, cdr: bytes) -> None:
        if _starts_with_header(self.msgtype):
            stamp = header_stamp_ns(cdr)
            if stamp is not None:
                self.cadence.add(stamp)


LOSS_COUNTERS = ("sample_lost", "sample_rejected", "stamp_gaps", "stamp_missing", "corrupt_cdr",
                 "socket_drops", "malformed_packets")  # fmt: skip


def _loss_stats(subscriptions: Sequence[Any], corrupt: dict[str, int] | None) -> dict[str, int]:
    """Flat `{counter: total, counter/<topic>: n}` over `subscriptions` (per topic only where
    nonzero); `corrupt_cdr` only when known (`corrupt` is not None)."""
    per_topic: dict[str, Counter] = {}
    for sub in subscriptions:
        losses = sub._losses
        counts = per_topic.setdefault(sub.topic, Counter())
        counts["sample_lost"] += losses.sample_lost
        counts["sample_rejected"] += losses.sample_rejected
        counts["stamp_gaps"] += losses.cadence.gaps
        counts["stamp_missing"] += losses.cadence.missing
        if corrupt is not None:
            counts["corrupt_cdr"] += corrupt.get(sub.topic, 0)
    out: dict[str, int] = {}
    for name in LOSS_COUNTERS:
        if name in ("socket_drops", "malformed_packets") or (
            name == "corrupt_cdr" and corrupt is None
        ):
            continue  # per domain, not per topic (DdsTransport.stats)
        out[name] = sum(c[name] for c in per_topic.values())
        out.update({f"{name}{t}": c[name] for t, c in sorted(per_topic.items()) if c[name]})
    return out


# -- in-process ---------------------------------------------------------------------------


class Publisher(Protocol):
    """One topic's writer (`Transport.publisher`)."""

    def publish(self, message: Any, stamp_ns: int | None = None) -> None: ...

    def publish_cdr(self, cdr: bytes, stamp_ns: int | None = None) -> None: ...

    def matched(self) -> int: ...

    def close(self) -> None: ...


class Subscription(Protocol):
    """One topic's keep-last reader (`Transport.subscribe`)."""

    topic: str

    def take(self, max_samples: int | None = None) -> list[Received]: ...

    def matched(self) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """What the node, the replay and the tools need of a transport: typed topics of ROS 2
    messages as CDR bytes, keep-last subscriptions, a wait over several of them, loss
    counters. `InProcessTransport` and `DdsTransport` are the two (a test checks both satisfy
    it, signatures included)."""

    def publisher(
        self,
        topic: str,
        msgtype: str,
        *,
        reliable: bool = True,
        transient_local: bool = False,
        depth: int = 10,
    ) -> Publisher: ...

    def subscribe(
        self,
        topic: str,
        msgtype: str,
        *,
        depth: int = 10,
        reliable: bool = False,
        transient_local: bool = False,
    ) -> Subscription: ...

    def wait(self, subscriptions: Sequence[Any], timeout_s: float) -> list[Any]: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


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
                if len(sub._queue) == sub.depth:
                    sub._losses.sample_lost += 1  # keep-last: the oldest goes
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

    def stats(self) -> dict[str, int]:
        """Loss counters of this transport's subscriptions (see the module docstring)."""
        with self._lock:
            subs = [s for subs in self._subscriptions.values() for s in subs]
            return _loss_stats(subs, corrupt={})

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
    _losses: _TopicLosses = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._queue = deque(maxlen=self.depth)
        self._losses = _TopicLosses(self.msgtype)

    def take(self, max_samples: int | None = None) -> list[Received]:
        with self.transport._lock:
            n = len(self._queue) if max_samples is None else min(max_samples, len(self._queue))
            taken = [self._queue.popleft() for _ in range(n)]
            for r in taken:
                self._losses.taken(r.cdr)
            return taken

    def matched(self) -> int:
        return 1 if self.topic in self.transport._types else 0

    def close(self) -> None:
        self.transport._remove(self)


# -- sockets (Linux /proc) ----------------------------------------------------------------


class SocketInfo(NamedTuple):
    """One of this process's IP sockets: its fd, `udp`/`tcp`, bound address and port, the
    device it is bound to (SO_BINDTODEVICE; "" when none), its inode and, for UDP, how many
    datagrams the kernel dropped because its receive buffer was full."""

    fd: int
    protocol: str
    address: str
    port: int
    device: str
    inode: str = ""
    drops: int = 0

    @property
    def wildcard(self) -> bool:
        """Bound to every interface: 0.0.0.0 or :: without a device."""
        return self.address in ("0.0.0.0", "::") and not self.device


def _proc_address(hex_address: str) -> tuple[str, int]:
    address, port = hex_address.split(":")
    raw = bytes.fromhex(address)
    # /proc prints each 32-bit word in host (little-endian) order
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port, 16)


_HAVE_PROC = Path("/proc/self/net/udp").exists() and hasattr(socket, "SO_BINDTODEVICE")


def _socket_device(fd: int) -> str:
    try:
        dup = socket.socket(fileno=os.dup(fd))
    except OSError:  # closed meanwhile, or the number reused by something else
        return ""
    with dup:
        try:
            name = dup.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 32)
        except OSError:
            return ""
    return name.split(b"\0")[0].decode()


def process_sockets() -> list[SocketInfo]:
    """This process's UDP and TCP sockets (IPv4 and IPv6), from /proc; [] without /proc
    (not Linux)."""
    if not _HAVE_PROC:
        return []
    inode_fd: dict[str, int] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inode_fd[target[8:-1]] = int(name)
    found = []
    for table in ("udp", "udp6", "tcp", "tcp6"):
        try:
            lines = Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]
        except OSError:  # no IPv6 in this kernel
            continue
        for line in lines:
            cols = line.split()
            fd = inode_fd.get(cols[9])
            if fd is None:
                continue
            address, port = _proc_address(cols[1])
            protocol = table.rstrip("6")
            drops = int(cols[12]) if protocol == "udp" else 0
            found.append(
                SocketInfo(fd, protocol, address, port, _socket_device(fd), cols[9], drops)
            )
    return found


def _udp_drops(inodes: set[str]) -> int:
    """Datagrams the kernel dropped on the UDP sockets `inodes` (receive buffer full)."""
    total = 0
    for table in ("udp", "udp6"):
        try:
            lines = Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[9] in inodes:
                total += int(cols[12])
    return total


def _bind_to_device(sockets: Sequence[SocketInfo], interface: str, domain_id: int) -> None:
    for info in sockets:
        dup = socket.socket(fileno=os.dup(info.fd))
        try:
            dup.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        except OSError as exc:
            raise RuntimeError(
                f"DDS domain {domain_id}: cannot bind Cyclone's {info.protocol} socket "
                f"{info.address}:{info.port} to interface {interface!r} "
                f"({errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}); it would "
                "listen on every interface. Needs Linux >= 5.7 or CAP_NET_RAW; or pass "
                "config=None (CYCLONEDDS_URI) to accept that."
            ) from exc
        finally:
            dup.close()


# -- DDS ----------------------------------------------------------------------------------


class _CycloneLog:
    """Counts, from the warnings Cyclone writes to its log file, the samples it dropped as
    undecodable, per ROS topic ("... deserialization rt/<topic>/<type> failed ..."), and the
    malformed RTPS packets it dropped ("malformed packet received ...")."""

    PATTERN = re.compile(rb"deserialization (\S+) failed")
    MALFORMED = b"malformed packet received"
    MAX_BYTES = 16 << 20  # then truncated (Cyclone appends)

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.counts: Counter = Counter()
        self.malformed = 0
        self.lock = threading.Lock()

    def corrupt(self) -> dict[str, int]:
        """Undecodable samples per ROS topic so far (reads what the log gained)."""
        with self.lock:
            try:
                with open(self.path, "rb") as f:
                    f.seek(self.offset)
                    chunk = f.read()
            except OSError:
                return dict(self.counts)
            end = chunk.rfind(b"\n") + 1  # whole lines only
            for match in self.PATTERN.finditer(chunk[:end]):
                dds_topic = match.group(1).decode(errors="replace").rsplit("/", 1)[0]
                topic = dds_topic[2:] if dds_topic.startswith("rt/") else dds_topic
                self.counts[topic] += 1
            self.malformed += chunk.count(self.MALFORMED, 0, end)
            self.offset += end
            if self.offset > self.MAX_BYTES and end == len(chunk):
                os.truncate(self.path, 0)
                self.offset = 0
            return dict(self.counts)


@dataclass
class _Domain:
    domain: Any  # cyclonedds.domain.Domain, kept alive: deleting it deletes its participants
    config: str  # as given to DdsTransport (LOOPBACK or the XML)
    log: _CycloneLog | None
    receive_buffer_bytes: int | None
    udp_inodes: set[str]  # Cyclone's sockets of this domain


# Cyclone allows one configured domain object per domain id per process and deleting it
# deletes every participant on it; the process keeps each one it creates (mirrors Cyclone's
# own process-wide domain table).
_DOMAINS: dict[int, _Domain] = {}
_DOMAINS_LOCK = threading.Lock()


def _remove_quietly(path: Path) -> None:
    path.unlink(missing_ok=True)


def _ensure_domain(domain_id: int, config: str | None) -> _Domain | None:
    """Creates the domain `domain_id` with `config` (LOOPBACK: `loopback_config()` plus a log
    file and device-bound receive sockets). Raises RuntimeError when the configuration cannot
    be applied: a participant of that domain already exists in this process, or an earlier
    transport configured it differently."""
    from cyclonedds.core import DDSException
    from cyclonedds.domain import Domain

    if config is None:
        return _DOMAINS.get(domain_id)  # Cyclone reads CYCLONEDDS_URI itself
    with _DOMAINS_LOCK:
        known = _DOMAINS.get(domain_id)
        if known is not None:
            if known.config != config:
                raise RuntimeError(
                    f"DDS domain {domain_id} is already configured in this process with a "
                    "different configuration; one process has one configuration per domain"
                )
            return known
        log_path = xml = None
        if config == LOOPBACK:
            fd, name = tempfile.mkstemp(
                prefix=f"cyclonedds-{os.getpid()}-{domain_id}-", suffix=".log"
            )
            os.close(fd)
            log_path = Path(name)
            atexit.register(_remove_quietly, log_path)
            xml = loopback_config(log_file=log_path)
        what = f"DDS domain {domain_id}: cannot apply the " + (
            "loopback configuration" if config == LOOPBACK else "configuration given"
        )
        if _local_participants(domain_id):
            raise RuntimeError(
                f"{what}: a DDS participant on this domain already exists in this process "
                "(Cyclone keeps the configuration it was created with). Create the transport "
                f"before any other participant of domain {domain_id}, or pass config=None to "
                "share that one's."
            )
        before = {s.fd for s in process_sockets()}
        try:
            domain = Domain(domain_id, xml or config)
        except DDSException as exc:
            raise RuntimeError(
                f"{what}: Cyclone refused it (its reason is on stderr), or the domain exists "
                f"in this process already ({exc})"
            ) from exc
        created = [s for s in process_sockets() if s.fd not in before]
        if config == LOOPBACK:
            if not _HAVE_PROC:
                log.warning(
                    "DDS domain %d: Cyclone's receive sockets listen on every interface "
                    "(binding them to lo needs Linux)",
                    domain_id,
                )
            _bind_to_device([s for s in created if s.wildcard], "lo", domain_id)
        sizes = _receive_buffers(created, force=config == LOOPBACK)
        entry = _Domain(
            domain,
            config,
            _CycloneLog(log_path) if log_path else None,
            min(sizes, default=None),
            {s.inode for s in created if s.protocol == "udp"},
        )
        if config == LOOPBACK and sizes and min(sizes) < 2 * RECEIVE_BUFFER_BYTES:
            log.warning(
                "DDS domain %d: the kernel granted %d KiB receive buffers (net.core.rmem_max); "
                "a best-effort sample larger than about half of that (a 2M-point cloud is 32 MB) "
                "can be lost in a burst: raise it, e.g. sysctl -w net.core.rmem_max=%d",
                domain_id,
                min(sizes) // 2048,
                RECEIVE_BUFFER_BYTES,
            )
        _DOMAINS[domain_id] = entry
        return entry


def _receive_buffers(sockets: Sequence[SocketInfo], *, force: bool) -> list[int]:
    """The UDP receive buffer sizes (as the kernel reports them: twice the usable bytes) of
    `sockets`; with `force`, first raised to `RECEIVE_BUFFER_BYTES` past net.core.rmem_max
    where the process may (CAP_NET_ADMIN), else left at what Cyclone got."""
    sizes = []
    for info in sockets:
        if info.protocol != "udp":
            continue
        dup = socket.socket(fileno=os.dup(info.fd))
        try:
            current = dup.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            if force and current < 2 * RECEIVE_BUFFER_BYTES:
                try:
                    dup.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES)
                except OSError:  # EPERM: not privileged, keep what the kernel allowed
                    pass
            sizes.append(dup.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        finally:
            dup.close()
    return sizes


def _local_participants(domain_id: int) -> int:
    """How many DDS participants of `domain_id` exist in this process."""
    from cyclonedds.internal import load_cyclonedds

    lookup = load_cyclonedds().dds_lookup_participant
    lookup.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
    lookup.restype = ctypes.c_int32
    return max(0, lookup(domain_id, None, 0))


@cache
def _status_getters() -> tuple[Any, Any]:
    """libddsc's dds_get_sample_lost_status and dds_get_sample_rejected_status (ctypes)."""
    from cyclonedds.internal import dds_c_t, load_cyclonedds

    lib = load_cyclonedds()
    lost, rejected = lib.dds_get_sample_lost_status, lib.dds_get_sample_rejected_status
    lost.argtypes = [ctypes.c_int32, ctypes.POINTER(dds_c_t.sample_lost_status)]
    rejected.argtypes = [ctypes.c_int32, ctypes.POINTER(dds_c_t.sample_rejected_status)]
    lost.restype = rejected.restype = ctypes.c_int32
    return (
        lambda ref: _read_status(lost, ref, dds_c_t.sample_lost_status),
        lambda ref: _read_status(rejected, ref, dds_c_t.sample_rejected_status),
    )


def _read_status(getter: Any, ref: int, struct_type: Any) -> int | None:
    status = struct_type()
    return status.total_count if getter(ref, ctypes.byref(status)) == 0 else None


class DdsTransport:
    """ROS 2-compatible topics over Cyclone DDS.

    Args:
        domain_id: DDS domain (ROS_DOMAIN_ID); default: the environment's ROS_DOMAIN_ID or 0.
        config: `LOOPBACK` (default: this machine only, see `loopback_config`), an XML string
            or file URI, or None to let Cyclone read CYCLONEDDS_URI / use its defaults. The
            first transport of a domain id in a process sets that domain's configuration;
            RuntimeError if it cannot (a participant of that domain already exists in the
            process, or an earlier transport gave another configuration).
    """

    def __init__(self, domain_id: int | None = None, *, config: str | None = LOOPBACK):
        from cyclonedds.domain import DomainParticipant

        if domain_id is None:
            domain_id = int(os.environ.get("ROS_DOMAIN_ID", "0"))
        self.domain_id = domain_id
        self._domain = _ensure_domain(domain_id, config)
        self.participant = DomainParticipant(domain_id)
        self._topics: dict[str, Any] = {}
        self._entities: list[Any] = []
        self._subscriptions: list[_DdsSubscription] = []

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

        def reader_and_condition(reliable: bool) -> tuple[Any, Any]:
            qos = self._qos(reliable=reliable, transient_local=transient_local, depth=depth)
            reader = DataReader(self.participant, self._topic(topic, msgtype), qos=qos)
            self._entities.append(reader)
            mask = SampleState.Any | ViewState.Any | InstanceState.Alive
            return reader, ReadCondition(reader, mask)

        reader, condition = reader_and_condition(reliable)
        sub = _DdsSubscription(topic, msgtype, depth, reader, condition)
        if not reliable:  # the reliable twin (module docstring)
            sub.twin, sub._twin_condition = reader_and_condition(True)
        self._subscriptions.append(sub)
        return sub

    def wait(self, subscriptions: Sequence[_DdsSubscription], timeout_s: float) -> list:
        """Blocks until one of `subscriptions` holds a sample or `timeout_s` passes; returns
        those holding samples."""
        from cyclonedds.core import WaitSet

        ready = [s for s in subscriptions if s._has_data()]
        if ready or timeout_s <= 0:
            return ready
        waitset = WaitSet(self.participant)
        conditions = [c for s in subscriptions for c in s._conditions()]
        for c in conditions:
            waitset.attach(c)
        try:
            waitset.wait(int(timeout_s * 1e9))
        finally:
            for c in conditions:
                waitset.detach(c)
        return [s for s in subscriptions if s._has_data()]

    def stats(self) -> dict[str, int]:
        """Loss counters of this transport's subscriptions (see the module docstring), plus,
        for the domain (every transport of it in this process): `socket_drops`, datagrams
        the kernel dropped on Cyclone's sockets because their buffer was full, and
        `receive_buffer_bytes`, the smallest buffer it granted them."""
        subs = [s for s in self._subscriptions if s.reader is not None]
        for sub in subs:
            sub._poll_status()
        log = self._domain.log if self._domain else None
        out = _loss_stats(subs, log.corrupt() if log else None)
        if log:
            out["malformed_packets"] = log.malformed
        if self._domain:
            out["socket_drops"] = _udp_drops(self._domain.udp_inodes)
            if self._domain.receive_buffer_bytes is not None:
                out["receive_buffer_bytes"] = self._domain.receive_buffer_bytes
        return out

    def close(self) -> None:
        """Deletes this transport's participant (and its readers and writers)."""
        for sub in self._subscriptions:
            if sub.reader is not None:
                sub._poll_status()  # the last counts stay readable
                sub.reader = sub.twin = None
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
    twin: Any = field(default=None, repr=False)  # a best-effort reader's reliable twin
    _twin_condition: Any = field(default=None, repr=False)
    _losses: _TopicLosses = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._losses = _TopicLosses(self.msgtype)

    def _readers(self) -> list[Any]:
        return [r for r in (self.reader, self.twin) if r is not None]

    def _conditions(self) -> list[Any]:
        return [c for c in (self._condition, self._twin_condition) if c is not None]

    def _has_data(self) -> bool:
        return any(c.triggered for c in self._conditions())

    def _poll_status(self) -> None:
        lost, rejected = _status_getters()
        n_lost = [lost(r._ref) for r in self._readers()]
        n_rejected = [rejected(r._ref) for r in self._readers()]
        if None not in n_lost:
            self._losses.sample_lost = sum(n_lost)
        if None not in n_rejected:
            self._losses.sample_rejected = sum(n_rejected)

    def _take(self, reader: Any, max_samples: int) -> list[tuple[bytes, Any]]:
        from cyclonedds._clayer import ddspy_take
        from cyclonedds.core import DDSException, InstanceState, SampleState, ViewState

        mask = SampleState.Any | ViewState.Any | InstanceState.Any
        ret = ddspy_take(reader._ref, mask, max_samples)
        if isinstance(ret, int):
            raise DDSException(ret, f"taking samples on {self.topic}")
        return [(data, info) for data, info in ret if info.valid_data]

    def take(self, max_samples: int | None = None) -> list[Received]:
        """The samples held (up to `max_samples` from each reader), oldest first."""
        n = max_samples or self.depth
        samples = self._take(self.reader, n)
        if self.twin is not None:
            # a reliable writer reaches both readers: its samples count from the twin only
            # (matched handles come signed, sample infos' unsigned)
            reliable_writers = {h & (2**64 - 1) for h in self.twin.get_matched_publications()}
            samples = [s for s in samples if s[1].publication_handle not in reliable_writers]
            samples += self._take(self.twin, n)
            samples.sort(key=lambda s: s[1].source_timestamp)
        now = time.time_ns()
        taken = [
            Received(self.topic, self.msgtype, data, info.source_timestamp, now)
            for data, info in samples
        ]
        for r in taken:
            self._losses.taken(r.cdr)
        return taken

    def matched(self) -> int:
        return len({h for r in self._readers() for h in r.get_matched_publications()})

    def close(self) -> None:
        self._poll_status()
        readers = self._readers()
        self.reader = self.twin = None
        for reader in readers:
            reader.__del__()


def wait_for_match(endpoints: Sequence[Any], count: int = 1, timeout_s: float = 5.0) -> bool:
    """Waits until every publisher/subscription in `endpoints` matches at least `count` peers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(e.matched() >= count for e in endpoints):
            return True
        time.sleep(0.01)
    return all(e.matched() >= count for e in endpoints)
