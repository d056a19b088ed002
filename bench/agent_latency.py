"""How often the agents' models make exactly the right tool call, and how
fast, on CPU: each route's model decoding freely (before) and constrained
to the tools' schemas with grounded arguments (after), side by side on the
same held-out requests in one run: generated ones the models never saw,
and requests written by hand in phrasings the generators do not use. As in
the fleet, each request goes to the agent whose work it is (the clinic's or
the bank's), and is offered that agent's tools.

    .venv/bin/python bench/agent_latency.py [--tasks 200]

Exact means the right tool with exactly the request's arguments; invalid
means an answer that does not parse, validate or copy its arguments from
the request (the agent loop would retry it). Intervals are 95% Wilson."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents import domain  # noqa: E402
from agents.backends import TransformersBackend  # noqa: E402
from agents.config import TransformersSpec, load_config  # noqa: E402
from agents.prompt import CallError, json_schema, parse, render  # noqa: E402
from agents.tools import TOOLS  # noqa: E402
from bastion.agent_run import agent_for  # noqa: E402
from bastion.fleet import agent_tools  # noqa: E402
from bastion.models import build_models, default_models_dir  # noqa: E402
from common.stats import share_with_interval  # noqa: E402

HANDWRITTEN = Path(__file__).parent / "data" / "handwritten.jsonl"
TARGET_EXACT, TARGET_P50_S = 0.90, 0.070


@dataclass
class Score:
    exact: int = 0
    invalid: int = 0
    n: int = 0
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0

    def add(self, answer: str, task: domain.Task, latency: float, tokens: int, tools: list[str] | None) -> None:
        self.n += 1
        self.latencies.append(latency)
        self.tokens += tokens
        try:
            call = parse(answer, task.text, tools)
        except CallError:
            self.invalid += 1
            return
        self.exact += call is not None and call.tool == task.tool and \
            json.loads(call.args.model_dump_json()) == task.args

    def exact_cell(self) -> str:
        return share_with_interval(self.exact, self.n)

    def p50(self) -> float:
        return float(np.percentile(self.latencies, 50))


def handwritten() -> list[domain.Task]:
    tasks = []
    for line in HANDWRITTEN.read_text().splitlines():
        r = json.loads(line)
        tasks.append(domain.Task(r["text"], r["tool"], r["args"], "handwritten"))
    return tasks


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=200, help="generated held-out requests (default 200)")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 150))
    config = load_config(build_models(default_models_dir(), console))
    sets = {
        "generated": [t for t in domain.tasks(args.tasks * 3, seed=4242) if t.domain in ("healthcare", "finance")]
        [: args.tasks],
        "handwritten": handwritten(),
    }
    tools = {t.text: agent_tools(agent_for(TOOLS[t.tool].domain)) for ts in sets.values() for t in ts}
    table = Table(title="exact tool calls on held-out healthcare and finance requests, one step each, CPU")
    for col in ("route", "decoding", "requests", "n", "exact [95% CI]", "invalid", "p50 step", "p95 step", "tokens/s"):
        table.add_column(col, justify="right")
    results: dict[tuple[str, str, str], Score] = {}
    with Progress(console=console, transient=True) as progress:
        for route in config.routes:
            spec = config.backends[route.backend]
            if not isinstance(spec, TransformersSpec):
                continue
            for decoding in ("free", "constrained"):
                backend = TransformersBackend(route.backend, spec.path, spec.adapter, spec.device,
                                              constrained=decoding == "constrained")
                backend.complete(render("warm up"), json_schema=json_schema("warm up"))
                for name, tasks in sets.items():
                    bar = progress.add_task(f"{route.name}, {decoding}, {name}", total=len(tasks))
                    score = results.setdefault((route.name, decoding, name), Score())
                    for t in tasks:
                        c = backend.complete(render(t.text), json_schema=json_schema(t.text, tools[t.text]))
                        score.add(c.text, t, c.latency_s, c.completion_tokens, tools[t.text])
                        progress.advance(bar)
    for (route, decoding, name), s in results.items():
        table.add_row(route, decoding, name, str(s.n), s.exact_cell(), str(s.invalid),
                      f"{s.p50() * 1000:.0f} ms", f"{np.percentile(s.latencies, 95) * 1000:.0f} ms",
                      f"{s.tokens / sum(s.latencies):.0f}")
    console.print(table)
    targets = Table(title="issue 17's targets (the specialist, constrained)")
    for col in ("target", "measured", ""):
        targets.add_column(col)
    for name in sets:
        s = results.get(("specialist", "constrained", name))
        if s is None:
            continue
        targets.add_row(f"exact tool call >= {TARGET_EXACT:.0%} ({name})", s.exact_cell(),
                        "MET" if s.exact / s.n >= TARGET_EXACT else "MISSED")
        targets.add_row(f"invalid calls = 0 ({name})", str(s.invalid), "MET" if s.invalid == 0 else "MISSED")
        free = results[("specialist", "free", name)]
        targets.add_row(f"p50 step <= {TARGET_P50_S * 1000:.0f} ms ({name})",
                        f"{s.p50() * 1000:.0f} ms (free decoding in this run: {free.p50() * 1000:.0f} ms)",
                        "MET" if s.p50() <= TARGET_P50_S else "MISSED")
    console.print(targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
