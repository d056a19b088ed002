"""The one vocabulary of what is done about a run, and how severe it is.

Policies name verdicts, the guard decides them, the sandbox's Enforcer
applies them, the run's result and the agent's tool outcome carry them, and
the console sorts by their severity: all with these two ordered types."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Verdict(StrEnum):
    """Weakest first: a run's verdict is the strongest one taken."""

    ALLOW = "allow"
    ALERT = "alert"  # on record for an analyst; nothing is stopped
    DENY = "deny"  # the kernel refused the act; the run goes on
    QUARANTINE = "quarantine"  # all egress denied from that instant
    FREEZE = "freeze"
    KILL = "kill"

    @property
    def rank(self) -> int:
        return _VERDICTS.index(self)

    @property
    def enforced(self) -> bool:
        """Whether the Enforcer has to act on the sandbox."""
        return self.rank >= Verdict.QUARANTINE.rank

    @property
    def severity(self) -> Severity:
        return _SEVERITY_OF[self]

    @classmethod
    def strongest(cls, verdicts: Iterable[Verdict]) -> Verdict:
        return max(verdicts, key=lambda v: v.rank, default=cls.ALLOW)


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITIES.index(self)


_VERDICTS = list(Verdict)
_SEVERITIES = list(Severity)
_SEVERITY_OF = {
    Verdict.ALLOW: Severity.LOW,
    Verdict.ALERT: Severity.MEDIUM,
    Verdict.DENY: Severity.MEDIUM,
    Verdict.QUARANTINE: Severity.HIGH,
    Verdict.FREEZE: Severity.HIGH,
    Verdict.KILL: Severity.CRITICAL,
}
