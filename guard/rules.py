"""Policy rules: acts that are violations at once, whatever the profile says.

The guard receives them as data (built from the sandbox policy by the caller),
so a security reviewer reads one list of what a tool may touch."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from ebpf.api import describe_request
from ebpf.events import AF_INET, AF_INET6, Event, EventKind
from guard.traces import Behaviour, WORKDIR, destination, path_prefix, took_place

EACCES, EPERM, EAFNOSUPPORT, EPROTONOSUPPORT = 13, 1, 97, 93
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class AllowedDestination(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    network: str = Field(description="CIDR")
    ports: list[int] = Field(default_factory=list, description="empty means any port")


class Rules(BaseModel):
    """What a tool may do; everything else named here is a violation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    binaries: list[str] = Field(description="prefixes a binary may be executed from")
    read_paths: list[str]
    write_paths: list[str]
    denied_paths: list[str] = Field(default_factory=list)
    destinations: list[AllowedDestination] = Field(default_factory=list)

    def destination_allowed(self, addr: str, port: int) -> bool:
        ip = ipaddress.ip_address(addr)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(
            ip in ipaddress.ip_network(d.network, strict=False) and (not d.ports or port in d.ports)
            for d in self.destinations
        )


@dataclass(frozen=True)
class Finding:
    detector: str  # rule, ngram, frequency, novelty
    rule: str
    event: Event | None
    score: float = 0.0
    threshold: float = 0.0


def api_request(ev: Event) -> str:
    return describe_request(ev.method, ev.host, ev.path, ev.tls, ev.port)


def _under(path: str, prefixes: list[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def check(ev: Event, rules: Rules, syscall_name: Callable[[int], str]) -> Finding | None:
    """The violation an event shows, if any."""
    rule: str | None = None
    match ev.kind:
        case EventKind.DENY:
            rule = f"egress to {destination(ev)} refused in the kernel ({ev.hook})"
        case EventKind.API if ev.ret == -EACCES:
            rule = f"API call {api_request(ev)} stopped in the kernel: {ev.reason}"
        case EventKind.SYSCALL if ev.arg:  # seccomp's trap carries no syscall number
            rule = ("denied syscall attempted (trapped by seccomp: one this kernel lacks, one through another ABI, "
                    "or a send of TCP urgent data)")
        case EventKind.SYSCALL if ev.ret in (-EPERM, -EAFNOSUPPORT, -EPROTONOSUPPORT):  # seccomp's refusals
            rule = f"denied syscall {syscall_name(ev.syscall)} attempted"
        case EventKind.EXEC if ev.ret == 0 and not _under(ev.path, rules.binaries):
            rule = f"binary {ev.path} is outside the allowed binaries"
        case EventKind.OPEN if _under(ev.path, rules.denied_paths):
            rule = f"denied path {ev.path} opened ({'refused' if ev.ret < 0 else 'allowed'})"
        case EventKind.OPEN if ev.flags & _WRITE and ev.path.startswith("/") and not _under(ev.path, rules.write_paths):
            rule = f"write to {ev.path} outside the writable paths"
        case EventKind.OPEN if ev.ret == -EACCES and not _under(ev.path, rules.read_paths):
            rule = f"read of {ev.path} outside the readable paths"
        case EventKind.CONNECT | EventKind.SENDTO if ev.family in (AF_INET, AF_INET6) and ev.ret != -EACCES:
            if not rules.destination_allowed(ev.addr, ev.port):
                rule = f"connection to unauthorized destination {ev.addr}:{ev.port}"
        case EventKind.CONNECT | EventKind.SENDTO if ev.ret == -EACCES and ev.family in (AF_INET, AF_INET6):
            rule = f"egress to {destination(ev)} refused in the kernel (landlock)"
    return Finding("rule", rule, ev) if rule else None


def novelty(ev: Event, learned: Behaviour, workdir: str | None) -> Finding | None:
    """A binary, path prefix or destination the profile never saw."""
    if not took_place(ev):
        return None
    match ev.kind:
        case EventKind.EXEC if ev.path not in learned.binaries:
            return Finding("novelty", f"binary {ev.path} never seen in training", ev)
        case EventKind.OPEN if ev.path.startswith("/"):
            prefix = path_prefix(ev.path, workdir)
            if prefix not in learned.path_prefixes and not prefix.startswith(WORKDIR):
                return Finding("novelty", f"path under {prefix} never seen in training", ev)
        case EventKind.CONNECT | EventKind.SENDTO if destination(ev) not in learned.destinations:
            return Finding("novelty", f"destination {destination(ev)} never seen in training", ev)
    return None
