"""The prompt format the agents' models are trained on, and the parsing and
validation of what they answer: a tool call, or that the task is done."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from agents.grounding import narrowed, ungrounded
from agents.tools import TOOLS

DONE = json.dumps({"done": True})
END = "</call>"
LEAD = " "  # an answer follows "<call>" after a space
SEPARATORS = (", ", ": ")  # json.dumps's, which the answers are written in


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


class PromptTooLong(ValueError):
    """The prompt leaves the model no room to answer within the positions it
    was trained on; the message gives both lengths, in tokens."""


@dataclass(frozen=True)
class ToolCall:
    tool: str
    args: BaseModel


def request_of(prompt: str) -> str:
    """The request a rendered prompt holds: all that its copied arguments may
    come from, since a prompt shows earlier results only as ok or an error.
    The markup around it is not the request's: a note must not end in "</task>"."""
    return prompt.removeprefix("<task>").split("</task>", 1)[0].strip()


def context(task: str, turns: list[Turn] = ()) -> str:  # type: ignore[assignment]
    """What a call's copied arguments may come from: the request and the results so far."""
    return "\n".join([task, *(t.result for t in turns if t.ok)])


def parse(answer: str, grounded_in: str | None = None, tools: Collection[str] | None = None) -> ToolCall | None:
    """The validated tool call, or None when the model says it is done; with
    `grounded_in`, its copied arguments must also be found in that text; with
    `tools`, it must be one of them (the agent's)."""
    text = answer.strip()
    try:  # the JSON first, so a string in it may hold END ("print('</call>')")
        data, end = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError:
        raise CallError(f"not JSON: {text.split(END, 1)[0][:80]!r}") from None
    if (rest := text[end:].strip()) and not rest.startswith(END):
        raise CallError(f"not JSON: {text[:80]!r}")
    if not isinstance(data, dict):
        raise CallError("expected an object with tool and args")
    if data.get("done") is True:
        return None
    tool = TOOLS.get(str(data.get("tool")))
    if tool is None or (tools is not None and tool.name not in tools):
        offered = TOOLS if tools is None else tools
        raise CallError(f"unknown tool {data.get('tool')!r}; tools: {', '.join(offered)}")
    try:
        args = tool.args.model_validate(data.get("args", {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise CallError(f"{tool.name} args.{where}: {err['msg']}") from None
    if grounded_in is not None and (why := ungrounded(args, grounded_in)):
        raise CallError(f"{tool.name} {why}")
    return ToolCall(tool.name, args)


def same_call(answer: str, right: str, grounded_in: str | None = None) -> bool:
    """Whether an answer makes exactly the right answer's call (both done counts too);
    an answer that does not parse, validate or, given `grounded_in`, ground is wrong."""
    try:
        got, want = parse(answer, grounded_in), parse(right)
    except CallError:
        return False
    if got is None or want is None:
        return got is None and want is None
    return got.tool == want.tool and got.args == want.args


def json_schema(grounded_in: str, tools: Collection[str] | None = None) -> dict[str, object]:
    """The JSON schema of an answer, its copied arguments limited to values
    found in `grounded_in`: for decoders that follow a schema. Only `tools`
    (default: all) are offered, and not one whose required copied argument
    has no such value."""
    calls = [{"type": "object", "properties": {"tool": {"const": name}, "args": args},
              "required": ["tool", "args"], "additionalProperties": False}
             for name, t in TOOLS.items()
             if (tools is None or name in tools) and (args := narrowed(t.args, grounded_in)) is not None]
    done = {"type": "object", "properties": {"done": {"const": True}}, "required": ["done"],
            "additionalProperties": False}
    return {"anyOf": [*calls, done]}


def choices(answer: str, schema: dict[str, Any]) -> list[tuple[str, list[object]]]:
    """The arguments of a schema-decoded answer that are numbers or single
    words (copied identifiers), with what they may be; quoted text is left
    as decoded."""
    call = json.loads(answer)
    alts = [a for a in schema.get("anyOf", []) if "tool" in call
            and a["properties"].get("tool", {}).get("const") == call["tool"]]
    if not alts:  # done
        return []
    props = alts[0]["properties"]["args"]["properties"]
    return [(name, prop["enum"]) for name, prop in props.items()
            if name in call["args"] and prop.get("enum")
            and all(not isinstance(v, str) or len(v.split()) == 1 for v in prop["enum"])]


def with_arg(answer: str, name: str, value: object) -> str:
    """The answer with one argument set to `value`, written as answers are."""
    call = json.loads(answer)
    call["args"][name] = value
    return json.dumps(call, separators=SEPARATORS)
