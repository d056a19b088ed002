"""The attack corpus under the corpus policy: every attack is stopped, with
the denial (and, for violations, the kill) on record; benign tools succeed
under the same policy."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebpf.sensor import Sensor
from sandbox.manager import SandboxManager
from sandbox.policy import Policy
from sandbox.result import STOPPED_EXIT, SandboxResult
from tests.attacks import BENIGN, HERE, allowed_api, command, corpus_policy

# attack -> (the denial kind on record, whether the policy's kill must follow)
ATTACKS = {
    "tcp_exfil.py": ("egress", True),
    "dns_exfil.py": ("egress", True),
    "reverse_shell.py": ("egress", True),
    "read_shadow.py": ("open", False),
    "read_root.py": ("open", False),
    "write_outside.py": ("open", False),
    "ptrace.py": ("syscall", True),
    "kernel_module.py": ("syscall", True),
    "user_namespace.py": ("syscall", True),
    "io_uring.py": ("syscall", True),
    "raw_socket.py": ("syscall", False),
    "mount.py": ("syscall", True),
    "bpf.py": ("syscall", True),
    "memfd_exec.py": ("syscall", True),
}


@pytest.fixture(scope="module")
def manager(sensor: Sensor) -> Iterator[SandboxManager]:
    m = SandboxManager(sensor)
    yield m
    m.close()


@pytest.fixture(scope="module")
def api_port() -> Iterator[int]:
    with allowed_api() as port:
        yield port


@pytest.fixture(scope="module")
def policy(api_port: int) -> Policy:
    return corpus_policy(api_port)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """Where exfiltration would land; it must receive nothing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        s.settimeout(0.2)
        yield s


def _nothing_arrived(listener: socket.socket) -> bool:
    try:
        listener.accept()
    except TimeoutError:
        return True
    return False


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_stopped_and_on_record(
    attack: str, manager: SandboxManager, policy: Policy, listener: socket.socket
) -> None:
    kind, killed = ATTACKS[attack]
    result = manager.run(command(HERE / attack, [str(listener.getsockname()[1])]), policy)

    assert [d for d in result.denials if d.kind == kind], f"no {kind} denial on record: {result.denials}"
    if killed:
        assert result.stopped_by is not None and result.stopped_by.startswith(f"{kind} violation")
        assert result.exit_status == STOPPED_EXIT
        assert any(a.startswith("kill:") for a in result.actions)
        assert result.verdict == "kill"
    else:
        assert result.exit_status != 0, f"the attack succeeded: {result.stdout}"
    assert _nothing_arrived(listener)
    assert result.events_lost == 0


def test_write_outside_left_no_file(manager: SandboxManager, policy: Policy) -> None:
    manager.run(command(HERE / "write_outside.py"), policy)
    assert not Path("/etc/bastion-pwned").exists()
    assert not Path("/tmp/bastion-pwned").exists()


def test_fork_bomb_is_contained(manager: SandboxManager, policy: Policy) -> None:
    result = manager.run(command(HERE / "fork_bomb.sh"), policy, timeout=3)
    refused = [d for d in result.denials if d.kind == "pids"]
    assert refused, result.denials
    assert result.stopped_by == "wall timeout of 3s"
    assert result.exit_status == STOPPED_EXIT


def _benign(manager: SandboxManager, policy: Policy, cmd: list[str]) -> SandboxResult:
    result = manager.run(cmd, policy)
    assert result.exit_status == 0, result.stderr
    assert result.stopped_by is None and result.actions == []
    assert [d for d in result.denials if d.kind in ("egress", "syscall")] == []
    return result


def test_benign_json_and_csv(manager: SandboxManager, policy: Policy) -> None:
    assert _benign(manager, policy, command(BENIGN / "json_csv.py")).stdout.strip() == "11.5"


def test_benign_sqlite(manager: SandboxManager, policy: Policy) -> None:
    assert _benign(manager, policy, command(BENIGN / "sqlite.py")).stdout.strip() == "8.0"


def test_benign_http_get_to_the_allowed_api(manager: SandboxManager, policy: Policy, api_port: int) -> None:
    out = _benign(manager, policy, command(BENIGN / "http_get.py", [str(api_port)])).stdout
    assert out.strip() == "hello from the allowed API"


def test_benign_allowed_binary(manager: SandboxManager, policy: Policy) -> None:
    result = _benign(manager, policy, ["/usr/bin/sort", "/etc/hostname", "/etc/debian_version"])
    assert Path("/etc/debian_version").read_text().strip() in result.stdout
