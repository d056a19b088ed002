"""How late the guard sees a tool's other events while the tool makes
allowed API calls, side by side in one run: the same tool, a keep-alive
client that opens a missing file after every 50 GETs,

  - in a sandbox allowed by IP:port only, whose calls send the guard
    nothing (the floor: the pump's wakeup and routing),
  - in a sandbox whose policy has API rules, whose every call the kernel
    allows and records, without waking the pump.

Each open is an event the kernel sends as soon as the pump is waiting for
one. The lag is from the kernel's timestamp to the guard's listener: how
long a violation would go unjudged (shared CPUs, the guard's threads on
any CPU).

    .venv/bin/python bench/events_beside_calls.py [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion.guarded import GuardedSandboxes  # noqa: E402
from bench.api_calls import pct, serve_apart  # noqa: E402
from ebpf.events import Event, EventKind  # noqa: E402
from ebpf.sensor import Sensor  # noqa: E402
from guard.audit import AuditLog  # noqa: E402
from tests.apis import api_policy, ip_port_only  # noqa: E402

MISSING = "/nonexistent/bench-"
# argv: port, seconds
TOOL = f"""
import http.client, sys, time
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
end, calls = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < end:
    conn.request("GET", "/records/17")
    conn.getresponse().read()
    calls += 1
    if calls % 50 == 0:
        try:
            open("{MISSING}%d" % calls)
        except OSError:
            pass
print(calls)
"""
MODES = ("sandbox, IP:port only", "sandbox, API rules")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each mode")
    parser.add_argument("--seconds", type=float, default=3.0, help="each tool run's length")
    args = parser.parse_args()
    console = Console(width=120)
    lags: dict[str, list[float]] = {mode: [] for mode in MODES}
    calls: dict[str, int] = dict.fromkeys(MODES, 0)
    mode = MODES[0]

    def listener(_sandbox: object, events: list[Event]) -> None:
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # the clock of the kernel's timestamps
        lags[mode] += [(now - e.ts_ns) / 1e6 for e in events if e.kind is EventKind.OPEN and e.path.startswith(MISSING)]

    with Sensor() as sensor, serve_apart() as (api, _server), tempfile.TemporaryDirectory() as tmp:
        rules = api_policy(api)
        policies = dict(zip(MODES, (ip_port_only(rules), rules), strict=True))
        log = AuditLog(Path(tmp) / "audit.jsonl")
        with GuardedSandboxes(sensor, log) as guarded, console.status("tool runs") as status:
            guarded.manager.listeners.append(listener)
            for r in range(args.rounds):
                for mode in MODES:
                    status.update(f"round {r + 1} of {args.rounds}: {mode}")
                    run = guarded.run(["/usr/bin/python3", "-c", TOOL, str(api.port), str(args.seconds)],
                                      policies[mode], labels={"agent": "bench"})
                    if run.result.exit_status != 0:
                        raise SystemExit(f"{mode}: the tool failed: {run.result.stderr[-400:]}")
                    calls[mode] += int(run.result.stdout)
        log.close()
    table = Table(title=f"a tool's opens while it makes allowed calls, {args.rounds} x {args.seconds:g} s per mode: "
                        "from the kernel's timestamp to the guard, ms")
    for column in ("mode", "calls/s", "opens", "p50", "p99", "max"):
        table.add_column(column, justify="right")
    for mode in MODES:
        got = lags[mode]
        table.add_row(mode, f"{calls[mode] / (args.rounds * args.seconds):,.0f}", str(len(got)),
                      f"{pct(got, 50):.2f}", f"{pct(got, 99):.2f}", f"{max(got):.2f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
