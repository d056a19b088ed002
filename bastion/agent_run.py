"""`bastion agents run`: one request as a user makes it: the router picks
the model, the agent loop calls tools, each call runs in a sandbox under
its tool's policy and the guard, and the steps and the answer come back."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.agent import AgentRun
from agents.config import build_router, load_config
from bastion import paths
from bastion.fleet import AGENTS, Fleet, tool_policies
from bastion.guarded import GuardedSandboxes
from ebpf.sensor import Sensor, require_root
from guard.audit import AuditLog, Signer
from guard.profile import load_profile


@dataclass(frozen=True)
class RequestRun:
    agent: str
    route: str
    run: AgentRun

    @property
    def answer(self) -> str:
        """The last successful tool output, or why there is none."""
        done = [s.outcome for s in self.run.steps if s.outcome is not None and s.outcome.ok]
        return done[-1].output.strip() if done else f"no answer: {self.run.ended}"

    @property
    def stopped(self) -> bool:
        return bool(self.run.stopped_steps)

    def as_json(self) -> dict[str, Any]:
        return {"agent": self.agent, "route": self.route, "ended": self.run.ended,
                "steps": [{"tool": s.tool, "args": json.loads(s.args or "{}"), "verdict": s.outcome.verdict.value,
                           "output": s.outcome.summary(), "alerts": s.outcome.alerts}
                          for s in self.run.steps if s.outcome is not None],
                "answer": self.answer}


def agent_for(task_type: str) -> str:
    """The agent whose work a request is, by the router's task type."""
    return next((name for name, kinds in AGENTS.items() if task_type in kinds), "assistant")


def run_request(request: str, config_path: Path, agent: str | None = None, profiles: Path | None = None,
                audit_path: Path | None = None, tell: Callable[[str], None] = lambda _line: None) -> RequestRun:
    config = load_config(config_path)
    loaded = [load_profile(p) for p in sorted(profiles.glob("*.safetensors"))] if profiles else []
    require_root()
    router = build_router(config)
    decision = router.decide(request)
    name = agent or agent_for(decision.task_type)
    if not any(p.meta.agent == name for p in loaded):
        tell(f"no profile for agent {name}: its tool calls are held to their policies only")
    tell("compiling the sensor (a few seconds)")
    log = AuditLog(audit_path or paths.CLI_AUDIT_LOG, Signer.load_or_create(paths.SIGNING_KEY))
    try:
        with Sensor() as sensor, GuardedSandboxes(sensor, log, loaded) as guarded:
            fleet = Fleet(guarded, router, tool_policies(config.approved), max_steps=config.max_steps,
                          max_retries=config.max_retries)
            run = fleet.agent(name).run(request)
    finally:
        log.close()
    return RequestRun(name, decision.route, run)
