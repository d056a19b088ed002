"""Resource limits of one sandbox: memory and pids from whichever cgroup
hierarchy has the controller (v2 leaf, or v1 on hybrid hosts), rlimits for
the rest and as the fallback."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.cgroup import BASTION_DIR, Cgroup
from sandbox.policy import Limits

MB = 1 << 20


def v1_mount(controller: str, mounts: str = "/proc/mounts") -> Path | None:
    with open(mounts) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 4 and parts[2] == "cgroup" and controller in parts[3].split(","):
                return Path(parts[1])
    return None


def v1_leaf(controller: str, name: str) -> Path | None:
    """Where a sandbox's leaf in a v1 controller hierarchy lives, if the
    controller is mounted as v1."""
    mount = v1_mount(controller)
    return mount / BASTION_DIR / name if mount else None


def _v2_has(cg: Cgroup, controller: str) -> bool:
    """Enable a v2 controller for Bastion's leaves if the hierarchy has it."""
    parent = cg.path.parent
    if controller not in (parent / "cgroup.controllers").read_text().split():
        return False
    if controller not in (parent / "cgroup.subtree_control").read_text().split():
        (parent / "cgroup.subtree_control").write_text(f"+{controller}")
    return (cg.path / f"{controller}.max").exists()


@dataclass
class Controllers:
    """The cgroup directories that hold one sandbox's memory and pids limits."""

    v2: Cgroup
    v1_dirs: list[Path] = field(default_factory=list)
    memory: Path | None = None  # the file holding the memory limit
    pids: Path | None = None

    @classmethod
    def create(cls, cg: Cgroup, limits: Limits) -> Controllers:
        ctl = cls(v2=cg)
        for controller, value in (("memory", limits.memory_mb * MB), ("pids", limits.pids)):
            if _v2_has(cg, controller):
                limit_file = cg.path / f"{controller}.max"
            else:
                leaf = v1_leaf(controller, cg.name)
                if leaf is None:
                    continue
                leaf.mkdir(parents=True, exist_ok=True)
                ctl.v1_dirs.append(leaf)
                limit_file = leaf / ("memory.limit_in_bytes" if controller == "memory" else "pids.max")
            limit_file.write_text(str(value))
            setattr(ctl, controller, limit_file)
        return ctl

    @property
    def procs_files(self) -> list[Path]:
        """Files a process writes "0" to in order to enter every hierarchy."""
        return [self.v2.path / "cgroup.procs"] + [d / "cgroup.procs" for d in self.v1_dirs]

    def rlimits(self, limits: Limits) -> list[tuple[int, int]]:
        out = [
            (resource.RLIMIT_CPU, limits.cpu_seconds),
            (resource.RLIMIT_FSIZE, limits.file_size_mb * MB),
            (resource.RLIMIT_NOFILE, limits.open_files),
            (resource.RLIMIT_CORE, 0),
        ]
        if self.memory is None:
            out.append((resource.RLIMIT_AS, limits.memory_mb * MB))
        return out

    def pids_refused(self) -> int:
        """How many forks the pids limit refused."""
        if self.pids is None:
            return 0
        events = self.pids.parent / "pids.events"
        for line in events.read_text().splitlines() if events.exists() else []:
            key, _, value = line.partition(" ")
            if key == "max":
                return int(value)
        return 0

    def memory_peak(self) -> int:
        if self.memory is None:
            return 0
        for name in ("memory.peak", "memory.max_usage_in_bytes"):
            f = self.memory.parent / name
            if f.exists():
                return int(f.read_text())
        return 0

    def remove(self) -> None:
        """Remove the v1 leaves; call after the v2 leaf is empty and gone."""
        for d in self.v1_dirs:
            if d.exists():
                d.rmdir()
