"""Quick runs on Flower's simulation engine: the same ServerApp and ClientApp,
with N virtual SuperNodes in this machine's processes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from federated.sites import make_sites


def simulate(base_model: Path, n_sites: int, rounds: int, out: Path, **options: Any) -> dict[str, Any]:
    """Run and return the report; the adapter is written to out/adapter."""
    from flwr.simulation import run_simulation

    from federated.client_app import app as client_app
    from federated.server_app import app as server_app

    sites = make_sites(out / "sites", n_sites)
    settings = {"base-model": str(base_model), "num-sites": n_sites, "num-server-rounds": rounds,
                "site-names": ",".join(sites), "sites-dir": str(out / "sites"), "output-dir": str(out),
                **options}
    path = out / "settings.json"
    path.write_text(json.dumps(settings))
    os.environ["BASTION_FL_SETTINGS"] = str(path)
    # The clients never use an accelerator: take Ray's coming default (leave
    # the visible-devices variables alone at num_gpus=0) rather than have it
    # print a FutureWarning about the change to every user.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n_sites,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False}})
    return json.loads((out / "report.json").read_text())
