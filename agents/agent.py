"""The agent loop: ask the routed model for the next tool call, validate it
(an invalid call is retried with the error, a bounded number of times, and
never run), run it in a sandbox, hand the result and the guard's verdict
back, until the model says it is done or the step limit is reached.

Every step has a correlation id that also labels its sandbox, so an alert
names the agent, the step and the tool call."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel

from agents.backends import Completion
from agents.interaction_log import InteractionLog
from agents.prompt import CallError, PromptTooLong, Turn, context, json_schema, parse, render
from agents.router import Router
from agents.tools import TOOLS, Tool
from common.verdicts import Verdict


@dataclass(frozen=True)
class ToolOutcome:
    """A tool call's result as the loop sees it, with the guard's verdict
    and alerts in the same value (no side channel)."""

    output: str
    exit_status: int
    verdict: Verdict
    alerts: list[str] = field(default_factory=list)
    stopped_by: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and self.stopped_by is None

    def summary(self) -> str:
        """What the model sees of the outcome."""
        if self.stopped_by:
            return f"stopped by Bastion: {self.stopped_by}"
        if self.exit_status != 0:
            return f"failed ({self.exit_status}): {self.output[-200:]}"
        return self.output.strip()


class ToolRunner(Protocol):
    """Runs a tool call somewhere watched; `bastion` wires the sandboxes and the guard."""

    def run(self, tool: Tool, args: BaseModel, labels: dict[str, str]) -> ToolOutcome: ...


@dataclass
class Step:
    id: str
    route: str
    task_type: str
    confidence: float
    answer: str
    tool: str | None = None
    args: str | None = None
    outcome: ToolOutcome | None = None
    retries: int = 0
    error: str = ""
    latency_s: float = 0.0


@dataclass
class AgentRun:
    id: str
    agent: str
    task: str
    steps: list[Step] = field(default_factory=list)
    ended: str = ""  # done, step limit, invalid calls, the prompt outgrew the model's context

    @property
    def tool_calls(self) -> int:
        return sum(1 for s in self.steps if s.outcome is not None)

    @property
    def stopped_steps(self) -> list[Step]:
        return [s for s in self.steps if s.outcome is not None and s.outcome.verdict.enforced]


class Agent:
    def __init__(self, name: str, router: Router, runner: ToolRunner, log: InteractionLog | None = None,
                 max_steps: int = 4, max_retries: int = 2, tools: Collection[str] | None = None) -> None:
        self.name = name
        self.tools = tools  # what the model is offered and may call; None: every tool
        self.router = router
        self.runner = runner
        self.log = log
        self.max_steps = max_steps
        self.max_retries = max_retries

    def run(self, task: str) -> AgentRun:
        run = AgentRun(id=uuid.uuid4().hex[:12], agent=self.name, task=task)
        decision = self.router.decide(task)
        turns: list[Turn] = []
        for n in range(self.max_steps):
            step = Step(id=f"{run.id}-{n + 1}", route=decision.route, task_type=decision.task_type,
                        confidence=decision.confidence, answer="")
            run.steps.append(step)
            call = None
            grounds = context(task, turns)
            schema = json_schema(grounds, self.tools)
            for attempt in range(self.max_retries + 1):
                prompt = render(task, turns, step.error)
                try:
                    completion = self.router.complete(decision, prompt, schema)
                except PromptTooLong as exc:
                    run.ended = f"the prompt outgrew the model's context: {exc}"
                    return run
                step.answer, step.retries = completion.text, attempt
                step.latency_s += completion.latency_s
                self._log_lm(run, step, decision.backend, prompt, completion)
                try:
                    call = parse(completion.text, grounds, self.tools)
                    step.error = ""
                    break
                except CallError as exc:
                    step.error = str(exc)
            if step.error:
                run.ended = f"invalid tool call after {self.max_retries + 1} tries: {step.error}"
                return run
            if call is None:
                run.ended = "done"
                return run
            step.tool, step.args = call.tool, call.args.model_dump_json()
            labels = {"agent": self.name, "run": run.id, "step": step.id, "tool_call": call.tool,
                      "tool_args": step.args[:4000]}
            step.outcome = self.runner.run(TOOLS[call.tool], call.args, labels)
            if self.log:
                self.log.tool_call(agent=self.name, run=run.id, step=step.id, tool=call.tool, args=step.args,
                                   output=step.outcome.output, verdict=step.outcome.verdict,
                                   alerts=step.outcome.alerts, ok=step.outcome.ok)
            turns.append(Turn(completion.text, step.outcome.ok, step.outcome.summary()))
        run.ended = "step limit"
        return run

    def _log_lm(self, run: AgentRun, step: Step, backend: str, prompt: str, c: Completion) -> None:
        if self.log is None:
            return
        self.log.lm_call(agent=self.name, run=run.id, step=step.id, route=step.route, backend=backend,
                         task=run.task, prompt=prompt, completion=c.text, prompt_tokens=c.prompt_tokens,
                         completion_tokens=c.completion_tokens, latency_s=c.latency_s)
