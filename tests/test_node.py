"""A real guard node (sensor, guard, sandboxes) serving a client over its
unix socket: a sandboxed run's alert reaches the stream, Falco and the audit
log; its API calls reach their own stream."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from bastion.local_api import LocalApi
from bastion.node import Node, NodeConfig
from guard import audit
from console.client import NodeClient
from console.proto import bastion_pb2 as pb
from tests.apis import LABELS, api_policy_yaml, base, http_request_command
from tests.attacks import HERE, POLICY, command

T = TypeVar("T")


@pytest.fixture
def node(kernel: None, tmp_path: Path) -> Iterator[Node]:
    config = NodeConfig(local=f"unix://{tmp_path}/node.sock", token_file=tmp_path / "token",
                        audit=tmp_path / "audit.jsonl", falco=tmp_path / "falco.jsonl",
                        signing_key=tmp_path / "node.key")
    n = Node(config)
    yield n
    n.close()


def _collect(stream: Iterator[T]) -> list[T]:
    """A list that a thread fills from the stream until the test cancels it."""
    got: list[T] = []

    def read() -> None:
        try:
            got.extend(stream)
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.CANCELLED

    threading.Thread(target=read, daemon=True).start()
    return got


def test_a_run_through_the_node_is_guarded_and_its_alert_streamed(node: Node, tmp_path: Path) -> None:
    client = NodeClient(node.config.local, (tmp_path / "token").read_text().strip())
    stream = client.watch()
    streamed: list[pb.AlertMessage] = _collect(stream)

    with pytest.raises(grpc.RpcError) as err:
        client.update_policy("corpus", "network: everywhere\n")
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "field network" in err.value.details()
    client.update_policy("corpus", POLICY.read_text())

    labels = {"agent": "clinic", "step": "step-7", "tool_call": "read_file"}
    reply = json.loads(client.run(pb.RunRequest(command=command(HERE / "read_shadow.py"), policy_name="corpus",
                                                labels=labels)))
    assert reply["result"]["exit_code"] != 0 or reply["result"]["stopped_by"]
    rule = next(a for a in reply["alerts"] if a["detector"] == "rule")
    assert "/etc/shadow" in rule["rule"] and rule["step"] == "step-7"

    for _ in range(100):
        if streamed:
            break
        threading.Event().wait(0.05)
    stream.cancel()
    assert streamed and streamed[0].id == rule["id"] and streamed[0].tool_call == "read_file"
    status = client.status()
    assert status.alerts_total >= 1 and status.events_total > 0 and "corpus" in status.policies
    client.close()

    falco = [json.loads(line) for line in (tmp_path / "falco.jsonl").read_text().splitlines()]
    assert falco[0]["output_fields"]["bastion.alert_id"] == rule["id"]
    assert audit.verify(tmp_path / "audit.jsonl").records >= 2  # the policy update and the alert


def _state_sizes(node: Node) -> dict[str, int]:
    guarded, sensor = node.guarded, node.sensor
    return {
        "sandboxes": len(guarded.manager.sandboxes()),
        "guard states": len(guarded.guard._states),
        "sensor tags": len(sensor._tags),
        "listeners": len(guarded.manager.listeners),
        "finishers": len(guarded.manager.finishers),
        **{f"kernel {m}": len(list(sensor.bpf[m].keys())) for m in ("watched", "stats", "egress_rules", "unix_allow")},
    }


def test_no_per_sandbox_state_outlives_its_run_in_a_long_running_node(node: Node, tmp_path: Path) -> None:
    client = NodeClient(node.config.local, (tmp_path / "token").read_text().strip())
    policy = "network: {allow: [{host: 127.0.0.1, ports: [9]}]}\nunix_sockets: [/run/x.sock]\non_violation: deny\n"
    json.loads(client.run(pb.RunRequest(command=["/bin/true"], policy_yaml=policy)))
    before = _state_sizes(node)
    for i in range(40):
        # half of them leave an alert behind: a refused connection
        cmd = ["/bin/true"] if i % 2 else ["/usr/bin/python3", "-c", "import socket; socket.socket().connect_ex(('127.0.0.2', 1))"]
        reply = json.loads(client.run(pb.RunRequest(command=cmd, policy_yaml=policy, labels={"agent": "clinic"})))
        assert bool(reply["alerts"]) == (i % 2 == 0), reply["alerts"]
    client.close()
    assert _state_sizes(node) == before


def test_api_calls_through_the_node_are_streamed_with_their_audit_records(node: Node, tmp_path: Path,
                                                                          records_api: LocalApi) -> None:
    client = NodeClient(node.config.local, (tmp_path / "token").read_text().strip())
    stream = client.watch_api_calls()
    streamed: list[pb.ApiCallMessage] = _collect(stream)
    policy = api_policy_yaml(records_api)
    for method, path in (("GET", "/records/17"), ("POST", "/patients/export")):
        command = http_request_command(method, f"{base(records_api, False)}{path}", {"id": 17} if method == "POST" else None)
        json.loads(client.run(pb.RunRequest(command=command, policy_yaml=policy, labels=LABELS)))
    for _ in range(100):
        if len(streamed) >= 2:
            break
        threading.Event().wait(0.05)
    stream.cancel()

    got = [(c.method, c.path, c.allowed, c.tool_call, c.step) for c in streamed]
    assert got == [("GET", "/records/17", True, "http_request", "task-7/2"),
                   ("POST", "/patients/export", False, "http_request", "task-7/2")]
    assert "no API rule" in streamed[1].reason
    assert streamed[1].seq == streamed[0].seq + 1  # places in the stream
    # each names its record: the allowed call's in the calls log beside the node's
    assert streamed[0].log.startswith("audit.calls-") and not streamed[1].log
    logged = [{r["seq"]: r["body"] for r in audit.records(tmp_path / (c.log or "audit.jsonl")) if r["kind"] == "api_call"}
              for c in streamed]
    assert [(logged[i][c.record]["method"], logged[i][c.record]["path"]) for i, c in enumerate(streamed)] == \
        [(m, p) for m, p, *_ in got]
    status = client.status()
    assert (status.api_calls_allowed, status.api_calls_stopped) == (1, 1)

    # a client that saw the first call resumes with the second
    resumed = client.watch_api_calls(from_seq=streamed[0].seq + 1)
    assert next(resumed).path == "/patients/export"
    resumed.cancel()
    client.close()
