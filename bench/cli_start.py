"""How fast the command line answers, beside the floors measured in the same
run: a bare Python start, and a plain subprocess of /bin/true.

- `bastion --help`, with bytecode caching on as on a user's machine;
- `bastion sandbox run -- /bin/true` through a running node (started here
  on this host's socket, so run it where no node is running), and without
  one (which compiles the sensor for the one run).

Run as root: `.venv/bin/python bench/cli_start.py [--runs N]`."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
BASTION = str(Path(sys.executable).parent / "bastion")
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # caching on, as users have it


def timed(cmd: list[str], runs: int) -> list[float]:
    subprocess.run(cmd, env=ENV, capture_output=True, check=False)  # warm: bytecode cached, pages in memory
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        done = subprocess.run(cmd, env=ENV, capture_output=True, check=False)
        out.append(time.perf_counter() - t)
        if done.returncode not in (0,):
            raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.decode()[-300:]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    from bastion.paths import NODE_SOCKET

    if NODE_SOCKET.exists():
        raise SystemExit(f"a node is already running ({NODE_SOCKET}): stop it first")
    console = Console()
    rows: list[tuple[str, list[float], str, float]] = []
    python = timed([sys.executable, "-c", "pass"], args.runs)
    true = timed(["/bin/true"], args.runs)
    rows.append(("python -c pass (floor)", python, "-", 0))
    rows.append(("/bin/true as a subprocess (floor)", true, "-", 0))
    rows.append(("bastion --help", timed([BASTION, "--help"], args.runs), "0.3 s", 0.3))

    with tempfile.TemporaryDirectory() as tmp:
        node = subprocess.Popen([BASTION, "node", "--audit", f"{tmp}/audit.jsonl", "--signing-key", f"{tmp}/node.key"],
                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert node.stdout is not None
            node.stdout.readline()  # "serving on ...": the sensor is compiled
            rows.append(("bastion sandbox run -- /bin/true (node)",
                         timed([BASTION, "sandbox", "run", "--", "/bin/true"], args.runs), "0.4 s", 0.4))
        finally:
            node.terminate()
            node.wait(timeout=30)
    rows.append(("bastion sandbox run -- /bin/true (no node)",
                 timed([BASTION, "sandbox", "run", "--", "/bin/true"], max(3, args.runs // 5)), "-", 0))

    floor = statistics.median(python)
    table = Table(title=f"command line start, {args.runs} runs each (bytecode cached)")
    for col in ("command", "p50", "p95", "x python start", "target", "met"):
        table.add_column(col, justify="right" if col != "command" else "left")
    for name, times, target, limit in rows:
        p50 = statistics.median(times)
        p95 = sorted(times)[max(0, int(len(times) * 0.95) - 1)]
        met = "-" if not limit else ("MET" if p50 <= limit else "MISSED")
        table.add_row(name, f"{p50 * 1000:.0f} ms", f"{p95 * 1000:.0f} ms", f"{p50 / floor:.1f}x", target, met)
    console.print(table)


if __name__ == "__main__":
    main()
