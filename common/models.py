"""Untrusted YAML or JSON into a pydantic model, with every failure one line
that names the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from common.files import InputError, parse_json, parse_yaml, read_text

M = TypeVar("M", bound=BaseModel)
MAX_DOCUMENT_BYTES = 1 << 20


class ModelError(ValueError):
    """A document that is not a valid model; the message names the source and field."""


def field_error(source: str, exc: ValidationError) -> ModelError:
    """The most specific of pydantic's errors, as `source: field a.b: why`."""
    err = max(exc.errors(), key=lambda e: len(e["loc"]))
    # drop pydantic's union tags (literal['none'], Network) from the path
    parts = [str(p) for p in err["loc"] if not (isinstance(p, str) and (p[:1].isupper() or "[" in p))]
    where = ".".join(parts) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    return ModelError(f"{source}: field {where}: {msg}")


def parse_model(model: type[M], text: str, source: str, fmt: str = "yaml") -> M:
    """A model from YAML or JSON text; an empty YAML document is all defaults."""
    try:
        data = parse_yaml(text, source) if fmt == "yaml" else parse_json(text, source)
    except InputError as exc:
        raise ModelError(str(exc)) from None
    if data is None and fmt == "yaml":
        data = {}
    if not isinstance(data, dict):
        raise ModelError(f"{source}: expected a mapping of fields, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise field_error(source, exc) from None


def load_model(model: type[M], path: Path | str, fmt: str = "yaml", limit: int = MAX_DOCUMENT_BYTES) -> M:
    """A model from a file: a regular file of at most `limit` bytes."""
    try:
        text = read_text(path, limit)
    except InputError as exc:
        raise ModelError(str(exc)) from None
    return parse_model(model, text, str(path), fmt)
