"""The live view: a WebSocket client speaking Foxglove's protocol lists the node's channels
(inputs and outputs, ROS 2 schemas) and receives a detection message, byte-equal to what the
node published."""

from __future__ import annotations

import json
import struct
import time

import pytest
import torch

pytest.importorskip(
    "foxglove", reason="the live view needs foxglove-sdk (pip install -e '.[live]')"
)
websockets_sync = pytest.importorskip(
    "websockets.sync.client", reason="the test's WebSocket client needs websockets"
)

from perception.config import parse_config  # noqa: E402
from perception.deploy.bag import read_bag, write_nuscenes_bag  # noqa: E402
from perception.deploy.foxglove import FoxgloveView, Tee  # noqa: E402
from perception.deploy.messages import deserialize, msg_class, serialize  # noqa: E402
from perception.deploy.node import MARKERS_TOPIC, NodeOptions, PerceptionNode  # noqa: E402
from perception.deploy.transport import InProcessTransport, Received  # noqa: E402
from perception.models.builder import build_model  # noqa: E402
from tests.deploy.node_helpers import SCENE, node_raw  # noqa: E402

SUBPROTOCOL = "foxglove.sdk.v1"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"


class Client:
    """A minimal Foxglove WebSocket client: reads advertisements, subscribes, reads data."""

    def __init__(self, url: str):
        self.ws = websockets_sync.connect(url, subprotocols=[SUBPROTOCOL], open_timeout=10)
        self.channels: dict[str, dict] = {}  # topic -> advertised channel
        self.subscriptions: dict[int, str] = {}  # subscription id -> topic

    def read(self, timeout: float) -> tuple[str, int, bytes] | None:
        """Handles text ops until a data message arrives: (topic, log time, payload), or None
        when nothing arrives within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = self.ws.recv(timeout=left)
            except TimeoutError:
                return None
            if isinstance(frame, bytes):
                assert frame[0] == 0x01, "a message-data frame"
                sub, log_time = struct.unpack_from("<IQ", frame, 1)
                return self.subscriptions[sub], log_time, frame[13:]
            op = json.loads(frame)
            if op["op"] == "advertise":
                self.channels.update({c["topic"]: c for c in op["channels"]})
        return None

    def subscribe(self, topic: str) -> None:
        sub = len(self.subscriptions) + 1
        self.subscriptions[sub] = topic
        request = [{"id": sub, "channelId": self.channels[topic]["id"]}]
        self.ws.send(json.dumps({"op": "subscribe", "subscriptions": request}))

    def close(self) -> None:
        self.ws.close()


def test_view_advertises_and_forwards_cdr():
    view = FoxgloveView(port=0)
    client = Client(view.url)
    try:
        marker_array = msg_class(MARKER_ARRAY)(markers=[])
        cdr = serialize(marker_array, MARKER_ARRAY)
        view.write("/perception/markers", MARKER_ARRAY, cdr, 123)
        client.read(timeout=2)  # the advertisement
        channel = client.channels["/perception/markers"]
        assert (channel["schemaName"], channel["schemaEncoding"], channel["encoding"]) == (
            MARKER_ARRAY,
            "ros2msg",
            "cdr",
        )
        assert "visualization_msgs/Marker[] markers" in channel["schema"]
        client.subscribe("/perception/markers")
        got = None
        for stamp in range(124, 224):  # the subscription lands asynchronously: send until seen
            view.write("/perception/markers", MARKER_ARRAY, cdr, stamp)
            if (got := client.read(timeout=0.1)) is not None:
                break
        assert got is not None and got[0] == "/perception/markers" and got[2] == cdr
        assert view.count >= 2 and view.errors == 0
    finally:
        client.close()
        view.close()
    view.write("/perception/markers", MARKER_ARRAY, cdr, 1)  # after close: ignored
    assert view.topics == ["/perception/markers"]


def test_view_is_loopback_by_default():
    view = FoxgloveView(port=0)
    try:
        assert view.host == "127.0.0.1" and view.url.startswith("ws://127.0.0.1:")
    finally:
        view.close()


@pytest.mark.usefixtures("one_torch_thread")
def test_node_serves_inputs_and_detections(tiny_world, tmp_path):
    config = parse_config(node_raw(tiny_world))
    torch.manual_seed(0)
    model = build_model(config).eval()
    out = tmp_path / "scene"
    write_nuscenes_bag(tiny_world, SCENE, out)
    messages = [(t, m, bytes(cdr)) for t, m, _, cdr in read_bag(out)]
    view = FoxgloveView(port=0)
    client = Client(view.url)
    options = NodeOptions(pipelined=False, wall_timeout=False)
    node = PerceptionNode(model, config, InProcessTransport(), options, recorder=Tee(view))
    try:
        got = None
        for topic, msgtype, cdr in messages:
            now = time.time_ns()
            node.handle(Received(topic, msgtype, cdr, now, now))
            node.run_entry()
            if MARKERS_TOPIC in client.subscriptions.values():
                if (got := client.read(timeout=0.05)) is not None and got[0] == MARKERS_TOPIC:
                    break
            elif client.read(timeout=0.05) is None and MARKERS_TOPIC in client.channels:
                client.subscribe(MARKERS_TOPIC)
        assert got is not None, "no detection message reached the client"
        markers = deserialize(got[2], MARKER_ARRAY)
        assert markers.markers and markers.markers[0].action == 3  # DELETEALL, then the boxes
        inputs = {"/lidar/top", "/tf_static"} | {t for t in client.channels if "/image" in t}
        assert inputs <= set(client.channels), sorted(client.channels)
        assert sum("/image/compressed" in t for t in client.channels) == len(config.data.cameras)
        assert view.errors == 0
    finally:
        node.stop()
        client.close()
        view.close()
