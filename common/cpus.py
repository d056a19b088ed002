"""Whether every CPU is wanted: how the node's background threads decide to
step aside for the sandboxes or not."""

from __future__ import annotations

import os


def cpus_wanted(besides_caller: bool = False) -> bool:
    """More tasks can run than there are CPUs (the kernel's count, 10 µs to
    read; besides_caller: not counting the thread that asks): a thread of
    the node at nice 19 would wait for a CPU, holding the GIL, so for a
    slice of every other task (~100 ms at nice 19) no thread of the node
    could run."""
    with open("/proc/loadavg", "rb") as f:
        running = int(f.read().split()[3].split(b"/")[0])
    return running - besides_caller > (os.cpu_count() or 1)
