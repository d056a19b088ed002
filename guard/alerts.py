"""Alerts: the guard's findings with the verdict taken, the boundary model
written to the audit log and sent to every sink."""

from __future__ import annotations

import time
import uuid
from pydantic import BaseModel, ConfigDict, Field

from common.api_calls import ApiRequest
from common.verdicts import Severity, Verdict


class Evidence(BaseModel):
    """One sensor event behind a finding, in its wire form."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    ts_ns: int
    pid: int
    comm: str = ""
    detail: str = ""


class Alert(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    time: float = Field(default_factory=time.time, description="wall clock, seconds since the epoch")
    sandbox: str
    agent: str | None = None
    step: str | None = Field(None, description="the agent step's correlation id")
    tool_call: str | None = None
    tool_args: str | None = Field(None, max_length=4096, description="the tool call's arguments, as JSON")
    detector: str = Field(description="rule, ngram, frequency or novelty")
    rule: str = Field(description="what was found, in a few words")
    score: float = 0.0
    threshold: float = 0.0
    severity: Severity
    action: Verdict
    evidence: list[Evidence] = Field(default_factory=list, max_length=32)
    event_ts_ns: int = Field(0, description="kernel time of the triggering event")
    enforced_ts_ns: int = Field(0, description="kernel-clock time the action took hold")

    @property
    def latency_ms(self) -> float | None:
        if not self.event_ts_ns or not self.enforced_ts_ns:
            return None
        # an action taken before this event was already in force when it happened
        return max(self.enforced_ts_ns - self.event_ts_ns, 0) / 1e6


class ApiCallRecord(ApiRequest):
    """What became of one API call, with the agent's step that made it: the
    audit log's `api_call` record and the node's stream. `allowed`: the
    request left the sandbox (a held call: once released)."""

    model_config = ConfigDict(extra="forbid")
    seq: int = Field(-1, description="the record's sequence number in its audit log")
    log: str = Field("", description="that log, where not the node's own: the calls log beside it")
    time: float = Field(default_factory=time.time, description="wall clock, seconds since the epoch")
    sandbox: str
    agent: str | None = None
    step: str | None = None
    tool_call: str | None = None
    held: bool = Field(False, description="the kernel held it for the guard's judgement")
