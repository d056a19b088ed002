"""`bastion sandbox run`: one command in a sandbox, from the command line."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ebpf.sensor import Sensor, require_root
from sandbox.manager import SandboxManager
from sandbox.policy import Policy, load_policy
from sandbox.result import SandboxResult


def run_sandboxed(cmd: Sequence[str], policy_file: Path | None, timeout: float | None) -> SandboxResult:
    policy = load_policy(policy_file) if policy_file else Policy()
    require_root()
    with Sensor() as sensor:
        manager = SandboxManager(sensor)
        try:
            return manager.run(cmd, policy, timeout=timeout)
        finally:
            manager.close()


def print_result(result: SandboxResult, as_json: bool) -> None:
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if as_json:
        print(result.model_dump_json(exclude={"stdout", "stderr"}))
