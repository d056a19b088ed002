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


def test_a_kernel_that_can_preempt_a_bpf_program_is_named_with_its_fix(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The API programs share a per-CPU scratch along their tail calls: a
    kernel that preempts kernel code could let one call's parse overwrite another's."""
    from bastion import doctor

    dynamic = "CONFIG_PREEMPT_DYNAMIC=y\nCONFIG_PREEMPT_NONE=y\n"
    assert doctor.preemption_model(dynamic, "root=/dev/vda1 ro") == "none"
    assert doctor.preemption_model(dynamic, "root=/dev/vda1 preempt=full") == "full"
    assert doctor.preemption_model("CONFIG_PREEMPT_NONE=y\n", "preempt=full") == "none"  # not the boot's to choose
    assert doctor.preemption_model("CONFIG_PREEMPT_RT=y\nCONFIG_PREEMPT=y\n", "") == "rt"
    monkeypatch.setattr(doctor, "preemption_model", lambda config, cmdline: "full")
    monkeypatch.setattr(doctor, "CHECKS", [c for c in doctor.CHECKS if c[0] == "kernel preemption"])
    [row] = doctor.run_checks()
    assert not row.ok and "preempted between its tail calls" in row.detail and "preempt=none" in row.fix
