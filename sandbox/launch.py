"""Starting a sandbox's process: the launcher program and its command line.

What runs between spawn and the tool's exec is `launcher.c` (its comment
says what it does and why it is not a preexec_fn). It is compiled once per
source version into a root-only cache, and given everything the supervisor
built and checked: the Landlock ruleset and the seccomp program as
descriptors, the rest as arguments."""

from __future__ import annotations

import ctypes as ct
import hashlib
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from common.files import InputError, cached
from sandbox.landlock import READ

SOURCE = Path(__file__).with_name("launcher.c")
CACHE = Path("/var/cache/bastion/launcher")

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MNT_DETACH = 2

_libc = ct.CDLL(None, use_errno=True)


class LaunchError(RuntimeError):
    pass


def mount_tmpfs(path: Path, options: str) -> None:
    """A tmpfs at path in the caller's mount namespace (the supervisor's)."""
    if _libc.mount(b"tmpfs", bytes(path), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, options.encode()) != 0:
        err = ct.get_errno()
        raise OSError(err, f"mounting a tmpfs at {path}: {os.strerror(err)}")


def umount(path: Path) -> None:
    """Detach whatever is mounted at path; nothing if nothing is."""
    _libc.umount2(bytes(path), MNT_DETACH)


def launcher_binary(cache: Path = CACHE) -> Path:
    """The compiled launcher for this source, built on first use (about a
    second) and atomically, so concurrent supervisors never run half a file."""
    source = SOURCE.read_bytes()

    def build(tmp: str) -> None:
        compiler = shutil.which("gcc") or shutil.which("cc")
        if compiler is None:
            raise LaunchError("gcc is needed to build the sandbox launcher (apt-get install gcc libc6-dev)")
        done = subprocess.run([compiler, "-O2", "-static", "-o", tmp, str(SOURCE)], capture_output=True, text=True)
        if done.returncode != 0:
            raise LaunchError(f"building {SOURCE.name} failed: {done.stderr.strip().splitlines()[-1:]}")

    try:
        return cached(cache, f"bastion-launch-{hashlib.sha256(source).hexdigest()[:12]}", build, 0o700)
    except InputError as exc:
        raise LaunchError(f"the launcher cannot be kept: {exc}") from None


@dataclass
class Launch:
    procs_files: list[Path]
    isolate_network: bool
    workdir: Path
    uid: int
    gid: int
    rlimits: list[tuple[int, int]]
    landlock_fd: int
    seccomp_fd: int
    report_fd: int
    env_fd: int
    hostname: str = "bastion"
    cpus: tuple[int, ...] = ()  # the CPUs it may run on; () for any
    binds: tuple[tuple[Path, Path], ...] = ()  # (copy, file): mounted over the file for the tool

    def argv(self, launcher: Path, command: list[str]) -> list[str]:
        """The launcher's command line that confines and then runs command;
        Popen must pass `pass_fds` to it."""
        flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | (CLONE_NEWNET if self.isolate_network else 0)
        argv = [str(launcher), "-f", str(flags), "-u", str(self.uid), "-g", str(self.gid), "-n", self.hostname,
                "-w", str(self.workdir), "-l", str(self.landlock_fd), "-a", str(READ), "-s", str(self.seccomp_fd),
                "-e", str(self.report_fd), "-v", str(self.env_fd)]
        if self.cpus:
            argv += ["-c", ",".join(map(str, self.cpus))]
        for procs in self.procs_files:
            argv += ["-p", str(procs)]
        for res, value in self.rlimits:
            argv += ["-r", f"{res}:{value}"]
        for copy, file in self.binds:
            if ":" in str(copy):
                raise LaunchError(f"{copy}: a path with ':' cannot be mounted by the launcher")
            argv += ["-b", f"{copy}:{file}"]
        return [*argv, "--", *command]

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self.landlock_fd, self.seccomp_fd, self.report_fd, self.env_fd)


def memfd_of(name: str, data: bytes) -> int:
    """A descriptor holding data, for the launcher to read."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd


def environment_block(env: dict[str, str]) -> bytes:
    """The tool's environment as the launcher reads it: NAME=value, each ended by NUL."""
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())


def await_exec(report_fd: int, timeout: float = 10.0) -> str:
    """Read the launcher's report pipe to its end: empty once the tool has
    been executed inside the sandbox, else why it was not."""
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([report_fd], [], [], left)[0]:
            return f"the launcher did not report within {timeout:g}s"
        chunk = os.read(report_fd, 4096)
        if not chunk:
            return b"".join(chunks).decode(errors="replace")
        chunks.append(chunk)
