"""The prompt format the agents' models are trained on, and the parsing and
validation of what they answer: a tool call, or that the task is done."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from agents.tools import TOOLS

DONE = json.dumps({"done": True})
END = "</call>"


@dataclass(frozen=True)
class Turn:
    call: str  # the model's answer, as it was given
    ok: bool  # whether the tool ran and succeeded
    result: str  # what the tool returned, or why it did not run

    def shown(self) -> str:
        """What the model is shown: the outcome, and a failure's reason in brief."""
        return "ok" if self.ok else f"error: {self.result[:80]}"


def render(task: str, turns: list[Turn] = (), error: str = "") -> str:  # type: ignore[assignment]
    """The prompt for the next call; the model continues it up to END."""
    out = [f"<task> {task} </task>"]
    for t in turns:
        out.append(f"<call> {t.call} {END} <result> {t.shown()} </result>")
    if error:
        out.append(f"<error> {error} </error>")
    out.append("<call>")
    return " ".join(out)


class CallError(ValueError):
    """The model's answer is not a valid tool call; the message goes back to it."""


@dataclass(frozen=True)
class ToolCall:
    tool: str
    args: BaseModel


def parse(answer: str) -> ToolCall | None:
    """The validated tool call, or None when the model says it is done."""
    text = answer.split(END, 1)[0].strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise CallError(f"not JSON: {text[:80]!r}") from None
    if not isinstance(data, dict):
        raise CallError("expected an object with tool and args")
    if data.get("done") is True:
        return None
    tool = TOOLS.get(str(data.get("tool")))
    if tool is None:
        raise CallError(f"unknown tool {data.get('tool')!r}; tools: {', '.join(TOOLS)}")
    try:
        return ToolCall(tool.name, tool.args.model_validate(data.get("args", {})))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise CallError(f"{tool.name} args.{where}: {err['msg']}") from None


def json_schema() -> dict[str, object]:
    """The JSON schema of an answer, for servers with structured output."""
    calls = [{"type": "object", "properties": {"tool": {"const": name}, "args": t.args.model_json_schema()},
              "required": ["tool", "args"]} for name, t in TOOLS.items()]
    done = {"type": "object", "properties": {"done": {"const": True}}, "required": ["done"]}
    return {"anyOf": [*calls, done]}
