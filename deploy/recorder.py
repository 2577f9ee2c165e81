"""Recording the node's traffic: every received and published message, CDR as on the wire,
into a rosbag2 with MCAP storage (open it in Foxglove; `deploy.foxglove` serves the same live)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any


class Recorder:
    """Writes received and published messages (CDR as on the wire) to a rosbag2 with MCAP
    storage, thread-safe; log time is the wall clock when received / published."""

    def __init__(self, path: str | Path):
        from rosbags.rosbag2 import StoragePlugin, Writer

        from .messages import typestore

        self._typestore = typestore()
        self._writer = Writer(Path(path), version=8, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.count = 0

    def write(self, topic: str, msgtype: str, cdr: bytes, time_ns: int) -> None:
        with self._lock:
            if self._writer is None:
                return
            conn = self._connections.get(topic)
            if conn is None:
                conn = self._writer.add_connection(topic, msgtype, typestore=self._typestore)
                self._connections[topic] = conn
            self._writer.write(conn, time_ns, cdr)
            self.count += 1

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
