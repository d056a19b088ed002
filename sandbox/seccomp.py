"""A seccomp filter that makes chosen syscalls fail with EPERM (libseccomp)."""

from __future__ import annotations

import ctypes as ct
import ctypes.util
import errno
import functools
import os
from collections.abc import Iterable

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_ERRNO_BASE = 0x00050000
SCMP_CMP_NE = 1
SCMP_CMP_EQ = 4
SCMP_CMP_GE = 5
SCMP_CMP_MASKED_EQ = 7
CLONE_NEWUSER = 0x10000000
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
NETLINK_ROUTE = 0
IPPROTO_TCP, IPPROTO_UDP, TCP_FASTOPEN_CONNECT = 6, 17, 30
MSG_OOB = 0x1
AF_MAX = 46  # families this kernel knows are below it; the rest are refused too
# The socket families a tool may create: everything else (vsock, packet,
# bluetooth, can, alg, xdp, ...) reaches past the egress hooks, so seccomp
# refuses it with the error a kernel without that family gives. Netlink only
# for the routing protocol, which libc's getaddrinfo and if_nameindex use.
SOCKET_FAMILIES = (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK)

# Syscalls no sandboxed tool needs and every escape or kernel attack wants.
DEFAULT_DENY = (
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "ptrace", "process_vm_readv", "process_vm_writev",
    "bpf", "perf_event_open", "userfaultfd",
    "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig",
    "kexec_load", "kexec_file_load", "reboot",
    "init_module", "finit_module", "delete_module",
    "keyctl", "add_key", "request_key",
    "unshare", "setns", "swapon", "swapoff", "acct", "quotactl", "lookup_dcookie",
    # fileless execution: Landlock cannot govern anonymous memory files
    "memfd_create", "memfd_secret",
)


class SeccompError(RuntimeError):
    pass


class _ArgCmp(ct.Structure):
    _fields_ = [("arg", ct.c_uint), ("op", ct.c_int), ("datum_a", ct.c_uint64), ("datum_b", ct.c_uint64)]


# Denials that depend on arguments: (syscall, errno or None to trap, argument comparisons).
# clone3 passes its flags in memory a filter cannot read, so it answers
# ENOSYS and libc falls back to clone, whose flags can be checked.
# Arguments are compared as 64-bit values while the kernel reads an int, so
# every family value with high bits set falls under the `>= AF_MAX` rule.
ARG_RULES: tuple[tuple[str, int | None, tuple[tuple[int, int, int, int], ...]], ...] = (
    ("clone3", errno.ENOSYS, ()),
    ("clone", errno.EPERM, ((0, SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER),)),
    *(("socket", errno.EAFNOSUPPORT, ((0, SCMP_CMP_EQ, family, 0),))
      for family in range(AF_MAX) if family not in SOCKET_FAMILIES),
    ("socket", errno.EAFNOSUPPORT, ((0, SCMP_CMP_GE, AF_MAX, 0),)),
    ("socket", errno.EAFNOSUPPORT, ((0, SCMP_CMP_EQ, AF_NETLINK, 0), (2, SCMP_CMP_NE, NETLINK_ROUTE, 0))),
    ("socketpair", errno.EAFNOSUPPORT, ((0, SCMP_CMP_NE, AF_UNIX, 0),)),
    # TCP and UDP only: the IP families' other protocols (MPTCP, SCTP, UDP-Lite)
    # send on sockets the SK_MSG program that judges API calls never sees; the
    # error is the one a kernel without them gives, on which clients fall back.
    *(("socket", errno.EPROTONOSUPPORT, ((0, SCMP_CMP_EQ, family, 0), (2, SCMP_CMP_GE, IPPROTO_UDP + 1, 0)))
      for family in (AF_INET, AF_INET6)),
    *(("socket", errno.EPROTONOSUPPORT, ((0, SCMP_CMP_EQ, family, 0), (2, SCMP_CMP_EQ, protocol, 0)))
      for family in (AF_INET, AF_INET6) for protocol in range(1, IPPROTO_UDP) if protocol != IPPROTO_TCP),
    # TCP Fast Open on connect() would send the first write's data in the SYN,
    # before the socket joins the kernel's API checks (MSG_FASTOPEN sends are
    # refused by the egress connect hook, with an event).
    ("setsockopt", errno.ENOPROTOOPT, ((1, SCMP_CMP_EQ, IPPROTO_TCP, 0), (2, SCMP_CMP_EQ, TCP_FASTOPEN_CONNECT, 0))),
    # TCP urgent data: the peer's TCP takes the urgent byte out of the stream,
    # so a server reads fewer bytes than the API checks counted, and takes the
    # start of what they judged as the next request for the end of a body
    # (`GET /records/POST /patients/export`, judged a GET, reached the export).
    # Trapped, so that the tool is killed and the sensor sees the attempt.
    *((name, None, ((flags, SCMP_CMP_MASKED_EQ, MSG_OOB, MSG_OOB),))
      for name, flags in (("sendto", 3), ("sendmsg", 2), ("sendmmsg", 3))),
)
# How a refused socket shows in the sensor's sys_exit_socket events.
SOCKET_REFUSALS = (-errno.EPERM, -errno.EAFNOSUPPORT, -errno.EPROTONOSUPPORT)


@functools.cache
def _lib() -> ct.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ct.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompError("libseccomp is missing: apt-get install libseccomp2") from exc
    lib.seccomp_init.restype = ct.c_void_p
    lib.seccomp_init.argtypes = [ct.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ct.c_void_p, ct.c_uint32, ct.c_int, ct.c_uint, ct.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ct.c_char_p]
    lib.seccomp_syscall_resolve_num_arch.argtypes = [ct.c_uint32, ct.c_int]
    lib.seccomp_syscall_resolve_num_arch.restype = ct.c_void_p
    lib.seccomp_load.argtypes = [ct.c_void_p]
    lib.seccomp_export_bpf.argtypes = [ct.c_void_p, ct.c_int]
    lib.seccomp_release.argtypes = [ct.c_void_p]
    return lib


def set_no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: required to load a filter without CAP_SYS_ADMIN,
    and it keeps setuid binaries from regaining privileges."""
    if ct.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0) != 0:
        raise SeccompError(f"PR_SET_NO_NEW_PRIVS failed: errno {ct.get_errno()}")


@functools.cache
def resolve(name: str) -> int:
    """The syscall number of a name on this architecture; SeccompError if unknown."""
    nr = _lib().seccomp_syscall_resolve_name(name.encode())
    if nr < 0:
        raise SeccompError(f"unknown syscall {name!r}")
    return int(nr)


def name_of(nr: int) -> str:
    """The name of a syscall number on this architecture."""
    lib = _lib()
    ptr = lib.seccomp_syscall_resolve_num_arch(0, nr)
    if not ptr:
        return f"syscall {nr}"
    name = ct.string_at(ptr).decode()
    ct.CDLL(None).free(ct.c_void_p(ptr))
    return name


class Filter:
    """A filter built in the parent (so errors surface there) and loaded in
    the child between fork and exec, after no_new_privs."""

    def __init__(self, deny: Iterable[str], trap: Iterable[str] = ()) -> None:
        """deny: fail with EPERM. trap: send SIGSYS instead, for denied
        syscalls the sensor cannot see fail (see Sensor.report_attempts)."""
        self._lib = _lib()
        self._ctx = self._lib.seccomp_init(SCMP_ACT_ALLOW)
        if not self._ctx:
            raise SeccompError("seccomp_init failed")
        trapped = set(trap)
        for name in dict.fromkeys(deny):
            if name not in trapped:
                self._rule(name, errno.EPERM, ())
        for name in trapped:
            self._rule(name, None, ())
        for name, err, cmps in ARG_RULES:
            self._rule(name, err, cmps)

    def _rule(self, name: str, err: int | None, cmps: tuple[tuple[int, int, int, int], ...]) -> None:
        """Fail `name` with errno err where cmps match, or trap it (err None)."""
        action = SCMP_ACT_TRAP if err is None else SCMP_ACT_ERRNO_BASE | err
        arr = (_ArgCmp * max(len(cmps), 1))(*[_ArgCmp(*c) for c in cmps])
        rc = self._lib.seccomp_rule_add_array(self._ctx, action, resolve(name), len(cmps), arr)
        if rc < 0:
            raise SeccompError(f"seccomp rule for {name!r} failed: {-rc}")

    def load(self) -> None:
        rc = self._lib.seccomp_load(self._ctx)
        if rc < 0:
            raise SeccompError(f"seccomp_load failed: {ct.get_errno() or -rc}")

    def program(self) -> bytes:
        """The filter as the kernel's BPF instructions, for a child that
        loads it itself (sandbox.launch)."""
        fd = os.memfd_create("seccomp", os.MFD_CLOEXEC)
        try:
            rc = self._lib.seccomp_export_bpf(self._ctx, fd)
            if rc < 0:
                raise SeccompError(f"seccomp_export_bpf failed: {-rc}")
            return os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._ctx:
            self._lib.seccomp_release(self._ctx)
            self._ctx = None
