"""One HTTP request the kernel read on its way out of a sandbox, and what it
decided: the fields that the sandbox result and the guard's record share."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ApiRequest(BaseModel):
    method: str = Field(description="empty when the bytes were not a readable request")
    host: str
    path: str
    port: int = 0
    tls: bool = False
    body_bytes: int = 0
    allowed: bool
    reason: str
    ts_ns: int = 0
    pid: int = 0
