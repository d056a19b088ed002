"""Turn a policy's network allowlist into the kernel's egress rules."""

from __future__ import annotations

from ebpf.api import API_ANY_SEGMENT, API_NO_LIMIT, METHODS, KernelApiDest, KernelApiRule, fnv1a
from ebpf.sensor import PROTO_TCP, PROTO_UDP, EgressRule
from sandbox.policy import ApiRule, Network, Protocol

_PROTOS = {Protocol.TCP: PROTO_TCP, Protocol.UDP: PROTO_UDP, Protocol.ANY: PROTO_TCP | PROTO_UDP}

# glibc asks nscd before every name lookup and falls back on any error: these
# are refused like every unnamed unix socket, but without an event, so that
# resolving a name is not a violation.
LIBC_PROBE_SOCKETS = ("/var/run/nscd/socket", "/run/nscd/socket")


def compile_rules(network: Network) -> list[EgressRule]:
    """One rule per network, hostnames resolved now. The kernel's trie finds
    only the longest matching prefix, so each rule also carries the ports of
    every network that contains it, each protocol's apart: DNS to a resolver
    (port 53, TCP and UDP) beside a network allowed TCP 443 must not open
    UDP 443 to the resolver."""
    entries = [(net, tuple(d.ports), _PROTOS[d.protocol]) for d in network.destinations() for net in d.networks()]
    rules: dict[object, EgressRule] = {}
    for net, _, _ in entries:
        covering = [(p, pr) for other, p, pr in entries if other.version == net.version and net.subnet_of(other)]
        tcp, udp = (_merged([p for p, pr in covering if pr & proto]) for proto in (PROTO_TCP, PROTO_UDP))
        rules[net] = EgressRule(network=net, tcp=tcp, udp=udp)
    return list(rules.values())


def _merged(port_lists: list[tuple[int, ...]]) -> tuple[int, ...] | None:
    """One protocol's ports from the entries that allow it: None where none
    does, empty (any port) where one names no ports."""
    if not port_lists:
        return None
    if any(not ports for ports in port_lists):
        return ()
    return tuple(sorted({port for ports in port_lists for port in ports}))


def tcp_ports(network: Network) -> list[int] | None:
    """TCP ports for Landlock's second wall; None when any port is allowed."""
    ports: set[int] = set()
    for d in network.destinations():
        if d.protocol is Protocol.UDP:
            continue
        if not d.ports:
            return None
        ports.update(d.ports)
    return sorted(ports)


def _kernel_rule(rule: ApiRule) -> KernelApiRule:
    segments, tail = rule.segments()
    methods = 0
    for m in rule.methods:
        methods |= 1 << METHODS[m]
    return KernelApiRule(
        methods=methods,
        segments=tuple(API_ANY_SEGMENT if s is None else fnv1a(s.encode()) for s in segments),
        tail=tail,
        max_body=API_NO_LIMIT if rule.max_body_bytes is None else rule.max_body_bytes,
    )


def compile_api(network: Network) -> list[KernelApiDest]:
    """Destinations with API rules as the kernel holds them: reached at each
    resolved address and port, and named in the Host header by the policy's
    host (a name, or the IP as written)."""
    dests = []
    for d in network.allow:
        if not d.api:
            continue
        peers = tuple((net.network_address, port) for net in d.networks() for port in d.ports)
        dests.append(KernelApiDest(id=len(dests) + 1, host=d.host, peers=peers, ports=tuple(d.ports),
                                   rules=tuple(_kernel_rule(r) for r in d.api)))
    return dests
