"""`bastion doctor`, `bastion trace` and `bastion demo`: this host's kernel,
a watched command, and the main job."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def _doctor(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    from bastion.doctor import healthy, run_checks

    results = run_checks()
    if args.json:
        print(json.dumps([r.model_dump() for r in results], indent=2))
    else:
        table = Table(title="bastion doctor")
        for col in ("capability", "status", "detail", "fix"):
            table.add_column(col)
        for r in results:
            status = "[green]ok[/]" if r.ok else ("[bold red]FAIL[/]" if r.required else "[yellow]missing[/]")
            table.add_row(r.name, status, r.detail, r.fix)
        console.print(table)
    return 0 if healthy(results) else 1


def _trace(args: argparse.Namespace, console: Console) -> int:
    from bastion.trace import run_trace

    if not args.cmd:
        raise SystemExit("bastion trace: give a command after --, e.g. `bastion trace -- ls /`")
    return run_trace(args.cmd, args.jsonl, console, ngram_n=args.ngram, ngrams=args.ngrams)


def _demo(args: argparse.Namespace, console: Console) -> int:
    from bastion.demo import DemoFailed, main as demo

    try:
        return demo(console, tui=args.tui, fl_rounds=args.rounds)
    except DemoFailed as exc:
        console.print(f"[bold red]{exc}[/]")
        return 1


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("doctor", help="check the kernel capabilities Bastion uses")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=_doctor)

    p = sub.add_parser("trace", help="run a command in a watched cgroup and print its events")
    p.add_argument("--jsonl", type=Path, help="also record the events to this JSONL file")
    p.add_argument("--ngram", type=int, default=6, help="syscall n-gram length (default 6)")
    p.add_argument("--ngrams", action="store_true", help="record every n-gram too (training input for the guard)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=_trace)

    p = sub.add_parser("demo", help="everything Bastion is for, in a few minutes")
    p.add_argument("--tui", action="store_true", help="review the run's alerts in the TUI before the federated part")
    p.add_argument("--rounds", type=int, default=3, help="federated rounds (default 3)")
    p.set_defaults(func=_demo)
