"""Sandbox lifecycle: create, watch, start, enforce, wait, clean up.

One manager per process holds the sensor and a pump thread that routes its
events to the sandboxes they belong to. The manager records facts (what the
kernel refused, and where) and acts only on its own lifecycle: the wall
timeout, lost events, a dead pump. What a fact means is the guard's to
judge; the manager is the guard's Enforcer. Fail closed: a sandbox starts
only once its cgroup is watched and its egress programs are attached; lost
or undecodable events trigger the policy's action; if the pump dies, every
sandbox is killed; if the supervising process dies, the sandbox's init dies
with it and the kernel kills the rest, and the next manager removes any
orphaned Bastion cgroup and workdir it finds."""

from __future__ import annotations

import logging
import math
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from pydantic import TypeAdapter

from ebpf.api import KernelApiDest
from ebpf.events import AF_UNIX, Event, EventKind
from ebpf.sensor import CgroupStats, Sensor, SensorError
from sandbox import landlock
from sandbox.cgroup import Cgroup, CgroupError, bastion_root
from sandbox.egress import LIBC_PROBE_SOCKETS, compile_api, compile_rules, tcp_ports
from sandbox.landlock import LandlockError
from sandbox.launch import (Launch, LaunchError, await_exec, environment_block, launcher_binary, memfd_of,
                            mount_tmpfs, umount)
from sandbox.limits import Controllers, v1_leaf
from common.priority import real_time
from common.verdicts import Verdict
from sandbox.policy import Policy
from sandbox.result import ApiCall, Denial, SandboxResult
from sandbox.seccomp import SOCKET_REFUSALS, Filter, name_of, resolve

log = logging.getLogger("bastion.sandbox")
_API_CALLS = TypeAdapter(list[ApiCall])

PREFIX = "sbx"
EACCES, EPERM = 13, 1
Listener = Callable[["Sandbox", list[Event]], None]
Finisher = Callable[["Sandbox"], object]
# Called before a sandbox's command starts; returns what undoes it if the start then fails, or None.
Preparer = Callable[["Sandbox"], Callable[[], object] | None]


class SandboxError(RuntimeError):
    pass


class Recorder(Protocol):
    """Takes the ring of allowed API calls' records off the pump: records
    them in a process of its own (guard.recorder) and gives a sandbox's
    back when its command has ended."""

    def watch(self, sb: Sandbox) -> None:
        """Before its command starts."""

    def collect(self, sb: Sandbox) -> list[bytes]:
        """Its calls as JSON arrays of objects with (at least) ApiCall's fields."""

    def check(self) -> str | None:
        """Why it can no longer record, if it cannot: then nothing may run."""


class _Capture:
    """Reads a pipe to EOF, keeping at most `cap` bytes."""

    def __init__(self, pipe: IO[bytes], cap: int) -> None:
        self.data = bytearray()
        self.truncated = False
        self._thread = threading.Thread(target=self._read, args=(pipe, cap), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[bytes], cap: int) -> None:
        with pipe:
            while chunk := pipe.read(65536):
                room = cap - len(self.data)
                if len(chunk) > room:
                    self.truncated = True
                self.data += chunk[: max(room, 0)]

    def text(self) -> str:
        self._thread.join(timeout=5)
        return self.data.decode("utf-8", "replace")


@dataclass
class Sandbox:
    name: str
    cgroup: Cgroup
    controllers: Controllers
    policy: Policy
    workdir: Path
    owns_workdir: bool
    command: list[str]
    labels: dict[str, str]
    trapped: list[str]  # denied syscalls this kernel lacks: seccomp traps them
    started: float = field(default_factory=time.monotonic)
    proc: subprocess.Popen[bytes] | None = None
    stdout: _Capture | None = None
    stderr: _Capture | None = None
    received: int = 0
    lost_seen: int = 0
    undecodable_before: int = 0  # the sensor's count of unattributable bad records when it started
    denials: list[Denial] = field(default_factory=list)
    api_calls: list[Event] = field(default_factory=list)  # its api_call events; models only in the result
    recorded: list[ApiCall] = field(default_factory=list)  # its allowed calls, from the recorder
    api_dests: list[KernelApiDest] = field(default_factory=list)  # its destinations with API rules
    actions: list[str] = field(default_factory=list)
    stopped_by: str | None = None
    strongest: Verdict = Verdict.ALLOW  # the strongest verdict enforced
    enforced_ns: int = 0  # when it took hold
    lock: threading.Lock = field(default_factory=threading.Lock)
    removed: bool = False  # its cgroup is being removed: nothing is left to enforce on

    @property
    def id(self) -> int:
        return self.cgroup.id


def api_call(ev: Event) -> ApiCall:
    return ApiCall(method=ev.method, host=ev.host, path=ev.path, port=ev.port, tls=ev.tls, body_bytes=ev.arg,
                   allowed=ev.ret == 0, reason=ev.reason, ts_ns=ev.ts_ns, pid=ev.pid)


def _denial(ev: Event, sb: Sandbox) -> Denial | None:
    """What the kernel refused, if the event records a refusal: a fact, which
    the guard's rules judge."""
    match ev.kind:
        case EventKind.DENY:
            kind, detail = "egress", f"{ev.path or f'{ev.addr}:{ev.port}'} via {ev.hook}"
        case EventKind.API if ev.ret < 0:
            kind, detail = "api", api_call(ev).line()
        case EventKind.SYSCALL if ev.arg:
            kind = "syscall"
            detail = (f"a syscall seccomp trapped: a denied one this kernel lacks ({', '.join(sb.trapped) or 'none'}), "
                      "or one made through another ABI (32-bit int 0x80, x32), which kills")
        case EventKind.SYSCALL if name_of(ev.syscall) == "socket" and ev.ret in SOCKET_REFUSALS:
            kind, detail = "syscall", f"socket of a family or protocol the policy does not allow = {ev.ret}"
        case EventKind.SYSCALL:
            kind, detail = "syscall", f"{name_of(ev.syscall)} = {ev.ret}"
        case EventKind.CONNECT | EventKind.SENDTO if ev.ret == -EACCES and ev.family != AF_UNIX:  # Landlock's TCP wall
            kind, detail = "egress", f"{ev.addr}:{ev.port} via landlock"
        case EventKind.OPEN | EventKind.EXEC if ev.ret in (-EACCES, -EPERM):
            kind, detail = ev.kind.value, f"{ev.path} = {ev.ret}"
        case _:
            return None
    return Denial(kind=kind, detail=detail, ts_ns=ev.ts_ns, pid=ev.pid)


class SandboxManager:
    """Runs commands in sandboxes watched by one sensor."""

    def __init__(self, sensor: Sensor, workdirs: Path | None = None, listeners: Sequence[Listener] = (),
                 finishers: Sequence[Finisher] = (), ngram_events: bool = False,
                 sequence_events: bool = False, cpus: Iterable[int] = (),
                 recorder: Recorder | None = None) -> None:
        """Listeners get each sandbox's event batches; finishers are called
        when its command has ended, while its sensor maps still exist. With
        ngram_events, n-grams missing from the sensor's known map are sent
        (all of them while it is empty: the training stream); with
        sequence_events, every syscall id, in batches per thread. With cpus,
        sandboxes run on those CPUs only and may not move themselves. With
        a recorder, the API calls the kernel allowed are its to record, not
        the listeners'; they are in the run's result."""
        self.sensor = sensor
        self.cpus = tuple(sorted(set(cpus)))
        self.workdirs = workdirs or Path(tempfile.gettempdir()) / "bastion-sandboxes"
        self.workdirs.mkdir(parents=True, exist_ok=True)
        self.listeners = list(listeners)
        self.finishers = list(finishers)
        self.preparers: list[Preparer] = []  # called once its maps are set, before its command starts
        self.ngram_events = ngram_events
        self.sequence_events = sequence_events
        self.recorder = recorder
        self._active: dict[int, Sandbox] = {}
        self._seccomp_programs: dict[tuple[tuple[str, ...], tuple[str, ...]], bytes] = {}
        self._stop = threading.Event()
        self.pump_error: BaseException | None = None
        self._losses_seen = -1  # the sensor's losses at the last check (-1: none yet)
        self.orphans = kill_orphans(self.workdirs)  # for the owner's audit log
        self._pump = threading.Thread(target=self._run_pump, name="sandbox-pump", daemon=True)
        self._pump.start()

    # starting ------------------------------------------------------------
    def start(self, command: Sequence[str], policy: Policy, labels: dict[str, str] | None = None,
              timeout: float | None = None) -> Sandbox:
        """Everything that can fail on the policy (names to resolve, rules
        the kernel must accept) is done before any cgroup or directory
        exists; whatever a failed start made is removed before it raises."""
        if self.pump_error is not None:
            raise SandboxError(f"the event pump has died ({self.pump_error}); no sandbox can be watched")
        if timeout is not None and not 0 < timeout < math.inf:  # a request may only shorten the policy's
            raise SandboxError(f"timeout: {timeout} is not a positive, finite number of seconds")
        if not command:
            raise SandboxError("no command to run")
        isolated = policy.network == "none"
        egress = [] if isolated else compile_rules(policy.network)  # type: ignore[arg-type]
        api = [] if isolated else compile_api(policy.network)  # type: ignore[arg-type]
        name = f"{PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        made: list[Callable[[], object]] = []  # undo steps, newest last
        ruleset = None
        fds: list[int] = []  # the launcher's copies, closed once it runs
        try:
            launcher = launcher_binary()
            ruleset = landlock.Ruleset([] if isolated else tcp_ports(policy.network))  # type: ignore[arg-type]
            trapped = self.sensor.report_attempts(policy.denied_syscalls)
            denied = [*policy.denied_syscalls, *(["sched_setaffinity"] if self.cpus else [])]
            fds.append(seccomp_fd := self._seccomp_program(denied, trapped))
            cg = Cgroup.create(name)
            made.append(cg.remove)
            controllers = Controllers.create(cg, policy.limits)
            made.append(controllers.remove)
            workdir, owns = self._workdir(name, policy)
            if owns:
                made.append(lambda: remove_workdir(workdir))
            self._allow_paths(ruleset, policy, workdir)
            sb = Sandbox(name, cg, controllers, policy, workdir, owns, list(command), dict(labels or {}), trapped)
            self.sensor.watch(cg.id, name, detect_novel=self.ngram_events, sequences=self.sequence_events,
                              sensitive=[resolve(n) for n in policy.denied_syscalls])
            made.append(lambda: self.sensor.unwatch(cg.id))
            sb.undecodable_before = self.sensor.decode_errors(cg.id)
            fd = cg.open_fd()
            try:
                self.sensor.attach_egress(fd)
            finally:
                os.close(fd)
            self.sensor.set_egress(cg.id, egress)
            self.sensor.set_api(cg.id, api)
            sb.api_dests = api
            for prepare in self.preparers:
                if (undo := prepare(sb)) is not None:
                    made.append(undo)
            if (recorder := self.recorder) is not None:
                recorder.watch(sb)
                made.append(lambda: recorder.collect(sb))  # so it forgets the name; nothing ran, nothing recorded
            self.sensor.set_unix_sockets(cg.id, policy.unix_sockets, quiet=LIBC_PROBE_SOCKETS)
            if not self.sensor.is_watched(cg.id):
                raise SandboxError(f"the sensor does not confirm that {name} is watched")
            report, report_w = os.pipe2(os.O_CLOEXEC)
            fds += [report, report_w]
            fds.append(env_fd := memfd_of("bastion-env", environment_block(policy.environment(dict(os.environ)))))
            launch = Launch(
                procs_files=controllers.procs_files,
                isolate_network=isolated,
                workdir=workdir,
                uid=policy.user.uid,
                gid=policy.user.gid,
                rlimits=controllers.rlimits(policy.limits),
                landlock_fd=ruleset.fd,
                seccomp_fd=seccomp_fd,
                report_fd=report_w,
                env_fd=env_fd,
                cpus=self.cpus,
                # the TLS probes read requests only for API rules: without any, a sandbox's TLS pays no trap
                binds=tuple((library.copy, library.path) for library in self.sensor.tls_libraries) if api else (),
            )
            self._active[cg.id] = sb
            made.append(lambda: self._active.pop(cg.id, None))
            sb.started = time.monotonic()
            sb.proc = subprocess.Popen(
                launch.argv(launcher, list(command)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={},  # the tool's comes through env_fd
                pass_fds=launch.pass_fds,
            )
            made.append(lambda: _reap(sb))
            os.close(report_w)
            fds.remove(report_w)
            failure = await_exec(report)
            if failure:
                raise LaunchError(failure)
            assert sb.proc.stdout is not None and sb.proc.stderr is not None
            sb.stdout = _Capture(sb.proc.stdout, policy.limits.output_bytes)
            sb.stderr = _Capture(sb.proc.stderr, policy.limits.output_bytes)
            log.info("sandbox started", extra={"fields": {"sandbox": name, "command": list(command), **(labels or {})}})
            return sb
        except BaseException as exc:
            for undo in reversed(made):
                try:
                    undo()
                except Exception as cleanup:  # keep undoing; the first error is the one to report
                    log.error("cleanup after a failed start", extra={"fields": {"sandbox": name, "error": str(cleanup)}})
            if isinstance(exc, OSError | subprocess.SubprocessError | CgroupError | SensorError | LandlockError |
                          LaunchError):
                raise SandboxError(f"cannot start {list(command)[:1]} in a sandbox: {exc}") from exc
            raise
        finally:
            if ruleset is not None:
                ruleset.close()
            for fd in fds:
                os.close(fd)

    def _seccomp_program(self, denied: list[str], trapped: list[str]) -> int:
        """A memfd holding the policy's seccomp program for the launcher,
        compiled once per (denied, trapped) for the manager's life."""
        key = (tuple(denied), tuple(trapped))
        program = self._seccomp_programs.get(key)
        if program is None:
            flt = Filter(denied, trap=trapped)
            try:
                program = self._seccomp_programs[key] = flt.program()
            finally:
                flt.release()
        return memfd_of("bastion-seccomp", program)

    def _workdir(self, name: str, policy: Policy) -> tuple[Path, bool]:
        """The policy's named workdir, or a fresh tmpfs bounded in size and
        file count (its pages are charged to the sandbox's memory too)."""
        if policy.filesystem.workdir is not None:
            return policy.filesystem.workdir, False
        workdir = self.workdirs / name
        workdir.mkdir(mode=0o700)
        limits, user = policy.limits, policy.user
        options = (f"size={limits.workdir_mb}m,nr_inodes={limits.workdir_files},mode=0700,"
                   f"uid={user.uid},gid={user.gid}")
        try:
            mount_tmpfs(workdir, options)
        except OSError:
            workdir.rmdir()
            raise
        return workdir, True

    @staticmethod
    def _allow_paths(ruleset: landlock.Ruleset, policy: Policy, workdir: Path) -> None:
        denied = tuple(policy.filesystem.denied)
        for path in policy.filesystem.read_only:
            for allowed in landlock.expand_denied(path, denied):
                ruleset.allow(allowed, landlock.READ_EXEC)
        ruleset.allow(workdir, landlock.READ_WRITE)
        ruleset.allow(Path("/dev/null"), landlock.READ | landlock.WRITE_FILE)

    # waiting -------------------------------------------------------------
    def wait(self, sb: Sandbox, timeout: float | None = None,
             finishers: Sequence[Finisher] = ()) -> SandboxResult:
        """Wait for the command (killing it at the wall timeout, or at the
        shorter `timeout`), call the finishers while its sensor maps still
        exist, then clean up."""
        assert sb.proc is not None
        limit = sb.policy.limits.wall_timeout_s
        if timeout is not None:
            limit = min(timeout, limit)
        if not _exits_within(sb.proc, max(limit - (time.monotonic() - sb.started), 0)):
            self.enforce(sb, Verdict.KILL, f"wall timeout of {limit:g}s")
        sb.proc.wait()
        duration = time.monotonic() - sb.started
        sb.recorded = self._recorded(sb)
        self._settle(sb, len(sb.recorded))
        for finisher in [*self.finishers, *finishers]:
            finisher(sb)
        return self._finish(sb, duration)

    def run(self, command: Sequence[str], policy: Policy, timeout: float | None = None,
            labels: dict[str, str] | None = None) -> SandboxResult:
        """Start and wait; facts only, no judge (see bastion.guarded)."""
        return self.wait(self.start(command, policy, labels, timeout), timeout)

    def _recorded(self, sb: Sandbox) -> list[ApiCall]:
        """The allowed API calls the recorder took for sb; a recorder that
        fails counts as lost events. A chunk at a time, Python's lock free
        between them: a thread that holds it longer than the switch
        interval (5 ms) keeps the real-time pump waiting, and a held call
        with it, all the more where this thread waits for a busy CPU."""
        if self.recorder is None:
            return []
        calls: list[ApiCall] = []
        try:
            for chunk in self.recorder.collect(sb):
                calls += _API_CALLS.validate_json(chunk)
                time.sleep(0)
        except Exception as exc:  # noqa: BLE001 - the run's result says so
            log.error("allowed API calls not recorded", extra={"fields": {"sandbox": sb.name, "error": str(exc)}})
            sb.actions.append(f"its allowed API calls could not be recorded: {exc}")
            sb.lost_seen = max(sb.lost_seen, 1)
        return calls

    def _settle(self, sb: Sandbox, recorded: int = 0, timeout: float = 2.0) -> None:
        """Wait until the pump has routed every event the kernel sent for sb
        (but the `recorded` calls that the recorder took)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pump_error is None:
            stats = self.sensor.stats(sb.id)
            if sb.received + recorded >= stats.events:
                return
            time.sleep(0.002)
        log.warning("events still in flight at cleanup", extra={"fields": {"sandbox": sb.name}})

    def _finish(self, sb: Sandbox, duration: float) -> SandboxResult:
        assert sb.proc is not None and sb.stdout is not None and sb.stderr is not None
        refused = sb.controllers.pids_refused()
        if refused:
            sb.denials.append(Denial(kind="pids", detail=f"the pids limit refused {refused} forks"))
        cpu = _cpu_seconds(sb.cgroup)
        peak = sb.controllers.memory_peak()
        stats = self._cleanup(sb)
        if stats.packets_dropped:
            sb.denials.append(Denial(kind="egress", detail=f"{stats.packets_dropped} packets dropped while quarantined, "
                                                           "on connections made before the quarantine"))
        rc = sb.proc.returncode
        verdict = Verdict.strongest([sb.strongest, Verdict.DENY if sb.denials else Verdict.ALLOW])
        return SandboxResult(
            sandbox=sb.name,
            command=sb.command,
            labels=sb.labels,
            exit_code=rc if rc < 128 else None,
            signal=rc - 128 if rc >= 128 else None,
            stopped_by=sb.stopped_by,
            verdict=verdict,
            stdout=sb.stdout.text(),
            stderr=sb.stderr.text(),
            stdout_truncated=sb.stdout.truncated,
            stderr_truncated=sb.stderr.truncated,
            duration_s=duration,
            cpu_s=cpu,
            memory_peak_bytes=peak,
            syscalls=stats.syscalls,
            events_seen=sb.received,
            events_lost=max(stats.lost, sb.lost_seen),
            opens_repeated=stats.opens_repeated,
            denials=sb.denials,
            # allowed calls' records come on a ring of their own: in time order again
            api_calls=sorted([*map(api_call, sb.api_calls), *sb.recorded], key=lambda c: c.ts_ns),
            actions=sb.actions,
        )

    def _cleanup(self, sb: Sandbox) -> CgroupStats:
        try:
            sb.cgroup.kill()
            if sb.proc is not None and sb.proc.poll() is None:
                sb.proc.wait(timeout=5)
        finally:
            self._active.pop(sb.id, None)
            with sb.lock:  # an enforce the pump began before the pop finishes first
                sb.removed = True
            stats = self.sensor.unwatch(sb.id)
            sb.cgroup.remove()
            sb.controllers.remove()
            if sb.owns_workdir:
                remove_workdir(sb.workdir)
        return stats

    # enforcing -----------------------------------------------------------
    def enforce(self, sb: Sandbox, verdict: Verdict, reason: str) -> int:
        """Apply quarantine, freeze or kill to a running sandbox; the guard's
        Enforcer. A verdict no stronger than one already enforced is not
        repeated. Returns when it took hold (CLOCK_MONOTONIC ns, the
        sensor's clock)."""
        if not verdict.enforced:
            raise ValueError(f"{verdict.value} is not something the sandbox enforces")
        with sb.lock:
            if verdict.rank <= sb.strongest.rank or sb.removed:
                return sb.enforced_ns
            if verdict is Verdict.QUARANTINE:
                self.sensor.quarantine(sb.id)
            elif verdict is Verdict.FREEZE:
                sb.cgroup.freeze()
            elif verdict is Verdict.KILL:
                sb.cgroup.kill()
                sb.stopped_by = sb.stopped_by or reason
            sb.actions.append(f"{verdict.value}: {reason}")
            sb.strongest = verdict
            sb.enforced_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        log.warning("sandbox action", extra={"fields": {"sandbox": sb.name, "action": verdict.value, "reason": reason}})
        return sb.enforced_ns

    def resume(self, sb: Sandbox, pid: int) -> None:
        """SIGCONT to a process of the sandbox the kernel stopped; a pid that
        has left the sandbox's cgroup is not signalled."""
        with sb.lock:
            if not sb.removed and sb.cgroup.holds(pid):
                os.kill(pid, signal.SIGCONT)

    def thaw(self, sb: Sandbox) -> None:
        sb.cgroup.freeze(False)

    def sandboxes(self) -> list[Sandbox]:
        return list(self._active.values())

    # the pump ------------------------------------------------------------
    def _run_pump(self) -> None:
        try:
            real_time()  # a held call waits on it
            next_check = 0.0
            while not self._stop.is_set():
                if self.sensor.wait(20):
                    # at once: the records that may need a verdict, never behind a backlog of allowed calls
                    self._route(self.sensor.drain(calls=False))
                if self.recorder is None:
                    self._route(self.sensor.drain_calls())
                if time.monotonic() >= next_check:
                    self._check_losses()
                    failure = self.recorder.check() if self.recorder is not None else None
                    if failure:
                        raise SandboxError(failure)
                    next_check = time.monotonic() + 0.05
        except BaseException as exc:  # fail closed: nothing may run unwatched
            self.pump_error = exc
            log.error("event pump died; killing every sandbox", exc_info=exc)
            for sb in list(self._active.values()):
                self.enforce(sb, Verdict.KILL, f"sensor pump died: {exc}")

    def _route(self, batch: list[Event]) -> None:
        by_sandbox: dict[int, list[Event]] = {}
        for ev in batch:
            by_sandbox.setdefault(ev.cgroup_id, []).append(ev)
        for cg_id, events in by_sandbox.items():
            sb = self._active.get(cg_id)
            if sb is None:
                continue
            for ev in events:
                if ev.kind is EventKind.API:
                    sb.api_calls.append(ev)
                denial = _denial(ev, sb)
                if denial is not None:
                    sb.denials.append(denial)
            for listener in self.listeners:
                listener(sb, events)
            sb.received += len(events)

    def _check_losses(self) -> None:
        """Events the kernel could not send, and records that could not be
        decoded (whose sandbox may be any), are events the guard never saw.
        Each sandbox's count is read only when the sensor's total has moved:
        reading them all took the real-time pump ~90 µs every 50 ms."""
        losses = self.sensor.losses()
        if losses == self._losses_seen:
            return
        self._losses_seen = losses
        for sb in list(self._active.values()):
            lost = self.sensor.stats(sb.id).lost + self.sensor.decode_errors(sb.id) - sb.undecodable_before
            if lost > sb.lost_seen:
                sb.lost_seen = lost
                if sb.policy.on_event_loss.enforced:
                    self.enforce(sb, sb.policy.on_event_loss,
                                 f"{lost} events lost: the sandbox was not fully watched")

    def close(self) -> None:
        self._stop.set()
        self._pump.join(timeout=2)
        for sb in list(self._active.values()):
            self.enforce(sb, Verdict.KILL, "manager closing")
            self._cleanup(sb)


def _exits_within(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether proc exits within timeout seconds. A pidfd wakes at the exit
    itself, where Popen.wait(timeout) polls with sleeps that grow to 50 ms."""
    if proc.returncode is not None:
        return True
    fd = os.pidfd_open(proc.pid)
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _reap(sb: Sandbox) -> None:
    """Kill and wait for a sandbox's launcher whose start failed."""
    if sb.proc is None:
        return
    if sb.proc.poll() is None:
        sb.proc.kill()
        sb.proc.wait()
    for pipe in (sb.proc.stdout, sb.proc.stderr):
        if pipe is not None:
            pipe.close()


def _cpu_seconds(cg: Cgroup) -> float:
    try:
        for line in (cg.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    except OSError:
        pass
    return 0.0


def remove_workdir(path: Path) -> None:
    """Unmount a fresh workdir's tmpfs (lazily: a frozen process may still
    hold it) and remove the directory."""
    umount(path)
    shutil.rmtree(path, ignore_errors=True)


def _orphaned(name: str) -> bool:
    """Whether a sandbox name's supervising process is gone."""
    try:
        os.kill(int(name.split("-")[1]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, IndexError, PermissionError):
        pass
    return False


def kill_orphans(workdirs: Path) -> list[str]:
    """Kill and remove sandbox cgroups, and remove fresh workdirs, whose
    supervising process is gone; returns what was cleaned up."""
    cleaned = []
    for path in bastion_root().glob(f"{PREFIX}-*"):
        if not _orphaned(path.name):
            continue
        try:
            Cgroup(path).remove()
            for controller in ("memory", "pids"):
                leaf = v1_leaf(controller, path.name)
                if leaf is not None and leaf.exists():
                    leaf.rmdir()
            cleaned.append(f"cgroup {path.name}")
            log.warning("killed orphaned sandbox", extra={"fields": {"sandbox": path.name}})
        except (CgroupError, OSError) as exc:
            log.error("cannot remove orphaned sandbox", extra={"fields": {"sandbox": path.name, "error": str(exc)}})
    for path in workdirs.glob(f"{PREFIX}-*"):
        if path.is_dir() and not path.is_symlink() and _orphaned(path.name):
            remove_workdir(path)
            cleaned.append(f"workdir {path}")
            log.warning("removed orphaned workdir", extra={"fields": {"workdir": str(path)}})
    return cleaned
