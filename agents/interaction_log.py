"""The interaction log: every LM call and tool call as local JSONL, redacted,
the first step of turning an LLM agent's work into a specialist SLM's
fine-tuning set (LM records carry `prompt` and `completion`)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agents.redact import Redactor


class InteractionLog:
    def __init__(self, path: Path, redactor: Redactor | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.redact = redactor or Redactor()
        self._fh = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps({"ts": time.time(), **record}, separators=(",", ":"))
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def lm_call(self, *, agent: str, run: str, step: str, route: str, backend: str, task: str, prompt: str,
                completion: str, prompt_tokens: int, completion_tokens: int, latency_s: float) -> None:
        self._write({"type": "lm", "agent": agent, "run": run, "step": step, "route": route, "backend": backend,
                     "task": self.redact(task), "prompt": self.redact(prompt), "completion": self.redact(completion),
                     "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "latency_s": round(latency_s, 4)})

    def tool_call(self, *, agent: str, run: str, step: str, tool: str, args: str, output: str, verdict: str,
                  alerts: list[str], ok: bool) -> None:
        """`ok`: the tool ran and succeeded, unstopped; the call can teach a specialist."""
        self._write({"type": "tool", "agent": agent, "run": run, "step": step, "tool": tool,
                     "args": self.redact(args), "output": self.redact(output[:2000]), "verdict": verdict,
                     "alerts": alerts, "ok": ok})

    def close(self) -> None:
        self._fh.close()


def read_log(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{lineno}: not valid JSON") from None
            if not isinstance(record, dict) or "type" not in record:
                raise ValueError(f"{path}:{lineno}: field 'type' is missing")
            yield record
