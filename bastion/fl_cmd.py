"""`bastion fl run`: federated fine-tuning of the tool-calling adapter across
sites, on a real local SuperLink and SuperNodes (default) or on Flower's
simulation engine; prints a round table and writes the adapter."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def _run(args: argparse.Namespace, console: Console) -> int:
    from common.models import ModelError, parse_model
    from federated.settings import FlSettings

    options = {"aggregation": args.aggregation, "local-steps": args.local_steps, "dp-clip": args.dp_clip,
               "dp-noise": args.dp_noise, "secure-aggregation": args.secure_aggregation}
    try:  # before any model is built or process started
        parse_model(FlSettings, json.dumps(options), "bastion fl run", fmt="json")
    except ModelError as exc:
        raise SystemExit(f"{exc}".replace("field (top level): ", "--")) from None
    from bastion.federated_run import run_federated

    out = args.out or Path(tempfile.mkdtemp(prefix="bastion-fl-"))
    run_federated(console, args.sites, args.rounds, out, args.simulation, tuple(args.poison_site), **options)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    fl = sub.add_parser("fl", help="federated fine-tuning with Flower").add_subparsers(dest="action", required=True)
    p = fl.add_parser("run", help="fine-tune the tool-calling adapter across sites")
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, help="where the adapter, report and logs go (default: a new temp dir)")
    p.add_argument("--simulation", action="store_true", help="Flower's simulation engine instead of real processes")
    p.add_argument("--aggregation", choices=["mean", "median", "trimmed-mean"], default="mean")
    p.add_argument("--local-steps", type=int, default=30)
    p.add_argument("--secure-aggregation", action="store_true",
                   help="SecAgg+: the server learns only the sites' mean; each site bounds its own update")
    p.add_argument("--dp-clip", type=float, default=0.0, help="clip each site's update to this norm (0: off)")
    p.add_argument("--dp-noise", type=float, default=0.0, help="Gaussian noise multiplier (needs --dp-clip)")
    p.add_argument("--poison-site", type=int, action="append", default=[], help="make site I send garbage (tests)")
    p.set_defaults(func=_run)
