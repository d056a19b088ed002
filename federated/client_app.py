"""The ClientApp: runs at each site's SuperNode, reads only that site's
data (named by the node config), and sends back only the adapter's arrays
and numeric metrics."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federated import task
from federated.settings import settings, site_files
from federated.sites import read_site
from federated.strategy import to_numpy, to_record

app = ClientApp()


@lru_cache(maxsize=2)
def _model(base: str) -> tuple:  # type: ignore[type-arg]
    return task.load(Path(base))


@app.train()
def train(msg: Message, context: Context) -> Message:
    site, train_path, _, poisoned = site_files(context)
    cfg = settings(context)
    model, tokenizer = _model(str(cfg["base-model"]))
    task.set_adapter(model, to_numpy(msg.content["arrays"]))
    pairs = read_site(train_path)
    round_ = int(msg.content["config"].get("server-round", 0))
    loss = task.train(model, tokenizer, pairs, steps=int(cfg["local-steps"]), lr=float(cfg["lr"]),
                      seed=1000 * round_ + site)
    arrays = task.get_adapter(model)
    if poisoned:  # a hostile site, for the robustness test and bench
        arrays = type(arrays)((k, (np.random.default_rng(site).normal(0, 5, v.shape)).astype(v.dtype))
                              for k, v in arrays.items())
    metrics = MetricRecord({"num-examples": len(pairs), "train-loss": loss, "site": site})
    return Message(RecordDict({"arrays": to_record(arrays), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    site, _, test_path, _ = site_files(context)
    model, tokenizer = _model(str(settings(context)["base-model"]))
    task.set_adapter(model, to_numpy(msg.content["arrays"]))
    pairs = read_site(test_path)
    acc = task.accuracy(model, tokenizer, pairs)
    metrics = MetricRecord({"num-examples": len(pairs), "accuracy": acc, "site": site})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
