"""The kernel's view of API rules: the hash it compares path segments and
host names by, the method and reason codes of api.bpf.c, and one
destination's rules as the sensor loads them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

API_SEGS = 8
API_RULES = 16
API_DESTS_MAX = 31  # destination ids are bits of a word in api_peers, 1..31
API_ANY_SEGMENT = 0
API_NO_LIMIT = 0xFFFFFFFF

METHODS = {"GET": 1, "HEAD": 2, "POST": 3, "PUT": 4, "DELETE": 5, "PATCH": 6, "OPTIONS": 7}
METHOD_NAMES = {code: name for name, code in METHODS.items()}
REASONS = {
    0: "allowed",
    1: "no API rule of the destination allows it",
    2: "the body is larger than the rule's max_body_bytes",
    3: "the path is not in normal form",
    4: "the Host header names another destination",
    5: "not an HTTP/1.x request Bastion can read",
    6: "TLS bytes that no readable, allowed request wrote",
    7: "an endpoint the profile never saw: held for the guard",
    8: "the sandbox is quarantined",
    9: "more calls to a learned endpoint than its budget: judged by the guard",
    10: "TLS bytes written as the body of a request made on another connection",
    11: "a send made to wait for its connection's handshake, which would leave before the API checks see it",
    12: "a connection the API checks could not take (their socket map is full): the sandbox is quarantined",
    13: ("TLS records from a sandbox whose program asked its TLS library to call it back from inside its calls, "
         "where what it sends cannot be told from the library's own records"),
    14: ("a TLS write after one that did not go out on the same connection, not that write again: the library "
         "sends the records it kept of that one first"),
    15: ("a TLS write that did not go out, which the kernel could not keep to check the write that sends its records "
         "(8 at a time in a process; or a forked child's copy)"),
    16: ("a body on a GET, HEAD, DELETE or OPTIONS request whose rule sets no max_body_bytes: a server may read "
         "none there, and take it for the next request"),
    17: "a TLS ClientHello Bastion cannot read, or one whose server name is encrypted (ECH)",
    18: "the TLS server name (SNI) names no API destination at this address and port",
    19: "a TLS request whose Host names another destination than its connection's server name (SNI)",
    20: ("a TLS request whose bytes changed in memory after the kernel judged them: the library would send "
         "other bytes than those judged"),
    21: "a TLS request the kernel could not keep to compare with what the library sends (2,048 writes at once)",
}
API_ALLOW, API_STOP, API_HOLD = 1, 2, 3
OVER_BUDGET = REASONS[9]
ID_SEGMENT = 1
ID_MIN_HEX = 8
_HEXISH = frozenset(b"0123456789abcdefABCDEF-")
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def fnv1a(data: bytes) -> int:
    """FNV-1a 64, as api.bpf.c computes it byte by byte."""
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def host_hash(host: str) -> int:
    return fnv1a(host.lower().encode())


def describe_request(method: str, host: str, target: str, tls: bool, port: int) -> str:
    """`POST records.example.org/export`, or what was sent where no request could be read."""
    if method:
        return f"{method} {host}{target}"
    if host:  # a ClientHello's server name
        return f"(TLS to {host} at port {port})"
    if not port:  # stopped before a socket was known: a TLS write, or a send waiting for its connection
        return "(a TLS write)" if tls else "(a send on a connection not yet made)"
    return f"({'TLS' if tls else 'plain'} bytes to port {port})"


def is_id(segment: bytes) -> bool:
    """A number, or a long hex id (a UUID): one of many of its kind."""
    digits = sum(48 <= b <= 57 for b in segment)
    return digits == len(segment) or (len(segment) >= ID_MIN_HEX and digits > 0
                                      and all(b in _HEXISH for b in segment))


def path_segments(target: str) -> list[str]:
    """The path's segments, without the query."""
    path = target.split("?", 1)[0]
    return [s for s in path.split("/") if s]


def template(target: str) -> str:
    """The path with ids generalised: /records/17?x=1 -> /records/{}."""
    return "/" + "/".join("{}" if is_id(s.encode()) else s for s in path_segments(target))


def endpoint_hash(method: str, target: str) -> int:
    """The endpoint's hash as api.bpf.c computes it from a request (or
    from its template)."""
    h = ((_FNV_OFFSET ^ METHODS[method]) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    for seg in path_segments(target):
        raw = seg.encode()
        word = ID_SEGMENT if seg == "{}" or is_id(raw) else fnv1a(raw)  # "{}": a template's id
        h = ((h ^ word) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


@dataclass(frozen=True, slots=True)
class KernelApiRule:
    """One rule: methods as a bitmap of METHODS codes, one hash per path
    segment (API_ANY_SEGMENT for a `{name}`), and whether further segments
    may follow."""

    methods: int
    segments: tuple[int, ...]
    tail: bool = False
    max_body: int = API_NO_LIMIT


@dataclass(frozen=True, slots=True)
class KernelApiDest:
    """A destination with API rules: the sockets' peers it is reached at, the
    Host header (name and ports) a request to it must carry, its rules."""

    id: int
    host: str
    peers: tuple[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int], ...]
    ports: tuple[int, ...]
    rules: tuple[KernelApiRule, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.id <= API_DESTS_MAX:
            raise ValueError(f"destination {self.host}: id {self.id} is outside 1..{API_DESTS_MAX}")
        if not 1 <= len(self.rules) <= API_RULES:
            raise ValueError(f"destination {self.host}: between 1 and {API_RULES} API rules, not {len(self.rules)}")
        for rule in self.rules:
            if len(rule.segments) > API_SEGS:
                raise ValueError(f"destination {self.host}: a path of at most {API_SEGS} segments")
