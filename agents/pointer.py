"""Where in the request each copied argument lies: a pointer over the
request's tokens, linear scores on a built model's last hidden states,
trained with the model, one pair (first token, last token) per argument
that is a number or a run of words (a note, a document).

A model of a million parameters trained for a minute and a half learns
which tool to call, but not to copy a run of words it has never seen: asked
for a note it writes the notes it remembers, from whichever word of the
request looks most like one; and it binds numbers to fields by where they
stand more than by what names them. Pointing is learned far sooner than
copying: the decoder keeps each such argument to the occurrence in the
request that the pointer scores best (agents.decoding)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from agents.grounding import NUMBER, assigned, occurrences, pointed_fields, span_fields
from agents.tools import TOOLS

POINTER_FILE = "pointer.safetensors"
# every pointed argument of every tool, in a fixed order: the pointer's outputs
FIELDS = [(tool.name, name) for tool in TOOLS.values() for name in pointed_fields(tool.args)]
INDEX = {field: i for i, field in enumerate(FIELDS)}


class PointerError(ValueError):
    """A pointer file that this model cannot use; the message names the file and the array."""


class Pointer(torch.nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.start = torch.nn.Linear(hidden, len(FIELDS))
        self.end = torch.nn.Linear(hidden, len(FIELDS))

    def scores(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per token and field (..., T, F): as the argument's first token and
        as its last. A causal model's token has not seen what follows it, so
        whether it ends the argument is read from the next token; the last
        token gets no end score (-inf)."""
        start = self.start(hidden)
        end = torch.nn.functional.pad(self.end(hidden[..., 1:, :]), (0, 0, 0, 1), value=float("-inf"))
        return start, end

    def save(self, directory: Path) -> None:
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(directory / POINTER_FILE))

    @classmethod
    def load(cls, directory: Path, hidden: int) -> Pointer | None:
        """The pointer saved beside a model, or None for a model built without one."""
        path = directory / POINTER_FILE
        if not path.is_file():
            return None
        pointer = cls(hidden)
        try:
            arrays = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise PointerError(f"{path}: not a safetensors file: {exc}") from None
        for name, want in pointer.state_dict().items():
            got = arrays.get(name)
            if got is None or got.shape != want.shape or not torch.isfinite(got).all():
                raise PointerError(f"{path}: array {name!r} is missing, not of shape {tuple(want.shape)}, "
                                   "or not finite")
        pointer.load_state_dict(arrays, strict=False)
        return pointer.eval()

    @classmethod
    def beside(cls, model_dir: Path, adapter_dir: Path | None, hidden: int) -> Pointer | None:
        """The pointer a model is served with: an adapter trained with one
        brings its own (federated.task); else the base model's."""
        return (adapter_dir and cls.load(adapter_dir, hidden)) or cls.load(model_dir, hidden)

    def read(self, model: Any, ids: torch.Tensor, offsets: list[tuple[int, int]], prompt: str) -> Pointed:
        """What the pointer says of a prompt, from the model's hidden states (an adapted model's too)."""
        with torch.inference_mode():
            hidden = model.get_decoder()(input_ids=ids).last_hidden_state[0]
        return Pointed(self, hidden, offsets, prompt)


def _request(prompt: str) -> tuple[int, int]:
    """The request's characters in a rendered prompt: all that arguments are copied from."""
    return prompt.find("<task> ") + len("<task> "), prompt.find(" </task>")


def places(prompt: str, value: object) -> list[tuple[int, int]]:
    """The characters of each place in the prompt's request that a value is
    copied from: a number wherever it is written, a run of words where it
    last appears (such a run closes a request)."""
    begin, end = _request(prompt)
    if isinstance(value, str):
        at = prompt.rfind(value, begin, end) if value else -1
        return [(at, at + len(value))] if at >= 0 else []
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [(begin + m.start(), begin + m.end()) for m in NUMBER.finditer(prompt[begin:end])
                if float(m[0]) == float(value)]
    return []


def _tokens(offsets: list[tuple[int, int]], size: int) -> np.ndarray:
    """The token holding each character (-1 for none)."""
    at = np.full(size + 1, -1)
    for i, (a, b) in enumerate(offsets):
        at[a:b] = i
    return at


def targets(prompt: str, answer: str, offsets: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(field, first token, last token) of each pointed argument of the
    answer's call that the request holds in exactly one place."""
    try:
        call = json.loads(answer.strip().split("</call>", 1)[0])
    except json.JSONDecodeError:
        return []
    if not isinstance(call, dict) or not isinstance(args := call.get("args"), dict):
        return []
    at = _tokens(offsets, len(prompt))
    out = []
    for name, value in args.items():
        field = INDEX.get((str(call.get("tool")), name))
        if field is not None and len(where := places(prompt, value)) == 1:
            (a, b), = where
            if at[a] >= 0 and at[b - 1] >= 0:
                out.append((field, int(at[a]), int(at[b - 1])))
    return out


def pointer_loss(pointer: Pointer, hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each argument's first and last tokens over its own
    prompt's tokens. `spans` rows: (row, prompt's first token, one past its
    last, field, first token of the argument, its last token), positions
    within the row."""
    start, end = pointer.scores(hidden[spans[:, 0]])
    field = spans[:, 3].view(-1, 1, 1).expand(-1, hidden.shape[1], 1)
    start, end = start.gather(2, field).squeeze(2), end.gather(2, field).squeeze(2)
    positions = torch.arange(hidden.shape[1]).unsqueeze(0)
    outside = (positions < spans[:, 1:2]) | (positions >= spans[:, 2:3])
    start = start.masked_fill(outside, float("-inf"))
    end = end.masked_fill(outside | (positions == spans[:, 2:3] - 1), float("-inf"))
    f = torch.nn.functional.cross_entropy
    return f(start, spans[:, 4]) + f(end, spans[:, 5])


class Pointed:
    """What a pointer says of one prompt: how well each value of an argument
    is placed, as the log-probability of its best occurrence's first and
    last tokens among the request's."""

    def __init__(self, pointer: Pointer, hidden: torch.Tensor, offsets: list[tuple[int, int]], prompt: str) -> None:
        begin, end = _request(prompt)
        at = _tokens(offsets, len(prompt))
        first, last = at[begin], at[max(begin, end - 1)]
        with torch.inference_mode():
            start, stop = (s[first:last + 1].float().log_softmax(0).cpu().numpy() for s in pointer.scores(hidden))
        self._start, self._end, self._first, self._at, self._prompt = start, stop, first, at, prompt

    def score(self, tool: str, name: str, value: object) -> float:
        field = INDEX.get((tool, name))
        if field is None:
            return 0.0
        tokens = [(self._at[a] - self._first, self._at[b - 1] - self._first) for a, b in places(self._prompt, value)]
        return max((float(self._start[s, field] + self._end[e, field]) for s, e in tokens
                    if 0 <= s <= e < len(self._start)), default=float("-inf"))


def pointed_schema(schema: dict[str, Any], pointed: Pointed, request: str) -> dict[str, Any]:
    """The answer's schema with each pointed argument of each tool narrowed
    to one value: a run of words to the run placed best; the numbers
    together, the best placed that the request holds often enough (agents.grounding.assigned)."""
    schema = copy.deepcopy(schema)
    capacity = occurrences(request)
    for alt in schema.get("anyOf", []):
        tool = TOOLS.get(alt["properties"].get("tool", {}).get("const"))
        props = alt["properties"].get("args", {}).get("properties", {})
        if tool is None:
            continue
        runs = set(span_fields(tool.args))
        numbers = {}
        for name in pointed_fields(tool.args):
            values = props.get(name, {}).get("enum")
            if not values:
                continue
            scores = {v: pointed.score(tool.name, name, v) for v in values}
            if name in runs:
                props[name]["enum"] = [max(values, key=scores.__getitem__)]
            else:
                numbers[name] = scores
        for name, value in assigned(numbers, capacity).items():
            props[name]["enum"] = [value]
    return schema

