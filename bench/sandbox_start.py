"""Time to start a sandbox and run `true` in it, against a plain subprocess,
interleaved in one run with the sensor already loaded.

    .venv/bin/python bench/sandbox_start.py [--runs 100]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ebpf.sensor import Sensor  # noqa: E402
from sandbox.manager import SandboxManager  # noqa: E402
from sandbox.policy import Policy  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    console = Console()
    plain: list[float] = []
    sandboxed: list[float] = []
    policy = Policy()
    with Sensor() as sensor:
        manager = SandboxManager(sensor)
        try:
            manager.run(["/bin/true"], policy)  # warm caches once, untimed
            for _ in track(range(args.runs), description="interleaved starts", console=console, transient=True):
                t = time.perf_counter()
                subprocess.run(["/bin/true"], check=True)
                plain.append(time.perf_counter() - t)
                t = time.perf_counter()
                result = manager.run(["/bin/true"], policy)
                sandboxed.append(time.perf_counter() - t)
                if result.exit_status != 0:
                    raise SystemExit(f"sandboxed true failed: {result}")
        finally:
            manager.close()

    table = Table(title=f"start and run /bin/true, {args.runs} interleaved runs, sensor loaded")
    for col in ("mode", "p50", "p95", "p50 ratio to plain"):
        table.add_column(col, justify="right")
    p50_plain = statistics.median(plain)
    for label, values in (("plain subprocess", plain), ("Bastion sandbox", sandboxed)):
        p50 = statistics.median(values)
        table.add_row(label, f"{p50 * 1e3:.1f} ms", f"{pct(values, 95) * 1e3:.1f} ms", f"{p50 / p50_plain:.1f}x")
    console.print(table)
    p50, p95 = statistics.median(sandboxed) * 1e3, pct(sandboxed, 95) * 1e3
    console.print(f"targets (issue 16): sandbox p50 <= 10 ms: {'met' if p50 <= 10 else 'MISSED'} ({p50:.1f} ms); "
                  f"p95 <= 20 ms: {'met' if p95 <= 20 else 'MISSED'} ({p95:.1f} ms); "
                  f"the floor, a plain subprocess: p50 {p50_plain * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
