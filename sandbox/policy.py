"""Sandbox policies: what a tool call may do, written in YAML a security
person can review, validated with errors that name the field."""

from __future__ import annotations

import ipaddress
import posixpath
import re
import socket
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.models import ModelError, load_model, parse_model
from common.verdicts import Verdict
from sandbox.seccomp import DEFAULT_DENY

MAX_POLICY_BYTES = 1 << 20
MAX_UNIX_PATH = 100  # the kernel map holds 108 bytes; a longer path could match a truncated one
UID_MAX = (1 << 32) - 2  # (uid_t)-1 means "no change" to the kernel


class PolicyError(ModelError):
    """A policy that cannot be used; the message names the file and field."""


class _Strict(BaseModel):
    # NaN and infinity are refused: either would remove a limit
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Limits(_Strict):
    """Every limit has a ceiling the kernel accepts, so a policy that
    validates also starts."""

    memory_mb: int = Field(512, ge=16, le=1 << 20)
    pids: int = Field(64, ge=1, le=1 << 22)
    cpu_seconds: int = Field(30, ge=1, le=7 * 86400)
    wall_timeout_s: float = Field(60.0, gt=0, le=7 * 86400)
    file_size_mb: int = Field(64, ge=1, le=1 << 20)
    open_files: int = Field(256, ge=16, le=1 << 20)
    output_bytes: int = Field(1 << 20, ge=1024, le=1 << 30, description="cap on captured stdout and on stderr")
    workdir_mb: int = Field(256, ge=1, le=1 << 20, description="size of the fresh workdir (a tmpfs)")
    workdir_files: int = Field(10_000, ge=16, le=1 << 24, description="files and directories the workdir may hold")


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


HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()+,;=:@-]+|\{[A-Za-z_][A-Za-z0-9_]*\}")
MAX_API_SEGMENTS = 8


class ApiRule(_Strict):
    """One endpoint a destination serves to the tool: `{name}` matches one
    path segment, a trailing `/*` any further segments."""

    methods: list[HttpMethod] = Field(min_length=1)
    path: str = Field(description='for example "/records/{id}"')
    # unset: any size on POST, PUT and PATCH, and no body at all on GET, HEAD,
    # DELETE and OPTIONS, where a server may read none and take it for a request
    max_body_bytes: int | None = Field(None, ge=0, le=100_000_000, description="largest Content-Length")

    @field_validator("path")
    @classmethod
    def _template(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"{path!r} does not start with /")
        parts = path[1:].split("/") if path != "/" else []
        if parts and parts[-1] == "*":
            parts = parts[:-1]
        for part in parts:
            if not _SEGMENT.fullmatch(part) or part in (".", ".."):
                raise ValueError(f"{path!r}: segment {part!r} is not a name, a {{name}} or a final *")
        if len(parts) > MAX_API_SEGMENTS:
            raise ValueError(f"{path!r} has more than {MAX_API_SEGMENTS} segments")
        return path

    def segments(self) -> tuple[list[str | None], bool]:
        """The literal segments (None for a `{name}`) and whether `/*` ends it."""
        parts = self.path[1:].split("/") if self.path != "/" else []
        tail = bool(parts) and parts[-1] == "*"
        return [None if p.startswith("{") else p for p in (parts[:-1] if tail else parts)], tail


class Destination(_Strict):
    host: str = Field(description="an IP address, a CIDR, or a hostname resolved at start")
    ports: list[int] = Field(default_factory=list, max_length=8, description="empty means any port")
    protocol: Protocol = Protocol.TCP
    api: list[ApiRule] = Field(default_factory=list, max_length=16,
                               description="when given, the only requests allowed (HTTP/1.x, plain or TLS)")

    @field_validator("ports")
    @classmethod
    def _ports(cls, ports: list[int]) -> list[int]:
        for p in ports:
            if not 1 <= p <= 65535:
                raise ValueError(f"port {p} is outside 1..65535")
        return ports

    @model_validator(mode="after")
    def _api_needs_one_tcp_host(self) -> Destination:
        if self.api:
            if self.protocol is not Protocol.TCP:
                raise ValueError("api: rules need protocol tcp (HTTP/3 over UDP cannot be read)")
            if not self.ports:
                raise ValueError("api: rules need the destination's ports")
            if "/" in self.host:
                raise ValueError("api: rules need one host, not a network: the Host header must name it")
        return self

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

    @field_validator("allow")
    @classmethod
    def _api_hosts_named_once(cls, allow: list[Destination]) -> list[Destination]:
        with_api = [d for d in allow if d.api]
        if len(with_api) > 31:  # the kernel keeps each peer's destinations as bits of a word (ebpf.api)
            raise ValueError(f"at most 31 destinations with API rules, not {len(with_api)}")
        named: set[tuple[str, int]] = set()
        for d in with_api:
            for port in d.ports:
                if (d.host.lower(), port) in named:
                    raise ValueError(f"{d.host} port {port} has API rules in two entries: one Host header "
                                     "cannot answer to two rule lists; merge them")
                named.add((d.host.lower(), port))
        return allow

    def destinations(self) -> list[Destination]:
        """The allowlist with the resolvers' DNS service added."""
        dns = [Destination(host=r, ports=[53], protocol=Protocol.ANY) for r in self.dns_resolvers]
        return self.allow + dns


def _stops(verdict: Verdict) -> Verdict:
    if verdict.rank < Verdict.DENY.rank:
        raise ValueError(f"must be deny, quarantine, freeze or kill, not {verdict.value}")
    return verdict


def _not_deny(verdict: Verdict) -> Verdict:
    if verdict is Verdict.DENY:
        raise ValueError("deny is what the kernel does to a refused act; a departure from the profile "
                         "is allow, alert, quarantine, freeze or kill")
    return verdict


class Response(_Strict):
    """What the guard does when a run departs from the agent's profile;
    policy violations take on_violation."""

    anomaly: Verdict = Field(Verdict.QUARANTINE, description="syscall sequence or mix unlike the profile")
    novelty: Verdict = Field(Verdict.ALERT, description="a binary, path or destination never seen in training")
    api: Verdict = Field(Verdict.QUARANTINE, description="an API call to an endpoint never seen in training, "
                                                         "unlike every call that was")

    _kinds = field_validator("anomaly", "novelty", "api")(_not_deny)


class User(_Strict):
    uid: int = Field(65534, ge=1, le=UID_MAX, description="never 0: sandboxes do not run as root")
    gid: int = Field(65534, ge=1, le=UID_MAX)


class Env(_Strict):
    allow: list[str] = Field(default_factory=lambda: ["PATH", "LANG", "LC_ALL", "TZ"])
    set: dict[str, str] = Field(default_factory=lambda: {"HOME": "/nonexistent"})


class Policy(_Strict):
    name: str = "default"
    limits: Limits = Field(default_factory=Limits)
    filesystem: Filesystem = Field(default_factory=Filesystem)
    network: Literal["none"] | Network = "none"
    unix_sockets: list[str] = Field(default_factory=list, max_length=64,
                                    description="host unix sockets (pathnames) the tool may connect or send to")
    deny_syscalls: list[str] = Field(default_factory=list, description="denied on top of the built-in list")
    env: Env = Field(default_factory=Env)
    user: User = Field(default_factory=User)
    on_violation: Verdict = Field(Verdict.KILL, description="a rule broken: deny (the kernel's refusal "
                                                           "alone), quarantine, freeze or kill")
    on_event_loss: Verdict = Verdict.KILL
    response: Response = Field(default_factory=Response)

    _stopping = field_validator("on_violation", "on_event_loss")(_stops)

    @field_validator("network", mode="before")
    @classmethod
    def _network_form(cls, value: object) -> object:
        if isinstance(value, str) and value != "none":
            raise ValueError(f"must be 'none' or a mapping with allow and dns_resolvers, not {value!r}")
        return value

    @field_validator("unix_sockets")
    @classmethod
    def _socket_paths(cls, paths: list[str]) -> list[str]:
        for p in paths:
            if not p.startswith("/") or posixpath.normpath(p) != p:
                raise ValueError(f"{p!r} is not an absolute path in normal form")
            if len(p.encode()) > MAX_UNIX_PATH:
                raise ValueError(f"{p!r} is longer than {MAX_UNIX_PATH} bytes")
        return paths

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

    def environment(self, parent: dict[str, str]) -> dict[str, str]:
        env = {k: parent[k] for k in self.env.allow if k in parent}
        env.update(self.env.set)
        return env


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    try:
        return parse_model(Policy, text, source)
    except ModelError as exc:
        raise PolicyError(str(exc)) from None


def load_policy(path: Path | str) -> Policy:
    try:
        return load_model(Policy, path, limit=MAX_POLICY_BYTES)
    except ModelError as exc:
        raise PolicyError(str(exc)) from None
