"""The agents' small models: built once per version of the builder, cached
outside any checkout, and named by an agents.yaml."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import Progress

from agents import domain
from agents.model_builder import GENERALIST, SPECIALIST, ModelSpec, build, fingerprint
from agents.router import TaskClassifier

CONFIG_NAME = "agents.yaml"
CACHE = Path(os.environ.get("BASTION_MODELS", "/var/cache/bastion/models"))


def default_models_dir() -> Path:
    """Built models are kept per version of the builder and of this module
    (which picks the specs and fits the router), outside any checkout."""
    return CACHE / fingerprint(Path(__file__))


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
        sample = domain.tasks(300 if quick else 600, seed=7)  # as right as 1500 on held-out requests, 4 s sooner
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
