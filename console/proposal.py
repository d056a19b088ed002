"""From an alert to the allowlist change that would have allowed it, as a
policy fragment an analyst can review; proposing is not applying."""

from __future__ import annotations

import posixpath
import re

_DEST = re.compile(r"(?:destination|egress to) (?P<host>[0-9a-fA-F.:]+?):(?P<port>\d+)")
_BINARY = re.compile(r"binary (?P<path>\S+)")
_PATH = re.compile(r"(?:write to|read of|path under) (?P<path>\S+)")
_SYSCALL = re.compile(r"denied syscall (?P<name>\w+)")


def propose(detector: str, rule: str) -> str:
    """A YAML fragment (with a comment saying what it means) for the policy."""
    if m := _DEST.search(rule):
        return (f"# allow this destination\nnetwork:\n  allow:\n    - host: {m['host']}\n"
                f"      ports: [{m['port']}]\n")
    if m := _BINARY.search(rule):
        return f"# allow binaries from this directory\nfilesystem:\n  read_only:\n    - {posixpath.dirname(m['path'])}\n"
    if m := _SYSCALL.search(rule):
        return (f"# {m['name']} is denied by default for a reason: allowing it weakens the sandbox\n"
                f"# no allowlist change proposed; review the tool instead\n")
    if m := _PATH.search(rule):
        key = "workdir" if rule.startswith("write") else "read_only"
        return f"# allow this path\nfilesystem:\n  {key}:\n    - {m['path']}\n"
    if detector in ("ngram", "frequency", "novelty"):
        return ("# the run departed from the agent's profile; if it was benign, record it and retrain:\n"
                "#   bastion trace --ngrams --jsonl run.jsonl -- CMD\n"
                "#   bastion guard train --from old.jsonl... run.jsonl --agent AGENT --out PROFILE\n")
    return "# no allowlist change applies to this finding\n"
