"""The `bastion` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bastion import logs


def _doctor(args: argparse.Namespace, console: Console) -> int:
    from bastion.doctor import healthy, run_checks

    results = run_checks()
    if args.json:
        print(json.dumps([r.model_dump() for r in results], indent=2))
    else:
        table = Table(title="bastion doctor")
        for col in ("capability", "status", "detail", "fix"):
            table.add_column(col)
        for r in results:
            status = "[green]ok[/]" if r.ok else ("[bold red]FAIL[/]" if r.required else "[yellow]missing[/]")
            table.add_row(r.name, status, r.detail, r.fix)
        console.print(table)
    return 0 if healthy(results) else 1


def _trace(args: argparse.Namespace, console: Console) -> int:
    from bastion.trace import run_trace

    if not args.cmd:
        raise SystemExit("bastion trace: give a command after --, e.g. `bastion trace -- ls /`")
    return run_trace(args.cmd, args.jsonl, console, ngram_n=args.ngram, ngrams=args.ngrams)


def _sandbox_run(args: argparse.Namespace, console: Console) -> int:
    from bastion.sandbox_cmd import RunRefused, print_result, run_sandboxed
    from safeio import InputError
    from sandbox.manager import SandboxError
    from sandbox.policy import PolicyError

    if not args.cmd:
        raise SystemExit("bastion sandbox run: give a command after --, e.g. `bastion sandbox run -- ls /`")
    try:
        result = run_sandboxed(args.cmd, args.policy, args.timeout)
    except (PolicyError, InputError, SandboxError, RunRefused) as exc:
        raise SystemExit(f"bastion: {exc}") from None
    print_result(result, args.json)
    return result.exit_status


def _node(args: argparse.Namespace, console: Console) -> int:
    from bastion.node import Node, NodeConfig, wait_for_signal

    fields = {k: v for k, v in vars(args).items() if k in NodeConfig.model_fields and v is not None}
    node = Node(NodeConfig(**fields))
    console.print(f"bastion node serving on {node.config.local}" + (f" and {args.listen} (TLS)" if args.listen else ""))
    wait_for_signal(node)
    return 0


def _tui(args: argparse.Namespace, console: Console) -> int:
    import getpass

    from bastion.node import LOCAL_ADDRESS, TOKEN_FILE
    from guard.client import NodeClient
    from guard.tui import AlertsApp

    token = (args.token_file or TOKEN_FILE).read_text().strip()
    ca = args.ca.read_bytes() if args.ca else None
    client = NodeClient(args.connect or LOCAL_ADDRESS, token, ca)
    AlertsApp(client, args.analyst or getpass.getuser()).run()
    return 0


def _demo(args: argparse.Namespace, console: Console) -> int:
    from bastion.demo import DemoFailed, main as demo

    try:
        return demo(console, tui=args.tui, fl_rounds=args.rounds)
    except DemoFailed as exc:
        console.print(f"[bold red]{exc}[/]")
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bastion", description="SLM agents in eBPF-monitored sandboxes")
    parser.add_argument("--log-level", default="warning", help="structured log level (default: warning)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="check the kernel capabilities Bastion uses")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=_doctor)

    p = sub.add_parser("trace", help="run a command in a watched cgroup and print its events")
    p.add_argument("--jsonl", type=Path, help="also record the events to this JSONL file")
    p.add_argument("--ngram", type=int, default=6, help="syscall n-gram length (default 6)")
    p.add_argument("--ngrams", action="store_true", help="record every n-gram too (training input for the guard)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=_trace)

    sandbox = sub.add_parser("sandbox", help="run commands in sandboxes").add_subparsers(dest="action", required=True)
    p = sandbox.add_parser("run", help="run a command in a sandbox; exit status 126 when Bastion stopped it")
    p.add_argument("--policy", type=Path, help="policy YAML (default: the built-in default policy)")
    p.add_argument("--timeout", type=float, help="wall timeout in seconds (default: the policy's)")
    p.add_argument("--json", action="store_true", help="print the result, verdict and denials as JSON")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=_sandbox_run)
    p = sub.add_parser("demo", help="everything Bastion is for, in a few minutes")
    p.add_argument("--tui", action="store_true", help="review the run's alerts in the TUI before the federated part")
    p.add_argument("--rounds", type=int, default=1, help="federated rounds (default 1)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("node", help="run this host's guard node: sensor, guard, sandboxes, gRPC service")
    p.add_argument("--listen", help="host:port for remote analysts (needs --tls-cert and --tls-key)")
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--token-file", type=Path, help="bearer token file (default /run/bastion/token, made if absent)")
    p.add_argument("--profiles", type=Path, help="directory of agent profiles (*.safetensors)")
    p.add_argument("--audit", type=Path, help="audit log (default /var/lib/bastion/audit.jsonl)")
    p.add_argument("--signing-key", type=Path,
                   help="ed25519 key signing the audit log's checkpoints (default /var/lib/bastion/node.key)")
    p.add_argument("--checkpoint-every", type=int, help="audit records between signed checkpoints (default 64)")
    p.add_argument("--audit-heads", type=Path, help="also append each signed audit head here (a file off this host)")
    p.add_argument("--falco", type=Path, help="also write alerts here as Falco JSON lines")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.set_defaults(func=_node)

    p = sub.add_parser("tui", help="review a node's alerts in the terminal")
    p.add_argument("--connect", help="node address (default: this host's node)")
    p.add_argument("--token-file", type=Path, help="bearer token file (default /run/bastion/token)")
    p.add_argument("--ca", type=Path, help="CA certificate of the node's TLS")
    p.add_argument("--analyst", help="your name on acknowledgements (default: your login)")
    p.set_defaults(func=_tui)

    from bastion import agents_cmd, fl_cmd, guard_cmd

    guard_cmd.add_commands(sub)
    agents_cmd.add_commands(sub)
    fl_cmd.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Bastion shows its own progress; transformers' per-load bars are noise (children inherit this)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args = build_parser().parse_args(argv)
    if getattr(args, "cmd", None) and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    logs.setup(args.log_level)
    return int(args.func(args, Console()))


if __name__ == "__main__":
    sys.exit(main())
