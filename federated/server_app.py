"""The ServerApp: starts from a fresh LoRA adapter on the agents' base model,
runs the rounds (guarded FedAvg, or under SecAgg+), and writes the aggregated
adapter in peft format (safetensors) and a report of every round."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from federated import secure, task
from federated.settings import FlSettings, settings
from federated.strategy import Arrays, GuardedFedAvg, Outcome, Privacy, record_metrics, to_numpy, to_record
from federated.traffic import CountingGrid

app = ServerApp()


def run_plain(grid: Grid, context: Context, cfg: FlSettings, initial: Arrays) -> Outcome:
    """Each site's update reaches the server, which checks it before aggregating."""
    n = cfg.num_sites
    strategy = GuardedFedAvg(
        method=cfg.aggregation, max_update_norm=cfg.max_update_norm,
        privacy=Privacy(cfg.dp_clip, cfg.dp_noise),
        site_names=dict(enumerate(cfg.site_names)),
        min_train_nodes=n, min_evaluate_nodes=n, min_available_nodes=n,
        train_metrics_aggr_fn=record_metrics, evaluate_metrics_aggr_fn=record_metrics,
    )
    result = strategy.start(grid, to_record(initial), num_rounds=cfg.num_server_rounds,
                            train_config=ConfigRecord({}))
    return Outcome(arrays=to_numpy(result.arrays),
                   train={r: dict(m) for r, m in result.train_metrics_clientapp.items()},  # type: ignore[misc]
                   evaluate={r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()},  # type: ignore[misc]
                   rejections=strategy.rejections)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = settings(context)  # refuses settings that cannot run together
    model, _ = task.load(Path(str(cfg.base_model)))
    counting = CountingGrid(grid)
    secure_run = cfg.secure_aggregation
    outcome = (secure.run if secure_run else run_plain)(counting, context, cfg, task.get_adapter(model))
    out = Path(str(cfg.output_dir))
    task.set_adapter(model, outcome.arrays)
    task.save(model, out / "adapter")
    report = {
        "secure_aggregation": secure_run,
        "rounds": [{"round": r, "train": outcome.train.get(r, {}), "evaluate": outcome.evaluate.get(r, {}),
                    "bytes_up": counting.bytes_up[r], "bytes_down": counting.bytes_down[r],
                    "readable_updates": counting.readable_updates[r]}
                   for r in sorted(set(outcome.train) | set(outcome.evaluate))],
        "rejections": [r.__dict__ for r in outcome.rejections],
        "adapter_bytes": sum(v.nbytes for v in outcome.arrays.values()),
        "model_bytes": sum(p.numel() * p.element_size() for name, p in model.named_parameters() if "lora_" not in name),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
