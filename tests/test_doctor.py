"""`bastion doctor` checks each capability by using it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_doctor_reports_every_capability_ok_on_this_machine(kernel: None) -> None:
    bastion = Path(sys.executable).parent / "bastion"
    out = subprocess.run([str(bastion), "doctor", "--json"], capture_output=True, text=True, timeout=120)
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert {"root", "cgroup v2", "tracefs", "kernel headers", "bcc", "tracepoint programs",
            "cgroup sock_addr programs", "API call programs", "landlock", "seccomp"} <= rows.keys()
    failed = [r for r in rows.values() if r["required"] and not r["ok"]]
    assert failed == [] and out.returncode == 0, failed
    assert "copies of libssl.so.3" in rows["API call programs"]["detail"]  # where the sensor's TLS probes go


def test_a_failing_check_names_its_fix(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from bastion import doctor

    def broken() -> str:
        raise RuntimeError("no tracefs here")

    monkeypatch.setattr(doctor, "CHECKS", [("tracefs", True, broken, "mount -t tracefs tracefs /sys/kernel/tracing")])
    [row] = doctor.run_checks()
    assert (row.ok, row.detail, row.fix) == (False, "no tracefs here", "mount -t tracefs tracefs /sys/kernel/tracing")
    assert not doctor.healthy([row])
