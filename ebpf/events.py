"""Sensor events: the ctypes mirror of bpf/bastion.h, the hot-path dataclass,
and the pydantic model of their JSONL/wire form."""

from __future__ import annotations

import ctypes as ct
import enum
import ipaddress
from dataclasses import dataclass, field, fields
from typing import Any

from pydantic import ConfigDict, TypeAdapter

from ebpf.api import API_ALLOW, API_HOLD, METHOD_NAMES, REASONS

TASK_COMM_LEN = 16
PATH_LEN = 256
ARGV_N = 4
ARG_LEN = 64
UNIX_PATH_LEN = 108
NGRAM_MAX = 8

EACCES = 13
EAGAIN = 11
AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10


class EventKind(enum.StrEnum):
    EXEC = "exec"
    FORK = "fork"
    EXIT = "exit"
    OPEN = "open"
    CONNECT = "connect"
    SENDTO = "sendto"
    BIND = "bind"
    LISTEN = "listen"
    ACCEPT = "accept"
    NGRAM = "ngram"
    DENY = "deny"
    SYSCALL = "syscall"
    SEQUENCE = "sequence"
    API = "api_call"


# enum ev_type in bastion.h
_KIND_BY_TYPE = {i + 1: kind for i, kind in enumerate(EventKind)}
DENY_HOOKS = {1: "connect4", 2: "connect6", 3: "sendmsg4", 4: "sendmsg6", 5: "unix_connect", 6: "unix_sendmsg",
              7: "fastopen", 8: "UDP to an API destination"}


class EvHdr(ct.Structure):
    _fields_ = [
        ("ts_ns", ct.c_uint64),
        ("cgroup_id", ct.c_uint64),
        ("pid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("type", ct.c_uint16),
        ("_pad", ct.c_uint16),
        ("ret", ct.c_int32),
        ("comm", ct.c_char * TASK_COMM_LEN),
    ]


class EvExec(ct.Structure):
    _fields_ = [("h", EvHdr), ("filename", ct.c_char * PATH_LEN), ("argv", (ct.c_char * ARG_LEN) * ARGV_N)]


class EvFork(ct.Structure):
    _fields_ = [("h", EvHdr), ("child_pid", ct.c_uint32), ("_pad", ct.c_uint32)]


class EvExit(ct.Structure):
    _fields_ = [("h", EvHdr), ("code", ct.c_int32), ("signal", ct.c_int32)]


class EvOpen(ct.Structure):
    _fields_ = [("h", EvHdr), ("flags", ct.c_int32), ("path_len", ct.c_uint32), ("path", ct.c_char * PATH_LEN)]


class EvNet(ct.Structure):
    _fields_ = [
        ("h", EvHdr),
        ("family", ct.c_uint16),
        ("port", ct.c_uint16),
        ("arg", ct.c_uint32),
        ("addr", ct.c_uint8 * 16),
        ("unix_path", ct.c_char * UNIX_PATH_LEN),
    ]


class EvSyscall(ct.Structure):
    _fields_ = [("h", EvHdr), ("nr", ct.c_uint32), ("trapped", ct.c_uint32)]


class Ngram(ct.Structure):
    _fields_ = [("seq", ct.c_uint16 * NGRAM_MAX)]


class EvNgram(ct.Structure):
    _fields_ = [("h", EvHdr), ("gram", Ngram), ("pos", ct.c_uint32), ("in_window", ct.c_uint16),
                ("in_frame", ct.c_uint16), ("quarantined", ct.c_uint32), ("_pad", ct.c_uint32)]


SEQ_BATCH = 32


class EvSeq(ct.Structure):
    _fields_ = [("h", EvHdr), ("pos", ct.c_uint32), ("n", ct.c_uint16), ("_pad", ct.c_uint16),
                ("calls", ct.c_uint16 * SEQ_BATCH)]


API_HOST_LEN = 64
API_TARGET_LEN = 128


class EvApi(ct.Structure):
    _fields_ = [("h", EvHdr), ("endpoint", ct.c_uint64), ("dest", ct.c_uint32), ("body", ct.c_uint32),
                ("port", ct.c_uint16),
                ("method", ct.c_uint8), ("verdict", ct.c_uint8), ("reason", ct.c_uint8), ("tls", ct.c_uint8),
                ("rule", ct.c_uint8), ("_pad", ct.c_uint8), ("host", ct.c_char * API_HOST_LEN),
                ("target", ct.c_char * API_TARGET_LEN)]


SENSITIVE_WORDS = 8


WATCH_SLOTS = 1024  # cgroups watched at once: rows of syscall_counts
NR_COUNTED = 512  # cells per row; the last counts every syscall number from it up


NOVELTY_WINDOW_MAX = 1024  # the longest window over which the kernel counts a thread's novel n-grams


class Novelty(ct.Structure):
    _fields_ = [("window", ct.c_uint16), ("frame", ct.c_uint16), ("quarantine_at", ct.c_uint32)]


class WatchInfo(ct.Structure):
    _fields_ = [("tag", ct.c_uint32), ("flags", ct.c_uint32), ("sensitive", ct.c_uint64 * SENSITIVE_WORDS),
                ("slot", ct.c_uint32), ("_pad", ct.c_uint32), ("novelty", Novelty)]


class SlotInfo(ct.Structure):
    _fields_ = [("cgroup_id", ct.c_uint64), ("flags", ct.c_uint32), ("_pad", ct.c_uint32), ("novelty", Novelty)]


class CgStats(ct.Structure):
    _fields_ = [
        ("events", ct.c_uint64),
        ("lost", ct.c_uint64),
        ("opens_repeated", ct.c_uint64),
        ("packets_dropped", ct.c_uint64),
    ]


# The C struct behind each kind, for decoding and for the layout test.
STRUCTS: dict[EventKind, type[ct.Structure]] = {
    EventKind.EXEC: EvExec,
    EventKind.FORK: EvFork,
    EventKind.EXIT: EvExit,
    EventKind.OPEN: EvOpen,
    EventKind.CONNECT: EvNet,
    EventKind.SENDTO: EvNet,
    EventKind.BIND: EvNet,
    EventKind.LISTEN: EvNet,
    EventKind.ACCEPT: EvNet,
    EventKind.NGRAM: EvNgram,
    EventKind.DENY: EvNet,
    EventKind.SYSCALL: EvSyscall,
    EventKind.SEQUENCE: EvSeq,
    EventKind.API: EvApi,
}


@dataclass(slots=True)
class Event:
    """One sensor event. Fields that a kind does not use keep their defaults."""

    kind: EventKind
    ts_ns: int
    cgroup_id: int
    pid: int
    tid: int
    comm: str
    ret: int = 0
    tag: str = ""
    path: str = ""  # exec filename, opened path, unix socket path
    argv: tuple[str, ...] = ()
    flags: int = 0  # open flags
    family: int = 0
    addr: str = ""  # IP address as text
    port: int = 0
    arg: int = 0  # listen backlog; syscall: 1 if seccomp trapped it; ngram, sequence: the thread's syscall index
    in_window: int = 0  # ngram: the thread's novel n-grams in its last window of syscalls (this one included)
    in_frame: int = 0  # ngram: and in its last frame
    quarantined: bool = False  # ngram: its counts passed the sandbox's limit and the kernel quarantined it
    hook: str = ""  # deny: the egress hook that denied
    child_pid: int = 0
    exit_code: int = -1
    signal: int = 0
    syscall: int = 0  # the sensitive syscall's number
    ngram: tuple[int, ...] = field(default=())  # an n-gram, or a sequence event's syscall ids
    method: str = ""  # api_call: the HTTP method; path holds the target, arg the body bytes
    host: str = ""  # api_call: the Host header
    tls: bool = False  # api_call: read from a TLS library's write
    reason: str = ""  # api_call: why it was stopped (ret -EACCES) or held (ret -EAGAIN), or "allowed"
    api_dest: int = 0  # api_call: the destination's id in the sandbox's rules
    endpoint: int = 0  # api_call: the kernel's hash of the method and path template

    def to_dict(self) -> dict[str, Any]:
        """The wire form: every non-default field."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _ALWAYS or value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


_ALWAYS = {"kind", "ts_ns", "cgroup_id", "pid", "tid", "comm", "ret"}


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _ip(family: int, raw: Any) -> str:
    if family == AF_INET:
        return str(ipaddress.IPv4Address(bytes(raw[:4])))
    if family == AF_INET6:
        return str(ipaddress.IPv6Address(bytes(raw[:16])))
    return ""


def cgroup_of(record: bytes) -> int:
    """The cgroup id of a record too malformed to decode, or 0 if even that is unreadable."""
    return EvHdr.from_buffer_copy(record).cgroup_id if len(record) >= ct.sizeof(EvHdr) else 0


_OPEN_PATH = EvOpen.path.offset


def decode(record: bytes, ngram_n: int, tags: dict[int, str]) -> Event:
    """Decode one ring-buffer record into an Event."""
    if len(record) < ct.sizeof(EvHdr):
        raise ValueError(f"sensor sent a short record ({len(record)} bytes)")
    hdr = EvHdr.from_buffer_copy(record)
    kind = _KIND_BY_TYPE.get(hdr.type)
    if kind is EventKind.OPEN and _OPEN_PATH <= len(record) < ct.sizeof(EvOpen):
        record = record.ljust(ct.sizeof(EvOpen), b"\0")  # sent up to the path's end
    if kind is None or len(record) < ct.sizeof(STRUCTS[kind]):
        raise ValueError(f"sensor sent an unknown or short record (type {hdr.type}, {len(record)} bytes)")
    raw = STRUCTS[kind].from_buffer_copy(record)
    ev = Event(
        kind=kind,
        ts_ns=hdr.ts_ns,
        cgroup_id=hdr.cgroup_id,
        pid=hdr.pid,
        tid=hdr.tid,
        comm=_text(hdr.comm),
        ret=hdr.ret,
        tag=tags.get(hdr.cgroup_id, ""),
    )
    if isinstance(raw, EvExec):
        ev.path = _text(raw.filename)
        ev.argv = tuple(a for a in (_text(bytes(x)) for x in raw.argv) if a)
    elif isinstance(raw, EvOpen):
        ev.path, ev.flags = _text(raw.path), raw.flags
    elif isinstance(raw, EvNet):
        ev.family, ev.port = raw.family, raw.port
        ev.addr = _ip(raw.family, raw.addr)
        if raw.family == AF_UNIX:
            ev.path = _text(raw.unix_path)
        if kind is EventKind.DENY:
            ev.hook = DENY_HOOKS.get(raw.arg, str(raw.arg))
        else:
            ev.arg = raw.arg
    elif isinstance(raw, EvFork):
        ev.child_pid = raw.child_pid
    elif isinstance(raw, EvExit):
        ev.exit_code, ev.signal = raw.code, raw.signal
    elif isinstance(raw, EvSyscall):
        ev.syscall, ev.arg = raw.nr, raw.trapped
    elif isinstance(raw, EvNgram):
        ev.ngram, ev.arg = tuple(raw.gram.seq[:ngram_n]), raw.pos
        ev.in_window, ev.in_frame, ev.quarantined = raw.in_window, raw.in_frame, bool(raw.quarantined)
    elif isinstance(raw, EvApi):
        ev.method = METHOD_NAMES.get(raw.method, "")
        ev.host, ev.path, ev.port, ev.arg = _text(raw.host), _text(raw.target), raw.port, raw.body
        ev.tls, ev.reason = bool(raw.tls), REASONS.get(raw.reason, f"reason {raw.reason}")
        ev.api_dest, ev.endpoint = raw.dest, raw.endpoint
        ev.ret = {API_ALLOW: 0, API_HOLD: -EAGAIN}.get(raw.verdict, -EACCES)
    elif isinstance(raw, EvSeq):
        if not 0 < raw.n <= SEQ_BATCH:
            raise ValueError(f"sensor sent a sequence of {raw.n} syscalls")
        ev.ngram, ev.arg = tuple(raw.calls[:raw.n]), raw.pos
    return ev


# The JSONL and wire form: pydantic validates the dataclass itself, with
# unknown fields refused, so the field list exists once.
Event.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
EVENT_WIRE: TypeAdapter[Event] = TypeAdapter(Event)
