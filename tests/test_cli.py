"""The command line answers at once: importing it and running `--help`
loads none of the heavy libraries; each command imports its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "peft", "flwr", "bcc", "grpc", "sklearn", "textual", "numpy", "cryptography")


def _loaded_after(code: str) -> set[str]:
    probe = (f"import sys\n{code}\n"
             f"import json; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_help_loads_no_heavy_library() -> None:
    loaded = _loaded_after("from bastion.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_every_subcommand_help_loads_no_heavy_library() -> None:
    from bastion.cli import build_parser

    parser = build_parser()
    commands = [["doctor"], ["trace"], ["sandbox", "run"], ["node"], ["tui"], ["guard", "train"], ["guard", "score"],
                ["audit", "verify"], ["agents", "build-model"], ["agents", "analyze"], ["fl", "run"], ["demo"]]
    assert {c[0] for c in commands} == set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    for cmd in commands:
        loaded = _loaded_after(f"from bastion.cli import main\ntry:\n    main({[*cmd, '--help']!r})\n"
                               f"except SystemExit:\n    pass")
        assert not loaded & set(HEAVY), (cmd, sorted(loaded & set(HEAVY)))
