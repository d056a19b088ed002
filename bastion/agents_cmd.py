"""`bastion agents build-model|analyze|run`: the agents from the command line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from agents import domain
from agents.model_builder import GENERALIST, SPECIALIST, ModelSpec, build, fingerprint
from agents.router import TaskClassifier

CONFIG_NAME = "agents.yaml"
CACHE = Path(os.environ.get("BASTION_MODELS", "/var/cache/bastion/models"))


def default_models_dir() -> Path:
    """Built models are kept per version of the builder, outside any checkout."""
    return CACHE / fingerprint()


def specialist_dir(console: Console) -> Path:
    """The tool-calling specialist's model directory, built if needed: the
    base model that federated fine-tuning adapts."""
    return build_models(default_models_dir(), console).parent / "tool-caller"


def build_models(out: Path, console: Console, quick: bool = False) -> Path:
    """The specialist, the generalist, the router's classifier and a config
    naming them; reused when already built."""
    config = out / CONFIG_NAME
    if config.exists():
        console.print(f"models already built in {out} (delete it to rebuild)")
        return config
    specs = {"tool-caller": SPECIALIST, "generalist": GENERALIST}
    if quick:  # for tests of the plumbing, not of the models' quality
        specs = {k: ModelSpec(hidden=64, layers=2, heads=2, steps=30, examples=600) for k in specs}
    with Progress(console=console) as progress:
        for name, spec in specs.items():
            task = progress.add_task(f"training {name} ({spec.layers}x{spec.hidden})", total=spec.steps)
            figures = build(out / name, spec, on_step=lambda step, loss, t=task: progress.update(
                t, completed=step + 1, description=f"training {name}: loss {loss:.3f}"))
            console.print(f"{name}: {figures['parameters'] / 1e6:.2f}M parameters, final loss "
                          f"{figures['final_loss']:.3f}, {figures['train_s']:.0f} s")
        task = progress.add_task("router classifier (MiniLM + logistic regression)", total=1)
        sample = domain.tasks(300 if quick else 1500, seed=7)
        TaskClassifier.fit([t.text for t in sample], [t.domain for t in sample]).save(out / "router")
        progress.advance(task)
    config.write_text(yaml.safe_dump({
        "backends": {
            "tool-caller": {"kind": "transformers", "path": "tool-caller", "cost_per_1k_tokens": 0.0002},
            "generalist": {"kind": "transformers", "path": "generalist", "cost_per_1k_tokens": 0.002},
        },
        "routes": [
            {"name": "specialist", "task_types": ["healthcare", "finance"], "backend": "tool-caller"},
            {"name": "generalist", "task_types": ["generic"], "backend": "generalist"},
        ],
        "escalate_to": "generalist",
        "escalate_below": 0.6,
        "classifier": "router",
    }, sort_keys=False))
    return config


def _build(args: argparse.Namespace, console: Console) -> int:
    config = build_models(args.out or default_models_dir(), console, args.quick)
    console.print(f"config: {config}")
    return 0


def _analyze(args: argparse.Namespace, console: Console) -> int:
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
