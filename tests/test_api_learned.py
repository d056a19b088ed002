"""API calls against what the agent's profile learned: endpoints it saw pass
in the kernel; an endpoint the policy allows but the profile never saw is
held (TLS: the caller stopped; plain: the request dropped) while the guard
scores it against the learned calls, then released or stopped; a run that
calls a learned endpoint far more often than any benign run did is stopped.

A module of its own: record_runs and each GuardedSandboxes run an event pump
on the one sensor, and two pumps at once would split a sandbox's events."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest

from bastion.guarded import GuardedSandboxes, Recording, record_runs
from bastion.local_api import LocalApi
from common.verdicts import Verdict
from ebpf.api import OVER_BUDGET
from ebpf.sensor import Sensor
from guard import audit
from guard.audit import AuditLog
from guard.traces import Behaviour
from guard.training import Settings, train
from sandbox.policy import Policy
from tests.apis import LABELS, base, http_request_command, request

URETPROBE_SYSCALL = 335  # x86-64, since Linux 6.11


@pytest.fixture(scope="module")
def recorded(sensor: Sensor, records_policy: Policy, records_api: LocalApi) -> list[Recording]:
    """The clinic reading records and posting notes, over both transports."""
    calls = [("GET", f"/records/{n}", None) for n in (3, 17, 250)] + [("POST", "/notes", {"text": "ok"})]
    commands = [http_request_command(m, f"{base(records_api, tls)}{path}", b) for tls in (False, True)
                for m, path, b in calls] * 2
    runs = record_runs(sensor, commands, records_policy)
    assert all(r.result.exit_status == 0 for r in runs), [r.result.stderr for r in runs]
    return runs


@pytest.fixture(scope="module")
def learned(sensor: Sensor, recorded: list[Recording], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[GuardedSandboxes]:
    """Sandboxes held to a profile that saw the clinic's recorded runs, and nothing else."""
    behaviour = Behaviour()
    for r in recorded:
        behaviour.update(r.behaviour())
    profile = train([t for r in recorded for t in r.traces(sensor.ngram_n)], behaviour, "clinic",
                    Settings(sequence=False))
    assert set(profile.meta.endpoints) == {"GET 127.0.0.1 /records/{}", "POST 127.0.0.1 /notes"}
    assert profile.meta.endpoint_calls == dict.fromkeys(profile.meta.endpoints, 1)  # one call a run
    log = AuditLog(tmp_path_factory.mktemp("learned") / "audit.jsonl")
    with GuardedSandboxes(sensor, log, [profile]) as g:
        yield g
    log.close()


def test_a_tls_clients_trace_holds_its_own_syscalls_not_the_sensors_probes(sensor: Sensor,
                                                                           recorded: list[Recording]) -> None:
    """Each TLS call returns through the sensor's uretprobes, which enter the
    kernel by a syscall of their own. Learned into the profile, it would make
    the same tool novel under a policy without API rules (no probes)."""
    tls = [r for r in recorded if r.result.api_calls and all(c.tls for c in r.result.api_calls)]
    assert len(tls) == 8, [r.result.api_calls for r in recorded]
    syscalls = np.concatenate([t.syscalls for r in tls for t in r.traces(sensor.ngram_n)])
    assert len(syscalls) > 1000
    assert URETPROBE_SYSCALL not in syscalls


@pytest.fixture(scope="module")
def only_api_stops(records_policy: Policy) -> Policy:
    """The policy with syscall anomalies only alerting: here the API judgement alone decides."""
    return records_policy.model_copy(update={"response": records_policy.response.model_copy(update={"anomaly": Verdict.ALERT})})


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_learned_endpoint_passes_in_the_kernel(learned: GuardedSandboxes, only_api_stops: Policy,
                                                 records_api: LocalApi, tls: bool) -> None:
    policy = only_api_stops
    run = request(learned, policy, "GET", f"{base(records_api, tls)}/records/9041")
    assert run.result.exit_status == 0 and "penicillin" in run.result.stdout, run.result.stderr
    assert [(c.path, c.allowed, c.reason) for c in run.result.api_calls] == [("/records/9041", True, "allowed")]
    assert not [a for a in run.alerts if a.detector in ("api", "novelty")]


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_an_allowed_endpoint_unlike_every_learned_call_is_held_and_stopped(
        learned: GuardedSandboxes, only_api_stops: Policy, records_api: LocalApi, tls: bool) -> None:
    """The policy allows the ledger; the clinic's profile never called it."""
    policy = only_api_stops
    before = len(records_api.received)
    run = request(learned, policy, "GET", f"{base(records_api, tls)}/ledger/accounts/AB-1042")
    assert records_api.received[before:] == [], f"the server received {records_api.received[before:]}"
    (held,) = [c for c in run.result.api_calls if c.path == "/ledger/accounts/AB-1042"]
    assert not held.allowed and "never saw" in held.reason
    alert = next(a for a in run.alerts if a.detector == "api")
    assert "GET 127.0.0.1/ledger/accounts/AB-1042 never seen in training" in alert.rule
    assert alert.step == LABELS["step"] and alert.action is Verdict.QUARANTINE and alert.score >= 1
    assert run.result.exit_status != 0  # the call failed: quarantined, nothing left the sandbox
    assert [b for b in audit.read(learned.audit.path, "alert") if b["id"] == alert.id]
    assert [(b["held"], b["allowed"]) for b in audit.read(learned.audit.path, "api_call", anchored=True)
            if b["sandbox"] == run.result.sandbox and b["path"] == held.path] == [(True, False)]


def test_a_caller_killed_inside_its_held_write_leaves_no_tls_call_behind(
        sensor: Sensor, learned: GuardedSandboxes, only_api_stops: Policy, records_api: LocalApi) -> None:
    """A thread that dies inside a watched TLS call never returns through
    its uretprobe. Its entry goes at its exit: a later thread given its id
    must not inherit its pass to send on the API's sockets."""
    policy = only_api_stops.model_copy(
        update={"response": only_api_stops.response.model_copy(update={"api": Verdict.KILL})})
    before = len(records_api.received)
    run = request(learned, policy, "GET", f"{base(records_api, True)}/ledger/accounts/AB-1042")
    assert records_api.received[before:] == []
    alert = next(a for a in run.alerts if a.detector == "api")
    assert alert.action is Verdict.KILL and run.result.signal == 9, (alert, run.result)
    assert [c.reason for c in run.result.api_calls] == ["an endpoint the profile never saw: held for the guard"]
    assert [c.depth for c in sensor.bpf["tls_calls"].values() if c.depth] == []


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_an_unseen_endpoint_like_a_learned_one_is_released_with_an_alert(
        learned: GuardedSandboxes, only_api_stops: Policy, records_api: LocalApi, tls: bool) -> None:
    policy = only_api_stops
    before = len(records_api.received)
    url = f"{base(records_api, tls)}/records/17/allergies"
    run = request(learned, policy, "GET", url)
    alert = next(a for a in run.alerts if a.detector == "novelty")
    assert "/records/17/allergies never seen in training" in alert.rule and alert.score < 1
    if tls:  # held (SIGSTOP), judged, continued: the reply is intact
        assert run.result.exit_status == 0, run.result.stderr
        assert [(r.method, r.path) for r in records_api.received[before:]] == [("GET", "/records/17/allergies")]
    else:  # dropped while held; judged like the learned calls, so the next one passes in the kernel
        assert records_api.received[before:] == []
    assert any("never saw" in c.reason for c in run.result.api_calls)
    # the audit log says what became of the held call: released over TLS, dropped in plain
    assert [(b["held"], b["allowed"]) for b in audit.read(learned.audit.path, "api_call", anchored=True)
            if b["sandbox"] == run.result.sandbox and b["held"]] == [(True, tls)]


# A request rewritten in memory after the kernel judged it. A child makes the
# TLS call from a page it shares with its parent: a GET of an endpoint the
# profile never saw, which the kernel holds (SIGSTOP) for the guard, on a
# connection whose handshake the library makes inside that write, after the
# release. The parent waits for the hold (the child stopped, or continued:
# a quick release can cancel the stop before it takes) and rewrites the page
# to an export of the same length, which the library would then encrypt.
# Prints whether the parent saw the hold. argv: port, CA file.
REWRITTEN_WHILE_HELD = r"""
import mmap, os, socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
host = b"127.0.0.1:%d" % port
export = b"POST /patients/export HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n\r\n" % host
head = b"GET /records/17/allergies HTTP/1.1\r\nHost: %s\r\n" % host
judged = head + b"X-Pad: " + b"a" * (len(export) - len(head) - 11) + b"\r\n\r\n"
page = mmap.mmap(-1, len(judged))  # shared with the child
page[:] = judged
child = os.fork()
if child == 0:
    page[0]  # maps the page into the child, where the kernel can read it
    context = ssl.create_default_context(cafile=ca)
    s = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), do_handshake_on_connect=False,
                            server_hostname="127.0.0.1")
    s.send(memoryview(page))
    print(s.recv(15), flush=True)
    os._exit(0)
_, status = os.waitpid(child, os.WUNTRACED | os.WCONTINUED)
if os.WIFSTOPPED(status) or os.WIFCONTINUED(status):
    page[:] = export
    print("rewritten", flush=True)
    os.waitpid(child, 0)
"""


def test_a_held_request_rewritten_before_the_library_sends_it_is_stopped(
        learned: GuardedSandboxes, only_api_stops: Policy, records_api: LocalApi) -> None:
    """The kernel judges the bytes its probe read; the library copies the
    buffer later, after the hold and the handshake. Before the buffer was
    compared at each send, the export reached the server, and the audit log
    said the GET was released. Where the guard's release came before the
    stop took effect (a SIGCONT cancels a pending SIGSTOP), the parent sees
    no hold and the GET goes out as judged, as it does where the parent is
    kept off a CPU past the send: tried again."""
    for _ in range(8):
        before = len(records_api.received)
        run = learned.run(["/usr/bin/python3", "-c", REWRITTEN_WHILE_HELD, str(records_api.tls_port),
                           str(records_api.ca_file)], only_api_stops, labels=LABELS)
        assert "/patients/export" not in [r.path for r in records_api.received[before:]]
        if any("changed in memory" in c.reason for c in run.result.api_calls):
            break
    else:
        pytest.fail("the rewrite never fell between the kernel's read and the send")
    assert "rewritten" in run.result.stdout and records_api.received[before:] == [], run.result.stdout
    alert = next(a for a in run.alerts if a.detector == "rule")
    assert "stopped in the kernel: a TLS request whose bytes changed in memory after the kernel judged them" \
        in alert.rule and alert.step == LABELS["step"], alert.rule
    assert alert.action is Verdict.KILL and run.result.signal == 9
    assert [b for b in audit.read(learned.audit.path, "alert") if b["id"] == alert.id]
    # the GET held and released, then its rewritten bytes stopped
    calls = [b for b in audit.read(learned.audit.path, "api_call", anchored=True) if b["sandbox"] == run.result.sandbox]
    assert [(b["path"], b["held"], b["allowed"]) for b in calls] == [("/records/17/allergies", True, True),
                                                                     ("", False, False)]
    assert calls[1]["reason"].startswith("a TLS request whose bytes changed in memory")


# Reads n records over one keep-alive connection. argv: the records URL, n.
READ_MANY = r"""
import http.client, ssl, sys, urllib.parse
url, n = urllib.parse.urlsplit(sys.argv[1]), int(sys.argv[2])
if url.scheme == "https":
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=ssl.create_default_context())
else:
    conn = http.client.HTTPConnection(url.hostname, url.port)
for i in range(n):
    conn.request("GET", f"{url.path}/{100 + i}")
    conn.getresponse().read()
"""


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_run_reading_far_more_records_than_any_benign_run_is_stopped(
        learned: GuardedSandboxes, only_api_stops: Policy, records_api: LocalApi, tls: bool) -> None:
    """The profile saw one record read a run. Every read is allowed by the
    policy and learned, so the kernel passes each; it counts them, the
    guard alerts at the second and quarantines at eight times the most."""
    before = len(records_api.received)
    run = learned.run(["/usr/bin/python3", "-c", READ_MANY, f"{base(records_api, tls)}/records", "50"],
                      only_api_stops, labels=LABELS)
    received = records_api.received[before:]
    # the kernel passed each call until the guard's quarantine at the eighth (in time, over TLS, to
    # stop the eighth's own record), and stopped the next (the policy then kills the tool)
    assert 7 <= len(received) < 50, f"the server received {len(received)} of 50 calls"
    assert [r.path for r in received] == [f"/records/{100 + i}" for i in range(len(received))]
    assert run.result.exit_status != 0
    many = re.compile(r"(\d+) calls to GET 127\.0\.0\.1/records/\{\} in one run; training's most was 1")
    first = next(a for a in run.alerts if a.detector == "novelty" and many.fullmatch(a.rule))
    stop = next(a for a in run.alerts if a.detector == "api" and many.fullmatch(a.rule))
    assert first.action is Verdict.ALERT and 0.25 <= first.score < 1
    assert stop.action is Verdict.QUARANTINE and stop.score >= 1 and stop.step == LABELS["step"]
    assert int(many.fullmatch(stop.rule)[1]) >= 8  # type: ignore[index]
    audited = {b["id"] for b in audit.read(learned.audit.path, "alert")}
    assert {first.id, stop.id} <= audited
    # the calls the guard heard of passed, and the audit log has each
    over = [b for b in audit.read(learned.audit.path, "api_call", anchored=True)
            if b["sandbox"] == run.result.sandbox and b["reason"] == OVER_BUDGET]
    assert over and all(b["allowed"] and not b["held"] for b in over)
