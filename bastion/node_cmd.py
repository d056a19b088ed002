"""`bastion node` and `bastion tui`: this host's long-running node, and the
analyst's view of one or more nodes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from bastion import paths

if TYPE_CHECKING:
    from rich.console import Console


def _node(args: argparse.Namespace, console: Console) -> int:
    from bastion.node import Node, NodeConfig, wait_for_signal

    fields = {k: v for k, v in vars(args).items() if k in NodeConfig.model_fields and v is not None}
    try:
        node = Node(NodeConfig(**fields))
    except (ValueError, RuntimeError) as exc:  # a bad setting or file, no root: one line
        raise SystemExit("bastion node: " + ": ".join(line.strip() for line in str(exc).splitlines()[:3])) from None
    console.print(f"bastion node serving on {node.config.local}" + (f" and {args.listen} (TLS)" if args.listen else ""))
    wait_for_signal(node)
    return 0


def _tui(args: argparse.Namespace, console: Console) -> int:
    import getpass

    from common.files import read_text
    from console.client import NodeClient
    from console.tui import AlertsApp

    token = read_text(args.token_file or paths.TOKEN_FILE, 4096).strip()
    ca = args.ca.read_bytes() if args.ca else None
    addresses = args.connect.split(",") if args.connect else [paths.LOCAL_ADDRESS]
    clients = {address: NodeClient(address, token, ca) for address in addresses}
    AlertsApp(clients, args.analyst or getpass.getuser()).run()
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("node", help="run this host's guard node: sensor, guard, sandboxes, gRPC service")
    p.add_argument("--listen", help="host:port for remote analysts (needs --tls-cert and --tls-key)")
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--token-file", type=Path, help=f"bearer token file (default {paths.TOKEN_FILE}, made if absent)")
    p.add_argument("--profiles", type=Path, help="directory of agent profiles (*.safetensors)")
    p.add_argument("--audit", type=Path, help=f"audit log (default {paths.AUDIT_LOG})")
    p.add_argument("--signing-key", type=Path,
                   help=f"ed25519 key signing the audit log's checkpoints (default {paths.SIGNING_KEY})")
    p.add_argument("--checkpoint-every", type=int, help="audit records between signed checkpoints (default 64)")
    p.add_argument("--audit-heads", type=Path, help="also append each signed audit head here (a file off this host)")
    p.add_argument("--falco", type=Path, help="also write alerts here as Falco JSON lines")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--node-cpu", type=int, help="keep this CPU for the node's event pump and audit writer; "
                                                "sandboxes run on the others")
    p.set_defaults(func=_node)

    p = sub.add_parser("tui", help="review the alerts of one node or several in the terminal")
    p.add_argument("--connect", help="node addresses, comma-separated (default: this host's node)")
    p.add_argument("--token-file", type=Path, help=f"bearer token file (default {paths.TOKEN_FILE})")
    p.add_argument("--ca", type=Path, help="CA certificate of the nodes' TLS")
    p.add_argument("--analyst", help="your name on acknowledgements (default: your login)")
    p.set_defaults(func=_tui)
