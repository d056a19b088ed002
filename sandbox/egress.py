"""Turn a policy's network allowlist into the kernel's egress rules."""

from __future__ import annotations

from ebpf.sensor import PROTO_TCP, PROTO_UDP, EgressRule
from sandbox.policy import Network, Protocol

_PROTOS = {Protocol.TCP: PROTO_TCP, Protocol.UDP: PROTO_UDP, Protocol.ANY: PROTO_TCP | PROTO_UDP}

# glibc asks nscd before every name lookup and falls back on any error: these
# are refused like every unnamed unix socket, but without an event, so that
# resolving a name is not a violation.
LIBC_PROBE_SOCKETS = ("/var/run/nscd/socket", "/run/nscd/socket")


def compile_rules(network: Network) -> list[EgressRule]:
    """One rule per network, hostnames resolved now. The kernel's trie finds
    only the longest matching prefix, so each rule also carries the ports and
    protocols of every network that contains it."""
    entries = [(net, tuple(d.ports), _PROTOS[d.protocol]) for d in network.destinations() for net in d.networks()]
    rules: dict[object, EgressRule] = {}
    for net, _, _ in entries:
        covering = [(p, pr) for other, p, pr in entries if other.version == net.version and net.subnet_of(other)]
        any_port = any(not p for p, _ in covering)
        ports = () if any_port else tuple(sorted({port for p, _ in covering for port in p}))
        protos = 0
        for _, pr in covering:
            protos |= pr
        rules[net] = EgressRule(network=net, ports=ports, protos=protos)
    return list(rules.values())


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
