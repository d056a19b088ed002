"""Sandbox policies: what a tool call may do, written in YAML a security
person can review, validated with errors that name the field."""

from __future__ import annotations

import ipaddress
import socket
from enum import StrEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sandbox.seccomp import DEFAULT_DENY


class PolicyError(ValueError):
    """A policy that cannot be used; the message names the file and field."""


class Action(StrEnum):
    DENY = "deny"  # the act fails in the kernel; the sandbox runs on
    QUARANTINE = "quarantine"  # all egress denied from that instant
    FREEZE = "freeze"
    KILL = "kill"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    memory_mb: int = Field(512, ge=16)
    pids: int = Field(64, ge=1)
    cpu_seconds: int = Field(30, ge=1)
    wall_timeout_s: float = Field(60.0, gt=0)
    file_size_mb: int = Field(64, ge=1)
    open_files: int = Field(256, ge=16)
    output_bytes: int = Field(1 << 20, ge=1024, description="cap on captured stdout and on stderr")


class Filesystem(_Strict):
    read_only: list[Path] = Field(
        default_factory=lambda: [Path(p) for p in ("/usr", "/bin", "/lib", "/lib64", "/etc", "/dev/urandom")]
    )
    denied: list[Path] = Field(default_factory=lambda: [Path("/etc/shadow"), Path("/etc/gshadow")])
    workdir: Path | None = Field(None, description="read-write directory; a fresh one when empty")

    @field_validator("read_only", "denied")
    @classmethod
    def _absolute(cls, paths: list[Path]) -> list[Path]:
        for p in paths:
            if not p.is_absolute():
                raise ValueError(f"{p} is not an absolute path")
        return paths


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ANY = "any"


class Destination(_Strict):
    host: str = Field(description="an IP address, a CIDR, or a hostname resolved at start")
    ports: list[int] = Field(default_factory=list, max_length=8, description="empty means any port")
    protocol: Protocol = Protocol.TCP

    @field_validator("ports")
    @classmethod
    def _ports(cls, ports: list[int]) -> list[int]:
        for p in ports:
            if not 1 <= p <= 65535:
                raise ValueError(f"port {p} is outside 1..65535")
        return ports

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        try:
            return [ipaddress.ip_network(self.host, strict=False)]
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(self.host, None)
        except socket.gaierror as exc:
            raise PolicyError(f"network.allow: cannot resolve {self.host!r}: {exc.strerror}") from exc
        return sorted({ipaddress.ip_network(info[4][0]) for info in infos}, key=str)


class Network(_Strict):
    allow: list[Destination] = Field(default_factory=list)
    dns_resolvers: list[str] = Field(default_factory=list, description="DNS (port 53) goes only to these")

    @field_validator("dns_resolvers")
    @classmethod
    def _ips(cls, resolvers: list[str]) -> list[str]:
        for r in resolvers:
            ipaddress.ip_address(r)
        return resolvers

    def destinations(self) -> list[Destination]:
        """The allowlist with the resolvers' DNS service added."""
        dns = [Destination(host=r, ports=[53], protocol=Protocol.ANY) for r in self.dns_resolvers]
        return self.allow + dns


Verdict = Literal["allow", "alert", "quarantine", "freeze", "kill"]


class Response(_Strict):
    """What the guard does when a run departs from the agent's profile;
    policy violations take on_violation."""

    anomaly: Verdict = Field("quarantine", description="syscall sequence or mix unlike the profile")
    novelty: Verdict = Field("alert", description="a binary, path or destination never seen in training")


class User(_Strict):
    uid: int = Field(65534, ge=1, description="never 0: sandboxes do not run as root")
    gid: int = Field(65534, ge=1)


class Env(_Strict):
    allow: list[str] = Field(default_factory=lambda: ["PATH", "LANG", "LC_ALL", "TZ"])
    set: dict[str, str] = Field(default_factory=lambda: {"HOME": "/nonexistent"})


class Policy(_Strict):
    name: str = "default"
    limits: Limits = Field(default_factory=Limits)
    filesystem: Filesystem = Field(default_factory=Filesystem)
    network: Literal["none"] | Network = "none"
    deny_syscalls: list[str] = Field(default_factory=list, description="denied on top of the built-in list")
    env: Env = Field(default_factory=Env)
    user: User = Field(default_factory=User)
    on_violation: Action = Action.KILL
    on_event_loss: Action = Action.KILL
    response: Response = Field(default_factory=Response)

    @field_validator("network", mode="before")
    @classmethod
    def _network_form(cls, value: object) -> object:
        if isinstance(value, str) and value != "none":
            raise ValueError(f"must be 'none' or a mapping with allow and dns_resolvers, not {value!r}")
        return value

    @field_validator("deny_syscalls")
    @classmethod
    def _known_syscalls(cls, names: list[str]) -> list[str]:
        from sandbox.seccomp import SeccompError, resolve

        for name in names:
            try:
                resolve(name)
            except SeccompError as exc:
                raise ValueError(str(exc)) from None
        return names

    @property
    def denied_syscalls(self) -> list[str]:
        return list(dict.fromkeys([*DEFAULT_DENY, *self.deny_syscalls]))

    @property
    def isolated_network(self) -> bool:
        return self.network == "none"

    def environment(self, parent: dict[str, str]) -> dict[str, str]:
        env = {k: parent[k] for k in self.env.allow if k in parent}
        env.update(self.env.set)
        return env


def _field_error(source: str, exc: ValidationError) -> PolicyError:
    err = max(exc.errors(), key=lambda e: len(e["loc"]))  # the most specific place
    # drop pydantic's union tags (literal['none'], Network) from the path
    parts = [str(p) for p in err["loc"] if not (isinstance(p, str) and (p[:1].isupper() or "[" in p))]
    where = ".".join(parts) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    return PolicyError(f"{source}: field {where}: {msg}")


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise PolicyError(f"{source}:{line} not valid YAML") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy is a mapping of fields, not {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise _field_error(source, exc) from None


def load_policy(path: Path | str) -> Policy:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"{path}: {exc.strerror}") from None
    return parse_policy(text, str(path))
