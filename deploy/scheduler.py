"""The node's model-entry slot: the newest waiting cloud wins (a stale one is dropped and
counted, so a slow model skips frames instead of queueing them)."""

from __future__ import annotations

import threading
from typing import Any


class LatestSlot:
    """A one-element entry queue: `put` replaces a waiting item (returned, to be counted as
    dropped) instead of queueing behind it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None

    def put(self, item: Any) -> Any:
        with self._cond:
            old, self._item = self._item, item
            self._cond.notify_all()
            return old

    def take_waiting(self) -> Any:
        with self._cond:
            old, self._item = self._item, None
            return old

    def get(self, timeout: float) -> Any:
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item
