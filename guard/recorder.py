"""The recorder of allowed API calls: a process of the node's own that reads
the kernel's `calls` ring and chains every call into a log of its own, on
CPU time no one else wants.

Why a process: an allowed call needs no verdict, only its record, yet
reading, decoding and chaining one per call in the node costs the calls
themselves on a busy host (their round trip p99 +30 µs plain, +50-95 µs
TLS on two shared CPUs, when the node's pump did it), at any priority the
node's threads can take: a starved thread holds Python's lock, which the
real-time pump needs. In a `cpu.idle` cgroup, a process of its own waits
for idle CPUs and holds nothing of the node's.

The calls log is the node's evidence as much as its own log is: signed with
the node's key, and anchored in the node's log (an `anchor` record with its
head) whenever a sandbox's calls are collected, so the node's signed heads
cover it too. A sandbox's calls come back to the node when its command has
ended, for the run's result and the node's stream; the guard judges none
of them (the kernel allowed them by the agent's rules and learned
endpoints). If the recorder dies, every sandbox is killed (the manager's
pump checks it); if it falls behind, it leaves `cpu.idle` until it has
caught up, before the ring can overflow (a loss kills the sandbox).

Run as `python -m guard.recorder RING_FD SOCKET_FD`; it reads its setup and
then requests as JSON lines from the socket, and answers on it."""

from __future__ import annotations

import json
import logging
import mmap
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import TypeAdapter

from ebpf.events import cgroup_of, decode
from guard.alerts import ApiCallRecord
from guard.audit import ANCHOR, AuditLog, Signer
from guard.audit_writer import SYNC_EVERY_S, call_body

if TYPE_CHECKING:
    from ebpf.sensor import Sensor  # the recorder's process needs none of it

log = logging.getLogger("bastion.guard")

_RECORDS = TypeAdapter(list[ApiCallRecord])
# Calls per chunk of a reply: the node handles one between two chances for
# its real-time pump to take Python's lock
CHUNK = 64
# The ring's backlog past which the recorder leaves cpu.idle until it has
# read it, and for how long at least: a quarter of the ring, so it catches
# up well before a burst could fill it.
BEHIND_SHARE, CATCH_UP_S = 0.25, 1.0
# How long a collect waits on an idle recorder before it lets it out of
# cpu.idle until it answers: where a CPU has time to spare it answers at
# once, and its work never stands in the way of the node's threads (at
# normal weight it held a thread that held Python's lock off the node's
# CPU for 2 ms while the real-time pump, with a held call, waited on it).
STARVED_S = 0.05
# Records between two moments off the CPU (~0.3 ms of work). Once the kernel
# has picked an idle group's process, it keeps the CPU for its slice, to
# the next tick (4 ms at HZ=250), even while a thread of the node is ready
# to run: only a waking task preempts it, and a thread the real-time pump
# preempted while it held Python's lock is not waking. The pump, with a
# held call, then waited on both.
STEP, STEP_ASIDE_S = 32, 1e-5


class RecorderError(RuntimeError):
    pass


class Quiet(Protocol):
    """Where the recorder's process waits for idle CPUs (sandbox.quiet)."""

    def quiet(self, on: bool) -> None: ...

    def remove(self) -> None: ...


class Target(Protocol):
    name: str
    labels: dict[str, str]

    @property
    def id(self) -> int: ...


class CallRecorder:
    """The node's side: starts the recorder, tells it each sandbox's labels,
    collects a sandbox's calls at its end, and watches that it keeps up.
    Thread-safe."""

    def __init__(self, sensor: Sensor, audit: AuditLog, place: Callable[[int], Quiet],
                 sinks: Sequence[Callable[[ApiCallRecord], None]] = ()) -> None:
        self.audit = audit
        self.sinks = list(sinks)
        # a new calls log beside the node's, one per recorder
        self.path = audit.path.with_name(f"{audit.path.stem}.calls-{time.time_ns()}-{os.getpid()}.jsonl")
        self._sensor = sensor
        self._behind = int(BEHIND_SHARE * sensor.ringbuf_pages * mmap.PAGESIZE)
        self._lock = threading.Lock()  # one exchange at a time
        self._urgent_until = 0.0  # out of cpu.idle until then: it fell behind
        self._collecting = False
        self._is_quiet = True
        ours, theirs = socket.socketpair()
        ring = sensor.calls_fd()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "guard.recorder", str(ring), str(theirs.fileno())],
            pass_fds=(ring, theirs.fileno()), stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])})
        theirs.close()
        self._sock = ours
        self._replies = ours.makefile("rb")
        self._place = place(self.proc.pid)
        signer = audit.signer
        self._send({"log": str(self.path), "ngram_n": sensor.ngram_n, "checkpoint_every": audit.checkpoint_every,
                    "key": signer.private_pem().decode() if signer else None})

    def watch(self, target: Target) -> None:
        """Name a sandbox's calls in the log: before its command starts."""
        with self._lock:
            self._send({"op": "watch", "cg": target.id, "sandbox": target.name, "labels": target.labels})

    def collect(self, target: Target) -> list[bytes]:
        """A sandbox's allowed calls, once its command has ended, as JSON
        arrays of their records (`ApiCallRecord`'s fields), a chunk of at
        most CHUNK each: each is on disk in the calls log, whose head is
        then anchored in the node's log; the sinks get them."""
        with self._lock:
            try:
                self._send({"op": "collect", "cg": target.id})
                if not select.select([self._sock], [], [], STARVED_S)[0]:
                    self._collecting = True  # starved: out of cpu.idle until it has answered
                    self._set_quiet()
                reply = self._receive()
                chunks = [self._replies.readline() for _ in range(reply["chunks"])]
            finally:
                self._collecting = False
                self._set_quiet()
        if reply["undecodable"]:
            raise RecorderError(f"{reply['undecodable']} records of allowed API calls could not be decoded")
        if not chunks:
            return []
        self.audit.append(ANCHOR, {"sandbox": target.name, "log": self.path.name, "calls": reply["calls"],
                                   "covers": reply["covers"], "head": reply["head"]})
        if self.sinks:
            for chunk in chunks:
                for call in _RECORDS.validate_json(chunk):
                    for sink in self.sinks:
                        sink(call)
                time.sleep(0)  # Python's lock to the real-time pump, if it waits (see SandboxManager._recorded)
        return chunks

    def check(self) -> str | None:
        """Why the recorder can no longer record, if it cannot; lets it
        leave cpu.idle while it is behind. Cheap: the pump calls it every
        50 ms."""
        if self.proc.poll() is not None:
            return f"the recorder of allowed API calls exited (status {self.proc.returncode})"
        backlog = self._sensor.calls_backlog()
        if backlog > self._behind:
            if time.monotonic() >= self._urgent_until:
                log.warning("the recorder of allowed API calls is behind: out of cpu.idle until it catches up",
                            extra={"fields": {"backlog_bytes": backlog}})
            self._urgent_until = time.monotonic() + CATCH_UP_S
        if self._is_quiet != self._wants_quiet() and self._lock.acquire(blocking=False):
            try:
                self._set_quiet()
            finally:
                self._lock.release()
        return None

    def close(self) -> None:
        """Checkpoint and close the calls log; anchor its last head."""
        with self._lock:
            try:
                self._send({"op": "close"})
                reply = self._receive()  # and no calls: close names no sandbox
            except RecorderError:
                reply = None
            self._sock.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # hung: what it wrote stays, and the runs' anchors cover what was collected
                self.proc.wait()
            self._place.remove()
        if reply and reply["covers"] >= 0:
            self.audit.append(ANCHOR, {"sandbox": None, "log": self.path.name, "calls": 0,
                                       "covers": reply["covers"], "head": reply["head"]})
        elif self.path.exists() and not self.path.stat().st_size:
            self.path.unlink()  # it recorded nothing

    def _wants_quiet(self) -> bool:
        return not self._collecting and time.monotonic() >= self._urgent_until

    def _set_quiet(self) -> None:
        """With the lock held."""
        wanted = self._wants_quiet()
        if wanted != self._is_quiet:
            self._place.quiet(wanted)
            self._is_quiet = wanted

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise RecorderError(f"the recorder of allowed API calls is gone: {exc}") from exc

    def _receive(self) -> dict[str, Any]:
        line = self._replies.readline()
        if not line:
            raise RecorderError(f"the recorder of allowed API calls is gone (status {self.proc.poll()})")
        reply: dict[str, Any] = json.loads(line)
        return reply


# the recorder's process --------------------------------------------------------------------------------------------
class _Recording:
    """The recorder's state: the calls log, each sandbox's labels, and the
    calls recorded for each sandbox that no one has collected yet."""

    def __init__(self, ring_fd: int, setup: dict[str, Any]) -> None:
        from ebpf.ring import Ring

        signer = Signer.from_pem(setup["key"].encode()) if setup["key"] else None
        self.log = AuditLog(setup["log"], signer, setup["checkpoint_every"])
        self.ring = Ring(ring_fd)
        self.ngram_n: int = setup["ngram_n"]
        self.names: dict[int, tuple[str, dict[str, str]]] = {}
        self.calls: dict[int, list[dict[str, Any]]] = {}  # by cgroup: its calls' records, seq and log too
        self.undecodable: dict[int, int] = {}

    def record(self) -> None:
        """Everything the ring holds, into the log: one write, one fsync."""
        raw = self.ring.take()
        if not raw:
            return
        now = time.time()
        for start in range(0, len(raw), STEP):
            kept, bodies = [], []
            for record in raw[start:start + STEP]:
                try:
                    ev = decode(record, self.ngram_n, {})
                except ValueError:
                    cg = cgroup_of(record)
                    self.undecodable[cg] = self.undecodable.get(cg, 0) + 1
                    continue
                name, labels = self.names.get(ev.cgroup_id, (f"cgroup {ev.cgroup_id}", {}))
                kept.append(ev.cgroup_id)
                bodies.append(call_body(name, labels, ev, True, now))
            for cg, body, seq in zip(kept, bodies, self.log.append_many("api_call", bodies, durable=False),
                                     strict=True):
                self.calls.setdefault(cg, []).append({**body, "seq": seq, "log": self.log.path.name})
            if start + STEP < len(raw):
                _step_aside()
        self.log.sync()

    def answer(self, request: dict[str, Any]) -> bytes | None:
        """The reply to a request: a JSON line, then for collect the
        sandbox's calls as JSON arrays, a line each."""
        op, cg = request.get("op"), request.get("cg", 0)
        if op == "watch":
            self.names[cg] = (request["sandbox"], request["labels"])
            return None
        self.record()
        if op == "close":
            self.log.close()
        else:
            self.names.pop(cg, None)
        covers, head = self.log.head()
        calls = self.calls.pop(cg, [])
        chunks = []
        for i in range(0, len(calls), CHUNK):
            if i:
                _step_aside()
            chunks.append(json.dumps(calls[i:i + CHUNK]).encode() + b"\n")
        header = {"calls": len(calls), "chunks": len(chunks), "undecodable": self.undecodable.pop(cg, 0),
                  "covers": covers, "head": head}
        return json.dumps(header).encode() + b"\n" + b"".join(chunks)


def _step_aside() -> None:
    """Off the CPU for a moment (~60 µs with the default timer slack), so
    that a thread of the node that is ready to run gets it now."""
    time.sleep(STEP_ASIDE_S)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the node's to handle; it closes the socket
    ring_fd, sock = int(argv[0]), socket.socket(fileno=int(argv[1]))
    lines = _Lines(sock)
    setup = lines.next()
    if setup is None:
        return
    recording = _Recording(ring_fd, json.loads(setup))
    recorded = time.monotonic()
    while True:
        if lines.ready(recorded + SYNC_EVERY_S - time.monotonic()):
            line = lines.next()
            request = json.loads(line) if line is not None else {"op": "close"}  # the node is gone
            reply = recording.answer(request)
            if reply is not None and line is not None:
                sock.sendall(reply)
            if request.get("op") == "close":
                return
        if time.monotonic() >= recorded + SYNC_EVERY_S:
            recording.record()
            recorded = time.monotonic()


class _Lines:
    """JSON lines from the node."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffered = sock, b""

    def ready(self, timeout: float) -> bool:
        return b"\n" in self.buffered or bool(select.select([self.sock], [], [], max(timeout, 0))[0])

    def next(self) -> bytes | None:
        """The next line, None at the end."""
        while b"\n" not in self.buffered:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.buffered += chunk
        line, self.buffered = self.buffered.split(b"\n", 1)
        return line


if __name__ == "__main__":
    main(sys.argv[1:])
