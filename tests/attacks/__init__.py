"""The malicious-behaviour corpus: small programs run inside a sandbox."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).parent
BENIGN = HERE.parent / "benign"
POLICY = HERE / "policy.yaml"


def command(script: Path, args: Sequence[str] = ()) -> list[str]:
    """Run a corpus script inside a sandbox by its source, not its path: the
    sandbox may not read the repository."""
    source = script.read_text()
    if script.suffix == ".sh":
        return ["/bin/sh", "-c", source]
    return ["/usr/bin/python3", "-c", source, *args]
