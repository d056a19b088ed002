"""`bastion agents build-model|analyze|specialize|run`: the agents from the command line."""

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

    from agents.analyze import cluster, runs_of

    try:
        _runs, texts, tools = runs_of(args.log)
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


def _run(args: argparse.Namespace, console: Console) -> int:
    import json
    import sys

    from rich.console import Console as RichConsole
    from rich.table import Table

    from bastion.agent_run import run_request
    from bastion.models import build_models, default_models_dir

    err = RichConsole(stderr=True)
    try:
        config = args.config or build_models(default_models_dir(), err)
        done = run_request(args.request, config, args.agent, args.profiles,
                           tell=lambda line: err.print(f"bastion: {line}", markup=False))
    except (OSError, ValueError, RuntimeError) as exc:  # a bad config, profile or file, no root: one line
        raise SystemExit(f"bastion: {exc}") from None
    out = done.as_json()
    if args.json:
        print(json.dumps(out))
    else:
        table = Table(title=f"agent {done.agent}, route {done.route}: {done.run.ended}")
        for col in ("step", "tool", "arguments", "verdict", "output"):
            table.add_column(col, overflow="fold")
        for i, step in enumerate(out["steps"], 1):
            table.add_row(str(i), step["tool"], json.dumps(step["args"]), step["verdict"],
                          step["output"][:300] + "".join(f"\n{a}" for a in step["alerts"]))
        console.print(table)
        console.print(f"[bold]answer[/]: {done.answer}", soft_wrap=True)
    sys.stdout.flush()
    return 126 if done.stopped else 0 if done.run.ended == "done" else 1


def _specialize(args: argparse.Namespace, console: Console) -> int:
    from rich.progress import Progress
    from rich.table import Table

    from bastion.models import build_models, default_models_dir
    from bastion.specialize import specialize

    config = args.config or build_models(default_models_dir(), console)
    try:
        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task(f"fine-tuning a LoRA specialist for cluster {args.cluster}", total=args.steps)
            done = specialize(args.log, args.cluster, config, args.out or config.parent / "specialists",
                              args.base, args.steps, on_step=lambda _s: progress.advance(bar))
    except (OSError, ValueError) as exc:  # a bad log, config or cluster: one line
        console.print(f"bastion: {exc}", style="bold red", markup=False, soft_wrap=True)
        return 2
    table = Table(title=f"cluster {done.cluster}: {done.held_out} held-out calls "
                        f"(trained on {done.trained_on} the generalist got right)")
    for col in ("model", "exact call", "p50 latency", "cost per call"):
        table.add_column(col, justify="right")
    for name, f in (("generalist (before)", done.generalist), (f"specialist {done.route} (after)", done.specialist)):
        table.add_row(name, f"{f.exact:.0%}", f"{f.p50_ms:.0f} ms", f"${f.cost_per_call:.6f}")
    console.print(table)
    if done.routed:
        console.print(f"routed: {done.task_type} requests now go to {done.route} ({config})")
    else:
        console.print(f"not routed: the specialist is less accurate than the generalist on {done.task_type} calls")
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
    p = agents.add_parser("specialize", help="fine-tune a LoRA specialist on one cluster of a log; route to it "
                                             "if it is at least as accurate as the generalist")
    p.add_argument("log", type=Path)
    p.add_argument("--cluster", type=int, required=True, help="the cluster's number in `bastion agents analyze`")
    p.add_argument("--config", type=Path, help="agents.yaml to add the route to (default: the built models' own)")
    p.add_argument("--base", default="tool-caller", help="the config's backend whose model is adapted")
    p.add_argument("--steps", type=int, default=150, help="LoRA training steps (default 150)")
    p.add_argument("--out", type=Path, help="where the adapter goes (default: beside the config)")
    p.set_defaults(func=_specialize)
    p = agents.add_parser("run", help="run one request: router, agent, sandboxed tools, guard (root); "
                                      "exit status 126 when Bastion stopped a step")
    p.add_argument("request", help="what to do, in words")
    p.add_argument("--agent", help="whose work it is, which names its profile (default: by the router's task type)")
    p.add_argument("--json", action="store_true", help="print one JSON object: agent, route, steps, answer")
    p.add_argument("--config", type=Path, help="agents.yaml (default: the built models' own)")
    p.add_argument("--profiles", type=Path, help="a directory of the agents' *.safetensors guard profiles")
    p.set_defaults(func=_run)
