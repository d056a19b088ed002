"""The node's alerts in publication order, with their review state: what the
gRPC service streams, lists and lets analysts acknowledge or resolve.

It is rebuilt from the audit log at start, so a client that resumes after a
node restart misses nothing; reviews are audited before they take effect."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from guard import audit
from common.verdicts import Severity
from guard.alerts import Alert



class UnknownAlert(KeyError):
    pass


@dataclass
class Review:
    status: str = "open"  # open, acknowledged, resolved
    analyst: str = ""
    comment: str = ""


@dataclass(frozen=True)
class Filters:
    severity: str = ""  # this severity or higher
    sandbox: str = ""
    agent: str = ""
    status: str = ""
    text: str = ""
    limit: int = 0

    def match_fields(self, severity: str, sandbox: str, agent: str, status: str, detector: str, rule: str,
                     comment: str) -> bool:
        """The one filter, for the service's alerts and the TUI's messages alike."""
        if self.severity and Severity(severity).rank < Severity(self.severity).rank:
            return False
        if self.sandbox and self.sandbox not in sandbox:
            return False
        if self.agent and agent != self.agent:
            return False
        if self.status and status != self.status:
            return False
        if self.text:
            return self.text.lower() in " ".join([rule, sandbox, agent, detector, comment]).lower()
        return True

    def match(self, alert: Alert, review: Review) -> bool:
        return self.match_fields(alert.severity, alert.sandbox, alert.agent or "", review.status, alert.detector,
                                 alert.rule, review.comment)


class AlertStore:
    """Thread-safe; `add` is a guard sink (the guard audits alerts itself)."""

    def __init__(self, log: audit.AuditLog) -> None:
        self.log = log
        self._alerts: list[Alert] = []
        self._index: dict[str, int] = {}
        self._reviews: dict[str, Review] = {}
        self._changed = threading.Condition()
        if log.path.exists() and log.path.stat().st_size:
            self._replay(log.path)

    def _replay(self, path: Path) -> None:
        for record in audit.records(path):
            if record["kind"] == "alert":
                self._append(Alert.model_validate(record["body"]))
            elif record["kind"] in ("acknowledge", "resolve") and record["body"].get("alert_id") in self._index:
                body = record["body"]
                self._reviews[body["alert_id"]] = Review(body["status"], body["analyst"], body["comment"])

    def _append(self, alert: Alert) -> None:
        self._index[alert.id] = len(self._alerts)
        self._alerts.append(alert)

    def add(self, alert: Alert) -> None:
        with self._changed:
            if alert.id not in self._index:
                self._append(alert)
                self._changed.notify_all()

    def __len__(self) -> int:
        return len(self._alerts)

    def get(self, seq: int) -> tuple[Alert, Review]:
        alert = self._alerts[seq]
        return alert, self._reviews.get(alert.id, Review())

    def position_after(self, alert_id: str) -> int:
        """The sequence number that follows an alert; 0 for the empty id."""
        if not alert_id:
            return 0
        if alert_id not in self._index:
            raise UnknownAlert(alert_id)
        return self._index[alert_id] + 1

    def wait_beyond(self, seq: int, timeout: float) -> bool:
        """Wait until an alert at `seq` exists; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._alerts) > seq, timeout)

    def review(self, alert_id: str, status: str, analyst: str, comment: str) -> int:
        """Acknowledge or resolve an alert; audited first. Returns its seq."""
        if alert_id not in self._index:
            raise UnknownAlert(alert_id)
        kind = {"acknowledged": "acknowledge", "resolved": "resolve"}[status]
        self.log.append(kind, {"alert_id": alert_id, "status": status, "analyst": analyst, "comment": comment})
        with self._changed:
            self._reviews[alert_id] = Review(status, analyst, comment)
            self._changed.notify_all()
        return self._index[alert_id]

    def select(self, filters: Filters) -> list[int]:
        """Sequence numbers of the matching alerts, newest first."""
        found = [i for i in range(len(self._alerts) - 1, -1, -1) if filters.match(*self.get(i))]
        return found[: filters.limit] if filters.limit > 0 else found
