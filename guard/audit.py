"""The audit log: append-only JSONL in which every record carries the hash of
the one before, flushed and fsynced before the append returns, so a record
someone has seen is on disk and any edit, removal or reordering shows."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from collections.abc import Iterator
from typing import Any

GENESIS = "0" * 64


class AuditError(ValueError):
    """A broken chain; the message names the first bad record."""


def _digest(prev: str, seq: int, kind: str, body: dict[str, Any]) -> str:
    canonical = json.dumps({"prev": prev, "seq": seq, "kind": kind, "body": body}, sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _tail(path: Path) -> tuple[int, str]:
    """The next sequence number and the last hash of an existing log."""
    seq, last = 0, GENESIS
    for record in records(path):
        seq, last = record["seq"] + 1, record["hash"]
    return seq, last


def records(path: Path) -> Iterator[dict[str, Any]]:
    """Every record of a log, parsed, with its line number as `_line`."""
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise AuditError(f"{path}:{lineno}: record is not valid JSON") from None
            if not isinstance(record, dict) or not {"seq", "prev", "hash", "kind", "body"} <= record.keys():
                raise AuditError(f"{path}:{lineno}: record lacks seq, prev, hash, kind or body")
            record["_line"] = lineno
            yield record


class AuditLog:
    """Appends records to a hash-chained log; safe to share between threads."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._seq, self._last = _tail(self.path) if self.path.exists() else (0, GENESIS)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lock = threading.Lock()

    def append(self, kind: str, body: dict[str, Any]) -> int:
        """Write one record durably; returns its sequence number."""
        return self.append_many(kind, [body])[0]

    def append_many(self, kind: str, bodies: list[dict[str, Any]]) -> list[int]:
        """Write records in order with one fsync; returns their sequence numbers."""
        with self._lock:
            lines, seqs = [], []
            for body in bodies:
                digest = _digest(self._last, self._seq, kind, body)
                record = {"seq": self._seq, "prev": self._last, "kind": kind, "body": body, "hash": digest}
                lines.append(json.dumps(record, separators=(",", ":")) + "\n")
                seqs.append(self._seq)
                self._seq, self._last = self._seq + 1, digest
            os.write(self._fd, "".join(lines).encode())
            os.fsync(self._fd)
            return seqs

    def close(self) -> None:
        os.close(self._fd)


def verify(path: Path | str) -> int:
    """Check the whole chain; returns the number of records or raises
    AuditError naming the first record edited, removed or out of order."""
    path = Path(path)
    if not path.exists():
        raise AuditError(f"{path}: no such audit log")
    expected_seq, prev = 0, GENESIS
    for record in records(path):
        where = f"{path}:{record['_line']}: record seq {record['seq']}"
        if record["seq"] != expected_seq:
            raise AuditError(f"{where}: expected seq {expected_seq}: a record was removed or reordered")
        if record["prev"] != prev:
            raise AuditError(f"{where}: does not follow the record before it (removed or reordered)")
        if _digest(prev, record["seq"], record["kind"], record["body"]) != record["hash"]:
            raise AuditError(f"{where}: its content does not match its hash (edited)")
        expected_seq, prev = expected_seq + 1, record["hash"]
    return expected_seq


def read(path: Path | str, kind: str | None = None) -> list[dict[str, Any]]:
    """The bodies of the records, optionally of one kind."""
    return [r["body"] for r in records(Path(path)) if kind is None or r["kind"] == kind]
