"""Runs an agent's tool calls in sandboxes, each under its tool's policy,
labelled with the step's correlation id so the guard's alerts name it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from agents.agent import ToolOutcome
from agents.tools import Tool
from sandbox.manager import SandboxManager
from sandbox.policy import Policy, load_policy

POLICIES = Path(__file__).parent / "policies"


def default_policies() -> dict[str, Policy]:
    return {p.stem: load_policy(p) for p in sorted(POLICIES.glob("*.yaml"))}


class SandboxToolRunner:
    def __init__(self, manager: SandboxManager, policies: dict[str, Policy],
                 alerts_of: Callable[[str], list[str]] = lambda sandbox: []) -> None:
        self.manager = manager
        self.policies = policies
        self.alerts_of = alerts_of

    def run(self, tool: Tool, args: BaseModel, labels: dict[str, str]) -> ToolOutcome:
        result = self.manager.run(tool.command(args), self.policies[tool.policy], labels=labels)
        output = result.stdout if result.exit_status == 0 else (result.stdout + result.stderr)
        return ToolOutcome(output=output, exit_status=result.exit_status, verdict=result.verdict,
                           alerts=self.alerts_of(result.sandbox), stopped_by=result.stopped_by)
