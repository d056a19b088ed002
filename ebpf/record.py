"""Record sensor events to JSONL and replay them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from ebpf.events import EVENT_WIRE, Event
from common.files import InputError, lines, open_output
from common.models import field_error

MAX_EVENTS_BYTES = 4 << 30
MAX_LINE_BYTES = 64 << 10  # an event is under 2 KiB


class EventFileError(ValueError):
    """A malformed events file; the message names the file and line."""


class JsonlWriter:
    """Writes events as JSON lines, one event per line, to a new file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fh: IO[str] = open_output(self.path)
        self.count = 0

    def write(self, events: Iterable[Event]) -> None:
        for ev in events:
            self._fh.write(json.dumps(ev.to_dict(), separators=(",", ":")) + "\n")
            self.count += 1
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: Path | str) -> Iterator[Event]:
    """Replay events from a JSONL file, validating every line."""
    for lineno, line in _lines(Path(path)):
        if not line.strip():
            continue
        try:
            event = EVENT_WIRE.validate_json(line)
        except ValidationError as exc:
            if exc.errors()[0]["type"] == "json_invalid":
                raise EventFileError(f"{path}:{lineno}: not valid JSON") from None
            raise EventFileError(str(field_error(f"{path}:{lineno}", exc))) from None
        yield event


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        yield from lines(path, MAX_EVENTS_BYTES, MAX_LINE_BYTES)
    except InputError as exc:
        raise EventFileError(str(exc)) from None
