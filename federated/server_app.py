"""The ServerApp: starts from a fresh LoRA adapter on the agents' base model,
runs the rounds with the guarded strategy, and writes the aggregated adapter
in peft format (safetensors) and a report of every round."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from federated import task
from federated.settings import settings
from federated.strategy import GuardedFedAvg, Privacy, to_numpy, to_record

app = ServerApp()


def per_site_metrics(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """The weighted means, and each site's own value (sites' replies carry the
    same keys, as Flower requires; the site is one of the values)."""
    out: dict[str, float] = {}
    total = sum(float(c["metrics"][weight_key]) for c in contents) or 1.0
    for key in ("accuracy", "train-loss"):
        values = [(float(c["metrics"][key]), float(c["metrics"][weight_key])) for c in contents if key in c["metrics"]]
        if values:
            out[key] = sum(v * w for v, w in values) / total
    for c in contents:
        m = c["metrics"]
        for key in ("accuracy", "train-loss"):
            if key in m:
                out[f"{key}-site-{int(m['site'])}"] = float(m[key])  # type: ignore[arg-type]
    return MetricRecord(out)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = settings(context)
    n = int(cfg["num-sites"])
    model, _ = task.load(Path(str(cfg["base-model"])))
    strategy = GuardedFedAvg(
        method=str(cfg["aggregation"]), max_update_norm=float(cfg["max-update-norm"]),
        privacy=Privacy(float(cfg["dp-clip"]), float(cfg["dp-noise"])),
        site_names=dict(enumerate(str(cfg["site-names"]).split(","))),
        min_train_nodes=n, min_evaluate_nodes=n, min_available_nodes=n,
        train_metrics_aggr_fn=per_site_metrics, evaluate_metrics_aggr_fn=per_site_metrics,
    )
    result = strategy.start(grid, to_record(task.get_adapter(model)), num_rounds=int(cfg["num-server-rounds"]),
                            train_config=ConfigRecord({}))
    out = Path(str(cfg["output-dir"]))
    task.set_adapter(model, to_numpy(result.arrays))
    model.save_pretrained(out / "adapter", safe_serialization=True)
    rounds = sorted(set(result.train_metrics_clientapp) | set(result.evaluate_metrics_clientapp))
    report = {
        "rounds": [{"round": r,
                    "train": dict(result.train_metrics_clientapp.get(r, {})),
                    "evaluate": dict(result.evaluate_metrics_clientapp.get(r, {})),
                    "bytes_up": strategy.log.bytes_up.get(r, 0), "bytes_down": strategy.log.bytes_down.get(r, 0)}
                   for r in rounds],
        "rejections": [r.__dict__ for r in strategy.log.rejections],
        "adapter_bytes": sum(v.nbytes for v in task.get_adapter(model).values()),
        "model_bytes": sum(p.numel() * p.element_size() for name, p in model.named_parameters() if "lora_" not in name),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
