"""Shared fixtures. Tests that need root or BPF skip with the reason when
the machine cannot give them; on Bastion's machines none of them skip."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import console  # noqa: F401  (first, before a test imports grpc: it turns gRPC's fork handlers off)

from tests import workloads


def _kernel_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to load BPF programs and manage cgroups"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC is not importable (run `make setup`)"
    return None


@pytest.fixture(scope="session")
def kernel() -> None:
    reason = _kernel_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def sensor(kernel: None) -> Iterator["Sensor"]:  # noqa: F821
    from ebpf.sensor import Sensor

    with Sensor(ngram_n=6) as s:
        yield s


@pytest.fixture
def cgroup(kernel: None) -> Iterator["Cgroup"]:  # noqa: F821
    from sandbox.cgroup import Cgroup

    cg = Cgroup.create(f"test-{uuid.uuid4().hex[:10]}")
    yield cg
    cg.remove()


@pytest.fixture(scope="session")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return workloads.build(tmp_path_factory.mktemp("workload"))


@pytest.fixture
def exfil_sink() -> Iterator[socket.socket]:
    """Where stolen data would land; a test checks that it received nothing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        s.settimeout(0.3)
        yield s


def nothing_arrived(sink: socket.socket) -> bool:
    try:
        sink.accept()
    except TimeoutError:
        return True
    return False


@pytest.fixture(scope="module")
def records_api() -> Iterator["LocalApi"]:  # noqa: F821
    """The records and ledger API on loopback, one per test module."""
    from bastion.local_api import serve

    with serve() as served:
        yield served


@pytest.fixture(scope="module")
def records_policy(records_api: "LocalApi") -> "Policy":  # noqa: F821
    """A tool's policy allowing the records API's endpoints, its CA trusted."""
    from tests.apis import api_policy

    return api_policy(records_api)
