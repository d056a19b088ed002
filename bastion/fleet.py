"""Agents at work under the guard: the router and backends of the agents'
config, their tools in sandboxes under per-tool policies, and a profile per
agent learned from benign runs of that agent's tools."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import agents
from agents import domain
from pydantic import BaseModel

from agents.agent import Agent, ToolOutcome
from agents.interaction_log import InteractionLog
from agents.router import Router
from agents.tools import TOOLS, Tool
from bastion.guarded import GuardedSandboxes, Recording, record_runs
from ebpf.sensor import Sensor
from guard.profile import Profile
from guard.traces import Behaviour
from guard.training import Settings, train
from sandbox.policy import Destination, Network, Policy, load_policy

AGENTS = {"clinic": ("healthcare",), "finance": ("finance",)}
# besides its domain's tools, an agent may reach the approved APIs; not python, whose
# code nothing grounds: offered, it was where an unsure model put a request it did not know
HTTP_TOOLS = ("http_get", "http_request")
POLICIES = Path(agents.__file__).parent / "policies"  # the sandbox policies the tools name


def default_policies() -> dict[str, Policy]:
    return {p.stem: load_policy(p) for p in sorted(POLICIES.glob("*.yaml"))}


def agent_tools(name: str) -> list[str] | None:
    """The tools an agent is offered and may call; None (every tool) for one not in AGENTS."""
    if name not in AGENTS:
        return None
    return [n for n, t in TOOLS.items() if t.domain in AGENTS[name] or n in HTTP_TOOLS]


def tool_policies(approved: list[Destination]) -> dict[str, Policy]:
    """The bundled per-tool policies, with http_get allowed to the approved APIs."""
    policies = default_policies()
    api = policies["api"]
    assert isinstance(api.network, Network)
    policies["api"] = api.model_copy(update={"network": api.network.model_copy(update={"allow": approved})})
    return policies


# benign calls per approved URL: a call's syscalls vary with timing (the 3rd and 5th
# of a dozen still made n-grams the others had not), and with 2 runs a hijacked call
# to the same API was once quarantined for them before its request was sent
HTTP_RUNS = 6


def benign_tool_runs(agent: str, n: int, seed: int, approved_urls: list[str]) -> list[tuple[Tool, list[str]]]:
    """The tool calls the agent's work is made of, with arguments drawn from
    its domain's tasks; http_get only to the approved URLs."""
    wanted = AGENTS[agent]
    # the approved APIs are the only http_get a benign run makes
    calls = [task for task in domain.tasks(n * 8, seed) if task.domain in wanted and task.tool != "http_get"][:n]
    calls += [domain.Task("", "http_get", {"url": url}, "generic") for url in approved_urls for _ in range(HTTP_RUNS)]
    random.Random(seed).shuffle(calls)
    return [(TOOLS[t.tool], TOOLS[t.tool].command(TOOLS[t.tool].args.model_validate(t.args))) for t in calls]


def train_profiles(sensor: Sensor, policies: dict[str, Policy], approved_urls: list[str], runs_per_agent: int = 24,
                   on_run: Callable[[Recording], None] | None = None) -> list[Profile]:
    """One profile per agent, from benign sandboxed runs of its tools, each
    under its tool's policy."""
    profiles = []
    for i, agent in enumerate(AGENTS):
        by_policy: dict[str, list[list[str]]] = {}
        for tool, cmd in benign_tool_runs(agent, runs_per_agent, seed=100 + i, approved_urls=approved_urls):
            by_policy.setdefault(tool.policy, []).append(cmd)
        recordings = [rec for name, cmds in by_policy.items()
                      for rec in record_runs(sensor, cmds, policies[name], on_done=on_run)]
        failed = [r.result for r in recordings if r.result.exit_status != 0]
        if failed:
            raise RuntimeError(f"a benign {agent} tool run failed: {failed[0].stderr[-300:]}")
        behaviour = Behaviour()
        for r in recordings:
            behaviour.update(r.behaviour())
        # the sequence model gets 500 steps per agent (half a minute here): the demo and a node's first start wait for it
        profiles.append(train([t for r in recordings for t in r.traces(sensor.ngram_n)], behaviour, agent,
                              Settings(sequence_steps=500)))
    return profiles


@dataclass
class GuardedToolRunner:
    """The agents' ToolRunner: each call in a sandbox under its tool's
    policy and the guard, labelled with the step's correlation id."""

    guarded: GuardedSandboxes
    policies: dict[str, Policy]

    def run(self, tool: Tool, args: BaseModel, labels: dict[str, str]) -> ToolOutcome:
        run = self.guarded.run(tool.command(args), self.policies[tool.policy], labels=labels)
        result = run.result
        output = result.stdout if result.exit_status == 0 else (result.stdout + result.stderr)
        return ToolOutcome(output=output, exit_status=result.exit_status, verdict=run.verdict,
                           alerts=[f"{a.detector}: {a.rule} -> {a.action.value}" for a in run.alerts],
                           stopped_by=result.stopped_by)


@dataclass
class Fleet:
    guarded: GuardedSandboxes
    router: Router
    policies: dict[str, Policy]
    log: InteractionLog | None = None
    max_steps: int = 4
    max_retries: int = 2

    def agent(self, name: str) -> Agent:
        runner = GuardedToolRunner(self.guarded, self.policies)
        return Agent(name, self.router, runner, self.log, self.max_steps, self.max_retries, agent_tools(name))
