"""The priority of the node's threads that a held call waits on."""

from __future__ import annotations

import os
import threading


def real_time() -> None:
    """The calling thread at the lowest real-time priority: it runs as soon
    as it is ready, ahead of every ordinary task, so the sandboxes cannot
    keep it (or Python's lock, while it holds it) from a CPU, even when they
    saturate every CPU (a fork bomb); the kernel's real-time throttling
    still leaves the others 5%. Threads it starts (torch's workers, for one)
    are ordinary again, so none of them spins at that priority. Where that
    is refused, nice -10: ahead of the sandboxes' nice 0, if not always."""
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(1))
    except PermissionError:
        os.setpriority(os.PRIO_PROCESS, tid, -10)
