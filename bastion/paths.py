"""Where a host's Bastion keeps its state: one place for every path a node,
its clients and the command line share."""

from __future__ import annotations

from pathlib import Path

RUN_DIR = Path("/run/bastion")
NODE_SOCKET = RUN_DIR / "node.sock"
LOCAL_ADDRESS = f"unix://{NODE_SOCKET}"
TOKEN_FILE = RUN_DIR / "token"
STATE_DIR = Path("/var/lib/bastion")  # root only: no sandbox can read it
AUDIT_LOG = STATE_DIR / "audit.jsonl"
SIGNING_KEY = STATE_DIR / "node.key"
CLI_AUDIT_LOG = STATE_DIR / "sandbox-run.jsonl"  # `bastion sandbox run` when no node answers
