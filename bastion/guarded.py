"""Sandboxes under the guard: one sensor, one sandbox manager and one guard
wired together, with the sandbox policy turned into the guard's rules and
response map. The one place that knows both sandbox and guard, and the one
way every path (node, `bastion sandbox run`, demo, agents) runs a sandbox:
the guard's rules are the only judge of what the kernel's facts mean."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ebpf.api import endpoint_hash
from ebpf.events import Event
from ebpf.sensor import Sensor
from common.verdicts import Verdict
from guard.alerts import Alert, ApiCallRecord
from guard.audit import AuditLog
from guard.endpoints import call_budget
from guard.monitor import Assignment, Guard, ResponseMap
from guard.profile import Profile
from guard.recorder import CallRecorder
from guard.rules import AllowedDestination, Rules
from guard.traces import Behaviour, Trace, after_exec, behaviour_of, split_endpoint_key, traces_from_events
from sandbox.manager import Sandbox, SandboxManager
from sandbox.policy import Network, Policy
from sandbox.quiet import QuietGroup
from sandbox.result import SandboxResult
from sandbox.seccomp import name_of


def rules_for(policy: Policy, workdir: Path) -> Rules:
    """The policy's allowlists as the guard's violation rules."""
    read_only = [str(p) for p in policy.filesystem.read_only]
    destinations: list[AllowedDestination] = []
    if isinstance(policy.network, Network):
        for dest in policy.network.destinations():
            destinations += [AllowedDestination(network=str(net), ports=dest.ports) for net in dest.networks()]
    return Rules(
        binaries=read_only,
        read_paths=[*read_only, str(workdir), "/dev/null", "/proc"],
        write_paths=[str(workdir), "/dev/null"],
        denied_paths=[str(p) for p in policy.filesystem.denied],
        destinations=destinations,
    )


def response_for(policy: Policy) -> ResponseMap:
    return ResponseMap(violation=policy.on_violation, anomaly=policy.response.anomaly,
                       novelty=policy.response.novelty, api=policy.response.api)


@dataclass(frozen=True)
class GuardedRun:
    """A finished run: its result (whose verdict is the strongest of what the
    sandbox enforced and what the guard decided) and the guard's alerts."""

    result: SandboxResult
    alerts: list[Alert]

    @property
    def verdict(self) -> Verdict:
        return self.result.verdict


@contextlib.contextmanager
def _threads_started_on(cpu: int | None) -> Iterator[tuple[int, ...]]:
    """Threads started inside run on `cpu` alone (they inherit the caller's
    CPUs); yields the CPUs left for everything else, () when not reserved."""
    if cpu is None:
        yield ()
        return
    mine = os.sched_getaffinity(0)
    if cpu not in mine or len(mine) < 2:
        raise ValueError(f"node_cpu: {cpu} is not one of this process's CPUs {sorted(mine)}, "
                         "or no other would be left for the sandboxes")
    os.sched_setaffinity(0, {cpu})
    try:
        yield tuple(sorted(mine - {cpu}))
    finally:
        os.sched_setaffinity(0, mine)


class GuardedSandboxes:
    """Runs sandboxes watched by the guard; alerts go to the audit log first,
    then to the sinks. Sandboxes labelled agent=NAME are held to NAME's profile.
    With node_cpu, the event pump and the audit writer run on that CPU and
    the sandboxes on the others: their work then never shares a CPU with
    the guard's, at the price of a CPU the sandboxes cannot use."""

    def __init__(self, sensor: Sensor, audit: AuditLog, profiles: Iterable[Profile] = (),
                 sinks: Sequence[Callable[[Alert], None]] = (), workdirs: Path | None = None,
                 api_sinks: Sequence[Callable[[ApiCallRecord], None]] = (), node_cpu: int | None = None) -> None:
        self.profiles = {p.meta.agent: p for p in profiles}
        self.audit = audit
        with _threads_started_on(node_cpu) as sandbox_cpus:
            # on the node's CPU too, where it has one: idle there, it waits for the guard's own threads
            self.recorder = CallRecorder(sensor, audit, QuietGroup, api_sinks)
            try:
                self.manager = SandboxManager(sensor, workdirs, ngram_events=bool(self.profiles),
                                              sequence_events=any(p.judges_live for p in self.profiles.values()),
                                              cpus=sandbox_cpus, recorder=self.recorder)
            except BaseException:
                self.recorder.close()
                raise
            # the manager is the guard's Enforcer
            self.guard = Guard(sensor, self.audit, enforcer=self.manager, assign=self._assign,
                               syscall_name=name_of, sinks=sinks, api_sinks=api_sinks)
        self.guard.load_profiles(list(self.profiles.values()))
        self.manager.listeners.append(self.guard)
        self.manager.preparers += [self.guard.prepare, self._learned_endpoints]
        # What exists now (modules, models, profiles) lives as long as the
        # node. A full collection rescans all of it holding the GIL, and the
        # pump waits: 50-70 ms for 140k objects, a pytest process's worth.
        gc.freeze()
        # A run's allowed calls come back as thousands of records at once.
        # Collecting generation 1 every 10 young passes (Python's default)
        # then scanned thousands of them at a time: ~1 ms holding the GIL,
        # with a held call waiting on the pump. Every 2 passes: ~0.35 ms.
        young, _, old = gc.get_threshold()
        gc.set_threshold(young, 2, old)

    def _assign(self, sb: Sandbox) -> Assignment:
        agent = sb.labels.get("agent")
        return Assignment(rules_for(sb.policy, sb.workdir), response_for(sb.policy), self.profiles.get(agent or ""))

    def _learned_endpoints(self, sb: Sandbox) -> None:
        """Where the agent's profile learned API calls, only the endpoints it
        saw pass in the kernel; the guard judges any other while it is held.
        Each passes as often in a run as its calls would not yet alert,
        against the most a benign run made to it; the guard judges the next."""
        profile = self.profiles.get(sb.labels.get("agent") or "")
        if profile is None or not profile.meta.endpoints:
            return
        by_host: dict[str, dict[int, int]] = {}
        for key in profile.meta.endpoints:
            method, host, path = split_endpoint_key(key)
            most = profile.meta.endpoint_calls.get(key)  # profiles from before calls were counted have none
            budget = call_budget(most) if most else 0
            by_host.setdefault(host, {})[endpoint_hash(method, path)] = budget
        for dest in sb.api_dests:
            self.manager.sensor.learn_endpoints(sb.id, dest.id, by_host.get(dest.host.lower(), {}))

    def run(self, command: Sequence[str], policy: Policy, timeout: float | None = None,
            labels: dict[str, str] | None = None) -> GuardedRun:
        """Run a command in a sandbox under the guard; nothing of it is kept
        once this returns."""
        alerts: list[Alert] = []

        def finish(sb: Sandbox) -> None:  # while the sandbox's sensor maps still exist
            alerts.extend(self.guard.finish(sb))

        sb = self.manager.start(command, policy, labels, timeout)
        result = self.manager.wait(sb, timeout, finishers=[finish])
        verdict = Verdict.strongest([result.verdict, *(a.action for a in alerts)])
        return GuardedRun(result.model_copy(update={"verdict": verdict}), alerts)

    def close(self) -> None:
        """Stop the sandboxes; the audit log stays open for its owner."""
        self.manager.close()
        self.recorder.close()
        self.guard.close()
        self.manager.sensor.load_known([])

    def __enter__(self) -> GuardedSandboxes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Recording:
    """One sandboxed run with every event the sensor sent for it."""

    result: SandboxResult
    events: list[Event]
    workdir: str

    def behaviour(self) -> Behaviour:
        return behaviour_of(after_exec(self.events), self.workdir)

    def traces(self, ngram_n: int) -> list[Trace]:
        return traces_from_events(after_exec(self.events), ngram_n, self.result.sandbox)


def record_runs(sensor: Sensor, commands: Sequence[Sequence[str]], policy: Policy,
                on_done: Callable[[Recording], None] | None = None) -> list[Recording]:
    """Run commands in sandboxes with every syscall id sent (the sensor's
    known map must be empty): the events profiles are trained and scored from."""
    if len(sensor.bpf["known"]):
        raise ValueError("the sensor's known n-gram map is loaded; recording runs need it empty")
    runs: dict[str, list[Event]] = {}
    workdirs: dict[str, str] = {}

    def collect(sb: Sandbox, events: list[Event]) -> None:
        runs.setdefault(sb.name, []).extend(events)
        workdirs[sb.name] = str(sb.workdir)

    # the syscall ids come in batches; n-gram events as well would send one per syscall
    manager = SandboxManager(sensor, listeners=[collect], sequence_events=True)
    out = []
    try:
        for cmd in commands:
            result = manager.run(cmd, policy)
            out.append(Recording(result, runs.pop(result.sandbox, []), workdirs.pop(result.sandbox, "")))
            if on_done:
                on_done(out[-1])
    finally:
        manager.close()
    return out
