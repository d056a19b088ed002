"""The child side of starting a sandbox: what runs between fork and exec.

`Launch.preexec` is subprocess's preexec_fn. It unshares namespaces and
forks twice. The first child stays behind, outside the pid namespace, as the
reaper subprocess waits on. Its child is pid 1 of the new namespace:
Bastion's own small init, which starts the tool as pid 2, reaps orphans and
exits with the tool's status. Each of the two dies by PR_SET_PDEATHSIG when
its parent dies, and when a pid namespace's init dies the kernel kills every
process in it: so when the supervisor dies, by any signal, the whole sandbox
dies, whatever the tool did to its own parent-death signal, and the tool
cannot signal either of them (another pid namespace, another user, Landlock's
signal scope). The tool's process mounts a private /proc, and only then enters the sandbox's cgroups:
from there on the sensor watches it, and Bastion's own setup (unshare,
mount) is not mistaken for the tool's. It drops to the policy's user, loses
every capability, sets no_new_privs, and applies Landlock and seccomp last,
so nothing after them needs a right they remove.

subprocess closes the inherited descriptors only after preexec_fn returns, so
the Landlock ruleset needs no pass_fds (the tool never holds it), and nothing
here may open a file once the policy's open-files limit is set."""

from __future__ import annotations

import ctypes as ct
import os
import resource
import signal
from dataclasses import dataclass
from pathlib import Path

from sandbox.landlock import READ, allow_path, restrict_self
from sandbox.seccomp import Filter, set_no_new_privs

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000
PR_SET_PDEATHSIG = 1

_libc = ct.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ct.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


MNT_DETACH = 2


def mount_tmpfs(path: Path, options: str) -> None:
    """A tmpfs at path in the caller's mount namespace (the supervisor's)."""
    _check(_libc.mount(b"tmpfs", bytes(path), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, options.encode()),
           f"mounting a tmpfs at {path}")


def umount(path: Path) -> None:
    """Detach whatever is mounted at path; nothing if nothing is."""
    _libc.umount2(bytes(path), MNT_DETACH)


def _die_with_parent() -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")


def _status(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _reap(pid: int) -> None:
    """The first child: close everything (so the supervisor sees EOF and
    subprocess its exec report) and exit with init's status."""
    os.closerange(0, 65536)
    _, status = os.waitpid(pid, 0)
    os._exit(_status(status))


def _init(tool: int) -> None:
    """pid 1 of the sandbox: reap every orphan until the tool ends, then exit
    with its status; the kernel then kills whatever the tool left behind."""
    os.closerange(0, 65536)
    while True:
        pid, status = os.wait()
        if pid == tool:
            os._exit(_status(status))


@dataclass
class Launch:
    procs_files: list[Path]
    isolate_network: bool
    workdir: Path
    uid: int
    gid: int
    rlimits: list[tuple[int, int]]
    landlock_fd: int
    seccomp: Filter
    hostname: bytes = b"bastion"

    def preexec(self) -> None:
        supervisor = os.getppid()
        _die_with_parent()
        if os.getppid() != supervisor:  # it died before the signal was armed
            os._exit(128 + signal.SIGKILL)
        flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        _check(_libc.unshare(flags | (CLONE_NEWNET if self.isolate_network else 0)), "unshare")
        init = os.fork()
        if init:
            _reap(init)  # the reaper, outside the sandbox
        _die_with_parent()  # init: dies with the reaper, and the namespace with it
        tool = os.fork()
        if tool:
            _init(tool)
        self._confine()  # the tool, pid 2

    def _confine(self) -> None:
        _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
        _check(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mounting /proc")
        # Opens a file, so it comes before the open-files limit: until exec the
        # supervisor's descriptors are all still open here, and may be more.
        allow_path(self.landlock_fd, Path("/proc"), READ)  # this namespace's /proc
        _check(_libc.sethostname(self.hostname, len(self.hostname)), "sethostname")
        for procs in self.procs_files:
            procs.write_text("0")
        os.chdir(self.workdir)
        for res, value in self.rlimits:
            resource.setrlimit(res, (value, value))
        os.setgroups([])
        os.setgid(self.gid)
        os.setuid(self.uid)  # from root to another uid: all capabilities go
        _die_with_parent()  # after setuid, which clears the parent-death signal
        set_no_new_privs()
        restrict_self(self.landlock_fd)
        self.seccomp.load()
