"""The attack corpus under the corpus policy and the guard: every attack is
stopped, with the denial (and, for violations, the kill) on record and an
alert in the audit log; benign tools succeed under the same policy without
an alert."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebpf.sensor import Sensor
from ebpf.events import Event
from sandbox.manager import Sandbox, SandboxManager
from sandbox.policy import Policy
from sandbox.result import STOPPED_EXIT, SandboxResult
from bastion.guarded import GuardedRun, GuardedSandboxes, record_runs
from guard import audit
from guard.audit import AuditLog
from common.verdicts import Verdict
from guard.alerts import Alert
from guard.traces import Behaviour
from guard.training import train
from tests.conftest import nothing_arrived
from tests.attacks import BENIGN, HERE, allowed_api, api_requests, command, corpus_policy

AGENT = "corpus-tools"
LABELS = {"agent": AGENT}
ANOMALY_DETECTORS = ("ngram", "frequency", "sequence")  # what the profile learned, as opposed to the rules


def training_commands(api_port: int) -> list[list[str]]:
    """Benign tool runs in a few variations, each ten times: the profile's
    input. Timing varies what a run does: http_get's reply comes in one read
    or two about half the time, and a profile that saw four runs lacked the
    second read's n-grams about one time in six."""
    args = {"json_csv.py": [["0"], ["40"]], "sqlite.py": [["0"], ["200"]],
            "http_get.py": [[str(api_port), "1"], [str(api_port), "3"]]}
    return [command(BENIGN / tool, a) for tool, variations in args.items() for a in variations] * 10

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
    "raw_socket.py": ("syscall", True),
    "mount.py": ("syscall", True),
    "bpf.py": ("syscall", True),
    "memfd_exec.py": ("syscall", True),
}


@pytest.fixture(scope="module")
def guarded(sensor: Sensor, policy: Policy, api_port: int,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedSandboxes]:
    """Sandboxes under a guard whose profile was learned from benign runs."""
    runs = record_runs(sensor, training_commands(api_port), policy)
    assert all(r.result.exit_status == 0 for r in runs), [r.result.stderr for r in runs]
    behaviour = Behaviour()
    for r in runs:
        behaviour.update(r.behaviour())
    profile = train([t for r in runs for t in r.traces(sensor.ngram_n)], behaviour, AGENT)
    log = AuditLog(tmp_path_factory.mktemp("audit") / "audit.jsonl")
    with GuardedSandboxes(sensor, log, [profile]) as g:
        yield g
    log.close()


@pytest.fixture(scope="module")
def manager(guarded: GuardedSandboxes) -> SandboxManager:
    return guarded.manager


def _alerts_on_record(guarded: GuardedSandboxes, run: GuardedRun) -> list[Alert]:
    """The run's alerts, each checked to be in the audit log."""
    logged = {b["id"]: b for b in audit.read(guarded.audit.path, "alert")}
    for a in run.alerts:
        assert logged[a.id]["sandbox"] == run.result.sandbox and logged[a.id]["agent"] == AGENT
    return run.alerts


@pytest.fixture(scope="module")
def api_port() -> Iterator[int]:
    with allowed_api() as port:
        yield port


@pytest.fixture(scope="module")
def policy(api_port: int) -> Policy:
    return corpus_policy(api_port)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_stopped_and_on_record(
    attack: str, guarded: GuardedSandboxes, policy: Policy, exfil_sink: socket.socket
) -> None:
    kind, killed = ATTACKS[attack]
    run = guarded.run(command(HERE / attack, [str(exfil_sink.getsockname()[1])]), policy, labels=LABELS)
    result = run.result

    assert [d for d in result.denials if d.kind == kind], f"no {kind} denial on record: {result.denials}"
    if killed:
        assert result.stopped_by is not None and result.stopped_by.startswith("rule: "), result.stopped_by
        assert result.exit_status == STOPPED_EXIT
        assert any(a.startswith("kill:") for a in result.actions)
        assert run.verdict is Verdict.KILL
    else:
        assert result.exit_status != 0, f"the attack succeeded: {result.stdout}"
    assert nothing_arrived(exfil_sink)
    assert result.events_lost == 0

    rules = [a for a in _alerts_on_record(guarded, run) if a.detector == "rule"]
    assert rules, f"no rule alert for {attack}"
    if killed:
        kill = next(a for a in rules if a.action is Verdict.KILL)
        assert kill.evidence and kill.latency_ms is not None and kill.latency_ms > 0


@pytest.mark.parametrize("open_first", [False, True], ids=["new connection", "connection opened first"])
@pytest.mark.parametrize("stall", [0.0, 0.5], ids=["guard on time", "guard behind"])
def test_staging_then_exfil_to_an_allowed_api_is_quarantined(
    guarded: GuardedSandboxes, policy: Policy, api_port: int, stall: float, open_first: bool
) -> None:
    """The send comes ~20 ms after the first n-gram that gives the staging
    away: the kernel quarantines there itself, so the send gets nothing out
    even while the guard's pump is held up for the whole run, on a new
    connection (refused) or on one opened before the staging (its packets
    dropped), and the guard's alert follows once it catches up."""
    stalled: set[str] = set()

    def hold_up(sb: Sandbox, events: list[Event]) -> None:
        if sb.name not in stalled:
            stalled.add(sb.name)
            time.sleep(stall)

    guarded.manager.listeners.insert(0, hold_up)
    try:
        args = [str(api_port), *(["open-first"] if open_first else [])]
        run = guarded.run(command(HERE / "stage_and_exfil.py", args), policy, labels=LABELS)
    finally:
        guarded.manager.listeners.remove(hold_up)
    result = run.result
    assert "SENT" not in result.stdout
    assert not [p for p in api_requests() if p.startswith("/?d=")], "the staged data left the sandbox"
    alerts = _alerts_on_record(guarded, run)
    anomaly = [a for a in alerts if a.detector in ANOMALY_DETECTORS]
    assert anomaly and anomaly[0].action is Verdict.QUARANTINE, alerts
    assert anomaly[0].score > anomaly[0].threshold
    assert any(a.startswith("quarantine:") for a in result.actions)
    kernel = [a for a in anomaly if a.detector == "ngram" and a.enforced_ts_ns == a.event_ts_ns]
    assert kernel, "the kernel did not quarantine at the n-gram"
    # every alert of the quarantine says it took hold there, not when the guard caught up
    assert {a.enforced_ts_ns for a in anomaly if a.action is Verdict.QUARANTINE} == {kernel[0].enforced_ts_ns}
    if open_first:  # the send's packets were dropped, and the run's result counts them
        assert [d for d in result.denials if "dropped while quarantined" in d.detail], result.denials
    else:
        refused = [d for d in result.denials if d.kind == "egress"]
        assert refused and kernel[0].enforced_ts_ns < refused[0].ts_ns, "the quarantine did not refuse the send"


def test_write_outside_left_no_file(manager: SandboxManager, policy: Policy) -> None:
    manager.run(command(HERE / "write_outside.py"), policy)
    assert not Path("/etc/bastion-pwned").exists()
    assert not Path("/tmp/bastion-pwned").exists()


def test_fork_bomb_is_contained(guarded: GuardedSandboxes, policy: Policy) -> None:
    run = guarded.run(command(HERE / "fork_bomb.sh"), policy, timeout=3, labels=LABELS)
    result = run.result
    refused = [d for d in result.denials if d.kind == "pids"]
    assert refused, result.denials
    assert result.stopped_by == "wall timeout of 3s"
    assert result.exit_status == STOPPED_EXIT
    assert any(a.detector in ANOMALY_DETECTORS for a in _alerts_on_record(guarded, run))


def _benign(guarded: GuardedSandboxes, policy: Policy, cmd: list[str]) -> SandboxResult:
    run = guarded.run(cmd, policy, labels=LABELS)
    result = run.result
    assert result.exit_status == 0, result.stderr
    assert result.stopped_by is None and result.actions == []
    assert [d for d in result.denials if d.kind in ("egress", "syscall")] == []
    assert [a for a in _alerts_on_record(guarded, run) if a.detector != "novelty"] == []
    return result


def test_benign_json_and_csv_unseen_variation(guarded: GuardedSandboxes, policy: Policy) -> None:
    assert _benign(guarded, policy, command(BENIGN / "json_csv.py", ["7"])).stdout.strip() == "11.5"


def test_benign_sqlite_unseen_variation(guarded: GuardedSandboxes, policy: Policy) -> None:
    assert _benign(guarded, policy, command(BENIGN / "sqlite.py", ["25"])).stdout.strip() == "8.0"


def test_benign_http_get_to_the_allowed_api(guarded: GuardedSandboxes, policy: Policy, api_port: int) -> None:
    out = _benign(guarded, policy, command(BENIGN / "http_get.py", [str(api_port), "2"])).stdout
    assert out.strip() == "hello from the allowed API"


def test_a_binary_the_tools_never_ran_is_quarantined_but_completes(guarded: GuardedSandboxes, policy: Policy) -> None:
    """Allowed by policy, unknown to the profile: egress is cut, the work goes on."""
    run = guarded.run(["/usr/bin/sort", "/etc/hostname", "/etc/debian_version"], policy, labels=LABELS)
    result = run.result
    assert result.exit_status == 0, result.stderr
    assert Path("/etc/debian_version").read_text().strip() in result.stdout
    alerts = _alerts_on_record(guarded, run)
    assert any("/usr/bin/sort" in a.rule and a.action is Verdict.ALERT for a in alerts if a.detector == "novelty")
    assert any(a.action is Verdict.QUARANTINE for a in alerts if a.detector in ANOMALY_DETECTORS)
    assert run.verdict is Verdict.QUARANTINE
