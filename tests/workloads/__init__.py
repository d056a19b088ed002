"""Build the static C workloads that tests and benches run under the sensor."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

SOURCE = Path(__file__).with_name("workload.c")
SEQ_SYSCALLS = (110, 102, 104, 107)  # getppid getuid getgid geteuid, in workload.c's order


def loop_ngrams(rounds: int, n: int) -> Counter[tuple[int, ...]]:
    """Counts of the n-grams that lie wholly inside `rounds` of seq's loop."""
    loop = list(SEQ_SYSCALLS) * rounds
    return Counter(tuple(loop[i : i + n]) for i in range(len(loop) - n + 1))


def build(out_dir: Path) -> Path:
    """Compile workload.c statically into out_dir; returns the binary."""
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc is needed to build tests/workloads/workload.c")
    binary = out_dir / "workload"
    subprocess.run(["gcc", "-O1", "-static", "-o", str(binary), str(SOURCE)], check=True)
    return binary
