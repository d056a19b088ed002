"""The recorder of allowed API calls, apart from the guard's other tests: a
module of its own, since each GuardedSandboxes here takes the sensor's
rings, and another module's would read them too. Fail closed if it dies;
its log tamper-evident through the node's."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.guarded import GuardedSandboxes
from bastion.local_api import LocalApi
from ebpf.sensor import Sensor
from guard import audit
from guard.audit import AuditLog
from sandbox.manager import SandboxError
from sandbox.policy import Policy
from tests.apis import LABELS, base, request


def test_if_the_recorder_dies_every_sandbox_is_killed(sensor: Sensor, records_policy: Policy, tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    with GuardedSandboxes(sensor, log) as guarded:
        sb = guarded.manager.start(["/bin/sleep", "30"], records_policy, LABELS)
        guarded.recorder.proc.kill()
        result = guarded.manager.wait(sb, timeout=10)
        assert result.signal == 9 and result.duration_s < 5, result
        assert "recorder of allowed API calls exited" in (result.stopped_by or ""), result.stopped_by
        with pytest.raises(SandboxError, match="recorder of allowed API calls exited"):
            guarded.manager.start(["/bin/true"], records_policy, LABELS)
    log.close()


def test_an_edited_or_cut_calls_log_fails_verification(sensor: Sensor, records_policy: Policy, records_api: LocalApi,
                                                       tmp_path: Path) -> None:
    """The allowed calls' log is chained and anchored in the node's log at
    each run's end: editing a record, or cutting the log's end, shows."""
    log = AuditLog(tmp_path / "audit.jsonl")
    with GuardedSandboxes(sensor, log) as guarded:
        for i in range(3):
            assert request(guarded, records_policy, "GET", f"{base(records_api, False)}/records/{i}").result.exit_status == 0
        calls_log = guarded.recorder.path
    log.close()
    assert audit.verify(log.path).anchored == 3
    lines = calls_log.read_text().splitlines(keepends=True)

    calls_log.write_text("".join(lines[:-1]))
    with pytest.raises(audit.AuditError, match=f"{calls_log.name}: record seq 2, whose head audit.jsonl anchors, is missing"):
        audit.verify(log.path)
    calls_log.write_text("".join(lines).replace("/records/1", "/records/7"))
    with pytest.raises(audit.AuditError, match=f"{calls_log.name}:2: record seq 1: its content does not match"):
        audit.verify(log.path)
    calls_log.unlink()
    with pytest.raises(audit.AuditError, match="no such audit log, though audit.jsonl anchors it"):
        audit.verify(log.path)
