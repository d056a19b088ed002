"""Grounded arguments: a tool argument marked as copied (identifiers, codes,
numbers, quoted text) must be a value found in the request or in an earlier
tool result of the same task. The answer's schema is narrowed to those
values, so a constrained decoder can only copy them; every call is checked
against them too, so no backend can invent one."""

from __future__ import annotations

import copy
import functools
import re
from collections import Counter
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, TypeAdapter, ValidationError

COPIED = {"copied": True}  # a field's json_schema_extra: its value is copied from the task

NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w]|\.\d)")
_WORD = re.compile(r"\S+")
_POSSESSIVE = re.compile(r"['’]s$")
_EDGES = "\"'()[]{}<>,.;:!?"
MAX_SPAN_WORDS = 64  # quoted text longer than this is not copied from the task
MAX_ENUM = 1024  # more values than this are checked after decoding, not given to the decoder


def copied_fields(args: type[BaseModel]) -> list[str]:
    return [name for name, f in args.model_fields.items() if f.json_schema_extra == COPIED]


@functools.cache
def _adapter(args: type[BaseModel], name: str) -> TypeAdapter[Any]:
    field = args.model_fields[name]
    return TypeAdapter(Annotated[field.annotation, field])


def _valid(args: type[BaseModel], name: str, value: object) -> bool:
    try:
        _adapter(args, name).validate_python(value, strict=True)
    except ValidationError:
        return False
    return True


def _words(context: str) -> list[str]:
    """Each whitespace-separated word, also without the punctuation around
    it or a possessive ("P40213's chart" names patient P40213)."""
    out = []
    for m in _WORD.finditer(context):
        w = m[0]
        out += [w, w.strip(_EDGES), w.rstrip(_EDGES), _POSSESSIVE.sub("", w.strip(_EDGES))]
    return out


def _spans(context: str) -> list[str]:
    """Every run of whole words, as written and without the punctuation at
    its end; where that would be too many for the decoder, only the runs
    that end where a clause does (punctuation or the end of a line)."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(context)]
    ends = {i for i, (_, end) in enumerate(words)
            if context[end - 1] in _EDGES or end == len(context) or context[end] == "\n"}
    n = len(words)
    if 2 * sum(min(MAX_SPAN_WORDS, n - i) for i in range(n)) <= MAX_ENUM:  # a request of up to ~30 words
        ends = set(range(n))
    out = []
    for i, (start, _) in enumerate(words):
        for j in range(i, min(i + MAX_SPAN_WORDS, n)):
            if j in ends:
                text = context[start:words[j][1]]
                out += [text, text.rstrip(_EDGES)]
    return out


def occurrences(context: str) -> Counter[float]:
    """How often each number appears in the context: how many arguments may copy it."""
    return Counter(float(n) for n in NUMBER.findall(context))


@functools.cache
def _schema(args: type[BaseModel]) -> dict[str, Any]:
    return args.model_json_schema()


def _kind(args: type[BaseModel], name: str) -> str:
    prop = _schema(args)["properties"][name]
    kinds = {prop.get("type")} | {alt.get("type") for alt in prop.get("anyOf", [])}
    if "integer" in kinds:
        return "integer"
    if "number" in kinds:
        return "number"
    return "word" if "pattern" in prop else "run"  # an identifier or a code; or free text


def span_fields(args: type[BaseModel]) -> list[str]:
    """The copied fields whose value is a run of the context's words (a note, a document)."""
    return [name for name in copied_fields(args) if _kind(args, name) == "run"]


def pointed_fields(args: type[BaseModel]) -> list[str]:
    """The copied fields a model must find in the request rather than
    recognise: numbers, bound to a field by what names them, and runs of
    words. (Identifiers and codes have a shape of their own.)"""
    return [name for name in copied_fields(args) if _kind(args, name) != "word"]


def candidates(args: type[BaseModel], name: str, context: str) -> list[object]:
    """The values of a copied field that the context holds and the field accepts, in order of appearance."""
    kind = _kind(args, name)
    raw: list[object]
    if kind == "integer":
        raw = [int(n) for n in NUMBER.findall(context) if "." not in n]
    elif kind == "number":
        raw = [float(n) for n in NUMBER.findall(context)]
    elif kind == "word":
        raw = _words(context)
    else:
        raw = _spans(context)
    return [v for v in dict.fromkeys(raw) if v != "" and _valid(args, name, v)]


def narrowed(args: type[BaseModel], context: str) -> dict[str, Any] | None:
    """The arguments' JSON schema with each copied field limited to the
    context's values; None when a required copied field has none."""
    schema = copy.deepcopy(_schema(args))
    required = set(schema.get("required", []))
    for name in copied_fields(args):
        values = candidates(args, name, context)
        if len(values) > MAX_ENUM:
            continue
        if values:
            schema["properties"][name] = {"enum": values}
        elif name in required:
            return None
        else:
            del schema["properties"][name]
    return schema


def ungrounded(args: BaseModel, context: str) -> str | None:
    """The first copied field whose value the context does not hold, with why."""
    for name in copied_fields(type(args)):
        value = getattr(args, name)
        if value is not None and value not in candidates(type(args), name, context):
            return f"args.{name}: {value!r} is not in the request or an earlier result"
    return None


def assigned(scores: dict[str, dict[object, float]], room: Counter[float]) -> dict[str, object]:
    """The values of the number fields with the highest total score, each
    number used at most as often as the request holds it (one that only an
    earlier result holds, by any field); a field left without one keeps its
    own likeliest."""
    from scipy.optimize import linear_sum_assignment  # only where numbers are decoded

    names = list(scores)
    slots = [v for v in dict.fromkeys(float(v) for s in scores.values() for v in s)
             for _ in range(room.get(v) or len(names))]
    cost = np.full((len(names), len(slots)), np.inf)
    for i, name in enumerate(names):
        for j, v in enumerate(slots):
            if v in scores[name]:
                cost[i, j] = -scores[name][v]
    try:
        rows, cols = linear_sum_assignment(cost)
    except ValueError:  # no assignment fills every field
        return {}
    return {names[i]: next(v for v in scores[names[i]] if v == slots[j]) for i, j in zip(rows, cols)}
