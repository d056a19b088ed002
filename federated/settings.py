"""The run's settings and each site's files, the same way in deployment
(`flwr run` passes the app's run config; a SuperNode's --node-config names its
site and files) and in simulation (Flower's engine passes neither, so the
runner leaves a JSON file named by $BASTION_FL_SETTINGS)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flwr.app import Context

DEFAULTS: dict[str, Any] = {
    "num-server-rounds": 3,
    "local-steps": 30,
    "lr": 0.005,
    "aggregation": "mean",
    "max-update-norm": 10.0,
    "dp-clip": 0.0,
    "dp-noise": 0.0,
    "secure-aggregation": False,
}


def settings(context: Context) -> dict[str, Any]:
    merged = dict(DEFAULTS)
    if path := os.environ.get("BASTION_FL_SETTINGS"):
        merged.update(json.loads(Path(path).read_text()))
    merged.update(context.run_config)
    return merged


def check(cfg: dict[str, Any]) -> None:
    """Refuse settings that cannot run together, naming the field."""
    if cfg["secure-aggregation"] and cfg["aggregation"] != "mean":
        raise ValueError("aggregation: SecAgg+ reveals only the sum, so only 'mean' runs under it")


def site_files(context: Context) -> tuple[int, Path, Path, bool]:
    """The site index, its train and test files, and whether it is poisoned."""
    node = context.node_config
    if "train-path" in node:
        return int(node["site"]), Path(str(node["train-path"])), Path(str(node["test-path"])), bool(node.get("poison"))
    cfg = settings(context)  # simulation: the partition id picks the site
    site = int(node["partition-id"])
    names = str(cfg["site-names"]).split(",")
    root = Path(str(cfg["sites-dir"]))
    return site, root / f"{names[site]}-train.jsonl", root / f"{names[site]}-test.jsonl", site in cfg.get("poisoned", [])
