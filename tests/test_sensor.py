"""The sensor against the real kernel: what a watched process does arrives as
events with the right fields; unwatched processes send nothing."""

from __future__ import annotations

import ctypes as ct
import errno
import os
import socket
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from bastion.local_api import LocalApi
from ebpf.events import ARG_LEN, Event, EventKind
from ebpf.sensor import WATCH_QUARANTINE, Sensor, SensorError
from sandbox.cgroup import Cgroup
from sandbox.egress import compile_api, compile_rules
from sandbox.policy import Network, Policy
from tests.attacks import HERE, command
from tests.waiting import until
from tests.workloads import SEQ_SYSCALLS, loop_ngrams

pytestmark = pytest.mark.usefixtures("kernel")
SYS_BPF = 321  # what tests/attacks/bpf.py attempts


def run_in(cg: Cgroup | None, argv: list[str]) -> tuple[int, int]:
    """Fork, move the child into cg (if any), exec argv; returns (pid, status)."""
    pid = os.fork()
    if pid == 0:
        try:
            if cg is not None:
                cg.enter()
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    return pid, status


def collect(sensor: Sensor, until_exit_of: int, timeout: float = 5.0) -> list[Event]:
    """Events until the exit event of a pid arrives."""
    got: list[Event] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got += sensor.poll(50)
        if any(e.kind is EventKind.EXIT and e.pid == until_exit_of for e in got):
            return got
    raise AssertionError(f"no exit event for pid {until_exit_of} within {timeout}s; got {got}")


def test_watched_child_yields_exactly_its_events(sensor: Sensor, cgroup: Cgroup, workload: Path, tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    target.write_text("hello")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        sensor.watch(cgroup.id, "basic")
        pid, status = run_in(cgroup, [str(workload), "basic", str(target), str(port)])
        events = collect(sensor, pid)
    sensor.unwatch(cgroup.id)

    assert os.waitstatus_to_exitcode(status) == 7
    assert [e.kind for e in events] == [EventKind.EXEC, EventKind.OPEN, EventKind.CONNECT, EventKind.EXIT]
    exec_, open_, connect, exit_ = events
    assert all(e.pid == pid and e.cgroup_id == cgroup.id and e.tag == "basic" for e in events)
    argv = (str(workload), "basic", str(target), str(port))
    assert exec_.path == str(workload)
    assert exec_.argv == tuple(a[: ARG_LEN - 1] for a in argv)  # each argv entry is cut at ARG_LEN
    assert exec_.ret == 0
    assert open_.path == str(target) and open_.flags == os.O_RDONLY and open_.ret >= 3
    assert (connect.family, connect.addr, connect.port, connect.ret) == (socket.AF_INET, "127.0.0.1", port, 0)
    assert (exit_.exit_code, exit_.signal) == (7, 0)
    assert exec_.ts_ns <= open_.ts_ns <= connect.ts_ns <= exit_.ts_ns


def test_unwatched_process_yields_nothing(sensor: Sensor, cgroup: Cgroup, workload: Path, tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    target.write_text("x")
    sensor.drain()
    pid, _ = run_in(cgroup, [str(workload), "flood", str(target), "50"])  # cgroup exists but is not watched
    time.sleep(0.1)
    assert [e for e in sensor.drain() if e.pid == pid or e.cgroup_id == cgroup.id] == []
    assert sensor.stats(cgroup.id).syscalls == 0


def test_failed_exec_and_kill_signal_are_reported(sensor: Sensor, cgroup: Cgroup, workload: Path) -> None:
    sensor.watch(cgroup.id, "sig")
    pid = os.fork()
    if pid == 0:
        try:
            cgroup.enter()
            try:
                os.execv("/nonexistent/tool", ["tool"])
            except OSError:
                pass
            os.execv(str(workload), [str(workload), "seq", "100000000"])
        finally:
            os._exit(127)
    time.sleep(0.2)
    cgroup.kill()
    os.waitpid(pid, 0)
    events = collect(sensor, pid)
    sensor.unwatch(cgroup.id)
    execs = [e for e in events if e.kind is EventKind.EXEC]
    assert [(e.path, e.ret) for e in execs] == [("/nonexistent/tool", -2), (str(workload), 0)]
    exit_ = next(e for e in events if e.kind is EventKind.EXIT)
    assert exit_.signal == 9


def test_syscall_counts_match_a_known_sequence(sensor: Sensor, cgroup: Cgroup, workload: Path) -> None:
    rounds = 1000
    sensor.watch(cgroup.id, "seq")
    pid, _ = run_in(cgroup, [str(workload), "seq", str(rounds)])
    collect(sensor, pid)
    counts = sensor.syscall_counts(cgroup.id)
    stats = sensor.unwatch(cgroup.id)

    for nr in SEQ_SYSCALLS:  # the loop's own, plus the few of the workload's start and exit
        assert rounds <= counts[nr] <= rounds + 20, (nr, counts[nr])
    assert sum(counts.values()) == stats.syscalls >= 4 * rounds
    assert sensor.syscall_counts(cgroup.id) == {}, "an unwatched cgroup has no counts"


def test_counts_read_while_the_kernel_counts_only_grow(sensor: Sensor, cgroup: Cgroup, workload: Path) -> None:
    sensor.watch(cgroup.id, "seq")
    proc = subprocess.Popen([str(workload), "seq", "2000000"], preexec_fn=cgroup.enter)
    seen: list[int] = []
    while proc.poll() is None:
        seen.append(sum(sensor.syscall_counts(cgroup.id).values()))
    sensor.unwatch(cgroup.id)
    assert len(seen) > 10 and seen == sorted(seen) and seen[-1] > seen[0]


def test_a_cgroup_watched_again_counts_from_zero(sensor: Sensor, cgroup: Cgroup, workload: Path) -> None:
    for _ in range(2):
        sensor.watch(cgroup.id, "seq")
        pid, _ = run_in(cgroup, [str(workload), "seq", "300"])
        collect(sensor, pid)
        counts = sensor.syscall_counts(cgroup.id)
        sensor.unwatch(cgroup.id)
        assert 300 <= counts[SEQ_SYSCALLS[0]] <= 320


def test_a_process_is_counted_for_the_cgroup_it_is_in_now(sensor: Sensor, cgroup: Cgroup, workload: Path) -> None:
    """The every-syscall program finds a process's cgroup by the slot it was
    marked with: moved to another watched cgroup, it is counted there; left
    in a cgroup no longer watched, it is not counted for whichever cgroup
    takes that slot next."""
    other, third = (Cgroup.create(f"test-{uuid.uuid4().hex[:10]}") for _ in range(2))
    proc = None
    try:
        sensor.watch(cgroup.id, "first")
        sensor.watch(other.id, "moved to")
        proc = subprocess.Popen([str(workload), "seq", "100000000"], preexec_fn=cgroup.enter)
        until(lambda: sum(sensor.syscall_counts(cgroup.id).values()) > 1000)
        other.add(proc.pid)  # no exec or fork: the process keeps the first cgroup's mark
        until(lambda: sum(sensor.syscall_counts(other.id).values()) > 1000)
        freed = sensor._slots[other.id]
        sensor.unwatch(other.id)
        sensor.watch(third.id, "takes the freed slot")
        assert sensor._slots[third.id] == freed  # else this test would show nothing
        before = sum(sensor.syscall_counts(cgroup.id).values())
        time.sleep(0.2)
        assert proc.poll() is None
        assert sensor.syscall_counts(third.id) == {}
        assert sum(sensor.syscall_counts(cgroup.id).values()) == before
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        for cg in (cgroup, other, third):
            if sensor.is_watched(cg.id):
                sensor.unwatch(cg.id)
        other.remove()
        third.remove()


def test_a_syscall_seccomp_refuses_joins_the_threads_sequence(sensor: Sensor) -> None:
    """seccomp refuses a denied syscall before the sys_enter program runs. Its
    exit reports the attempt and also puts it into the thread's sequence, so
    the anomaly detectors see it as well as the rules."""
    from bastion.guarded import record_runs

    sensor.load_known([])
    run, = record_runs(sensor, [command(HERE / "bpf.py")], Policy())
    assert "bpf -1 1" in run.result.stdout, run.result  # refused with EPERM
    assert [e.syscall for e in run.events if e.kind is EventKind.SYSCALL] == [SYS_BPF]
    assert [t.syscalls.tolist().count(SYS_BPF) for t in run.traces(sensor.ngram_n)] == [1]


def test_known_ngrams_are_suppressed(sensor: Sensor, cgroup: Cgroup, workload: Path) -> None:
    loop_grams = set(loop_ngrams(10, sensor.ngram_n))
    try:
        sensor.load_known(loop_grams)
        sensor.watch(cgroup.id, "novel", detect_novel=True)
        pid, _ = run_in(cgroup, [str(workload), "seq", "500"])
        sent = {e.ngram for e in collect(sensor, pid) if e.kind is EventKind.NGRAM}
        sensor.unwatch(cgroup.id)
    finally:
        sensor.load_known([])
    assert sent, "the start-up n-grams of the workload are novel and must be sent"
    assert not sent & loop_grams


def test_without_known_set_novel_mode_sends_loop_ngrams(sensor: Sensor, cgroup: Cgroup, workload: Path) -> None:
    sensor.load_known([])
    sensor.watch(cgroup.id, "novel", detect_novel=True)
    pid, _ = run_in(cgroup, [str(workload), "seq", "50"])
    grams = [e for e in collect(sensor, pid) if e.kind is EventKind.NGRAM]
    sensor.unwatch(cgroup.id)
    sent = Counter(e.ngram for e in grams)
    expected = loop_ngrams(50, sensor.ngram_n)
    assert {g: sent[g] for g in expected} == dict(expected)
    # positions let user space rebuild the thread's whole syscall sequence
    positions = [e.arg for e in grams if e.tid == pid]
    assert positions == list(range(sensor.ngram_n - 1, sensor.ngram_n - 1 + len(positions)))


def _novel_grams(sensor: Sensor, cgroup: Cgroup, workload: Path, quarantine_at: int) -> list[Event]:
    """The novel n-grams of a run that breaks the known loop at each mark,
    counted over a window of 50 syscalls and a frame of 20."""
    sensor.load_known(loop_ngrams(10, sensor.ngram_n))
    try:
        sensor.watch(cgroup.id, "novel", detect_novel=True)
        sensor.count_novel(cgroup.id, 50, 20, quarantine_at)
        pid, _ = run_in(cgroup, [str(workload), "phase", "pptpptpp", "4"])
        grams = [e for e in collect(sensor, pid) if e.kind is EventKind.NGRAM and e.tid == pid]
    finally:
        sensor.load_known([])
    return grams


def test_each_novel_ngram_comes_with_the_threads_count_of_them_in_its_window_and_frame(
        sensor: Sensor, cgroup: Cgroup, workload: Path) -> None:
    """The counts the guard scores: bursts of novel n-grams at the marks,
    the known loop between them, and the window sliding past old bursts."""
    grams = _novel_grams(sensor, cgroup, workload, 0)
    sensor.unwatch(cgroup.id)
    at = [e.arg for e in grams]
    expected = [(sum(p - 50 < q <= p for q in at), sum(p - 20 < q <= p for q in at)) for p in at]
    assert [(e.in_window, e.in_frame) for e in grams] == expected
    assert any(w < i + 1 for i, (w, _) in enumerate(expected)), "the window never slid past a novel n-gram"
    assert not any(e.quarantined for e in grams)
    with pytest.raises(SensorError, match="frame 60 and window 50"):
        sensor.count_novel(cgroup.id, 50, 60)


def test_the_novel_ngram_whose_counts_pass_the_limit_quarantines_its_cgroup_in_the_kernel(
        sensor: Sensor, cgroup: Cgroup, workload: Path) -> None:
    limit = 900  # in_window * 20 + in_frame * 50
    grams = _novel_grams(sensor, cgroup, workload, limit)
    flags = sensor.bpf["watched"][ct.c_uint64(cgroup.id)].flags
    sensor.unwatch(cgroup.id)
    passed = [e.in_window * 20 + e.in_frame * 50 > limit for e in grams]
    first = passed.index(True)
    assert 0 < first < len(grams) - 1
    assert [e.quarantined for e in grams] == [i == first for i in range(len(grams))]  # once, there
    assert flags & WATCH_QUARANTINE


def test_the_programs_on_every_syscall_are_attached_only_while_a_cgroup_is_watched(
        sensor: Sensor, cgroup: Cgroup, workload: Path, tmp_path: Path) -> None:
    """With nothing watched the host's syscalls pay nothing for the sensor."""
    def idle() -> bool:
        return sensor.syscall_hooks_attached() == 0

    until(idle)
    target = tmp_path / "f"
    target.write_text("x")
    sensor.watch(cgroup.id, "hooks")
    assert sensor.syscall_hooks_attached() >= 14  # the syscall exit tracepoints and the raw sys_enter, before any run
    pid, _ = run_in(cgroup, [str(workload), "flood", str(target), "1"])
    time.sleep(0.1)
    assert (pid, str(target)) in [(e.pid, e.path) for e in sensor.drain() if e.kind is EventKind.OPEN]
    sensor.unwatch(cgroup.id)
    until(idle)
    # and again: the next watch attaches them before anything runs
    sensor.watch(cgroup.id, "hooks again")
    pid, _ = run_in(cgroup, [str(workload), "flood", str(target), "1"])
    time.sleep(0.1)
    assert (pid, str(target)) in [(e.pid, e.path) for e in sensor.drain() if e.kind is EventKind.OPEN]
    sensor.unwatch(cgroup.id)


def test_repeated_opens_are_counted_in_the_kernel_not_sent(sensor: Sensor, cgroup: Cgroup, workload: Path,
                                                           tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("x")
    sensor.watch(cgroup.id, "repeats")
    pid, _ = run_in(cgroup, [str(workload), "flood", str(target), "5000"])
    missing = [run_in(cgroup, [str(workload), "flood", str(tmp_path / "missing"), "3"])[0] for _ in range(2)]
    time.sleep(0.2)
    events = sensor.drain()
    stats = sensor.unwatch(cgroup.id)
    opens = [(e.pid, e.path, e.ret) for e in events if e.kind is EventKind.OPEN and e.path.startswith(str(tmp_path))]
    # the first open of each (path, flags, outcome) is sent with its result, in full; the rest are counted
    assert [(p, path) for p, path, _ in opens] == [(pid, str(target)), (missing[0], str(tmp_path / "missing"))]
    assert opens[0][2] >= 0 and opens[1][2] == -errno.ENOENT
    assert stats.opens_repeated == 4999 + 5


def test_lost_events_are_counted_when_the_buffer_is_tiny(cgroup: Cgroup, workload: Path, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("x")
    opens = 2000
    with Sensor(ringbuf_pages=1) as tiny:
        tiny.watch(cgroup.id, "flood")
        # every open a new path, each an event; nobody reads meanwhile
        pid, _ = run_in(cgroup, [str(workload), "spread", str(target), str(opens)])
        received = tiny.drain()
        stats = tiny.unwatch(cgroup.id)
        total = tiny.losses()  # what the pump checks before reading each cgroup's count
    mine = [e for e in received if e.pid == pid]
    assert stats.lost > 0 and total == stats.lost
    assert stats.events == len(mine)
    assert stats.events + stats.lost == opens + 2  # the opens, the exec and the exit


def test_a_drain_with_a_limit_leaves_the_rest_for_the_next(sensor: Sensor, cgroup: Cgroup, workload: Path,
                                                           tmp_path: Path) -> None:
    """The pump reads in small chunks when it routes quietly: none is lost
    or read twice."""
    target = tmp_path / "f"
    target.write_text("x")
    sensor.watch(cgroup.id, "chunks")
    pid, _ = run_in(cgroup, [str(workload), "spread", str(target), "100"])
    time.sleep(0.1)
    chunks = []
    while chunk := sensor.drain(16):
        chunks.append([e for e in chunk if e.pid == pid])
    sensor.unwatch(cgroup.id)
    assert max(map(len, chunks)) == 16
    opens = [e.path for chunk in chunks for e in chunk if e.kind is EventKind.OPEN and e.path.startswith(str(target))]
    assert len(opens) == len(set(opens)) == 100


GETS_THEN_OPEN = """
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for _ in range(20):
    conn.request("GET", "/records/17")
    conn.getresponse().read()
print("called", flush=True)
sys.stdin.readline()
try:
    open("/nonexistent/after-the-calls")
except OSError:
    pass
"""


def test_allowed_api_calls_come_on_a_ring_of_their_own(sensor: Sensor, cgroup: Cgroup, records_api: LocalApi,
                                                        records_policy: Policy) -> None:
    """The records of calls the kernel allowed wait, unread, on a ring of
    their own, sent without a wakeup (the pump reads them at its lowest
    priority). On one ring a record behind them could not wake the reader
    either: it waited for the pump's next turn, up to 20 ms, however much it
    mattered. Here the tool's open after 20 allowed GETs wakes the reader,
    and comes without them; the GETs come, in order, from their own ring.
    None is lost, and the cgroup's count of events sent includes them."""
    assert isinstance(records_policy.network, Network)
    sensor.watch(cgroup.id, "calls")
    fd = cgroup.open_fd()
    try:
        sensor.attach_egress(fd)
    finally:
        os.close(fd)
    sensor.set_egress(cgroup.id, compile_rules(records_policy.network))
    sensor.set_api(cgroup.id, compile_api(records_policy.network))
    tool = subprocess.Popen(["/usr/bin/python3", "-c", GETS_THEN_OPEN, str(records_api.port)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=cgroup.enter)
    assert tool.stdin is not None and tool.stdout is not None
    try:
        assert tool.stdout.readline() == "called\n"
        events = sensor.drain(calls=False)  # the reader has caught up with everything but the calls
        tool.stdin.write("open\n")
        tool.stdin.flush()
        assert sensor.wait(5000), "the open did not wake the reader"
        woke = sensor.drain(calls=False)
        assert "/nonexistent/after-the-calls" in [e.path for e in woke if e.kind is EventKind.OPEN]
        events += woke
        tool.wait(timeout=10)
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.wait()
    events += sensor.drain(calls=False)  # its exit
    calls = sensor.drain_calls()
    stats = sensor.unwatch(cgroup.id)

    mine = [e for e in events if e.cgroup_id == cgroup.id]
    assert [e for e in mine if e.kind is EventKind.API] == []
    assert [(e.pid, e.kind, e.method, e.path, e.ret) for e in calls] == [(tool.pid, EventKind.API, "GET", "/records/17", 0)] * 20
    assert [e.ts_ns for e in calls] == sorted(e.ts_ns for e in calls)
    assert stats.lost == 0 and stats.events == len(mine) + len(calls)


def test_sandboxes_that_end_at_once_each_clear_their_own_rules(sensor: Sensor, records_policy: Policy) -> None:
    """Sandboxes that end at the same moment clear their rules from the same
    maps at once. A walk of a map starts over when the key it stands on is
    deleted, so it may list a key twice: each sandbox's keys go, without
    error, and another sandbox's stay."""
    from concurrent.futures import ThreadPoolExecutor

    assert isinstance(records_policy.network, Network)
    rules, dests = compile_rules(records_policy.network), compile_api(records_policy.network)
    ending, staying = [2**62 + i for i in range(2)], 2**62 + 2  # ids no cgroup has
    endpoints = dict.fromkeys(range(1, 2000), 0)
    with ThreadPoolExecutor(2) as pool:
        for _ in range(10):
            for cgroup_id in (*ending, staying):
                sensor.set_egress(cgroup_id, rules)
                sensor.set_api(cgroup_id, dests)
                sensor.learn_endpoints(cgroup_id, dests[0].id, endpoints)
            for done in [pool.submit(sensor.clear_egress, cgroup_id) for cgroup_id in ending]:
                done.result()
            left = Counter(k.cgroup_id for k in sensor.bpf["api_known"].keys())
            assert left == {staying: len(endpoints)}
    sensor.clear_egress(staying)
