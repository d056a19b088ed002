"""The `bastion` command line. Each `*_cmd` module registers its own
subcommands and imports what a command needs only when it runs, so that
every command, `--help` first, answers at once."""

from __future__ import annotations

import argparse
import os
import sys

from bastion import agents_cmd, fl_cmd, guard_cmd, host_cmd, node_cmd, sandbox_cmd

COMMANDS = (host_cmd, sandbox_cmd, node_cmd, guard_cmd, agents_cmd, fl_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bastion", description="SLM agents in eBPF-monitored sandboxes")
    parser.add_argument("--log-level", default="warning", help="structured log level (default: warning)")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Bastion shows its own progress; transformers' per-load bars are noise (children inherit this)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args = build_parser().parse_args(argv)
    if getattr(args, "cmd", None) and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    from rich.console import Console

    from bastion import logs

    logs.setup(args.log_level)
    return int(args.func(args, Console()))


if __name__ == "__main__":
    sys.exit(main())
