"""`bastion agents specialize LOG --cluster K`: the step of the LLM-to-SLM
loop that makes a specialist. The calls of one cluster of the interaction
log that the generalist got right (the tool ran, succeeded, was not
stopped) become a LoRA fine-tuning set for the base tool-calling model; the
adapter is scored against the generalist on held-out calls of the cluster,
and routed to only if it is at least as accurate."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from agents.analyze import cluster, runs_of
from agents.backends import Backend, TransformersBackend
from agents.config import AgentsConfig, TransformersSpec, build_backend, load_config
from agents.interaction_log import read_log
from agents.prompt import END, json_schema, same_call
from agents.router import TaskClassifier

HELD_OUT = 0.25  # of the cluster's calls, kept for the comparison
MIN_CALLS = 8


class SpecializeError(ValueError):
    """Why no specialist can be made; the message names the option or file."""


@dataclass(frozen=True)
class Call:
    task: str
    prompt: str
    answer: str  # the generalist's right call, as it wrote it


@dataclass(frozen=True)
class Figures:
    exact: float
    p50_ms: float
    cost_per_call: float


@dataclass(frozen=True)
class Outcome:
    cluster: int
    trained_on: int
    held_out: int
    generalist: Figures
    specialist: Figures
    routed: bool
    route: str
    task_type: str


def right_calls(log: Path, k: int, generalist: str) -> list[Call]:
    """The LM calls of cluster k's runs that the generalist answered with a
    tool call that then ran and succeeded."""
    runs, texts, tools = runs_of(log)
    clusters = cluster(texts, tools)
    if not 1 <= k <= len(clusters):
        raise SpecializeError(f"--cluster {k}: {log} has clusters 1 to {len(clusters)} (see `bastion agents analyze`)")
    members = {runs[i] for i in clusters[k - 1].members}
    records = list(read_log(log))
    ok_steps = {r["step"] for r in records if r["type"] == "tool" and r.get("ok") and r["verdict"] == "allow"}
    return [Call(r["task"], r["prompt"], r["completion"]) for r in records
            if r["type"] == "lm" and r["run"] in members and r["backend"] == generalist and r["step"] in ok_steps]


def _figures(backend: Backend, calls: list[Call], cost_per_1k: float) -> Figures:
    right, latencies, tokens = 0, [], 0
    for c in calls:
        got = backend.complete(c.prompt, json_schema=json_schema(c.task))
        latencies.append(got.latency_s)
        tokens += got.prompt_tokens + got.completion_tokens
        right += same_call(got.text, c.answer, c.task)
    return Figures(right / len(calls), float(np.percentile(latencies, 50)) * 1000, tokens / len(calls) / 1000 * cost_per_1k)


def specialize(log: Path, k: int, config_path: Path, out: Path, base: str = "tool-caller", steps: int = 150,
               on_step: Callable[[int], None] | None = None) -> Outcome:
    from federated.task import load, save, train

    config = load_config(config_path)
    generalist = next((r.backend for r in config.routes if r.name == config.escalate_to), None)
    base_spec = config.backends.get(base)
    if generalist is None or not isinstance(base_spec, TransformersSpec):
        raise SpecializeError(f"{config_path}: needs the escalation route's backend and a transformers "
                              f"backend named {base!r} (--base)")
    calls = right_calls(log, k, generalist)
    if len(calls) < MIN_CALLS:
        raise SpecializeError(f"--cluster {k}: only {len(calls)} calls in {log} that the generalist "
                              f"({generalist}) answered right; a specialist needs at least {MIN_CALLS}")
    random.Random(k).shuffle(calls)
    cut = max(2, int(len(calls) * HELD_OUT))
    held, train_calls = calls[:cut], calls[cut:]

    model, tokenizer = load(base_spec.path)
    train(model, tokenizer, [(c.prompt, f" {c.answer} {END}") for c in train_calls], steps, on_step=on_step)
    adapter = out / f"cluster-{k}"
    save(model, adapter)

    before = _figures(build_backend(generalist, config.backends[generalist]), held,
                      config.backends[generalist].cost_per_1k_tokens)
    specialist = TransformersBackend(f"cluster-{k}", base_spec.path, adapter, base_spec.device)
    after = _figures(specialist, held, base_spec.cost_per_1k_tokens)
    task_type = Counter(TaskClassifier.load(config.classifier).predict(c.task)[0] for c in calls).most_common(1)[0][0]
    routed = after.exact >= before.exact
    if routed:
        _route(config_path, config, f"cluster-{k}", task_type, base_spec.model_copy(update={"adapter": adapter}))
    return Outcome(k, len(train_calls), len(held), before, after, routed, f"cluster-{k}", task_type)


def _route(config_path: Path, config: AgentsConfig, name: str, task_type: str, spec: TransformersSpec) -> None:
    """Send the cluster's task type to the new specialist; the other routes keep the rest."""
    raw = yaml.safe_load(config_path.read_text())
    raw["backends"][name] = json.loads(spec.model_dump_json())
    routes = [{**r, "task_types": [t for t in r["task_types"] if t != task_type]}
              for r in raw["routes"] if r["name"] != name]
    raw["routes"] = [r for r in routes if r["task_types"] or r["name"] == config.escalate_to]
    raw["routes"].append({"name": name, "task_types": [task_type], "backend": name})
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
