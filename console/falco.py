"""Alerts as Falco-compatible JSON lines, so pipelines built for Falco
(falcosidekick, SIEM rules keyed on priority and rule) ingest them as is."""

from __future__ import annotations

import json
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.verdicts import Severity
from guard.alerts import Alert
from guard.audit import SET_ASIDE
from common.files import open_output

PRIORITY = {
    Severity.LOW: "Notice",
    Severity.MEDIUM: "Warning",
    Severity.HIGH: "Error",
    Severity.CRITICAL: "Critical",
}


def falco_event(alert: Alert, hostname: str | None = None) -> dict[str, Any]:
    when = datetime.fromtimestamp(alert.time, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fields = {
        "bastion.alert_id": alert.id,
        "bastion.sandbox": alert.sandbox,
        "bastion.agent": alert.agent,
        "bastion.step": alert.step,
        "bastion.tool_call": alert.tool_call,
        "bastion.detector": alert.detector,
        "bastion.action": alert.action.value,
        "bastion.score": round(alert.score, 4),
        "bastion.threshold": round(alert.threshold, 4),
        "bastion.latency_ms": alert.latency_ms,
        "proc.pid": alert.evidence[0].pid if alert.evidence else None,
        "proc.name": alert.evidence[0].comm if alert.evidence else None,
        "evt.detail": alert.evidence[0].detail if alert.evidence else None,
    }
    output = (f"{alert.rule} (sandbox={alert.sandbox} agent={alert.agent} step={alert.step} "
              f"detector={alert.detector} action={alert.action.value})")
    return {
        "output": output,
        "priority": PRIORITY[alert.severity],
        "rule": f"bastion {alert.detector}: {alert.rule}",
        "time": when,
        "output_fields": fields,
        "source": "bastion",
        "hostname": hostname or socket.gethostname(),
        "tags": ["bastion", alert.detector, alert.action.value],
    }


class FalcoSink:
    """Appends one Falco JSON line per alert to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open_output(path, "a")
        self._lock = threading.Lock()
        self._host = socket.gethostname()

    def __call__(self, alert: Alert) -> None:
        self._write(falco_event(alert, self._host))

    def head(self, head: dict[str, Any]) -> None:
        """An audit-log head signed by the node: pipelines that ship Falco
        lines off the host keep the evidence that the log was not cut."""
        when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        said = head["head"] if head["covers"] == SET_ASIDE else f"signed through seq {head['covers']}"
        self._write({"output": f"audit log {head['log']} {said}",
                     "priority": "Informational", "rule": "bastion audit checkpoint", "time": when,
                     "output_fields": {f"bastion.audit.{k}": v for k, v in head.items()},
                     "source": "bastion", "hostname": self._host, "tags": ["bastion", "audit"]})

    def _write(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":"))
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        self._fh.close()
