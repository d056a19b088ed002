"""`bastion agents build-model|analyze|run`: the agents from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def _build(args: argparse.Namespace, console: Console) -> int:
    from bastion.models import build_models, default_models_dir

    config = build_models(args.out or default_models_dir(), console, args.quick)
    console.print(f"config: {config}")
    return 0


def _analyze(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    from agents.analyze import cluster, requests_of

    try:
        texts, tools = requests_of(args.log)
        clusters = cluster(texts, tools)
    except (OSError, ValueError) as exc:
        console.print(f"bastion: {exc}", style="bold red", markup=False, soft_wrap=True)
        return 2
    table = Table(title=f"{len(texts)} requests in {args.log}")
    for col in ("cluster", "size", "share", "repetitive", "top tool", "example", "specialist SLM?"):
        table.add_column(col, overflow="fold")
    for i, c in enumerate(clusters, 1):
        table.add_row(str(i), str(c.size), f"{c.share:.0%}", f"{c.repetitiveness:.2f}",
                      f"{c.top_tool} ({c.top_tool_share:.0%})", c.example[:70],
                      "[green]yes[/]" if c.specialist_fits else "[yellow]no[/]")
    console.print(table)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    agents = sub.add_parser("agents", help="SLM agents").add_subparsers(dest="action", required=True)
    p = agents.add_parser("build-model", help="train the specialist, the generalist and the router (CPU, minutes)")
    p.add_argument("--out", type=Path, help="where (default: $BASTION_MODELS or /var/cache/bastion/models, "
                                            "one directory per version of the builder)")
    p.add_argument("--quick", action="store_true", help="tiny models in seconds, for testing the plumbing")
    p.set_defaults(func=_build)
    p = agents.add_parser("analyze", help="cluster an interaction log's requests: where would a specialist fit?")
    p.add_argument("log", type=Path)
    p.set_defaults(func=_analyze)
