"""API calls to the audit log: given their place in its chain as the pump
routes them, at the pump's priority, then written, fsynced and passed to
the sinks with that place from a thread of its own, so the pump, which
releases held calls, never waits on the disk."""

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
        """Chain records into the log, to be written and sunk; raises the
        writer's error, if any, so a log that cannot be written stops the
        pump (and every sandbox)."""
        self._raise()
        seqs = self.audit.append_many("api_call", [r.model_dump(mode="json", exclude={"seq"}) for r in records],
                                      durable=False)
        for record, seq in zip(records, seqs, strict=True):
            record.seq = seq
        self._queue.put(records)

    def flush(self) -> None:
        """Wait until everything put is on disk."""
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
                    self._sync(records)
            except Exception as exc:  # noqa: BLE001 - raised to the pump and to flush()
                self.error = exc
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _sync(self, records: list[ApiCallRecord]) -> None:
        self.audit.sync()  # also writes batches put meanwhile: theirs finds little left to do
        for record in records:
            for sink in self.sinks:
                sink(record)
