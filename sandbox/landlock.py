"""Landlock: unprivileged filesystem (and TCP port) restrictions on the
current process, through the raw syscalls (x86_64 numbers)."""

from __future__ import annotations

import ctypes as ct

SYS_CREATE_RULESET = 444
CREATE_RULESET_VERSION = 1

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


def abi() -> int:
    """The kernel's Landlock ABI version, 0 if Landlock is unavailable."""
    version = _libc.syscall(SYS_CREATE_RULESET, None, ct.c_size_t(0), ct.c_uint32(CREATE_RULESET_VERSION))
    return max(int(version), 0)
