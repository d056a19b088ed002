"""A process of the node's own that runs only on CPU time no one else wants:
in a cpu cgroup marked idle, which the scheduler ranks below every other
group at its level, the node's and the shell's autogroups included (a
SCHED_IDLE task in an autogroup only yields within that group). Where no
cpu controller offers `cpu.idle`, the process itself at SCHED_IDLE."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from sandbox.cgroup import CgroupError, bastion_root
from sandbox.limits import v1_mount

log = logging.getLogger("bastion.sandbox")

PREFIX = "bastion-quiet-"


class QuietGroup:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.path = _group_for(pid)
        self.quiet(True)

    def quiet(self, on: bool) -> None:
        """Idle (on), or an ordinary process for now: its work cannot wait."""
        if self.path is not None:
            (self.path / "cpu.idle").write_text("1" if on else "0")
            return
        with contextlib.suppress(ProcessLookupError):
            os.sched_setscheduler(self.pid, os.SCHED_IDLE if on else os.SCHED_OTHER, os.sched_param(0))

    def remove(self) -> None:
        """Once the process has exited."""
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.rmdir()


def _roots() -> list[Path]:
    roots = []
    v1 = v1_mount("cpu")
    if v1 is not None:
        roots.append(v1)
    with contextlib.suppress(CgroupError, OSError):
        roots.append(bastion_root())
    return roots


def _group_for(pid: int) -> Path | None:
    """A fresh idle cpu group holding pid; the groups of processes gone are
    removed first."""
    for root in _roots():
        for stale in root.glob(f"{PREFIX}*"):
            if not (stale / "cgroup.procs").read_text().strip():
                with contextlib.suppress(OSError):
                    stale.rmdir()
        path = root / f"{PREFIX}{pid}"
        try:
            path.mkdir(exist_ok=True)
            if not (path / "cpu.idle").exists():
                path.rmdir()
                continue
            (path / "cgroup.procs").write_text(str(pid))
            return path
        except OSError as exc:
            log.warning("no idle cpu group here", extra={"fields": {"group": str(path), "error": str(exc)}})
            with contextlib.suppress(OSError):
                path.rmdir()
    return None
