"""The guard's records to the audit log from a thread of its own: the pump,
which releases held calls, never waits on the disk. The pump gives each
record its place in the chain as it routes it; this thread writes and
fsyncs, and only then passes the records to the sinks.

- The API calls the guard judged (held, stopped), and every call where no
  recorder takes the allowed ones (guard.recorder, in GuardedSandboxes):
  committed at most every SYNC_EVERY_S, everything put meanwhile in one
  write and one fsync. An fsync costs the writer ~45 µs of CPU whatever it
  carries, and on a busy node each one can hold a client or a server off
  its CPU. The pump hands over plain `ApiCallRecord` bodies; the model is
  built only for the sinks, off the path of every allowed call.
- Alerts: committed at once. An fsync that waited on the disk in the pump
  held the next held call for as long (up to 4 ms beside a sandbox whose
  calls the recorder was fsyncing).
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from common.priority import real_time
from ebpf.events import EAGAIN, Event  # EAGAIN: an api_call's ret while the kernel holds it
from guard.alerts import Alert, ApiCallRecord
from guard.audit import AuditLog

log = logging.getLogger("bastion.guard")

# how long an API call's record may wait for the disk and the sinks
SYNC_EVERY_S = 0.1


def call_body(sandbox: str, labels: Mapping[str, str], ev: Event, allowed: bool, now: float) -> dict[str, Any]:
    """An `ApiCallRecord`'s fields but `seq`, as a plain dict: this is built
    for every allowed call."""
    return {"sandbox": sandbox, "agent": labels.get("agent"), "step": labels.get("step"),
            "tool_call": labels.get("tool_call"), "method": ev.method, "host": ev.host, "path": ev.path,
            "port": ev.port, "tls": ev.tls, "body_bytes": ev.arg, "allowed": allowed, "held": ev.ret == -EAGAIN,
            "reason": ev.reason, "pid": ev.pid, "ts_ns": ev.ts_ns, "time": now}


Batch = tuple[str, list[tuple[int, Any]]]  # ("api_call", [(seq, body)]) or ("alert", [(seq, Alert)])


class AuditWriter:
    def __init__(self, audit: AuditLog, call_sinks: Sequence[Callable[[ApiCallRecord], None]] = (),
                 alert_sinks: Sequence[Callable[[Alert], None]] = ()) -> None:
        self.audit = audit
        self.call_sinks = list(call_sinks)
        self.alert_sinks = list(alert_sinks)
        self.error: BaseException | None = None
        self._queue: queue.Queue[Batch | None] = queue.Queue()
        self._hurry = threading.Event()  # alerts, a flush or close: commit without waiting out the interval
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def calls(self, bodies: list[dict[str, Any]]) -> None:
        """Chain API calls' records (`ApiCallRecord` fields but `seq`) into
        the log, to be written and sunk within SYNC_EVERY_S; raises the
        writer's error, if any, so a log that cannot be written stops the
        pump (and every sandbox)."""
        self._put("api_call", bodies)

    def alerts(self, alerts: list[Alert]) -> None:
        """Chain alerts into the log, to be written and sunk now; raises as
        `calls` does."""
        self._put("alert", alerts)
        self._hurry.set()

    def _put(self, kind: str, items: list[Any]) -> None:
        self._raise()
        bodies = [item.model_dump(mode="json") for item in items] if kind == "alert" else items
        seqs = self.audit.append_many(kind, bodies, durable=False)
        self._queue.put((kind, list(zip(seqs, items, strict=True))))

    def flush(self) -> None:
        """Wait until everything put is on disk and sunk, now."""
        self._hurry.set()
        self._queue.join()
        self._raise()

    def close(self) -> None:
        self._queue.put(None)
        self._hurry.set()
        self._thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the guard's records could not be audited: {self.error}") from self.error

    def _run(self) -> None:
        # at the pump's priority: it holds Python's lock for moments between
        # its writes, and a sandbox's tasks that preempted it there kept the
        # pump, with a held call, waiting up to 5 ms
        real_time()
        last, closing = -math.inf, False  # nothing committed yet: the first goes at once, whatever the uptime
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
                    self._sync([batch for batch in batches if batch is not None])
            except Exception as exc:  # noqa: BLE001 - raised to the pump and to flush()
                self.error = exc
            finally:
                last = time.monotonic()
                for _ in batches:
                    self._queue.task_done()

    def _sync(self, batches: list[Batch]) -> None:
        self.audit.sync()  # also writes batches put meanwhile: theirs finds little left to do
        for kind, records in batches:
            if kind == "alert":
                for _, alert in records:
                    log.warning("alert", extra={"fields": {"sandbox": alert.sandbox, "detector": alert.detector,
                                                           "rule": alert.rule, "action": alert.action.value}})
                    for sink in self.alert_sinks:
                        sink(alert)
            elif self.call_sinks:
                for seq, body in records:
                    record = ApiCallRecord.model_validate({**body, "seq": seq})
                    for sink in self.call_sinks:
                        sink(record)
