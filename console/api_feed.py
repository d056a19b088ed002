"""The node's recent API calls, allowed and stopped, for the service's
stream: a bounded window in memory, each call at its place in the stream,
in the order they come (the stopped and held ones at once, the allowed ones
when their sandbox's command has ended). The audit logs stay the full
record, and survive restarts."""

from __future__ import annotations

import threading
import time
from collections import deque
from itertools import takewhile

from guard.alerts import ApiCallRecord

KEEP = 10_000


class ApiCallFeed:
    """Thread-safe; `add` is a guard API-call sink."""

    def __init__(self, keep: int = KEEP) -> None:
        self._calls: deque[tuple[int, ApiCallRecord]] = deque(maxlen=keep)
        # the next call's place in the stream: from the node's start in µs, so
        # that a client resuming after a restart misses none of the new calls
        self._next = time.time_ns() // 1000
        self._changed = threading.Condition()
        self.allowed = self.stopped = 0  # since the node started

    def add(self, call: ApiCallRecord) -> None:
        with self._changed:
            self._calls.append((self._next, call))
            self._next += 1
            if call.allowed:
                self.allowed += 1
            else:
                self.stopped += 1
            self._changed.notify_all()

    def wait_from(self, place: int, timeout: float) -> list[tuple[int, ApiCallRecord]]:
        """The kept calls at `place` in the stream or later, with their
        places, waiting up to `timeout` for the first."""
        with self._changed:
            self._changed.wait_for(lambda: self._next > place, timeout)
            # read back from the newest
            return list(reversed(list(takewhile(lambda c: c[0] >= place, reversed(self._calls)))))
