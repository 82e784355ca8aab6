"""The one-frame hand-over between vpr_node's subscription callback and its inference worker."""
from __future__ import annotations

import threading
from typing import Any


class FrameSlot:
    """Holds at most one frame: `put` replaces an unprocessed frame (counting a drop), `take` waits
    for one and empties the slot. The subscriber never blocks and no backlog can form. `take` also
    says how many frames were dropped since the previous take, so that sequence matching can start
    afresh after a gap."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: Any = None
        self._full = False
        self._closed = False
        self.received = 0
        self.dropped = 0
        self.finished = 0  # taken frames whose processing ended (answered or failed): see `finish`
        self._dropped_at_last_take = 0

    def put(self, item: Any) -> bool:
        """Stores `item`; returns True when it replaced a frame nobody had taken (a drop). A closed
        slot drops `item` itself: nobody will take it."""
        with self._condition:
            self.received += 1
            if self._closed:
                self.dropped += 1
                return True
            replaced = self._full
            if replaced:
                self.dropped += 1
            self._item, self._full = item, True
            self._condition.notify()
            return replaced

    def take(self, timeout: float | None = None) -> tuple[Any, int] | None:
        """(newest frame, frames dropped since the previous take), or None after `timeout` seconds
        or once closed."""
        with self._condition:
            if not self._condition.wait_for(lambda: self._full or self._closed, timeout) or not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            skipped, self._dropped_at_last_take = self.dropped - self._dropped_at_last_take, self.dropped
            return item, skipped

    def finish(self) -> None:
        """The consumer is done with the frame it took, whatever the outcome."""
        with self._condition:
            self.finished += 1

    @property
    def pending(self) -> int:
        """Frames received but neither dropped nor finished: the one in the slot and the one in work."""
        with self._condition:
            return self.received - self.dropped - self.finished

    def close(self) -> None:
        """Releases a waiting `take`; a frame nobody took is discarded and counted as a drop, so
        that `pending` does not count it while the consumer is gone."""
        with self._condition:
            if self._full:
                self.dropped += 1
            self._closed, self._item, self._full = True, None, False
            self._condition.notify_all()

    def reopen(self) -> None:
        """Takes frames again; drops from before the close are not reported to the next `take`."""
        with self._condition:
            self._closed = False
            self._dropped_at_last_take = self.dropped
