"""The guard node's gRPC service on loopback: auth, validation, reviews,
streams that resume, TLS, bounds, generated stubs, Falco and Prometheus."""

from __future__ import annotations

import filecmp
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import generate_latest

from bastion.certs import make_certs
from guard import audit
from console.alert_store import AlertStore
from common.verdicts import Severity, Verdict
from guard.alerts import Alert, Evidence
from console.client import NodeClient
from console.falco import falco_event
from console.metrics import Metrics
from console.proto import bastion_pb2 as pb
from console.service import NodeHooks, RequestError, Service, Tls
from sandbox.policy import PolicyError, parse_policy

TOKEN = "s3cret-token"
ROOT = Path(__file__).resolve().parent.parent


def make_alert(i: int, severity: Severity = Severity.HIGH, sandbox: str = "sbx-a", agent: str = "clinic") -> Alert:
    return Alert(sandbox=sandbox, agent=agent, step=f"step-{i}", detector="rule", rule=f"finding {i}",
                 severity=severity, action=Verdict.QUARANTINE, time=1_800_000_000 + i,
                 evidence=[Evidence(kind="connect", ts_ns=10, pid=5, comm="python3", detail="192.0.2.1:443")],
                 event_ts_ns=10, enforced_ts_ns=1_000_010)


def publish(store: AlertStore, alerts: list[Alert]) -> None:
    """As the guard does: the audit log first, then the sinks."""
    store.log.append_many("alert", [a.model_dump(mode="json") for a in alerts])
    for a in alerts:
        store.add(a)


def _update_policy(name: str, text: str) -> None:
    try:
        parse_policy(text, source=f"policy {name}")
    except PolicyError as exc:
        raise RequestError(str(exc)) from None


HOOKS = NodeHooks(
    status=lambda: pb.Status(events_per_s=12.5, events_total=100, lost_total=0, profiles=["clinic"]),
    update_policy=_update_policy,
    run_sandbox=lambda request: '{"result": {}}',
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AlertStore]:
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    yield AlertStore(log)
    log.close()


@pytest.fixture
def service(store: AlertStore) -> Iterator[Service]:
    svc = Service(store, HOOKS, TOKEN, "127.0.0.1:0")
    yield svc
    svc.stop(0)


@pytest.fixture
def client(service: Service) -> Iterator[NodeClient]:
    c = NodeClient(f"127.0.0.1:{service.port}", TOKEN)
    yield c
    c.close()


def test_calls_without_a_valid_token_are_refused_and_audited_in_aggregate(service: Service,
                                                                            store: AlertStore) -> None:
    publish(store, [make_alert(0)])
    for token in ("wrong", ""):
        intruder = NodeClient(f"127.0.0.1:{service.port}", token)
        for _ in range(50):  # a flood: counted, not one fsync each
            with pytest.raises(grpc.RpcError) as err:
                intruder.alerts()
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            next(intruder.watch())
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        intruder.close()
    service.refusals.flush()
    (record,) = audit.read(store.log.path, "auth_failures")
    counts = {(r["method"].rsplit("/", 1)[1], r["had_token"]): r["count"] for r in record["refused"]}
    assert counts == {("ListAlerts", True): 50, ("WatchAlerts", True): 1, ("ListAlerts", False): 50,
                      ("WatchAlerts", False): 1}
    assert {r["peer"] for r in record["refused"]} == {"ipv4:127.0.0.1"}  # who, without the ephemeral port
    assert audit.verify(store.log.path).records == 2


def test_bad_policy_is_invalid_argument_naming_the_field(client: NodeClient) -> None:
    with pytest.raises(grpc.RpcError) as err:
        client.update_policy("claims", "limits:\n  pids: -3\n")
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "field limits.pids" in err.value.details()
    assert client.update_policy("claims", "limits:\n  pids: 8\n") == "claims"


def test_oversized_request_is_refused(client: NodeClient) -> None:
    with pytest.raises(grpc.RpcError) as err:
        client.update_policy("big", "#" * (2 << 20))
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_reviews_are_audited_and_listed(client: NodeClient, store: AlertStore) -> None:
    publish(store, [make_alert(0, Severity.CRITICAL), make_alert(1, Severity.LOW, sandbox="sbx-b", agent="ledger")])
    first, second = (a.id for a in store._alerts)  # noqa: SLF001
    assert client.acknowledge(first, "kim", "looking").status == "acknowledged"
    assert client.resolve(second, "lee", "benign retry").status == "resolved"
    with pytest.raises(grpc.RpcError) as err:
        client.acknowledge("no-such-alert", "kim")
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        client.resolve(first, "")
    assert "analyst" in err.value.details()

    reviews = audit.read(store.log.path, "acknowledge") + audit.read(store.log.path, "resolve")
    assert [(r["alert_id"], r["analyst"]) for r in reviews] == [(first, "kim"), (second, "lee")]
    assert [a.id for a in client.alerts(severity="high")] == [first]
    assert [a.id for a in client.alerts(agent="ledger")] == [second]
    assert [a.id for a in client.alerts(status="resolved")] == [second]
    assert [a.id for a in client.alerts(text="FINDING 0")] == [first]
    with pytest.raises(grpc.RpcError) as err:
        client.alerts(severity="urgent")
    assert "severity" in err.value.details()

    # a restarted node rebuilds alerts and reviews from the audit log
    again = AlertStore(store.log)
    assert [again.get(i)[1].status for i in range(len(again))] == ["acknowledged", "resolved"]


def test_status_reports_what_the_node_says(client: NodeClient) -> None:
    status = client.status()
    assert status.events_per_s == 12.5 and list(status.profiles) == ["clinic"]


def test_ten_thousand_alerts_reach_three_clients_one_of_which_resumes(service: Service, store: AlertStore) -> None:
    total = 10_000
    alerts = [make_alert(i) for i in range(total)]
    received: dict[str, list[str]] = {"a": [], "b": [], "resumer": []}
    address = f"127.0.0.1:{service.port}"

    def follow(name: str, drop_after: int | None = None) -> None:
        client = NodeClient(address, TOKEN)
        got = received[name]
        stream = client.watch()
        for msg in stream:
            got.append(msg.id)
            if drop_after is not None and len(got) == drop_after:
                stream.cancel()  # the connection drops mid-stream
                break
            if len(got) == total:
                stream.cancel()
                break
        if drop_after is not None:
            stream = client.watch(after_id=got[-1])  # reconnect after the last alert seen
            for msg in stream:
                got.append(msg.id)
                if len(got) == total:
                    stream.cancel()
                    break
        client.close()

    threads = [threading.Thread(target=follow, args=("a",)), threading.Thread(target=follow, args=("b",)),
               threading.Thread(target=follow, args=("resumer", 3_000))]
    for t in threads:
        t.start()
    for start in range(0, total, 500):  # published while the clients watch
        publish(store, alerts[start : start + 500])
    for t in threads:
        t.join(timeout=120)
    expected = [a.id for a in alerts]
    for name, got in received.items():
        assert got == expected, f"{name}: {len(got)} alerts, in order: {got == expected[: len(got)]}"


def test_tls_with_generated_certificates(store: AlertStore, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    svc = Service(store, HOOKS, TOKEN, "127.0.0.1:0",
                  Tls(certs.server_cert.read_bytes(), certs.server_key.read_bytes()))
    try:
        secure = NodeClient(f"localhost:{svc.port}", TOKEN, ca_cert=certs.ca_cert.read_bytes())
        assert secure.status().events_total == 100
        secure.close()
        plain = NodeClient(f"localhost:{svc.port}", TOKEN)
        with pytest.raises(grpc.RpcError) as err:
            plain.stub.GetStatus(pb.StatusRequest(), timeout=2)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        plain.close()
    finally:
        svc.stop(0)


def test_generated_stubs_match_the_proto(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", f"--python_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", "console/proto/bastion.proto"],
                   cwd=ROOT, check=True)
    for name in ("bastion_pb2.py", "bastion_pb2_grpc.py", "bastion_pb2.pyi"):
        assert filecmp.cmp(tmp_path / "console/proto" / name, ROOT / "console/proto" / name, shallow=False), name


def test_falco_lines_have_falcos_fields() -> None:
    event = falco_event(make_alert(3, Severity.CRITICAL), hostname="node-1")
    assert set(event) == {"output", "priority", "rule", "time", "output_fields", "source", "hostname", "tags"}
    assert event["priority"] == "Critical" and event["source"] == "bastion" and event["hostname"] == "node-1"
    assert event["time"].endswith("Z") and "T" in event["time"]
    assert event["output_fields"]["bastion.sandbox"] == "sbx-a"
    assert event["output_fields"]["proc.name"] == "python3"
    assert event["output_fields"]["bastion.latency_ms"] == 1.0


def test_prometheus_metrics_count_alerts_and_latency() -> None:
    metrics = Metrics()
    metrics.events.inc(42)
    for i, sev in enumerate((Severity.CRITICAL, Severity.CRITICAL, Severity.LOW)):
        metrics.observe_alert(make_alert(i, sev))
    text = generate_latest(metrics.registry).decode()
    assert "bastion_events_total 42.0" in text
    assert 'bastion_alerts_total{detector="rule",severity="critical"} 2.0' in text
    assert 'bastion_verdict_latency_seconds_bucket{le="0.001"} 3.0' in text
