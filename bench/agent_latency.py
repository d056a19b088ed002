"""Per-step latency and tokens per second of the agents' models on CPU, the
specialist route against the generalist route, on the same unseen requests
in one run; with how often each produced the exactly right tool call.

    .venv/bin/python bench/agent_latency.py [--tasks 60]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents import domain  # noqa: E402
from agents.config import build_backend, load_config  # noqa: E402
from agents.prompt import CallError, parse, render  # noqa: E402
from bastion.models import build_models, default_models_dir  # noqa: E402


def exact(answer: str, task: domain.Task) -> bool:
    try:
        call = parse(answer)
    except CallError:
        return False
    return call is not None and call.tool == task.tool and json.loads(call.args.model_dump_json()) == task.args


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=60)
    args = parser.parse_args()
    console = Console()
    config = load_config(build_models(default_models_dir(), console))
    tasks = [t for t in domain.tasks(args.tasks * 2, seed=4242) if t.domain in ("healthcare", "finance")][: args.tasks]
    table = Table(title=f"{len(tasks)} unseen healthcare and finance requests, one step each, CPU")
    for col in ("route", "backend", "parameters", "p50 step", "p95 step", "tokens/s", "exact tool call"):
        table.add_column(col, justify="right")
    figures = {}
    with Progress(console=console, transient=True) as progress:
        for route in config.routes:
            backend = build_backend(route.backend, config.backends[route.backend])
            task_id = progress.add_task(f"{route.name} ({route.backend})", total=len(tasks))
            latencies, tokens, right = [], 0, 0
            backend.complete(render(tasks[0].text))  # warm up
            for t in tasks:
                c = backend.complete(render(t.text))
                latencies.append(c.latency_s)
                tokens += c.completion_tokens
                right += exact(c.text, t)
                progress.advance(task_id)
            params = sum(p.numel() for p in backend.model.parameters())  # type: ignore[attr-defined]
            figures[route.name] = np.percentile(latencies, 50)
            table.add_row(route.name, route.backend, f"{params / 1e6:.2f}M",
                          f"{np.percentile(latencies, 50) * 1000:.0f} ms", f"{np.percentile(latencies, 95) * 1000:.0f} ms",
                          f"{tokens / sum(latencies):.0f}", f"{right / len(tasks):.0%}")
    console.print(table)
    if {"specialist", "generalist"} <= figures.keys():
        console.print(f"generalist / specialist p50 step latency: {figures['generalist'] / figures['specialist']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
