"""`bastion sandbox run`: one command in a sandbox, from the command line;
through this host's node when one is running, else in a sensor of its own."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from ebpf.sensor import Sensor, require_root
from guard.client import NodeClient
from guard.proto import bastion_pb2 as pb
from sandbox.manager import SandboxManager
from safeio import read_text
from sandbox.policy import MAX_POLICY_BYTES, Policy, parse_policy
from sandbox.result import SandboxResult


def local_node() -> NodeClient | None:
    """A client of this host's node, if one answers."""
    from bastion.node import LOCAL_ADDRESS, RUN_DIR, TOKEN_FILE

    try:
        if not (RUN_DIR / "node.sock").exists():
            return None
        client = NodeClient(LOCAL_ADDRESS, read_text(TOKEN_FILE, 4096).strip())
        client.stub.GetStatus(pb.StatusRequest(), timeout=1)
        return client
    except (OSError, ValueError, grpc.RpcError):
        return None


class RunRefused(RuntimeError):
    """The node refused the request; the message is its one line."""


def run_sandboxed(cmd: Sequence[str], policy_file: Path | None, timeout: float | None) -> SandboxResult:
    policy_yaml = read_text(policy_file, MAX_POLICY_BYTES) if policy_file else ""
    policy = parse_policy(policy_yaml, str(policy_file)) if policy_file else Policy()  # errors named before anything runs
    node = local_node()
    if node is not None:
        request = pb.RunRequest(command=list(cmd), policy_yaml=policy_yaml, timeout_s=timeout or 0)
        try:
            return SandboxResult.model_validate(json.loads(node.run(request))["result"])
        except grpc.RpcError as exc:
            raise RunRefused(f"the node refused the run: {exc.details()}") from None
        finally:
            node.close()
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
