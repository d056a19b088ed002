"""Syscall traces and observed behaviour: read from plain trace files (the
format public host-intrusion datasets use) or rebuilt from recorded sensor
events."""

from __future__ import annotations

import errno
import posixpath
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ebpf.api import template
from ebpf.events import Event, EventKind
from ebpf.record import read_jsonl
from common.files import InputError, read_bytes

MAX_TRACE_BYTES = 256 << 20
MAX_SYSCALL = 1023  # n-grams pack syscall numbers into 10 bits each
PREFIX_DEPTH = 3  # /usr/lib/python3.11 stands for everything below it
WORKDIR = "$WORKDIR"


class TraceError(ValueError):
    """An unreadable trace; the message names the file."""


@dataclass
class Trace:
    """One thread's syscall numbers in order, named for score reports."""

    name: str
    syscalls: np.ndarray  # int64


@dataclass
class Behaviour:
    """What a tool touched besides syscalls: the profile's allowlist side."""

    binaries: set[str] = field(default_factory=set)
    path_prefixes: set[str] = field(default_factory=set)
    destinations: set[str] = field(default_factory=set)
    endpoints: dict[str, int] = field(default_factory=dict)  # "METHOD host /template" -> largest body seen
    calls: dict[str, int] = field(default_factory=dict)  # the same keys -> the most calls in one run

    def update(self, other: Behaviour) -> None:
        """Add another run's behaviour (or several runs')."""
        self.binaries |= other.binaries
        self.path_prefixes |= other.path_prefixes
        self.destinations |= other.destinations
        for mine, theirs in ((self.endpoints, other.endpoints), (self.calls, other.calls)):
            for key, n in theirs.items():
                mine[key] = max(n, mine.get(key, 0))


def read_trace_file(path: Path) -> Trace:
    try:
        text = read_bytes(path, MAX_TRACE_BYTES).decode("ascii")
    except InputError as exc:
        raise TraceError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: not a trace: byte {exc.start} is not ASCII") from None
    words = text.split()
    if not all(w.isdigit() for w in words):
        bad = next(w for w in words if not w.isdigit())
        raise TraceError(f"{path}: {bad[:20]!r} is not a syscall number")
    calls = np.array([int(w) for w in words], dtype=np.int64)
    if calls.size and calls.max() > MAX_SYSCALL:
        raise TraceError(f"{path}: syscall number {calls.max()} is above {MAX_SYSCALL}")
    return Trace(str(path), calls)


def read_trace_dir(directory: Path) -> list[Trace]:
    """Every file under a directory, one trace each, in name order."""
    if not directory.is_dir():
        raise TraceError(f"{directory}: not a directory of traces")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise TraceError(f"{directory}: holds no trace files")
    return [read_trace_file(p) for p in files]


def path_prefix(path: str, workdir: str | None = None) -> str:
    """The directory a path is learned under; the sandbox's workdir is one name."""
    if workdir and (path == workdir or path.startswith(workdir.rstrip("/") + "/")):
        return WORKDIR
    parts = posixpath.normpath(path).split("/")
    return "/".join(parts[: PREFIX_DEPTH + 1]) if len(parts) > PREFIX_DEPTH + 1 else posixpath.dirname(path) or "/"


def destination(ev: Event) -> str:
    return ev.path or f"{ev.addr}:{ev.port}"


def took_place(ev: Event) -> bool:
    """Whether the call did what it asked, as far as a profile cares: a
    non-blocking connect under way (EINPROGRESS) counts, since a client
    with a timeout connects so (Python's, curl)."""
    return ev.ret >= 0 or (ev.kind is EventKind.CONNECT and ev.ret == -errno.EINPROGRESS)


def behaviour_of(events: Iterable[Event], workdir: str | None = None) -> Behaviour:
    """The binaries run, path prefixes opened, destinations reached and API
    calls made by one run."""
    seen = Behaviour()
    for ev in events:
        if not took_place(ev):
            continue
        match ev.kind:
            case EventKind.EXEC:
                seen.binaries.add(ev.path)
            case EventKind.OPEN if ev.path.startswith("/"):
                seen.path_prefixes.add(path_prefix(ev.path, workdir))
            case EventKind.CONNECT | EventKind.SENDTO:
                seen.destinations.add(destination(ev))
            case EventKind.API if ev.method:
                key = endpoint_key(ev.method, ev.host, ev.path)
                seen.endpoints[key] = max(ev.arg, seen.endpoints.get(key, 0))
                seen.calls[key] = seen.calls.get(key, 0) + 1
    return seen


def endpoint_key(method: str, host: str, target: str) -> str:
    """How a profile names an endpoint: `GET records.example.org /records/{}`."""
    return f"{method} {host} {template(target)}"


def split_endpoint_key(key: str) -> tuple[str, str, str]:
    """The method, host and path template of an endpoint_key."""
    method, host, path = key.split(" ", 2)
    return method, host, path


def after_exec(events: Sequence[Event]) -> list[Event]:
    """The events from the sandbox's first successful exec on: before it,
    only Bastion's own launcher ran (entering cgroups, applying Landlock)."""
    for i, ev in enumerate(events):
        if ev.kind is EventKind.EXEC and ev.ret == 0:
            return list(events[i:])
    return []


def traces_from_events(events: Iterable[Event], ngram_n: int, name: str) -> list[Trace]:
    """Rebuild each thread's syscall sequence from recorded sequence events,
    or, in recordings without them, from n-gram events recorded with no
    known set (training mode). A gap in positions starts a new trace."""
    events = list(events)
    if any(ev.kind is EventKind.SEQUENCE for ev in events):
        pieces = [(ev.tid, ev.arg, list(ev.ngram)) for ev in events if ev.kind is EventKind.SEQUENCE]
    else:
        pieces = []
        for ev in events:
            if ev.kind is EventKind.NGRAM:
                if len(ev.ngram) != ngram_n:
                    raise TraceError(f"{name}: an n-gram of length {len(ev.ngram)}, expected {ngram_n}")
                pieces.append((ev.tid, ev.arg - ngram_n + 1, list(ev.ngram)))
    by_tid: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
    for tid, start, calls in pieces:
        by_tid[tid].append((start, calls))
    traces = []
    for tid, parts in sorted(by_tid.items()):
        parts.sort(key=lambda p: p[0])
        segment: list[int] = []
        begin = end = -1  # positions of the segment: [begin, end)
        for start, calls in parts:
            if start > end or not segment:  # a gap: a lost event splits the sequence
                if segment:
                    traces.append(Trace(f"{name}:tid={tid}:pos={begin}", np.array(segment)))
                segment, begin = list(calls), start
            else:  # n-grams overlap their predecessor; batches follow it
                segment += calls[end - start:]
            end = max(end, start + len(calls))
        if segment:
            traces.append(Trace(f"{name}:tid={tid}:pos={begin}", np.array(segment)))
    return traces


def read_event_files(paths: Sequence[Path], ngram_n: int) -> tuple[list[Trace], Behaviour]:
    """Traces and behaviour from recorded JSONL event files."""
    traces: list[Trace] = []
    seen = Behaviour()
    for path in paths:
        events = after_exec(list(read_jsonl(path)))
        found = traces_from_events(events, ngram_n, str(path))
        if not found:
            raise TraceError(f"{path}: no sequence or n-gram events; record with `bastion trace --ngrams`")
        traces += found
        seen.update(behaviour_of(events))
    return traces, seen
