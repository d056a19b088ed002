"""The node's recent API calls, allowed and stopped, for the service's
stream: a bounded window in memory, keyed by each call's sequence number in
the audit log, which stays the full record (and survives restarts)."""

from __future__ import annotations

import threading
from collections import deque
from itertools import takewhile

from guard.alerts import ApiCallRecord

KEEP = 10_000


class ApiCallFeed:
    """Thread-safe; `add` is a guard API-call sink."""

    def __init__(self, keep: int = KEEP) -> None:
        self._calls: deque[ApiCallRecord] = deque(maxlen=keep)
        self._changed = threading.Condition()
        self.allowed = self.stopped = 0  # since the node started

    def add(self, call: ApiCallRecord) -> None:
        with self._changed:
            self._calls.append(call)
            if call.allowed:
                self.allowed += 1
            else:
                self.stopped += 1
            self._changed.notify_all()

    def wait_from(self, seq: int, timeout: float) -> list[ApiCallRecord]:
        """The kept calls whose audit sequence number is `seq` or later,
        waiting up to `timeout` for the first."""
        with self._changed:
            self._changed.wait_for(lambda: bool(self._calls) and self._calls[-1].seq >= seq, timeout)
            # sequence numbers grow along the deque: read back from the newest
            return list(reversed(list(takewhile(lambda c: c.seq >= seq, reversed(self._calls)))))
