"""cgroup v2 leaves for sandboxes: create, enter, freeze, kill, remove.

The cgroup v2 hierarchy may be mounted at /sys/fs/cgroup (unified) or at
/sys/fs/cgroup/unified (hybrid); it is found from /proc/mounts. A leaf's
cgroup id, the one BPF's bpf_get_current_cgroup_id() returns, is the inode
number of its directory."""

from __future__ import annotations

import errno
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

BASTION_DIR = "bastion"


class CgroupError(RuntimeError):
    """A cgroup operation failed; the message names the cgroup."""


@functools.cache
def cgroup2_mount(mounts: str = "/proc/mounts") -> Path:
    """The mount point of the cgroup v2 hierarchy, preferring /sys/fs/cgroup;
    found once (a failure is not kept)."""
    found = []
    with open(mounts) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "cgroup2":
                found.append(Path(parts[1]))
    if not found:
        raise CgroupError("no cgroup2 filesystem in /proc/mounts: mount one with `mount -t cgroup2 none /sys/fs/cgroup`")
    found.sort(key=lambda p: (p != Path("/sys/fs/cgroup"), len(str(p))))
    return found[0]


def bastion_root() -> Path:
    """The parent of every Bastion cgroup, created if needed."""
    root = cgroup2_mount() / BASTION_DIR
    root.mkdir(exist_ok=True)
    return root


@dataclass(frozen=True)
class Cgroup:
    path: Path

    @classmethod
    def create(cls, name: str, parent: Path | None = None) -> Cgroup:
        path = (parent or bastion_root()) / name
        try:
            path.mkdir()
        except FileExistsError:
            raise CgroupError(f"cgroup {path} already exists") from None
        except OSError as exc:
            raise CgroupError(f"cannot create cgroup {path}: {exc.strerror}") from exc
        return cls(path)

    @functools.cached_property
    def id(self) -> int:
        """The cgroup's id (its directory's inode), kept after first use: the
        pump may still name a sandbox whose directory was just removed."""
        return os.stat(self.path).st_ino

    @property
    def name(self) -> str:
        return self.path.name

    def _write(self, control: str, value: str) -> None:
        try:
            (self.path / control).write_text(value)
        except OSError as exc:
            raise CgroupError(f"writing {value!r} to {self.path / control}: {exc.strerror}") from exc

    def add(self, pid: int) -> None:
        self._write("cgroup.procs", str(pid))

    def enter(self) -> None:
        """Move the calling process into this cgroup (used between fork and exec)."""
        self.add(0)

    @functools.cached_property
    def _proc_line(self) -> bytes:
        """How /proc/PID/cgroup names this cgroup (the v2 line)."""
        return b"0::" + str(self.path).removeprefix(str(cgroup2_mount())).encode() + b"\n"

    def holds(self, pid: int) -> bool:
        """Whether the process is in this cgroup: a read of /proc/PID/cgroup,
        20-30 µs in the pump where reading cgroup.procs took 60-110, with a
        held call waiting on it."""
        try:
            fd = os.open(f"/proc/{pid}/cgroup", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            return self._proc_line in os.read(fd, 4096).splitlines(keepends=True)
        finally:
            os.close(fd)

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def events(self) -> dict[str, int]:
        text = (self.path / "cgroup.events").read_text()
        return {k: int(v) for k, v in (line.split() for line in text.splitlines())}

    def freeze(self, frozen: bool = True, timeout: float = 2.0) -> None:
        """Freeze or thaw every process in the cgroup and wait until it holds."""
        self._write("cgroup.freeze", "1" if frozen else "0")
        deadline = time.monotonic() + timeout
        while self.events().get("frozen") != int(frozen):
            if time.monotonic() > deadline:
                raise CgroupError(f"cgroup {self.path} did not {'freeze' if frozen else 'thaw'} in {timeout}s")
            time.sleep(0.001)

    def kill(self) -> None:
        """SIGKILL every process in the cgroup at once (cgroup.kill)."""
        if self.path.exists():
            self._write("cgroup.kill", "1")

    def remove(self, timeout: float = 2.0) -> None:
        """Kill what is left and remove the cgroup."""
        if not self.path.exists():
            return
        self.kill()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise CgroupError(f"cannot remove cgroup {self.path}: {exc.strerror}") from exc
                time.sleep(0.002)

    def open_fd(self) -> int:
        """A directory fd, for attaching cgroup BPF programs."""
        return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
