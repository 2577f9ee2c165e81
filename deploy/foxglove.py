"""A live view of the node without ROS: its inputs and outputs served over Foxglove's WebSocket
protocol (the maintained `foxglove-sdk` package), so a user opens Foxglove
(https://app.foxglove.dev, "Open connection", `ws://HOST:PORT`) and watches the node as
Autoware users do through a ROS bridge.

Every message the node receives or publishes (the LiDAR cloud, the six compressed camera
images and their camera_info, `/tf` and `/tf_static`, the detections as Autoware objects,
vision_msgs and MarkerArray boxes with class and score labels, the status and the
diagnostics) is forwarded as it is on the wire: ROS 2 CDR with its `ros2msg` schema, which
Foxglove decodes natively. Nothing is converted, so the view costs one copy per message (the
node benchmark measures it) and shows exactly what a ROS 2 subscriber would see.

`FoxgloveView` has the node's recorder interface (`write(topic, msgtype, cdr, time_ns)`,
`close()`); `Tee` gives the node a recorder and a view at once:

    view = FoxgloveView(port=8765)                   # loopback unless host= says otherwise
    node = PerceptionNode(model, config, transport, options, recorder=Tee(recorder, view))
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


class MessageSink(Protocol):
    """What the node writes every received and published message to (`Recorder` is one)."""

    def write(self, topic: str, msgtype: str, cdr: bytes, time_ns: int) -> None: ...

    def close(self) -> None: ...


class FoxgloveUnavailable(RuntimeError):
    """`foxglove-sdk` is not installed."""


class FoxgloveView:
    """A Foxglove WebSocket server fed the node's messages (ROS 2 CDR, `ros2msg` schemas).

    Args:
        host: the interface to listen on; loopback by default (pass e.g. "0.0.0.0" on purpose
            to serve other machines).
        port: TCP port; 0 picks a free one (see `port`).
        name: the server name Foxglove shows.

    Channels are advertised on a topic's first message. The server has its own
    `foxglove.Context`: two views in one process do not share channels. Thread-safe.
    """

    def __init__(
        self, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, name: str = "perception"
    ):
        try:
            import foxglove
        except ImportError as exc:
            raise FoxgloveUnavailable(
                "the live view needs foxglove-sdk: pip install -e '.[live]'"
            ) from exc
        from .messages import typestore

        self._foxglove = foxglove
        self._typestore = typestore()
        self._context = foxglove.Context()
        self._server = foxglove.start_server(name=name, host=host, port=port, context=self._context)
        self.host = host
        self._channels: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.count = 0  # messages forwarded
        self.bytes = 0
        self.errors = 0  # messages not forwarded (logged once per topic)
        self._failed_topics: set[str] = set()
        self._closed = False

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def _channel(self, topic: str, msgtype: str) -> Any:
        channel = self._channels.get(topic)
        if channel is None:
            msgdef, _ = self._typestore.generate_msgdef(msgtype, ros_version=2)
            schema = self._foxglove.Schema(name=msgtype, encoding="ros2msg", data=msgdef.encode())
            channel = self._foxglove.Channel(
                topic, schema=schema, message_encoding="cdr", context=self._context
            )
            self._channels[topic] = channel
        return channel

    def write(self, topic: str, msgtype: str, cdr: bytes, time_ns: int) -> None:
        """Forwards one message (CDR as on the wire, with its encapsulation header). The view
        never fails the node: an error is counted in `errors` and logged once per topic."""
        with self._lock:
            if self._closed:
                return
            try:
                self._channel(topic, msgtype).log(cdr, log_time=time_ns)
            except Exception as exc:
                self.errors += 1
                if topic not in self._failed_topics:
                    self._failed_topics.add(topic)
                    log.warning("foxglove view: cannot forward %s (%s): %r", topic, msgtype, exc)
                return
            self.count += 1
            self.bytes += len(cdr)

    @property
    def topics(self) -> list[str]:
        with self._lock:
            return sorted(self._channels)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for channel in self._channels.values():
                channel.close()
            self._server.stop()


class Tee:
    """Several message sinks as one (e.g. the MCAP recorder and the live view), in order;
    None entries are left out."""

    def __init__(self, *sinks: MessageSink | None):
        self.sinks = [s for s in sinks if s is not None]

    def write(self, topic: str, msgtype: str, cdr: bytes, time_ns: int) -> None:
        for sink in self.sinks:
            sink.write(topic, msgtype, cdr, time_ns)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
