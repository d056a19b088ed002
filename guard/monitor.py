"""The live guard: turns each sandbox's event batches into findings, decides
the verdict its response map names, has the Enforcer apply it, and records
the alert in the audit log before any sink sees it."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ebpf.api import OVER_BUDGET, template
from ebpf.events import EAGAIN, Event, EventKind  # EAGAIN: an api_call's ret while the kernel holds it
from ebpf.sensor import WATCH_DETECT_NOVEL, Sensor, SensorError
from common.verdicts import Verdict
from guard.alerts import Alert, ApiCallRecord, Evidence
from guard.audit import AuditLog
from guard.audit_writer import AuditWriter, call_body
from guard.detectors import window_means
from guard.profile import Profile
from guard.endpoints import ALERT_AT, call_budget, many_calls_score, unseen_call_score
from guard.rules import Finding, Rules, api_request, check, novelty
from guard.traces import endpoint_key

if TYPE_CHECKING:
    from guard.sequence import LiveState  # torch, imported only by profiles that hold a model

FREQUENCY_EVERY_S = 0.1  # how often a running sandbox's syscall mix is scored
AT_THRESHOLD = 1.0  # live, each detector alerts once its calibrated ratio passes its own threshold


class Target(Protocol):
    """A watched sandbox, as the guard sees it."""

    name: str
    labels: dict[str, str]
    workdir: Path

    @property
    def id(self) -> int: ...


class Enforcer(Protocol):
    """Applies an enforced verdict (quarantine, freeze or kill) to a running
    sandbox and returns when it, or a stronger one already taken, took hold
    (CLOCK_MONOTONIC ns, the clock of the sensor's timestamps)."""

    def enforce(self, target: Any, verdict: Verdict, reason: str) -> int: ...

    def resume(self, target: Any, pid: int) -> None:
        """Continue a process of the sandbox that the kernel stopped (SIGSTOP)."""


@dataclass(frozen=True)
class ResponseMap:
    """The verdict for each kind of finding."""

    violation: Verdict = Verdict.KILL
    anomaly: Verdict = Verdict.QUARANTINE
    novelty: Verdict = Verdict.ALERT
    api: Verdict = Verdict.QUARANTINE

    def verdict(self, detector: str) -> Verdict:
        if detector == "rule":
            return self.violation
        if detector == "api":
            return self.api
        return self.novelty if detector == "novelty" else self.anomaly


@dataclass(frozen=True)
class Assignment:
    """What the guard holds a sandbox to."""

    rules: Rules
    response: ResponseMap
    profile: Profile | None = None


@dataclass
class _Thread:
    """One thread's sequence as the model has read it."""

    pid: int
    state: LiveState | None = None  # None before its first syscall
    next_pos: int = 0  # the position the next batch must start at
    read: int = 0  # syscalls the model has read since its (re)start
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # NLLs of the newest window


@dataclass
class _State:
    target: Target
    assignment: Assignment
    reported: set[str] = field(default_factory=set)
    strongest: Verdict = Verdict.ALLOW
    quarantined_ns: int = 0  # when the kernel quarantined it at an n-gram, before this process heard of it
    running: bool = False  # the command proper has been exec'd; before that only the launcher ran
    counted: dict[int, int] = field(default_factory=dict)  # the sensor's syscall counts when last read
    scored: dict[int, float] = field(default_factory=dict)  # the syscall mix last scored
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=0))  # the sequence stream's last window of syscall ids
    last_frequency: float = 0.0
    threads: dict[int, _Thread] = field(default_factory=dict)  # tid -> where its sequence stands
    alerts: list[Alert] = field(default_factory=list)
    # acted on, its alert not yet made: alerts are made after the batch's
    # verdicts, so that a held call is released without waiting on them
    pending: list[tuple[Finding, Verdict, int]] = field(default_factory=list)


def _evidence(ev: Event) -> Evidence:
    detail = ev.path or (f"{ev.addr}:{ev.port}" if ev.addr else "") or (str(ev.ngram) if ev.ngram else "")
    return Evidence(kind=ev.kind.value, ts_ns=ev.ts_ns, pid=ev.pid, comm=ev.comm, detail=detail)


class Guard:
    """A SandboxManager listener: call it with (sandbox, events)."""

    def __init__(self, sensor: Sensor, audit: AuditLog, enforcer: Enforcer,
                 assign: Callable[[Target], Assignment], syscall_name: Callable[[int], str] = str,
                 sinks: Sequence[Callable[[Alert], None]] = (),
                 api_sinks: Sequence[Callable[[ApiCallRecord], None]] = ()) -> None:
        self.sensor = sensor
        self.enforcer = enforcer
        self.assign = assign
        self.syscall_name = syscall_name
        self.writer = AuditWriter(audit, api_sinks, sinks)
        self._states: dict[int, _State] = {}
        self._lock = threading.Lock()

    def load_profiles(self, profiles: Sequence[Profile]) -> int:
        """Put the profiles' n-grams in the sensor's known map, so that only
        novel ones cross into user space."""
        for p in profiles:
            if p.meta.ngram_n != self.sensor.ngram_n:
                raise ValueError(f"profile {p.meta.agent} uses {p.meta.ngram_n}-grams; the sensor counts "
                                 f"{self.sensor.ngram_n}-grams")
        return self.sensor.load_known({g for p in profiles for g in p.known_ngrams()})

    def state(self, target: Target) -> _State:
        with self._lock:
            st = self._states.get(target.id)
            if st is None:
                assignment = self.assign(target)
                window = assignment.profile.meta.window if assignment.profile is not None else 0
                st = self._states[target.id] = _State(target, assignment, recent=deque(maxlen=window))
            return st

    def prepare(self, target: Target) -> Callable[[], object]:
        """Before the sandbox's command runs: the kernel counts its threads'
        novel n-grams over the profile's window and frame and, where the
        policy answers an anomaly with quarantine or more, quarantines it
        itself at the n-gram that passes the profile's threshold, so that no
        egress waits on this process catching up. The verdict proper (and
        its alert) follows here, from that n-gram's event. Returns what
        forgets the sandbox if its start fails after this."""
        st = self.state(target)
        profile = st.assignment.profile
        if profile is not None:
            m = profile.meta
            limit = 0
            if st.assignment.response.anomaly.rank >= Verdict.QUARANTINE.rank:
                limit = profile.ngrams.count_limit(profile.score_at("ngram", AT_THRESHOLD), m.window)
            self.sensor.count_novel(target.id, m.window, m.frame, limit)
        return lambda: self._forget(target)

    def alerts(self, target: Target) -> list[Alert]:
        return list(self.state(target).alerts)

    # the listener --------------------------------------------------------
    def __call__(self, target: Target, events: list[Event]) -> None:
        st = self.state(target)
        workdir = str(target.workdir)
        profile = st.assignment.profile
        # once the anomaly verdict holds, more novel n-grams cannot change it
        score_ngrams = profile is not None and st.strongest.rank < st.assignment.response.anomaly.rank
        sequences: list[Event] = []
        calls: list[tuple[Event, bool]] = []  # each API call, and whether it left the sandbox
        exited: set[int] = set()
        for ev in events:
            # API calls' records may be routed before the exec's (allowed ones
            # come on a ring of their own), and only the command makes them
            if not st.running and ev.kind is not EventKind.API:
                if ev.kind is not EventKind.EXEC or ev.ret != 0:
                    continue
                st.running = True
            if ev.kind is EventKind.SEQUENCE:
                sequences.append(ev)
                st.recent.extend(ev.ngram)
                continue
            if ev.kind is EventKind.EXIT:
                exited.add(ev.pid)
            if ev.kind is EventKind.NGRAM:
                if ev.quarantined and not st.quarantined_ns:
                    st.quarantined_ns = ev.ts_ns
                finding = self._ngram(st, profile, ev) if score_ngrams else None  # type: ignore[arg-type]
            elif ev.kind is EventKind.API and ev.ret == -EAGAIN:
                calls.append((ev, self._held_call(st, profile, ev)))
                continue
            elif ev.kind is EventKind.API and ev.reason == OVER_BUDGET:
                calls.append((ev, True))
                finding = self._many_calls(st, profile, ev)
            else:
                if ev.kind is EventKind.API:
                    calls.append((ev, ev.ret == 0))
                finding = check(ev, st.assignment.rules, self.syscall_name)
                if finding is None and profile is not None:
                    finding = novelty(ev, profile.behaviour, workdir)
            if finding is not None:
                self._act(st, finding)
                if score_ngrams and st.strongest.rank >= st.assignment.response.anomaly.rank:
                    score_ngrams = False
                    self._stop_ngrams(st)
        if profile is not None and profile.judges_live:
            if sequences and score_ngrams:
                self._sequence(st, profile, sequences)
            if exited:
                self._threads_ended(st, profile, [t for t, th in st.threads.items() if th.pid in exited])
        if profile is not None and time.monotonic() - st.last_frequency >= FREQUENCY_EVERY_S:
            self._frequency(st, profile)
        # after the batch's verdicts, on the log's own thread: a held call is released before any fsync
        self._audit_api_calls(st, calls)
        self._publish(st)

    def _held_call(self, st: _State, profile: Profile | None, ev: Event) -> bool:
        """An allowed call to an endpoint the profile never saw, held by the
        kernel: score it, act, and let it go unless the verdict stops the
        sandbox; a call scored like the learned ones is decided in the
        kernel from now on. True when the call goes on its way."""
        learned = profile.meta.endpoints if profile is not None else {}
        score = unseen_call_score(learned, ev.method, ev.host, ev.path, ev.arg)
        what = f"API call {api_request(ev)} never seen in training"
        if score >= 1.0:
            self._act(st, Finding("api", f"{what}, unlike every learned call", ev, score, 1.0))
        else:
            if score >= ALERT_AT:
                self._act(st, Finding("novelty", what, ev, score, 1.0))
            self.sensor.allow_endpoint(st.target.id, ev.api_dest, ev.endpoint)
        if not ev.tls:
            return False  # dropped; a retry passes if the endpoint was allowed
        if st.strongest.rank < Verdict.FREEZE.rank:
            # a quarantined sandbox's TLS records are dropped in the kernel after the release
            self.sensor.release_thread(ev.tid)
            self.enforcer.resume(st.target, ev.pid)
        return score < 1.0 and st.strongest.rank < Verdict.QUARANTINE.rank

    def _many_calls(self, st: _State, profile: Profile | None, ev: Event) -> Finding | None:
        """A call to a learned endpoint past its budget for the run, which
        the kernel let pass: score the run's count against the most calls
        a benign run made to it, and raise the budget to the count that
        next changes the verdict."""
        key = endpoint_key(ev.method, ev.host, ev.path)
        most = profile.meta.endpoint_calls.get(key) if profile is not None else None
        if most is None:
            return None  # its budget was not the profile's
        made = self.sensor.calls_made(st.target.id, ev.api_dest, ev.endpoint)
        score = many_calls_score(most, made)
        if score < 1.0:
            self.sensor.allow_endpoint(st.target.id, ev.api_dest, ev.endpoint, call_budget(most, made))
        what = f"{made} calls to {ev.method} {ev.host}{template(ev.path)} in one run; training's most was {most}"
        if score >= 1.0:
            return Finding("api", what, ev, score, 1.0)
        return Finding("novelty", what, ev, score, 1.0) if score >= ALERT_AT else None

    def _audit_api_calls(self, st: _State, calls: list[tuple[Event, bool]]) -> None:
        """Every request the kernel read goes to the audit log, allowed or
        not, and then to the API-call sinks with its place in the log. The
        records are plain dicts: this runs for every allowed call."""
        if not calls:
            return
        now = time.time()
        self.writer.calls([call_body(st.target.name, st.target.labels, ev, allowed, now) for ev, allowed in calls])

    def _stop_ngrams(self, st: _State) -> None:
        """Stop the kernel sending novel n-grams that can no longer change
        the verdict, so the events that still can arrive without delay."""
        try:
            self.sensor.set_flag(st.target.id, WATCH_DETECT_NOVEL, False)
        except SensorError:
            pass  # the sandbox has ended already

    def finish(self, target: Target) -> list[Alert]:
        """Score the last syscall mix (call before the sandbox's maps are
        freed) and forget the sandbox; returns its alerts."""
        st = self.state(target)
        profile = st.assignment.profile
        if profile is not None:
            self._frequency(st, profile, final=True)
            if profile.judges_live and st.threads:
                self._threads_ended(st, profile, list(st.threads))
            self._publish(st)
        self.writer.flush()  # its alerts and API calls are in the log, and sunk, when its run returns
        self._forget(target)
        return st.alerts

    def _forget(self, target: Target) -> None:
        with self._lock:
            self._states.pop(target.id, None)

    def close(self) -> None:
        self.writer.close()

    # detectors -----------------------------------------------------------
    def _ngram(self, st: _State, profile: Profile, ev: Event) -> Finding | None:
        score = profile.ngrams.score_counts(ev.in_window, ev.in_frame, profile.meta.window)
        combined = float(profile.ratio("ngram", score))
        if combined <= AT_THRESHOLD and not ev.quarantined:
            return None
        return Finding("ngram", "syscall sequence unlike the profile", ev, combined, AT_THRESHOLD)

    def _sequence(self, st: _State, profile: Profile, events: list[Event]) -> None:
        """Read each thread's new syscalls with the model, all threads in one
        batch, and judge every full window that ends in them."""
        assert profile.sequence is not None and profile.meta.sequence is not None
        size = profile.meta.sequence.window
        by_tid: dict[int, list[Event]] = {}
        for ev in events:
            by_tid.setdefault(ev.tid, []).append(ev)
        tids, batches, states = [], [], []
        for tid, evs in by_tid.items():
            th = st.threads.setdefault(tid, _Thread(evs[0].pid))
            calls: list[int] = []
            for ev in sorted(evs, key=lambda e: e.arg):
                if ev.arg != th.next_pos and (th.state is not None or calls):
                    # lost events: read on from a fresh start
                    th.state, th.tail, th.read, calls = None, th.tail[:0], 0, []
                calls += ev.ngram
                th.next_pos = ev.arg + len(ev.ngram)
            tids.append(tid)
            batches.append(np.array(calls, np.int64))
            states.append(th.state)
        nlls, new = profile.sequence.step(batches, states)
        worst: tuple[float, Event | None] = (-np.inf, None)
        for tid, nll, state in zip(tids, nlls, new):
            th = st.threads[tid]
            th.state = state
            th.read += len(nll)
            seen = np.concatenate([th.tail, nll])
            th.tail = seen[-(size - 1):] if size > 1 else seen[:0]
            if len(seen) >= size:
                score = float(window_means(seen, size).max())
                if score > worst[0]:
                    worst = (score, by_tid[tid][-1])
        self._judge_sequence(st, profile, *worst)

    def _threads_ended(self, st: _State, profile: Profile, tids: list[int]) -> None:
        """A thread that ended before filling one window is judged as one
        window, as training judged short traces; then it is forgotten."""
        assert profile.meta.sequence is not None
        worst: tuple[float, Event | None] = (-np.inf, None)
        for tid in tids:
            th = st.threads.pop(tid)
            if 0 < th.read < profile.meta.sequence.window:
                score = float(th.tail.mean())
                if score > worst[0]:
                    worst = (score, Event(kind=EventKind.SEQUENCE, ts_ns=time.monotonic_ns(), cgroup_id=st.target.id,
                                          pid=th.pid, tid=tid, comm="", arg=th.next_pos - th.read))
        self._judge_sequence(st, profile, *worst)

    def _judge_sequence(self, st: _State, profile: Profile, score: float, ev: Event | None) -> None:
        if ev is None:
            return
        ratio = float(profile.ratio("sequence", score))
        if ratio > AT_THRESHOLD:
            self._act(st, Finding("sequence", "syscall sequence the model finds unlikely", ev, ratio,
                                  AT_THRESHOLD))

    def _frequency(self, st: _State, profile: Profile, final: bool = False) -> None:
        st.last_frequency = time.monotonic()
        counts = self.sensor.syscall_counts(st.target.id)
        delta: dict[int, float] = {}
        total = 0
        for nr, count in counts.items():
            new = count - st.counted.get(nr, 0)
            if new:
                delta[nr] = new
                total += new
        window = profile.meta.window
        if total < window:
            if not (final and total >= profile.meta.ngram_n):
                return
            # The last few syscalls are judged in the run's last window, as the
            # trained windows that end a run are: alone, a few exit syscalls are
            # unlike any window (13 false alarms in 200 benign runs). That window
            # is the sequence stream's last syscalls where it is on; otherwise
            # they are filled up with the mix read before them, scaled, which
            # misjudges a tail whose neighbours differ from that whole mix.
            if len(st.recent) == window:
                delta = {}
                for nr in st.recent:
                    delta[nr] = delta.get(nr, 0) + 1
            else:
                before = sum(st.scored.values())
                for nr, count in st.scored.items():
                    delta[nr] = delta.get(nr, 0) + count * (window - total) / before
        st.counted, st.scored = counts, delta
        score = float(profile.frequency.score_counts(profile.frequency.counts_of(delta))[0])
        combined = float(profile.ratio("frequency", score))
        if combined > AT_THRESHOLD:
            self._act(st, Finding("frequency", "syscall mix unlike the profile", None, combined,
                                  AT_THRESHOLD))

    # response ------------------------------------------------------------
    def _act(self, st: _State, finding: Finding) -> None:
        verdict = st.assignment.response.verdict(finding.detector)
        key = f"{finding.detector}:{finding.rule}"
        if verdict is Verdict.ALLOW or (key in st.reported and verdict.rank <= st.strongest.rank):
            return  # one alert per finding unless the response escalates
        st.reported.add(key)
        enforced = 0
        if verdict.enforced:
            enforced = self.enforcer.enforce(st.target, verdict, f"{finding.detector}: {finding.rule}")
            if verdict is Verdict.QUARANTINE and st.quarantined_ns:
                enforced = min(enforced, st.quarantined_ns)
        st.strongest = Verdict.strongest([st.strongest, verdict])
        st.pending.append((finding, verdict, enforced))

    @staticmethod
    def _alert(st: _State, finding: Finding, verdict: Verdict, enforced: int) -> Alert:
        labels = st.target.labels
        return Alert(
            sandbox=st.target.name,
            agent=labels.get("agent"),
            step=labels.get("step"),
            tool_call=labels.get("tool_call"),
            tool_args=labels.get("tool_args"),
            detector=finding.detector,
            rule=finding.rule,
            score=finding.score,
            threshold=finding.threshold,
            severity=verdict.severity,
            action=verdict,
            evidence=[_evidence(finding.event)] if finding.event else [],
            event_ts_ns=finding.event.ts_ns if finding.event else 0,
            enforced_ts_ns=enforced,
        )

    def _publish(self, st: _State) -> None:
        """The batch's alerts to the audit log, and then to the sinks, from
        the writer's thread."""
        if not st.pending:
            return
        batch = [self._alert(st, *acted) for acted in st.pending]
        st.pending = []
        self.writer.alerts(batch)
        st.alerts += batch
