"""API calls to the audit log: given their place in its chain as the pump
routes them, at the pump's priority, then written, fsynced and passed to
the sinks with that place from a thread of its own, so the pump, which
releases held calls, never waits on the disk. The thread commits at most
every SYNC_EVERY_S, everything put meanwhile in one write and one fsync:
an fsync costs the writer ~45 µs of CPU whatever it carries, and on a
busy node each one can hold a client or a server off its CPU. The pump
hands over plain `ApiCallRecord` bodies; the model is built only for the
sinks, off the path of every allowed call. Where a recorder takes the
calls the kernel allowed (guard.recorder, in GuardedSandboxes), only those
the guard judged (held, stopped) come here."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ebpf.events import EAGAIN, Event  # EAGAIN: an api_call's ret while the kernel holds it
from guard.alerts import ApiCallRecord
from guard.audit import AuditLog

# how long an allowed call's record may wait for the disk and the sinks
SYNC_EVERY_S = 0.1


def call_body(sandbox: str, labels: Mapping[str, str], ev: Event, allowed: bool, now: float) -> dict[str, Any]:
    """An `ApiCallRecord`'s fields but `seq`, as a plain dict: this is built
    for every allowed call."""
    return {"sandbox": sandbox, "agent": labels.get("agent"), "step": labels.get("step"),
            "tool_call": labels.get("tool_call"), "method": ev.method, "host": ev.host, "path": ev.path,
            "port": ev.port, "tls": ev.tls, "body_bytes": ev.arg, "allowed": allowed, "held": ev.ret == -EAGAIN,
            "reason": ev.reason, "pid": ev.pid, "ts_ns": ev.ts_ns, "time": now}


class ApiCallLog:
    def __init__(self, audit: AuditLog, sinks: Sequence[Callable[[ApiCallRecord], None]] = ()) -> None:
        self.audit = audit
        self.sinks = list(sinks)
        self.error: BaseException | None = None
        self._queue: queue.Queue[list[tuple[int, dict[str, Any]]] | None] = queue.Queue()
        self._hurry = threading.Event()  # a flush or close: commit without waiting out the interval
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
        """Wait until everything put is on disk, now."""
        self._hurry.set()
        self._queue.join()
        self._raise()

    def close(self) -> None:
        self._queue.put(None)
        self._hurry.set()
        self._thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"API calls could not be audited: {self.error}") from self.error

    def _run(self) -> None:
        last, closing = 0.0, False
        while not closing:
            # the rest of the interval first, so a busy pump wakes this thread once per commit
            self._hurry.wait(last + SYNC_EVERY_S - time.monotonic())
            self._hurry.clear()
            batches = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batches.append(self._queue.get_nowait())
            closing = None in batches
            try:
                if self.error is None:
                    self._sync([record for batch in batches if batch is not None for record in batch])
            except Exception as exc:  # noqa: BLE001 - raised to the pump and to flush()
                self.error = exc
            finally:
                last = time.monotonic()
                for _ in batches:
                    self._queue.task_done()

    def _sync(self, records: list[tuple[int, dict[str, Any]]]) -> None:
        self.audit.sync()  # also writes batches put meanwhile: theirs finds little left to do
        if not self.sinks:
            return
        for seq, body in records:
            record = ApiCallRecord.model_validate({**body, "seq": seq})
            for sink in self.sinks:
                sink(record)
