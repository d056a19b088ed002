"""Landlock: unprivileged filesystem (and TCP port) restrictions on the
current process, through the raw syscalls (x86_64 numbers).

The ruleset is built in the supervisor, where errors can be reported, and
only `restrict_self` runs in the child between fork and exec."""

from __future__ import annotations

import ctypes as ct
import functools
import os
import stat
from collections.abc import Iterable
from pathlib import Path

SYS_CREATE_RULESET = 444
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2

# access rights for files (ABI 1..5)
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
READ = READ_FILE | READ_DIR
READ_EXEC = READ | EXECUTE
READ_WRITE = READ | WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SYM | REFER | TRUNCATE

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


class LandlockError(RuntimeError):
    pass


class _RulesetAttr(ct.Structure):
    _fields_ = [("handled_access_fs", ct.c_uint64), ("handled_access_net", ct.c_uint64), ("scoped", ct.c_uint64)]


class _PathBeneath(ct.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ct.c_uint64), ("parent_fd", ct.c_int32)]


class _NetPort(ct.Structure):
    _fields_ = [("allowed_access", ct.c_uint64), ("port", ct.c_uint64)]


def abi() -> int:
    """The kernel's Landlock ABI version, 0 if Landlock is unavailable."""
    version = _libc.syscall(SYS_CREATE_RULESET, None, ct.c_size_t(0), ct.c_uint32(CREATE_RULESET_VERSION))
    return max(int(version), 0)


def _fs_rights(version: int) -> int:
    return _FS_BY_ABI.get(min(version, 5), 0)


def _is_within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


@functools.lru_cache(maxsize=256)
def expand_denied(allowed: Path, denied: tuple[Path, ...]) -> list[Path]:
    """Landlock can only allow. To deny a path inside an allowed directory,
    allow the directory's other entries instead, recursively. Cached: the
    listing is taken once per process, so entries created later in such a
    directory stay unreadable to sandboxes until restart (fail closed)."""
    inside = tuple(d for d in denied if _is_within(d, allowed))
    if not inside:
        return [allowed]
    if allowed in inside or not allowed.is_dir():
        return []
    out: list[Path] = []
    for child in sorted(allowed.iterdir()):
        out += expand_denied(child, inside)
    return out


class Ruleset:
    """A Landlock ruleset under construction; `fd` is passed to the child."""

    def __init__(self, tcp_connect_ports: Iterable[int] | None) -> None:
        """tcp_connect_ports: None leaves TCP to the other walls (any port);
        a list (possibly empty) allows connecting to those ports only."""
        self.abi = abi()
        if self.abi < 1:
            raise LandlockError("Landlock is not available in this kernel")
        handled_net = NET_BIND_TCP | NET_CONNECT_TCP if self.abi >= 4 and tcp_connect_ports is not None else 0
        attr = _RulesetAttr(
            handled_access_fs=_fs_rights(self.abi),
            handled_access_net=handled_net,
            scoped=SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if self.abi >= 6 else 0,
        )
        size = ct.sizeof(_RulesetAttr) if self.abi >= 6 else 16 if self.abi >= 4 else 8
        fd = _libc.syscall(SYS_CREATE_RULESET, ct.byref(attr), ct.c_size_t(size), ct.c_uint32(0))
        if fd < 0:
            raise LandlockError(f"landlock_create_ruleset: {os.strerror(ct.get_errno())}")
        self.fd = int(fd)
        self._fs = _fs_rights(self.abi)
        for port in (tcp_connect_ports or []) if handled_net else []:
            rule = _NetPort(allowed_access=NET_CONNECT_TCP, port=port)
            self._add(RULE_NET_PORT, ct.byref(rule), f"TCP port {port}")

    def _add(self, kind: int, rule: object, what: str) -> None:
        _add_rule(self.fd, kind, rule, what)

    def allow(self, path: Path, access: int) -> None:
        allow_path(self.fd, path, access & self._fs)

    def close(self) -> None:
        os.close(self.fd)


def _add_rule(fd: int, kind: int, rule: object, what: str) -> None:
    if _libc.syscall(SYS_ADD_RULE, fd, kind, rule, ct.c_uint32(0)) != 0:
        raise LandlockError(f"landlock rule for {what}: {os.strerror(ct.get_errno())}")


def allow_path(fd: int, path: Path, rights: int) -> None:
    """Allow rights beneath path in ruleset fd (skipped if the path is absent).
    Rules bind to the mount they were opened on: a sandbox's own /proc must
    be added by the sandboxed process itself, after mounting it."""
    try:
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not stat.S_ISDIR(os.fstat(pfd).st_mode):  # files take only file rights
            rights &= EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
        _add_rule(fd, RULE_PATH_BENEATH, ct.byref(_PathBeneath(allowed_access=rights, parent_fd=pfd)), str(path))
    finally:
        os.close(pfd)


def restrict_self(fd: int) -> None:
    """Enforce a ruleset on the calling process; needs no_new_privs first."""
    if _libc.syscall(SYS_RESTRICT_SELF, fd, ct.c_uint32(0)) != 0:
        raise LandlockError(f"landlock_restrict_self: {os.strerror(ct.get_errno())}")
