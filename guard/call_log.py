"""API calls to the audit log: given their place in its chain as the pump
routes them, at the pump's priority, then written, fsynced and passed to
the sinks with that place from a thread of its own, so the pump, which
releases held calls, never waits on the disk. The pump hands over plain
`ApiCallRecord` bodies; the model is built only for the sinks, off the
path of every allowed call."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from guard.alerts import ApiCallRecord
from guard.audit import AuditLog


class ApiCallLog:
    def __init__(self, audit: AuditLog, sinks: Sequence[Callable[[ApiCallRecord], None]] = ()) -> None:
        self.audit = audit
        self.sinks = list(sinks)
        self.error: BaseException | None = None
        self._queue: queue.Queue[list[tuple[int, dict[str, Any]]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="api-call-log", daemon=True)
        self._thread.start()

    def put(self, bodies: list[dict[str, Any]]) -> None:
        """Chain records (`ApiCallRecord` fields but `seq`) into the log, to
        be written and sunk; raises the writer's error, if any, so a log
        that cannot be written stops the pump (and every sandbox)."""
        self._raise()
        seqs = self.audit.append_many("api_call", bodies, durable=False)
        self._queue.put(list(zip(seqs, bodies, strict=True)))

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

    def _sync(self, records: list[tuple[int, dict[str, Any]]]) -> None:
        self.audit.sync()  # also writes batches put meanwhile: theirs finds little left to do
        if not self.sinks:
            return
        for seq, body in records:
            record = ApiCallRecord.model_validate({**body, "seq": seq})
            for sink in self.sinks:
                sink(record)
