"""`bastion sandbox run`: one command in a sandbox under the guard, from the
command line; through this host's node when one is running, else in a
sensor of its own (compiled for this one run: a node avoids that)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bastion import paths

if TYPE_CHECKING:
    from rich.console import Console

    from console.client import NodeClient
    from sandbox.result import SandboxResult


class RunRefused(RuntimeError):
    """The node refused the request; the message is its one line."""


def local_node() -> NodeClient | None:
    """A client of this host's node, if one answers."""
    if not paths.NODE_SOCKET.exists():
        return None
    import grpc

    from common.files import read_text
    from console.client import NodeClient
    from console.proto import bastion_pb2 as pb

    try:
        client = NodeClient(paths.LOCAL_ADDRESS, read_text(paths.TOKEN_FILE, 4096).strip())
        client.stub.GetStatus(pb.StatusRequest(), timeout=1)
        return client
    except (OSError, ValueError, grpc.RpcError):
        return None


def run_sandboxed(cmd: Sequence[str], policy_file: Path | None, timeout: float | None,
                  tell: Any = None) -> tuple[SandboxResult, list[dict[str, Any]]]:
    """The result and the guard's alerts (as JSON objects)."""
    from common.files import read_text
    from sandbox.policy import MAX_POLICY_BYTES, Policy, parse_policy
    from sandbox.result import SandboxResult

    policy_yaml = read_text(policy_file, MAX_POLICY_BYTES) if policy_file else ""
    policy = parse_policy(policy_yaml, str(policy_file)) if policy_file else Policy()  # named before anything runs
    node = local_node()
    if node is not None:
        import grpc

        from console.proto import bastion_pb2 as pb

        request = pb.RunRequest(command=list(cmd), policy_yaml=policy_yaml, timeout_s=timeout or 0)
        try:
            reply = json.loads(node.run(request))
        except grpc.RpcError as exc:
            raise RunRefused(f"the node refused the run: {exc.details()}") from None
        finally:
            node.close()
        return SandboxResult.model_validate(reply["result"]), reply["alerts"]
    return _run_here(cmd, policy, timeout, tell)


def _run_here(cmd: Sequence[str], policy: Any, timeout: float | None,
              tell: Any) -> tuple[SandboxResult, list[dict[str, Any]]]:
    from bastion.guarded import GuardedSandboxes
    from ebpf.sensor import Sensor, require_root
    from guard.audit import AuditLog, Signer

    require_root()
    if tell:
        tell("no node is running: compiling the sensor for this one run (a few seconds; "
             "a running `bastion node` keeps it compiled)")
    log = AuditLog(paths.CLI_AUDIT_LOG, Signer.load_or_create(paths.SIGNING_KEY))
    try:
        with Sensor() as sensor, GuardedSandboxes(sensor, log) as guarded:
            run = guarded.run(cmd, policy, timeout=timeout)
    finally:
        log.close()
    return run.result, [a.model_dump(mode="json") for a in run.alerts]


def _run(args: argparse.Namespace, console: Console) -> int:
    from common.files import InputError
    from sandbox.manager import SandboxError
    from sandbox.policy import PolicyError

    if not args.cmd:
        raise SystemExit("bastion sandbox run: give a command after --, e.g. `bastion sandbox run -- ls /`")
    try:
        result, alerts = run_sandboxed(args.cmd, args.policy, args.timeout,
                                       tell=lambda line: print(f"bastion: {line}", file=sys.stderr))
    except (PolicyError, InputError, SandboxError, RunRefused) as exc:
        raise SystemExit(f"bastion: {exc}") from None
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if args.json:
        print(json.dumps({**result.model_dump(mode="json", exclude={"stdout", "stderr"}), "alerts": alerts}))
    return result.exit_status


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sandbox = sub.add_parser("sandbox", help="run commands in sandboxes").add_subparsers(dest="action", required=True)
    p = sandbox.add_parser("run", help="run a command in a sandbox; exit status 126 when Bastion stopped it")
    p.add_argument("--policy", type=Path, help="policy YAML (default: the built-in default policy)")
    p.add_argument("--timeout", type=float, help="wall timeout in seconds, at most the policy's (default: the policy's)")
    p.add_argument("--json", action="store_true", help="print the result, verdict, denials and alerts as JSON")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=_run)
