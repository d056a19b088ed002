"""The guard's offline parts: traces, training, scoring, profiles on disk,
the audit chain and the command line. No kernel needed."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bastion.cli import main
from common.verdicts import Verdict
from ebpf.events import Event, EventKind
from guard import audit, audit_writer
from guard.alerts import Alert
from guard.audit_writer import AuditWriter
from guard.monitor import Assignment, Guard, ResponseMap
from guard.profile import ProfileError, load_profile
from guard.rules import AllowedDestination, Rules, check, novelty
from guard.traces import Behaviour, Trace, TraceError, behaviour_of, read_trace_dir, traces_from_events
from guard.training import Settings, score_traces, train
from tests.profiles import rewrite_profile
from tests.waiting import until

ROUTINE = [3, 0, 1, 2, 3, 0, 5, 9, 9, 1]
VARIANT = [3, 0, 4, 4, 1]
ATTACK = [57, 59, 33, 33, 42, 41, 2, 0, 1]  # fork, execve, dup2 x2, connect, socket, ...


def _benign(rng: np.random.Generator, i: int) -> Trace:
    seq: list[int] = []
    for _ in range(rng.integers(20, 60)):
        seq += ROUTINE if rng.random() < 0.8 else VARIANT
    return Trace(f"benign-{i}", np.array(seq))


def _attack(rng: np.random.Generator, i: int) -> Trace:
    seq = _benign(rng, i).syscalls.tolist()
    at = int(rng.integers(0, len(seq)))
    return Trace(f"attack-{i}", np.array(seq[:at] + ATTACK * 2 + seq[at:]))


def _api(method: str, path: str, body: int = 0) -> Event:
    return Event(kind=EventKind.API, ts_ns=0, cgroup_id=1, pid=1, tid=1, comm="t", method=method,
                 host="records.example.org", path=path, arg=body)


# Two benign runs' API calls: three record reads in one, a read and two notes in the other
API_RUNS = [[_api("GET", "/records/1"), _api("GET", "/records/2"), _api("GET", "/records/3")],
            [_api("GET", "/records/4"), _api("POST", "/notes", 300), _api("POST", "/notes", 20)]]


@pytest.fixture(scope="module")
def profile_and_data(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(7)
    train_set = [_benign(rng, i) for i in range(40)]
    behaviour = Behaviour(binaries={"/usr/bin/python3"})
    for run in API_RUNS:
        behaviour.update(behaviour_of(run))
    profile = train(train_set, behaviour, "clinic", Settings(window=50, stride=25))
    path = tmp_path_factory.mktemp("profile") / "clinic.safetensors"
    profile.save(path)
    unseen = [_benign(rng, 100 + i) for i in range(30)]
    attacks = [_attack(rng, i) for i in range(30)]
    return path, unseen, attacks


def test_trained_profile_separates_attacks_from_unseen_benign(profile_and_data) -> None:  # type: ignore[no-untyped-def]
    path, unseen, attacks = profile_and_data
    profile = load_profile(path)
    benign_scores = [s for _, s in score_traces(profile, unseen)]
    attack_scores = [s for _, s in score_traces(profile, attacks)]
    auc = roc_auc_score([0] * len(benign_scores) + [1] * len(attack_scores), benign_scores + attack_scores)
    assert auc > 0.99
    threshold = profile.meta.thresholds.combined
    assert all(s > threshold for s in attack_scores)
    assert sum(s > threshold for s in benign_scores) <= 1  # of 30 unseen benign traces


def test_profile_round_trip_keeps_behaviour_and_ngrams(profile_and_data) -> None:  # type: ignore[no-untyped-def]
    path, _, _ = profile_and_data
    profile = load_profile(path)
    assert profile.meta.agent == "clinic"
    assert profile.behaviour.binaries == {"/usr/bin/python3"}
    # per endpoint: the largest body, and the most calls one run made
    assert profile.meta.endpoints == {"GET records.example.org /records/{}": 0, "POST records.example.org /notes": 300}
    assert profile.meta.endpoint_calls == {"GET records.example.org /records/{}": 3,
                                           "POST records.example.org /notes": 2}
    grams = set(profile.known_ngrams())
    assert tuple(ROUTINE[:6]) in grams and all(len(g) == 6 for g in grams)


@pytest.mark.parametrize(
    ("name", "meta_edit", "arrays_edit", "message"),
    [
        ("negative threshold", lambda m: m["thresholds"].update(ngram=-1), None, "field thresholds.ngram"),
        ("unknown field", lambda m: m.update(run="os.system('x')"), None, "field run"),
        ("nan reference", None, lambda a: a["reference"].__setitem__((0, 0), np.nan), "array reference"),
        ("wrong dtype", None, lambda a: a.update(vocab=a["vocab"].astype(np.float64)), "array vocab"),
        ("unsorted known", None, lambda a: a.update(known=a["known"][::-1].copy()), "array known"),
        ("extra array", None, lambda a: a.update(payload=np.zeros(3)), "arrays"),
        ("no calls", lambda m: m["endpoint_calls"].update({"GET records.example.org /notes": 0}), None,
         "field endpoint_calls"),
    ],
)
def test_hostile_profile_is_refused_naming_the_problem(profile_and_data, tmp_path: Path, name: str,  # type: ignore[no-untyped-def]
                                                      meta_edit, arrays_edit, message: str) -> None:
    path, _, _ = profile_and_data
    bad = rewrite_profile(path, tmp_path / "bad.safetensors", meta_edit, arrays_edit)
    with pytest.raises(ProfileError, match=message) as err:
        load_profile(bad)
    assert str(bad) in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\x80\x04\x95pickle", b"\xff" * 8 + b"{}"])
def test_corrupt_profile_file_is_refused(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(content)
    with pytest.raises(ProfileError, match=str(bad)):
        load_profile(bad)


def test_trace_dir_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("1 2 3 4")
    (tmp_path / "b.txt").write_text("1 2 x3 4")
    with pytest.raises(TraceError, match=r"b\.txt: 'x3' is not a syscall number"):
        read_trace_dir(tmp_path)
    with pytest.raises(TraceError, match="not a directory"):
        read_trace_dir(tmp_path / "missing")


def _gram(tid: int, pos: int, seq: list[int]) -> Event:
    return Event(kind=EventKind.NGRAM, ts_ns=pos, cgroup_id=1, pid=tid, tid=tid, comm="t", ngram=tuple(seq), arg=pos)


def test_sequences_are_rebuilt_from_ngram_positions() -> None:
    calls = list(range(10, 30))
    n = 4
    events = [_gram(7, i + n - 1, calls[i : i + n]) for i in range(len(calls) - n + 1)]
    del events[9]  # overlapping neighbours still hold every syscall
    assert [t.syscalls.tolist() for t in traces_from_events(events, n, "run")] == [calls]
    events = [_gram(7, i + n - 1, calls[i : i + n]) for i in range(len(calls) - n + 1)]
    del events[8:8 + n]  # syscall 11 is in none of the n-grams left: the sequence splits there
    traces = traces_from_events(reversed(events), n, "run")
    assert [t.syscalls.tolist() for t in traces] == [calls[:11], calls[12:]]


def test_sequences_are_rebuilt_from_batches_of_syscall_ids() -> None:
    def batch(tid: int, pos: int, ids: list[int]) -> Event:
        return Event(kind=EventKind.SEQUENCE, ts_ns=pos, cgroup_id=1, pid=tid, tid=tid, comm="t", ngram=tuple(ids),
                     arg=pos)

    calls = list(range(100, 200))
    events = [batch(7, p, calls[p:p + 32]) for p in range(0, 96, 32)] + [batch(7, 96, calls[96:])]
    events.append(batch(8, 0, [1, 2, 3]))
    assert [t.syscalls.tolist() for t in traces_from_events(events[::-1], 6, "run")] == [calls, [1, 2, 3]]
    del events[1]  # a lost batch splits the thread's sequence
    traces = traces_from_events(events, 6, "run")
    assert [t.syscalls.tolist() for t in traces] == [calls[:32], calls[64:], [1, 2, 3]]


@dataclass
class _Sandbox:
    id: int = 7
    name: str = "sbx-test"
    labels: dict[str, str] = field(default_factory=dict)
    workdir: Path = Path("/tmp/sbx-test")


class _Counts:
    """The sensor's syscall counts of one sandbox, as a run goes on."""

    def __init__(self, ngram_n: int) -> None:
        self.ngram_n = ngram_n
        self.syscalls: list[int] = []

    def syscall_counts(self, cgroup_id: int) -> dict[int, int]:
        return dict(Counter(self.syscalls))


class _Enforcer:
    def __init__(self) -> None:
        self.verdicts: list[Verdict] = []

    def enforce(self, target: object, verdict: Verdict, reason: str) -> int:
        self.verdicts.append(verdict)
        return 1

    def resume(self, target: object, pid: int) -> None:
        pass


@pytest.mark.parametrize("stream", [False, True], ids=["counts alone", "with the sequence stream"])
def test_the_few_syscalls_after_the_last_periodic_read_are_judged_in_the_last_window(
        profile_and_data, tmp_path: Path, stream: bool) -> None:  # type: ignore[no-untyped-def]
    """A benign run's last few syscalls alone are a mix unlike any window
    (it once quarantined 13 of 200 benign runs); the live guard judges them
    in the run's last window, as the trained windows that end a run are:
    the last syscall ids of the sequence stream where it is on, else the
    mix read before them filled in."""
    profile = load_profile(profile_and_data[0])
    sensor, enforcer = _Counts(profile.meta.ngram_n), _Enforcer()
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    rules = Rules(binaries=["/usr/bin"], read_paths=["/"], write_paths=[])
    guard = Guard(sensor, log, enforcer, lambda _t: Assignment(rules, ResponseMap(), profile))  # type: ignore[arg-type]

    def run(sandbox: _Sandbox, calls: list[int], tail: list[int]) -> list[Alert]:
        sensor.syscalls = calls
        guard._frequency(guard.state(sandbox), profile)  # a periodic read
        sensor.syscalls = calls + tail
        if stream:
            whole = calls + tail
            guard(sandbox, [Event(kind=EventKind.EXEC, ts_ns=0, cgroup_id=1, pid=3, tid=3, comm="t", path="/usr/bin/python3"),
                            *(Event(kind=EventKind.SEQUENCE, ts_ns=p + 1, cgroup_id=1, pid=3, tid=3, comm="t",
                                    ngram=tuple(whole[p:p + 32]), arg=p) for p in range(0, len(whole), 32))])
            assert list(guard.state(sandbox).recent) == whole[-profile.meta.window:]
        return [a for a in guard.finish(sandbox) if a.detector == "frequency"]  # (the model reads the stream too)

    shutdown = [9, 9, 1] * 3  # a burst of one kind of call, as an interpreter's exit closes and unmaps
    assert run(_Sandbox(), ROUTINE * 20, shutdown) == []
    # an attack in those last syscalls is still seen
    assert [a.action for a in run(_Sandbox(id=8), ROUTINE * 20, ATTACK * 3)] == [Verdict.QUARANTINE]
    log.close()


def test_rules_name_the_violation() -> None:
    rules = Rules(binaries=["/usr"], read_paths=["/usr", "/work"], write_paths=["/work"],
                  denied_paths=["/etc/shadow"], destinations=[AllowedDestination(network="10.0.0.0/8", ports=[443])])

    def ev(kind: EventKind, **kw: object) -> Event:
        return Event(kind=kind, ts_ns=1, cgroup_id=1, pid=1, tid=1, comm="t", **kw)  # type: ignore[arg-type]

    found = {
        "exec": check(ev(EventKind.EXEC, path="/work/payload"), rules, str),
        "shadow": check(ev(EventKind.OPEN, path="/etc/shadow", ret=-13), rules, str),
        "write": check(ev(EventKind.OPEN, path="/usr/x", flags=os.O_WRONLY | os.O_CREAT), rules, str),
        "dest": check(ev(EventKind.CONNECT, family=2, addr="192.0.2.1", port=443), rules, str),
    }
    assert {k: f is not None and f.detector == "rule" for k, f in found.items()} == dict.fromkeys(found, True)
    assert "192.0.2.1:443" in found["dest"].rule  # type: ignore[union-attr]
    names = {0: "read", 101: "ptrace"}.__getitem__
    trapped = check(ev(EventKind.SYSCALL, syscall=0, arg=1, ret=-38), rules, names)  # seccomp's trap has no number
    assert trapped is not None and "trapped" in trapped.rule and "read" not in trapped.rule
    refused = check(ev(EventKind.SYSCALL, syscall=101, ret=-1), rules, names)
    assert refused is not None and refused.rule == "denied syscall ptrace attempted"
    assert check(ev(EventKind.CONNECT, family=2, addr="10.1.2.3", port=443), rules, str) is None
    assert check(ev(EventKind.OPEN, path="/work/notes.txt", flags=os.O_WRONLY), rules, str) is None
    assert check(ev(EventKind.EXEC, path="/usr/bin/python3"), rules, str) is None


def test_a_connect_under_way_is_learned_and_judged_as_a_destination() -> None:
    """A client with a timeout connects without blocking: the kernel says
    EINPROGRESS, and the destination is one all the same."""
    def connect(addr: str, ret: int) -> Event:
        return Event(kind=EventKind.CONNECT, ts_ns=1, cgroup_id=1, pid=1, tid=1, comm="t", family=2, addr=addr,
                     port=443, ret=ret)

    learned = behaviour_of([connect("10.1.2.3", -errno.EINPROGRESS), connect("10.9.9.9", -errno.ECONNREFUSED)])
    assert learned.destinations == {"10.1.2.3:443"}
    assert novelty(connect("10.1.2.3", -errno.EINPROGRESS), learned, None) is None
    found = novelty(connect("192.0.2.7", -errno.EINPROGRESS), learned, None)
    assert found is not None and found.rule == "destination 192.0.2.7:443 never seen in training"
    assert novelty(connect("192.0.2.7", -errno.EPERM), learned, None) is None  # refused: the rules' business


# the audit log -------------------------------------------------------------
def _log(tmp_path: Path, n: int = 5) -> Path:
    path = tmp_path / "audit.jsonl"
    log = audit.AuditLog(path)
    for i in range(n):
        log.append("alert", {"id": f"a{i}", "rule": "test"})
    log.close()
    return path


def test_intact_chain_verifies_and_reopening_continues_it(tmp_path: Path) -> None:
    path = _log(tmp_path)
    log = audit.AuditLog(path)
    log.append("ack", {"id": "a1", "analyst": "kim"})
    log.close()
    assert audit.verify(path).records == 6
    assert [b["id"] for b in audit.read(path, "alert")] == ["a0", "a1", "a2", "a3", "a4"]


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda lines: lines.__setitem__(2, lines[2].replace('"test"', '"benign"')), "seq 2: .*edited"),
        (lambda lines: lines.pop(1), "seq 2: expected seq 1"),
        (lambda lines: lines.insert(3, lines.pop(1)), "seq 2: expected seq 1"),
    ],
    ids=["edited", "removed", "reordered"],
)
def test_tampering_names_the_first_bad_record(tmp_path: Path, tamper, message: str) -> None:  # type: ignore[no-untyped-def]
    path = _log(tmp_path)
    lines = path.read_text().splitlines()
    tamper(lines)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(audit.AuditError, match=message):
        audit.verify(path)


def test_published_alerts_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = (
        "import sys; from guard.audit import AuditLog\n"
        f"log = AuditLog({str(path)!r})\n"
        "i = 0\n"
        "while True:\n"
        "    log.append('alert', {'id': i}); print(i, flush=True); i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parent.parent)
    assert proc.stdout is not None
    published = [int(proc.stdout.readline()) for _ in range(50)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    logged = [b["id"] for b in audit.read(path)]
    assert logged[: len(published)] == published
    assert audit.verify(path).records == len(logged)


def _api_calls(path: Path, sinks: list[int]) -> tuple[audit.AuditLog, AuditWriter]:
    log = audit.AuditLog(path)
    return log, AuditWriter(log, [lambda record: sinks.append(record.seq)])


def _call(i: int) -> dict[str, object]:
    return {"sandbox": "sb", "method": "GET", "host": "records.example.org", "path": f"/records/{i}",
            "port": 80, "tls": False, "body_bytes": 0, "allowed": True, "reason": "allowed", "pid": 1, "ts_ns": i}


def test_a_busy_pumps_api_calls_share_fsyncs_and_all_reach_the_log(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    seen: list[int] = []
    log, calls = _api_calls(tmp_path / "audit.jsonl", seen)
    start = time.monotonic()
    for i in range(50):  # the pump's turns, each faster than the commit interval
        calls.calls([_call(i)])
        time.sleep(0.002)
    until(lambda: len(seen) == 50, what="not all 50 calls reached the log")  # no flush: the interval alone
    elapsed = time.monotonic() - start
    assert seen == list(range(50))
    assert [b["path"] for b in audit.read(tmp_path / "audit.jsonl", "api_call")] == [f"/records/{i}" for i in range(50)]
    assert len(fsyncs) <= min(25, 2 + elapsed / audit_writer.SYNC_EVERY_S)
    calls.close()
    log.close()


def test_flushing_api_calls_commits_without_waiting_out_the_interval(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_writer, "SYNC_EVERY_S", 3600.0)
    seen: list[int] = []
    log, calls = _api_calls(tmp_path / "audit.jsonl", seen)
    calls.calls([_call(0)])  # the first after a quiet spell goes at once
    until(lambda: bool(seen), what="the first call after a quiet spell did not reach the log")
    calls.calls([_call(1)])
    time.sleep(0.3)
    assert seen == [0]
    calls.flush()
    assert seen == [0, 1]
    assert len(list(audit.read(tmp_path / "audit.jsonl", "api_call"))) == 2
    calls.close()
    log.close()


# the command line ------------------------------------------------------------
def test_an_alert_is_sunk_once_on_disk_and_its_fsync_never_holds_the_pump(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The pump, which calls the guard, releases held calls: an fsync that
    waited on the disk there held the next one as long. The alert is
    chained and the sandbox killed at once; the writer's thread puts the
    alert on disk, and only then passes it on."""
    disk = threading.Event()  # the disk answers when set
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (disk.wait(10), real_fsync(fd))[1])
    path = tmp_path / "audit.jsonl"
    log, enforcer = audit.AuditLog(path), _Enforcer()
    rules = Rules(binaries=["/usr/bin"], read_paths=["/"], write_paths=[])
    sunk: list[tuple[str, int]] = []
    guard = Guard(_Counts(6), log, enforcer, lambda _t: Assignment(rules, ResponseMap(), None),  # type: ignore[arg-type]
                  sinks=[lambda a: sunk.append((a.rule, len(list(audit.read(path, "alert")))))])
    start = time.monotonic()
    guard(_Sandbox(), [Event(kind=EventKind.EXEC, ts_ns=1, cgroup_id=7, pid=3, tid=3, comm="t", path="/usr/bin/python3"),
                       Event(kind=EventKind.EXEC, ts_ns=2, cgroup_id=7, pid=3, tid=3, comm="t", path="/tmp/evil")])
    assert time.monotonic() - start < 0.5  # it did not wait for the disk
    assert enforcer.verdicts == [Verdict.KILL]
    time.sleep(0.2)
    assert sunk == [] and log.head()[0] == 0  # chained, and not passed on before it is on disk
    disk.set()
    alerts = guard.finish(_Sandbox())
    assert [a.rule for a in alerts] == ["binary /tmp/evil is outside the allowed binaries"]
    assert sunk == [(alerts[0].rule, 1)]  # on disk when the sink saw it, and before the run's result
    guard.close()
    log.close()


def test_cli_trains_scores_and_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(3)
    traces = tmp_path / "traces"
    traces.mkdir()
    for i in range(12):
        (traces / f"t{i:02}.txt").write_text(" ".join(map(str, _benign(rng, i).syscalls)))
    (traces / "zz-attack.txt").write_text(" ".join(map(str, _attack(rng, 99).syscalls)))
    profile = tmp_path / "p.safetensors"
    assert main(["guard", "train", "--traces", str(traces), "--out", str(profile), "--window", "50"]) == 0
    scores = tmp_path / "scores.csv"
    assert main(["guard", "score", "--profile", str(profile), "--traces", str(traces), "--out", str(scores)]) == 0
    rows = scores.read_text().splitlines()
    assert rows[0] == "path,score" and len(rows) == 14
    by_name = {Path(r.split(",")[0]).name: float(r.split(",")[1]) for r in rows[1:]}
    assert by_name["zz-attack.txt"] == max(by_name.values())

    normal, attack = tmp_path / "normal", tmp_path / "attack"
    normal.mkdir()
    attack.mkdir()
    for i in range(6):
        (normal / f"n{i}.txt").write_text(" ".join(map(str, _benign(rng, 200 + i).syscalls)))
        (attack / f"a{i}.txt").write_text(" ".join(map(str, _attack(rng, 300 + i).syscalls)))
    capsys.readouterr()
    assert main(["guard", "score", "--profile", str(profile), "--normal", str(normal), "--attack", str(attack),
                 "--out", str(scores)]) == 0
    assert "AUC 1.0000: 6 normal traces" in capsys.readouterr().out
    assert len(scores.read_text().splitlines()) == 13

    log = _log(tmp_path)
    assert main(["audit", "verify", str(log)]) == 0
    log.write_text(log.read_text().replace('"a3"', '"a9"'))
    capsys.readouterr()
    assert main(["audit", "verify", str(log)]) == 2
    err = capsys.readouterr().out.strip()
    assert err.count("\n") == 0 and "seq 3" in err and "edited" in err
