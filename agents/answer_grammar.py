"""The grammar of an answer for constrained decoding (xgrammar, the engine
vLLM uses): LEAD, then JSON that the answer's schema allows, written exactly
as the models were trained to write it (json.dumps: its separators, its
numbers, keys in the schema's order).

xgrammar's own JSON-schema grammar would write the enum value 39.1 as
39.100000000000001 and 4575.0 as 4575, numbers a model that copies digits
never saw; so enums, constants and objects are built here, and only the
other leaves (free strings, patterns, arrays) are left to xgrammar."""

from __future__ import annotations

import json
from typing import Any

import xgrammar
from xgrammar import Grammar

from agents.prompt import LEAD, SEPARATORS

_COMMA, _COLON = SEPARATORS
MAX_ANSWER_CHARS = 4096  # far more than the agents' max_tokens can write


def _literal(*texts: str) -> Grammar:
    """Exactly one of the texts; one rule, however many (an enum of quoted spans can hold hundreds)."""
    return Grammar.from_ebnf("root ::= " + " | ".join(json.dumps(t) for t in texts))


def _optional(g: Grammar) -> Grammar:
    return Grammar.union(g, _literal(""))


def _object(schema: dict[str, Any]) -> Grammar | None:
    """Each property in order; the optional ones may be left out. None when
    no property is required (left to xgrammar)."""
    required = set(schema.get("required", ()))
    fields = [(Grammar.concat(_literal(json.dumps(name) + _COLON), value(prop)), name in required)
              for name, prop in schema["properties"].items()]
    first = next((i for i, (_, req) in enumerate(fields) if req), None)
    if first is None:
        return None
    parts = [_literal("{")]
    parts += [_optional(Grammar.concat(f, _literal(_COMMA))) for f, _ in fields[:first]]
    parts.append(fields[first][0])
    for f, req in fields[first + 1:]:
        item = Grammar.concat(_literal(_COMMA), f)
        parts.append(item if req else _optional(item))
    parts.append(_literal("}"))
    return Grammar.concat(*parts)


def value(schema: dict[str, Any]) -> Grammar:
    """The grammar of one JSON value the schema allows."""
    if "anyOf" in schema:
        return Grammar.union(*(value(s) for s in schema["anyOf"]))
    if "enum" in schema or "const" in schema:
        return _literal(*(json.dumps(v) for v in schema.get("enum", [schema.get("const")])))
    if schema.get("type") == "object" and schema.get("properties") and (g := _object(schema)) is not None:
        return g
    if schema.get("maxLength", 0) > MAX_ANSWER_CHARS:
        # a bound no answer can reach costs xgrammar a counted repetition to compile (10 ms for 20,000)
        schema = {k: v for k, v in schema.items() if k != "maxLength"}
    return Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, separators=SEPARATORS)


def answer_grammar(schema: dict[str, Any]) -> Grammar:
    """An answer: LEAD, then the JSON. Its EBNF (`str()`) is what vLLM is sent."""
    return Grammar.concat(_literal(LEAD), value(schema))


class AnswerGrammars:
    """Compiles an answer's grammar for one tokenizer into a matcher that
    follows one decoding: which tokens may come next, and which text is
    forced (a key, a closing brace), so the model need not be asked."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                       stop_token_ids=[tokenizer.eos_token_id])
        self._compiler = xgrammar.GrammarCompiler(info)
        self.vocab_size = vocab_size

    def matcher(self, schema: dict[str, Any]) -> xgrammar.GrammarMatcher:
        compiled = self._compiler.compile_grammar(answer_grammar(schema))
        return xgrammar.GrammarMatcher(compiled, terminate_without_stop_token=True)
