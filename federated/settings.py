"""The run's settings and each site's files, the same way in deployment
(`flwr run` passes the app's run config; a SuperNode's --node-config names its
site and files) and in simulation (Flower's engine passes neither, so the
runner leaves a JSON file named by $BASTION_FL_SETTINGS). Parsed once into a
typed model; a bad value is one line naming the field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from flwr.app import Context
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.models import load_model


class FlSettings(BaseModel):
    """What a federated run is told, by the names the run config uses."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False,
                              alias_generator=lambda name: name.replace("_", "-"))
    num_server_rounds: int = Field(3, ge=1)
    local_steps: int = Field(30, ge=1)
    lr: float = Field(0.005, gt=0)
    aggregation: Literal["mean", "median", "trimmed-mean"] = "mean"
    max_update_norm: float = Field(10.0, ge=0)
    dp_clip: float = Field(0.0, ge=0)
    dp_noise: float = Field(0.0, ge=0)
    secure_aggregation: bool = False
    base_model: Path | None = None
    output_dir: Path | None = None
    num_sites: int = Field(0, ge=0)
    site_names: list[str] = Field(default_factory=list)
    sites_dir: Path | None = None
    poisoned: list[int] = Field(default_factory=list)

    @field_validator("site_names", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        return value.split(",") if isinstance(value, str) else value  # the run config holds a string

    @model_validator(mode="after")
    def _together(self) -> FlSettings:
        if self.secure_aggregation and self.aggregation != "mean":
            raise ValueError("aggregation: SecAgg+ reveals only the sum, so only 'mean' runs under it")
        if self.dp_noise and not self.dp_clip:
            raise ValueError("dp-noise: noise needs a clipping bound (dp-clip)")
        return self

    def site_bound(self) -> float:
        """The bound an honest site clips its own update to under SecAgg+."""
        return min(b for b in (self.max_update_norm, self.dp_clip) if b > 0)

    def as_run_config(self) -> dict[str, Any]:
        """The form `flwr run --run-config` and the simulation file take."""
        out = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        out["site-names"] = ",".join(self.site_names)
        return out


def settings(context: Context) -> FlSettings:
    merged: dict[str, Any] = {}
    if path := os.environ.get("BASTION_FL_SETTINGS"):
        merged.update(load_model(FlSettings, path, fmt="json").model_dump(by_alias=True, exclude_unset=True))
    merged.update(context.run_config)
    return FlSettings.model_validate(merged)


def site_files(context: Context) -> tuple[int, Path, Path, bool]:
    """The site index, its train and test files, and whether it is poisoned."""
    node = context.node_config
    if "train-path" in node:
        return int(node["site"]), Path(str(node["train-path"])), Path(str(node["test-path"])), bool(node.get("poison"))
    cfg = settings(context)  # simulation: the partition id picks the site
    site = int(node["partition-id"])
    root = cfg.sites_dir or Path(".")
    name = cfg.site_names[site]
    return site, root / f"{name}-train.jsonl", root / f"{name}-test.jsonl", site in cfg.poisoned
