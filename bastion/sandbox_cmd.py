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


MAX_POLICY_BYTES = 1 << 20  # as sandbox.policy's, which this fast path does not import


def run_sandboxed(cmd: Sequence[str], policy_file: Path | None, timeout: float | None,
                  tell: Any = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The result and the guard's alerts, as JSON objects. Through a node the
    policy is checked there; its refusal is then named here, by file."""
    from common.files import read_text

    policy_yaml = read_text(policy_file, MAX_POLICY_BYTES) if policy_file else ""
    node = local_node()
    if node is None:
        return _run_here(cmd, policy_yaml, policy_file, timeout, tell)
    import grpc

    from console.proto import bastion_pb2 as pb

    request = pb.RunRequest(command=list(cmd), policy_yaml=policy_yaml, timeout_s=timeout or 0)
    try:
        reply = json.loads(node.run(request))
    except grpc.RpcError as exc:
        if policy_file and exc.details().startswith("policy_yaml: "):
            _policy(policy_yaml, policy_file)  # the same error, naming the file
        raise RunRefused(f"the node refused the run: {exc.details()}") from None
    finally:
        node.close()
    return reply["result"], reply["alerts"]


def _policy(policy_yaml: str, policy_file: Path | None) -> Any:
    from sandbox.policy import Policy, parse_policy

    return parse_policy(policy_yaml, str(policy_file)) if policy_file else Policy()


def _run_here(cmd: Sequence[str], policy_yaml: str, policy_file: Path | None, timeout: float | None,
              tell: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from bastion.guarded import GuardedSandboxes
    from ebpf.sensor import Sensor, require_root
    from guard.audit import AuditLog, Signer

    policy = _policy(policy_yaml, policy_file)  # named before anything runs
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
    return run.result.model_dump(mode="json"), [a.model_dump(mode="json") for a in run.alerts]


def _run(args: argparse.Namespace, console: Console) -> int:
    if not args.cmd:
        raise SystemExit("bastion sandbox run: give a command after --, e.g. `bastion sandbox run -- ls /`")
    try:
        result, alerts = run_sandboxed(args.cmd, args.policy, args.timeout,
                                       tell=lambda line: print(f"bastion: {line}", file=sys.stderr))
    except (ValueError, RuntimeError) as exc:  # a bad policy or file, a refused start, no root: one line
        raise SystemExit(f"bastion: {exc}") from None
    from sandbox.status import exit_status

    sys.stdout.write(result.pop("stdout"))
    sys.stderr.write(result.pop("stderr"))
    if args.json:
        print(json.dumps({**result, "alerts": alerts}))
    return exit_status(result["stopped_by"], result["signal"], result["exit_code"])


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sandbox = sub.add_parser("sandbox", help="run commands in sandboxes").add_subparsers(dest="action", required=True)
    p = sandbox.add_parser("run", help="run a command in a sandbox; exit status 126 when Bastion stopped it")
    p.add_argument("--policy", type=Path, help="policy YAML (default: the built-in default policy)")
    p.add_argument("--timeout", type=float, help="wall timeout in seconds, at most the policy's (default: the policy's)")
    p.add_argument("--json", action="store_true", help="print the result, verdict, denials and alerts as JSON")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=_run)
