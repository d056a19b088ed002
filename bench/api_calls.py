"""What deciding API calls in the kernel costs each call, side by side in one
run: the same keep-alive client, plain HTTP and TLS, run

  - unwatched (a plain process: the floor),
  - unwatched, with the sensor's copy of each TLS library in place of the
    library (LD_LIBRARY_PATH): each TLS write traps into the uprobe and
    out through the uretprobe, whose programs return at once for a process
    no sandbox holds. The floor of reading TLS in clear with uprobes on
    this machine; in plain HTTP nothing traps, and it is the unwatched
    client again: how far two runs of the same thing differ here,
  - in a sandbox whose policy allows the host by IP:port only,
  - in a sandbox whose policy has API rules (SK_MSG parses each plain
    request; the libssl uprobes parse each TLS one),

all three at once in each round, taking turns in slots of 5 ms: on this
machine a whole run's round-trip p99 moves by 30-50 µs from one run to the
next (whatever slows the machine for a while slows every call in it), so
modes run one after another differ by more than the target; taking turns
they share those moments. The p99 added is over all rounds, with a 95%
interval from resampling whole rounds. What the node does that is not
caused by a call (scoring each running sandbox's syscall mix, counting
lost events) runs while any sandbox does, so it falls on every mode's
turns alike; a run of each sandbox mode alone counts what it costs there.

First with the guard's threads free to run on any CPU, then with a CPU of
their own (GuardedSandboxes' node_cpu; the sandboxes, the floor and the
records API on the others): on two CPUs the node's work on the allowed
calls' records (the recorder's process, in an idle cpu group) still shares
a CPU with the client or the server, which shows in the round trip's p99.
On shared CPUs the bench also counts how often a thread of the node or of
its recorder held a client or server off a CPU for over 50 µs
(bench/node_waits.bpf.c), in a run of each sandbox mode alone, and by which
thread at which priority: what the p99 pays for, and the floor of
any CPU work beside the client: the unwatched client with a process that
burns the node's share of a CPU, in a session of its own at the lowest
priority (SCHED_IDLE), and in a cgroup whose cpu.idle is 1. Then, in each, the held
path: TLS calls to endpoints the agent's profile never saw, each stopped
(SIGSTOP) while the guard scores it, then released; alone, and beside
another sandbox making allowed calls as fast as it can. Each held call's
time is split (bench/held_waits.bpf.c): the guard's hold, from the SIGSTOP
to its SIGCONT, the caller's wait for a CPU after that, and the rest, its
own work. Beside the wait, its floor: a plain process beside the same
sandboxes, stopped and continued the same way, and the same caller's other
wakeups (its replies).

    .venv/bin/python bench/api_calls.py [--rounds 10] [--calls 2000] [--slot-ms 5] [--held 200]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes as ct
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion import logs  # noqa: E402
from bastion.guarded import GuardedRun, GuardedSandboxes, record_runs  # noqa: E402
from bastion.local_api import LocalApi  # noqa: E402
from common.verdicts import Verdict  # noqa: E402
from ebpf.program_stats import counting, runs  # noqa: E402
from ebpf.sensor import Sensor  # noqa: E402
from guard.audit import AuditLog  # noqa: E402
from guard.profile import Profile  # noqa: E402
from guard.traces import Behaviour  # noqa: E402
from guard.training import Settings, train  # noqa: E402
from sandbox.policy import Network, Policy  # noqa: E402
from sandbox.quiet import QuietGroup  # noqa: E402
from tests.apis import api_policy, ip_port_only  # noqa: E402

# Times each request of a keep-alive connection: the send (where the kernel
# decides) and the whole round trip. argv: port, tls, ca, calls, paths
# (comma-separated), and optionally a schedule that the clients of every mode
# share: its start on the monotonic clock (ns), the slot (ns), the slots in a
# period and the client's own slot. With one, it calls only in its own slots,
# none in the last MARGIN of a slot, and each slot's first call is a warm-up
# that is not timed (after a sleep the first call pays for cold caches, which
# back-to-back calls do not). Prints the times, and how late it came to the
# schedule's start (ns).
CLIENT = r"""
import http.client, json, ssl, sys, time
port, tls, ca, calls, paths = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3], int(sys.argv[4]), sys.argv[5].split(",")
start, slot, slots, mine = (int(a) for a in sys.argv[6:10]) if len(sys.argv) > 6 else (0, 0, 1, 0)
MARGIN = 1_000_000
if tls:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=ca))
else:
    conn = http.client.HTTPConnection("127.0.0.1", port)
conn.connect()  # the TCP and TLS handshakes are not a call's cost
clock = time.perf_counter_ns  # CLOCK_MONOTONIC: one clock for every process
late = max(0, clock() - start) if slot else 0
sends, trips = [], []
for i in range(calls):
    if slot:
        now = clock()
        k, into = divmod(now - start, slot)
        if now < start or k % slots != mine or slot - into < MARGIN:
            k = max(k + 1, 0)
            k += (mine - k) % slots
            time.sleep((start + k * slot - now) / 1e9)
            conn.request("GET", paths[0])
            conn.getresponse().read()
    t = clock()
    conn.request("GET", paths[i % len(paths)])
    sent = clock()
    conn.getresponse().read()
    sends.append(sent - t)
    trips.append(clock() - t)
print(json.dumps([sends, trips, late]))
"""


API_PROGRAMS = ("api_msg", "api_http", "api_http_headers", "tls_write", "tls_headers", "tls_enter", "tls_leave")


def program_time_ns(sensor: Sensor) -> int:
    """Time the kernel has spent in the API programs since bpf_stats was on."""
    return runs(sensor.bpf, API_PROGRAMS)[1]


WAIT_US = 50
# (mode, TLS) -> (thread, its priority) -> [waits over WAIT_US, their total ns]
Waits = dict[tuple[str, bool], dict[tuple[str, str], list[int]]]
# (where the burner ran, TLS) -> (its share of a CPU, the unwatched client's round trips)
Beside = dict[tuple[str, bool], tuple[float, list[float]]]


class NodeWaits:
    """Counts the times a thread of this process (the node) ran while a task
    that is not the node's waited over WAIT_US for the CPU after its wakeup."""

    THREADS = {"sandbox-pump": "the pump", "audit-writer": "the audit writer"}
    PRIORITIES = {98: "real time", 120: "nice 0", 139: "nice 19"}

    def __init__(self) -> None:
        from bcc import BPF

        self.bpf = BPF(src_file=str(Path(__file__).with_name("node_waits.bpf.c")),
                       cflags=[f"-DWAIT_NS={WAIT_US * 1000}"])
        self.recorder: set[int] = set()  # its recorder's threads

    def start(self, recorder: int) -> None:
        """Marks the node's threads and its recorder's (pid) as they are now,
        and forgets earlier waits."""
        tids = self.bpf["node_tids"]
        tids.clear()  # an exited thread's id may be a client's by now
        self.recorder = {int(task.name) for task in Path(f"/proc/{recorder}/task").iterdir()}
        for tid in [*(int(task.name) for task in Path("/proc/self/task").iterdir()), *self.recorder]:
            tids[ct.c_uint32(tid)] = ct.c_uint8(1)
        self.bpf["waits"].clear()

    def add_to(self, into: dict[tuple[str, str], list[int]]) -> None:
        """The waits since start, by thread and priority."""
        names = {t.native_id: self.THREADS.get(t.name, "other threads") for t in threading.enumerate()}
        names.update(dict.fromkeys(self.recorder, "the recorder"))
        for k, v in self.bpf["waits"].items():
            who = (names.get(k.tid, "other threads"), self.PRIORITIES.get(k.prio, f"prio {k.prio}"))
            total = into.setdefault(who, [0, 0])
            total[0] += v.count
            total[1] += v.ns

    def close(self) -> None:
        self.bpf.cleanup()


class HeldWaits:
    """Where the held calls' time goes (bench/held_waits.bpf.c), in µs: the
    guard's hold (SIGSTOP to SIGCONT), the caller's wait for a CPU after
    the SIGCONT, and the same caller's other wakeups' waits for a CPU (its
    replies arriving: the floor)."""

    SAMPLES = 8192

    def __init__(self) -> None:
        from bcc import BPF

        self.bpf = BPF(src_file=str(Path(__file__).with_name("held_waits.bpf.c")), cflags=[f"-DSAMPLES={self.SAMPLES}"])

    def start(self) -> None:
        for name in ("counts", "stopped", "continued", "woken", "running", "held"):
            self.bpf[name].clear()

    def read(self) -> tuple[list[float], list[float], list[float]]:
        counts, samples = self.bpf["counts"], self.bpf["samples"]
        kinds = []
        for kind in range(3):
            n = min(counts[ct.c_int(kind)].value, self.SAMPLES)
            kinds.append([samples[ct.c_int(kind * self.SAMPLES + i)].value / 1000 for i in range(n)])
        return kinds[0], kinds[1], kinds[2]

    def close(self) -> None:
        self.bpf.cleanup()


def _cpu_s(pid: int) -> float:
    """A process's CPU time so far, user and system."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Burns a share of one CPU in 20 ms periods, as the node's turns do. argv: share.
BURNER = r"""
import sys, time
busy = float(sys.argv[1]) * 0.02
while True:
    t = time.monotonic()
    while time.monotonic() - t < busy:
        pass
    time.sleep(0.02 - busy)
"""
BURNERS = ("alone", "beside SCHED_IDLE work, own session", "beside work in a cpu.idle cgroup")


def _beside_work(api: LocalApi, tls: bool, calls: int, paths: list[str], share: float,
                 where: str) -> list[float] | None:
    """The unwatched client's round trips while a burner runs as `where`
    says; None where no cpu controller offers cpu.idle."""
    burner = group = None
    if where != BURNERS[0]:
        burner = subprocess.Popen([sys.executable, "-c", BURNER, f"{share:.4f}"], start_new_session=True)
        if where == BURNERS[1]:
            os.sched_setscheduler(burner.pid, os.SCHED_IDLE, os.sched_param(0))
        else:
            group = QuietGroup(burner.pid)  # where the node's recorder runs
    try:
        if group is not None and group.path is None:  # it fell back to SCHED_IDLE: the row above
            return None
        out = subprocess.run(_client(api, tls, calls, paths), capture_output=True, text=True, check=True,
                             start_new_session=True).stdout
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
        if group is not None:
            group.remove()
    return _timings(out)[1]


def pct(values: list[float] | np.ndarray, q: int) -> float:
    return float(np.percentile(values, q))


# The records API in a process of its own, as on another host: in the bench's
# process its threads would take the interpreter lock from the guard's pump.
SERVER = r"""
import json, sys
from bastion.local_api import serve
with serve() as api:
    print(json.dumps([api.port, api.tls_port, str(api.ca_file)]), flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def serve_apart() -> Iterator[tuple[LocalApi, int]]:
    root = Path(__file__).resolve().parents[1]
    # a session of its own, as if on another host: not in the node's autogroup, where the scheduler
    # would weigh it against the node's threads instead of against the node as a whole
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, start_new_session=True)
    assert server.stdin is not None and server.stdout is not None
    try:
        port, tls_port, ca = json.loads(server.stdout.readline())
        yield LocalApi(port, tls_port, Path(ca)), server.pid
    finally:
        server.stdin.close()
        server.wait(timeout=10)


# A schedule the clients of one round share: its start (ns, monotonic clock),
# the slot (ns), the slots in a period, and the client's own slot.
Schedule = tuple[int, int, int, int]


def _client(api: LocalApi, tls: bool, calls: int, paths: list[str], schedule: Schedule | None = None) -> list[str]:
    port = api.tls_port if tls else api.port
    return ["/usr/bin/python3", "-c", CLIENT, str(port), "1" if tls else "0", str(api.ca_file), str(calls),
            ",".join(paths), *map(str, schedule or ())]


def _output(mode: str, run: GuardedRun) -> str:
    """A sandboxed client's output; the bench stops where the client failed."""
    if run.result.exit_status != 0:
        raise SystemExit(f"{mode}: the client failed: {run.result.stderr[-400:]}")
    return run.result.stdout


def _timings(stdout: str) -> tuple[list[float], list[float]]:
    """Microseconds per call: the sends, and the round trips."""
    sends, trips, late = json.loads(stdout.strip().splitlines()[-1])
    if late:
        raise SystemExit(f"a client came {late / 1e6:.0f} ms after its round's schedule began: its calls were not "
                         f"interleaved with the other modes' (raise LEAD_S)")
    return [ns / 1000 for ns in sends], [ns / 1000 for ns in trips]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="requests per client run")
    parser.add_argument("--rounds", type=int, default=10, help="rounds, each with every mode's client interleaved")
    parser.add_argument("--slot-ms", type=float, default=5.0, help="each mode's turn in a round's schedule")
    parser.add_argument("--held", type=int, default=200, help="held TLS calls per arrangement, each to a new endpoint")
    args = parser.parse_args()
    console = Console(width=160)  # the table is wide; a log file gets it whole
    log = Path(tempfile.gettempdir()) / "bastion-bench-api-calls.log"
    logs.to_file(log)  # the guard's alerts on held calls, as structured records, not on the terminal
    console.print(f"structured log: {log}")
    sends: dict[Key, list[float]] = {}
    trips: dict[Key, list[float]] = {}
    in_programs = {False: 0, True: 0}  # ns the kernel spent in the API programs, by transport
    waits: Waits = {}
    beside: Beside = {}
    with counting():  # the kernel counts each program's run time only while bpf_stats is on
        held = _measure(args, console, sends, trips, in_programs, waits, beside)
    _report(args, console, sends, trips, in_programs, held)
    _report_waits(args, console, waits)
    _report_beside(args, console, beside)
    return 0


MODES = ("unwatched", "unwatched, probed TLS copy", "sandbox, IP:port only", "sandbox, API rules")
UNWATCHED, TRAPS, FREE, RULES = MODES
TARGET_US = 20  # added per allowed call, at p50 and p99
LEAD_S = 0.3  # from a round's start to its schedule's: every client is started and connected by then
# Calls per run of the busy sandbox beside held calls: each of its starts and ends is work on the CPUs too,
# so this fixes how often they come (about every 0.6 s, as in the runs the README reports)
BUSY_CALLS = 4000
Key = tuple[int | None, str, bool]  # the node's CPU (None: shared), the mode, TLS
# (the node's CPU, beside a busy sandbox) -> the send times of held calls, of allowed ones made the same
# way, where the held calls' time went (HeldWaits.read), and the floor of the caller's wait after the SIGCONT
HeldRun = tuple[list[float], list[float], tuple[list[float], list[float], list[float]], list[float]]
Held = dict[tuple[int | None, bool], HeldRun]


def _arrangement(node_cpu: int | None) -> str:
    return "shared CPUs" if node_cpu is None else f"node on CPU {node_cpu}"


def _arrangements() -> list[int | None]:
    """The guard's threads on any CPU (as by default), then, given a second
    CPU, on one of their own (GuardedSandboxes' node_cpu)."""
    cpus = sorted(os.sched_getaffinity(0))
    return [None, cpus[-1]] if len(cpus) > 1 else [None]


def _taskset(cpus: set[int]) -> list[str]:
    """A command prefix that runs a command on these CPUs."""
    return ["taskset", "-c", ",".join(map(str, sorted(cpus)))]


def _move(pid: int, cpus: set[int]) -> None:
    """Every thread of a process onto these CPUs."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def _measure(args: argparse.Namespace, console: Console, sends: dict[Key, list[float]],
             trips: dict[Key, list[float]], in_programs: dict[bool, int], waits: Waits,
             beside: Beside) -> Held:
    """Fills sends, trips, in_programs, waits and beside; returns the held calls' send times by arrangement,
    alone and beside a busy sandbox."""
    paths = ["/records/17", "/records/250", "/formulary"]
    held: Held = {}
    node_cpu_s = {False: 0.0, True: 0.0}  # the node's CPU time, and the wall time, of the API-rules runs
    wall_s = {False: 0.0, True: 0.0}
    with Sensor() as sensor, serve_apart() as (api, server), tempfile.TemporaryDirectory() as tmp, \
            contextlib.closing(NodeWaits()) as node_waits, \
            contextlib.closing(HeldWaits()) as held_waits:  # on throughout: every mode pays their probes
        rules = api_policy(api)
        free = ip_port_only(rules)
        profile, held_policy = _held_setup(sensor, api, rules, args.held)
        log = AuditLog(Path(tmp) / "audit.jsonl")
        probed = _probed_copies(sensor, tmp)
        everywhere = os.sched_getaffinity(0)
        for node_cpu in _arrangements():
            # kept off the node's CPU like the sandboxes: the records API, as if on
            # another host, and the unwatched floor
            others = everywhere - {node_cpu}
            _move(server, others)
            floor = _taskset(others) if node_cpu is not None else []
            with GuardedSandboxes(sensor, log, node_cpu=node_cpu) as guarded, \
                    console.status("interleaved client runs") as status:
                for r in range(args.rounds):
                    for tls in (False, True):
                        status.update(f"{_arrangement(node_cpu)}: round {r + 1} of {args.rounds}, "
                                      f"{'TLS' if tls else 'plain'}")
                        outs = _interleaved(guarded, api, tls, args, paths, (free, rules), floor, probed, r)
                        for mode, out in outs.items():
                            _keep(sends, trips, (node_cpu, mode, tls), out)
                if node_cpu is None:
                    for tls in (False, True):
                        status.update(f"each sandbox mode alone, {'TLS' if tls else 'plain'}: the node's share")
                        cmd = _client(api, tls, args.calls, paths)
                        for mode, policy in ((FREE, free), (RULES, rules)):
                            before, times_before = program_time_ns(sensor), os.times()
                            recorder_before = _cpu_s(guarded.recorder.proc.pid)
                            node_waits.start(guarded.recorder.proc.pid)
                            run = guarded.run(cmd, policy, labels={"agent": "bench"})
                            node_waits.add_to(waits.setdefault((mode, tls), {}))
                            if policy is rules:
                                in_programs[tls] += program_time_ns(sensor) - before
                                times = os.times()
                                node_cpu_s[tls] += (times.user + times.system - times_before.user - times_before.system
                                                    + _cpu_s(guarded.recorder.proc.pid) - recorder_before)
                                wall_s[tls] += times.elapsed - times_before.elapsed
                            _output(mode, run)
            for busy in (None, _client(api, False, BUSY_CALLS, paths)):
                held[(node_cpu, busy is not None)] = _held_calls(sensor, api, profile, held_policy, args.held, log,
                                                                 node_cpu, (busy, rules) if busy else None, held_waits)
        log.close()
        _move(server, everywhere)
        with console.status("the floor of CPU work beside the client") as status:
            for r in range(args.rounds):
                for tls in (False, True):
                    status.update(f"the floor of CPU work: round {r + 1} of {args.rounds}")
                    share = node_cpu_s[tls] / wall_s[tls]
                    for where in BURNERS:
                        trips_beside = _beside_work(api, tls, args.calls, paths, share, where)
                        if trips_beside is not None:
                            beside.setdefault((where, tls), (share, []))[1].extend(trips_beside)
    return held


def _interleaved(guarded: GuardedSandboxes, api: LocalApi, tls: bool, args: argparse.Namespace, paths: list[str],
                 policies: tuple[Policy, Policy], floor: list[str], probed: dict[str, str], r: int) -> dict[str, str]:
    """One round: the client of every mode at once, each calling only in its
    own slots of one schedule (the order turned by one each round), so that
    what slows this machine for a moment slows the modes alike; each
    client's output, by mode."""
    start = time.perf_counter_ns() + int(LEAD_S * 1e9)
    slot = int(args.slot_ms * 1e6)
    cmds = [_client(api, tls, args.calls, paths, (start, slot, len(MODES), (i + r) % len(MODES)))
            for i in range(len(MODES))]
    # in a session of its own, as each sandbox is: a scheduling group of its own
    unwatched = {mode: subprocess.Popen([*floor, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=env, start_new_session=True)
                 for mode, cmd, env in ((UNWATCHED, cmds[0], None), (TRAPS, cmds[1], probed))}
    with ThreadPoolExecutor(len(policies)) as pool:
        runs = [pool.submit(guarded.run, cmd, policy, labels={"agent": "bench"}) for cmd, policy in zip(cmds[2:], policies)]
        outs = {}
        for mode, proc in unwatched.items():
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"{mode}: the client failed: {err[-400:]}")
            outs[mode] = out
        for mode, run in zip((FREE, RULES), (f.result() for f in runs)):
            outs[mode] = _output(mode, run)
    return outs


def _probed_copies(sensor: Sensor, tmp: str) -> dict[str, str]:
    """An environment in which an unwatched process loads the sensor's
    copy of each TLS library instead of the library: a directory of links
    named as the libraries, first on LD_LIBRARY_PATH. Checked: a process
    that imports ssl maps the copy."""
    links = Path(tmp) / "probed"
    links.mkdir()
    for library in sensor.tls_libraries:
        (links / library.path.name).symlink_to(library.copy)
    env = {**os.environ, "LD_LIBRARY_PATH": str(links)}
    maps = subprocess.run(["/usr/bin/python3", "-c", "import ssl; print(open('/proc/self/maps').read())"], env=env,
                          capture_output=True, text=True, check=True).stdout
    libssl = [lib.copy for lib in sensor.tls_libraries if lib.path.name.startswith("libssl")]
    if not libssl or str(libssl[0]) not in maps:
        raise SystemExit(f"{TRAPS}: python3's ssl does not load the probed copy through {links}")
    return env


def _report(args: argparse.Namespace, console: Console, sends: dict[Key, list[float]],
            trips: dict[Key, list[float]], in_programs: dict[bool, int], held: Held) -> None:
    table = Table(title=f"GET over keep-alive, {args.rounds} x {args.calls} calls per mode and transport, the modes "
                        f"taking turns in {args.slot_ms:g} ms slots, µs: the send (where the kernel decides) and the "
                        "round trip")
    for col in ("CPUs", "transport", "mode", "send p50", "send p99", "send p50 added", "round trip p50",
                "round trip p99", "p99 added", "calls/s"):
        table.add_column(col, justify="right")
    arrangements = sorted({k[0] for k in sends}, key=lambda c: c is not None)
    for node_cpu in arrangements:
        for tls in (False, True):
            floor = statistics.median(sends[(node_cpu, UNWATCHED, tls)])
            floor_p99 = pct(trips[(node_cpu, UNWATCHED, tls)], 99)
            for mode in MODES:
                s, t = sends[(node_cpu, mode, tls)], trips[(node_cpu, mode, tls)]
                first = mode == UNWATCHED
                table.add_row(_arrangement(node_cpu), "TLS" if tls else "plain", mode, f"{statistics.median(s):.1f}",
                              f"{pct(s, 99):.1f}", "floor" if first else f"{statistics.median(s) - floor:+.1f}",
                              f"{statistics.median(t):.0f}", f"{pct(t, 99):.0f}",
                              "floor" if first else f"{pct(t, 99) - floor_p99:+.0f}", f"{1e6 / statistics.mean(t):,.0f}")
    console.print(table)
    added = {(node_cpu, tls): statistics.median(sends[(node_cpu, RULES, tls)])
             - statistics.median(sends[(node_cpu, FREE, tls)]) for node_cpu in arrangements for tls in (False, True)}
    each = "; ".join(f"{_arrangement(node_cpu)}: plain {added[(node_cpu, False)]:+.1f} µs, TLS {added[(node_cpu, True)]:+.1f} µs"
                     for node_cpu in arrangements)
    over = [f"{_arrangement(c)} {'TLS' if tls else 'plain'}" for (c, tls), us in added.items() if us > TARGET_US]
    console.print(f"API rules add per allowed call (send p50 against the same sandbox with IP:port only): {each} "
                  f"(target: at most {TARGET_US}; {'over: ' + ', '.join(over) if over else 'all within'}); "
                  f"the kernel's own count of time in the API programs per call: plain "
                  f"{in_programs[False] / args.calls / 1000:.1f} µs, TLS {in_programs[True] / args.calls / 1000:.1f} µs "
                  "(the uprobe traps themselves are not in it)")
    for node_cpu in arrangements:
        tail = {tls: _p99_added(trips[(node_cpu, RULES, tls)], trips[(node_cpu, UNWATCHED, tls)], args.calls)
                for tls in (False, True)}
        console.print(f"{_arrangement(node_cpu)}: round trip p99 with API rules against unwatched: plain "
                      f"{tail[False]}, TLS {tail[True]}")
        # the same for calls that send the node nothing, and for the unwatched client on the probed copy:
        # in TLS the traps' floor, in plain the same client twice (how far the figure moves on its own here)
        for mode, what in ((FREE, "with IP:port only (no record per call)"),
                           (TRAPS, "unwatched on the probed TLS copy (TLS: the uprobes' traps alone)")):
            same = {tls: _p99_added(trips[(node_cpu, mode, tls)], trips[(node_cpu, UNWATCHED, tls)], args.calls,
                                    target=False) for tls in (False, True)}
            console.print(f"{_arrangement(node_cpu)}: the same {what}: plain {same[False]}, TLS {same[True]}")
    for (node_cpu, busy), (times, allowed, (hold, after, other), stopped) in held.items():
        console.print(f"{_arrangement(node_cpu)}: held TLS calls (SIGSTOP, scored, released), {len(times)} each to a "
                      f"new endpoint{', beside a sandbox making allowed calls' if busy else ''}: send "
                      f"{_spread(times)} (target: at most 2,000), {sum(h > 2000 for h in times)} over 2 ms; "
                      f"the floor, as many allowed calls made the same way: {_spread(allowed)}, "
                      f"{sum(a > 2000 for a in allowed)} over 2 ms")
        console.print(f"  where the held calls' time went: the guard's hold (SIGSTOP to SIGCONT) {_spread(hold)}; "
                      f"the caller's wait for a CPU after the SIGCONT {_spread(after)}. The floor of that wait: a "
                      f"plain process beside the same sandboxes, stopped and continued from the node's CPU after "
                      f"the same hold, {_spread(stopped)}; the same caller's other wakeups (its replies "
                      f"arriving) {_spread(other)}")
        if len(hold) == len(after) == len(times):  # one of each per call, in the calls' order
            rest = [t - h - a for t, h, a in zip(times, hold, after, strict=True)]
            console.print(f"  and the rest of each send, the caller's own work before and after (on a CPU, or "
                          f"waiting for one again): {_spread(rest)}")


def _spread(values: list[float]) -> str:
    if not values:
        return "none seen"
    return (f"p50 {statistics.median(values):.0f} µs, p99 {pct(values, 99):.0f} µs, max {max(values):.0f} µs "
            f"(of {len(values)})")


RESAMPLES = 1000


def _p99_added(watched: list[float], unwatched: list[float], calls: int, target: bool = True) -> str:
    """The p99 added over all rounds, with a 95% interval from resampling
    whole rounds (a round's modes ran side by side, so they are drawn
    together), and whether that interval lies within the target."""
    w, u = np.reshape(watched, (-1, calls)), np.reshape(unwatched, (-1, calls))
    picks = np.random.default_rng(0).integers(len(w), size=(RESAMPLES, len(w)))
    lo, hi = np.percentile([pct(w[i], 99) - pct(u[i], 99) for i in picks], [2.5, 97.5])
    out = f"{pct(w, 99) - pct(u, 99):+.0f} µs (95% interval {lo:+.0f} to {hi:+.0f}"
    if not target:
        return out + ")"
    met = "within" if hi <= TARGET_US else "over" if lo > TARGET_US else "not resolved against"
    return out + f": {met} the target of {TARGET_US})"


def _report_waits(args: argparse.Namespace, console: Console, waits: Waits) -> None:
    table = Table(title=f"shared CPUs: a client or server held off a CPU over {WAIT_US} µs after its wakeup "
                        "while a thread of the node ran, per 1,000 calls: times, and ms in all")
    for col in ("transport", "mode", "thread", "priority", "times", "ms"):
        table.add_column(col, justify="right")
    per = 1000 / args.calls  # one run of each mode
    for (mode, tls), by in sorted(waits.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        for (thread, priority), (count, ns) in sorted(by.items(), key=lambda kv: -kv[1][1]):
            table.add_row("TLS" if tls else "plain", mode, thread, priority, f"{count * per:.1f}",
                          f"{ns / 1e6 * per:.2f}")
    console.print(table)


def _report_beside(args: argparse.Namespace, console: Console, beside: Beside) -> None:
    table = Table(title="shared CPUs, the floor of CPU work beside the client: the unwatched client's round trip, µs, "
                        "alone and beside a process burning the node's share of a CPU (measured in the API-rules runs)")
    for col in ("transport", "burner's share", "client", "p50", "p99", "p99 added"):
        table.add_column(col, justify="right")
    for tls in (False, True):
        alone = pct(beside[(BURNERS[0], tls)][1], 99)
        for where in BURNERS:
            if (where, tls) not in beside:
                table.add_row("TLS" if tls else "plain", "", where, "no cpu controller", "", "")
                continue
            share, t = beside[(where, tls)]
            table.add_row("TLS" if tls else "plain", "" if where == BURNERS[0] else f"{share:.0%}", where, f"{statistics.median(t):.0f}",
                          f"{pct(t, 99):.0f}", "floor" if where == BURNERS[0] else f"{pct(t, 99) - alone:+.0f}")
    console.print(table)


def _keep(sends: dict[Key, list[float]], trips: dict[Key, list[float]], key: Key, stdout: str) -> None:
    s, t = _timings(stdout)
    sends.setdefault(key, []).extend(s)
    trips.setdefault(key, []).extend(t)


def _held_setup(sensor: Sensor, api: LocalApi, policy: Policy, n: int) -> tuple[Profile, Policy]:
    """A profile that learned /records/{id}, from runs making n calls each
    as the floor of the held calls does (a run far over the most calls
    training saw is stopped), and a policy under which it judges calls to
    /records/{id}/<new name> (allowed by a /records/{id}/* rule) like it:
    each such call is held, scored and released."""
    assert isinstance(policy.network, Network)
    dest = policy.network.allow[0]
    wider = dest.model_copy(update={"api": [*dest.api, dest.api[0].model_copy(update={"path": "/records/{id}/*"})]})
    policy = policy.model_copy(update={"network": policy.network.model_copy(update={"allow": [wider]})})
    behaviour, traces = Behaviour(), []
    for r in record_runs(sensor, [_client(api, True, n, ["/records/17"])] * 8, policy):
        behaviour.update(r.behaviour())
        traces += r.traces(sensor.ngram_n)
    if set(behaviour.endpoints) != {"GET 127.0.0.1 /records/{}"}:
        raise SystemExit(f"held calls: the profile learned {sorted(behaviour.endpoints)}")
    profile = train(traces, behaviour, "bench-held", Settings(sequence=False))
    return profile, policy.model_copy(update={"response": policy.response.model_copy(update={"anomaly": Verdict.ALERT})})


def _held_calls(sensor: Sensor, api: LocalApi, profile: Profile, policy: Policy, n: int, log: AuditLog,
                node_cpu: int | None, busy: tuple[list[str], Policy] | None,
                waits: HeldWaits) -> HeldRun:
    """The send times of n held TLS calls, each to an endpoint never seen,
    and of n allowed ones to the endpoint learned, the same way, where the
    held calls' time went, and the floor of the caller's wait; with busy,
    while another sandbox runs that client over and over."""
    with GuardedSandboxes(sensor, log, [profile], node_cpu=node_cpu) as guarded, _busy(guarded, busy):
        floor = guarded.run(_client(api, True, n, ["/records/17"]), policy, labels={"agent": "bench-held"})
        waits.start()
        run = guarded.run(_client(api, True, n, [f"/records/17/note{i}" for i in range(n)]), policy,
                          labels={"agent": "bench-held"})
        out, floor_out = _output("held calls", run), _output("held calls' floor", floor)
        held, floor_held = ([c for c in r.result.api_calls if "never saw" in c.reason] for r in (run, floor))
        if len(held) != n or floor_held:
            raise SystemExit(f"held calls: {len(held)} of {n} calls were held, and {len(floor_held)} of the "
                             f"floor's (none should be)")
        split = waits.read()
        stopped = _stopped_floor(node_cpu, n, statistics.median(split[0]), waits)
        return _timings(out)[0], _timings(floor_out)[0], split, stopped


def _stopped_floor(node_cpu: int | None, n: int, hold_us: float, waits: HeldWaits) -> list[float]:
    """The floor of a held caller's wait for a CPU after its SIGCONT, µs: a
    plain process beside the same sandboxes, on their CPUs, that stops
    itself n times, each continued from the node's CPU after the guard's
    typical hold by a parent that judges nothing."""
    where: list[str] = []
    on_node: list[str] = []
    if node_cpu is not None:
        where, on_node = _taskset(os.sched_getaffinity(0) - {node_cpu}), _taskset({node_cpu})
    waits.start()
    subprocess.run([*on_node, sys.executable, "-c", CONTINUER, STOPPED, str(n), str(hold_us / 1e6), *where],
                   check=True)
    return waits.read()[1]


# A process that works a moment, as a TLS request does (0.2 ms), and stops
# itself, n times. argv: n.
STOPPED = r"""
import os, signal, sys, time
for _ in range(int(sys.argv[1])):
    t = time.perf_counter()
    while time.perf_counter() - t < 0.0002:
        pass
    os.kill(os.getpid(), signal.SIGSTOP)
"""
# Its parent, which continues it a moment after each stop, as the guard
# does. argv: STOPPED, n, the hold in seconds, and a command prefix for the child.
CONTINUER = r"""
import os, signal, subprocess, sys, time
stopped, n, hold, where = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
child = subprocess.Popen([*where, sys.executable, "-c", stopped, n], start_new_session=True)
while True:
    _, status = os.waitpid(child.pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):
        break
    time.sleep(hold)
    os.kill(child.pid, signal.SIGCONT)
"""


@contextlib.contextmanager
def _busy(guarded: GuardedSandboxes, busy: tuple[list[str], Policy] | None) -> Iterator[None]:
    """A sandbox running the client over and over, from half a second
    before the block (past its start) to its end."""
    if busy is None:
        yield
        return
    done, failed = threading.Event(), []

    def loop() -> None:
        while not done.is_set():
            run = guarded.run(busy[0], busy[1], labels={"agent": "bench"})
            if run.result.exit_status != 0:
                failed.append(run.result.stderr[-400:])
                return

    thread = threading.Thread(target=loop, name="busy-sandbox")
    thread.start()
    time.sleep(0.5)
    try:
        yield
    finally:
        done.set()
        thread.join()
    if failed:
        raise SystemExit(f"held calls: the busy client failed: {failed[0]}")


if __name__ == "__main__":
    raise SystemExit(main())
