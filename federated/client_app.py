"""The ClientApp: runs at each site's SuperNode, reads only that site's
data (named by the node config), and sends back only the adapter's arrays
and numeric metrics; in a secure run the adapter leaves only masked."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federated import secure
from federated.settings import settings, site_files
from federated.sites import read_site
from federated.strategy import Privacy, applied, difference, to_numpy, to_record

app = ClientApp()
# torch, transformers and peft are imported by the handlers that train or evaluate: Flower starts a
# process per message, and three of SecAgg+'s four stages at each site never reach them


@lru_cache(maxsize=2)
def _model(base: str) -> tuple:  # type: ignore[type-arg]
    from federated import task

    return task.load(Path(base))


@app.train(mods=[secure.secure_if_asked])
def train(msg: Message, context: Context) -> Message:
    from federated import task

    site, train_path, _, poisoned = site_files(context)
    cfg = settings(context)
    model, tokenizer = _model(str(cfg.base_model))
    secure_run = secure.is_secure(msg.content)
    if secure_run:
        current, round_ = secure.unpack(msg.content, task.get_adapter(model).keys())
    else:
        current, round_ = to_numpy(msg.content["arrays"]), int(msg.content["config"].get("server-round", 0))
    task.set_adapter(model, current)
    pairs = read_site(train_path)
    loss = task.train(model, tokenizer, pairs, steps=cfg.local_steps, lr=cfg.lr,
                      seed=1000 * round_ + site)
    arrays = task.get_adapter(model)
    if secure_run:  # the server cannot check a masked update, so an honest site bounds its own
        arrays = applied(current, Privacy(cfg.site_bound()).clip(difference(arrays, current)))
    if poisoned:  # a hostile site, for the robustness test and bench; it ignores any bound
        arrays = type(arrays)((k, (np.random.default_rng(site).normal(0, 5, v.shape)).astype(v.dtype))
                              for k, v in arrays.items())
    metrics = {"num-examples": len(pairs), "train-loss": loss, "site": site}
    if secure_run:
        return Message(secure.pack(arrays, metrics), reply_to=msg)
    return Message(RecordDict({"arrays": to_record(arrays), "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from federated import task

    site, _, test_path, _ = site_files(context)
    model, tokenizer = _model(str(settings(context).base_model))
    task.set_adapter(model, to_numpy(msg.content["arrays"]))
    pairs = read_site(test_path)
    acc = task.accuracy(model, tokenizer, pairs)
    metrics = MetricRecord({"num-examples": len(pairs), "accuracy": acc, "site": site})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
