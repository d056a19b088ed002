"""What a sandbox run produced: the boundary model printed by
`bastion sandbox run --json` and returned to agents."""

from __future__ import annotations

from pydantic import BaseModel, Field

from common.api_calls import ApiRequest
from common.verdicts import Verdict
from ebpf.api import describe_request
from sandbox.status import STOPPED_EXIT, exit_status

__all__ = ["STOPPED_EXIT", "ApiCall", "Denial", "SandboxResult"]



class Denial(BaseModel):
    """Something the sandbox refused, with the evidence the kernel gave."""

    kind: str = Field(description="egress, api, syscall, open, exec or pids")
    detail: str
    ts_ns: int = 0
    pid: int = 0


class ApiCall(ApiRequest):
    """One HTTP request the kernel read on its way out, and what it decided."""

    def line(self) -> str:
        return f"{describe_request(self.method, self.host, self.path, self.tls, self.port)}: {self.reason}"


class SandboxResult(BaseModel):
    sandbox: str
    command: list[str]
    labels: dict[str, str] = Field(default_factory=dict)
    exit_code: int | None = None
    signal: int | None = None
    stopped_by: str | None = Field(None, description="why Bastion stopped it: timeout, violation, event loss, ...")
    verdict: Verdict = Field(Verdict.ALLOW, description="the strongest verdict taken on the run")
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_s: float = 0.0
    cpu_s: float = 0.0
    memory_peak_bytes: int = 0
    syscalls: int = 0
    events_seen: int = 0
    events_lost: int = 0
    opens_repeated: int = Field(0, description="opens of a path already sent (same flags and outcome), "
                                               "counted in the kernel instead of sent")
    denials: list[Denial] = Field(default_factory=list)
    api_calls: list[ApiCall] = Field(default_factory=list)
    actions: list[str] = Field(default_factory=list)

    @property
    def exit_status(self) -> int:
        return exit_status(self.stopped_by, self.signal, self.exit_code)
