"""`bastion trace`: run one command in a fresh watched cgroup and show what
the kernel saw it do."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ebpf.events import Event, EventKind
from ebpf.record import JsonlWriter
from ebpf.sensor import CgroupStats, Sensor, require_root
from sandbox.cgroup import Cgroup

_STYLE = {
    EventKind.EXEC: "bold cyan",
    EventKind.OPEN: "green",
    EventKind.CONNECT: "magenta",
    EventKind.SENDTO: "magenta",
    EventKind.DENY: "bold red",
    EventKind.EXIT: "yellow",
    EventKind.NGRAM: "dim",
}


def describe(ev: Event) -> str:
    """One human line for an event."""
    match ev.kind:
        case EventKind.EXEC:
            what = f"{ev.path} {' '.join(ev.argv[1:])}".rstrip()
        case EventKind.OPEN:
            what = f"{ev.path} flags={ev.flags:#o}"
        case EventKind.CONNECT | EventKind.SENDTO | EventKind.BIND | EventKind.ACCEPT | EventKind.DENY:
            dest = ev.path or f"{ev.addr}:{ev.port}"
            what = f"{dest}{' via ' + ev.hook if ev.hook else ''}"
        case EventKind.LISTEN:
            what = f"backlog={ev.arg}"
        case EventKind.FORK:
            what = f"child {ev.child_pid}"
        case EventKind.EXIT:
            what = f"signal {ev.signal}" if ev.signal else f"code {ev.exit_code}"
        case EventKind.NGRAM:
            what = " ".join(map(str, ev.ngram))
    result = "" if ev.kind in (EventKind.FORK, EventKind.EXIT, EventKind.NGRAM) else f" = {ev.ret}"
    return f"{ev.comm}[{ev.pid}] {ev.kind.value} {what}{result}"


def stats_table(stats: CgroupStats, kinds: Counter[EventKind], distinct: int) -> Table:
    table = Table(title="sensor stats", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("syscalls seen", f"{stats.syscalls:,}")
    table.add_row("events sent", f"{stats.events:,}")
    table.add_row("events lost", f"{stats.lost:,}", style="bold red" if stats.lost else None)
    table.add_row("distinct syscalls", f"{distinct:,}")
    for kind, n in sorted(kinds.items()):
        table.add_row(f"  {kind.value} events", f"{n:,}")
    return table


def run_trace(cmd: Sequence[str], jsonl: Path | None, console: Console, ngram_n: int = 6,
              ngrams: bool = False) -> int:
    """Trace cmd; returns its exit status (128+signal if it was killed).
    With ngrams, every syscall n-gram is sent too (recorded, not printed):
    the stream `bastion guard train --from` learns from."""
    require_root()
    kinds: Counter[EventKind] = Counter()
    writer = JsonlWriter(jsonl) if jsonl else None

    def show(batch: list[Event]) -> None:
        for ev in batch:
            kinds[ev.kind] += 1
            if ev.kind in (EventKind.NGRAM, EventKind.SEQUENCE):
                continue
            console.print(describe(ev), style=_STYLE.get(ev.kind), markup=False, highlight=False)
        if writer:
            writer.write(batch)

    with Sensor(ngram_n=ngram_n) as sensor:
        cg = Cgroup.create(f"trace-{os.getpid()}")
        try:
            sensor.watch(cg.id, "trace", detect_novel=ngrams, sequences=ngrams)
            proc = subprocess.Popen(list(cmd), preexec_fn=cg.enter)
            while proc.poll() is None:
                show(sensor.poll(50))
            show(sensor.drain())
            distinct = len(sensor.syscall_counts(cg.id))
            stats = sensor.unwatch(cg.id)
        finally:
            cg.remove()
            if writer:
                writer.close()
    console.print(stats_table(stats, kinds, distinct))
    if jsonl:
        console.print(f"events written to {jsonl}")
    rc = proc.returncode
    return 128 - rc if rc < 0 else rc
