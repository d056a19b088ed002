"""API calls to the audit log from a thread of their own: the pump, which
releases held calls, never waits on the disk for them, and each record still
reaches the log, then the sinks with its place there."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

from guard.alerts import ApiCallRecord
from guard.audit import AuditLog


class ApiCallLog:
    def __init__(self, audit: AuditLog, sinks: Sequence[Callable[[ApiCallRecord], None]] = ()) -> None:
        self.audit = audit
        self.sinks = list(sinks)
        self.error: BaseException | None = None
        self._queue: queue.Queue[list[ApiCallRecord] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="api-call-log", daemon=True)
        self._thread.start()

    def put(self, records: list[ApiCallRecord]) -> None:
        """Queue records for the log; raises the writer's error, if any, so
        a log that cannot be written stops the pump (and every sandbox)."""
        self._raise()
        self._queue.put(records)

    def flush(self) -> None:
        """Wait until everything queued is in the log."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"API calls could not be audited: {self.error}") from self.error

    def _run(self) -> None:
        while (records := self._queue.get()) is not None:
            try:
                if self.error is None:
                    self._write(records)
            except Exception as exc:  # noqa: BLE001 - raised to the pump and to flush()
                self.error = exc
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _write(self, records: list[ApiCallRecord]) -> None:
        seqs = self.audit.append_many("api_call", [r.model_dump(mode="json", exclude={"seq"}) for r in records])
        for record, seq in zip(records, seqs, strict=True):
            record.seq = seq
            for sink in self.sinks:
                sink(record)
