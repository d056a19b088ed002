"""The ClientApp: runs at each site's SuperNode, reads only that site's
data (named by the node config), and sends back only the adapter's arrays
and numeric metrics; in a secure run the adapter leaves only masked."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federated import secure
from federated.settings import settings, site_files
from federated.strategy import Arrays, Privacy, applied, difference, to_numpy, to_record
from federated.trainer import Request, call, handle

app = ClientApp()


def _work(context: Context, request: Request, arrays: Arrays) -> tuple[dict[str, Any], Arrays]:
    """Done by the site's trainer where the node names one (a deployment:
    Flower starts a process per message), else here (simulation)."""
    if trainer := context.node_config.get("trainer"):
        return call(Path(str(trainer)), request, arrays)
    return handle(request, arrays)


@app.train(mods=[secure.secure_if_asked])
def train(msg: Message, context: Context) -> Message:
    site, train_path, _, poisoned = site_files(context)
    cfg = settings(context)
    base = Path(str(cfg.base_model))
    secure_run = secure.is_secure(msg.content)
    if secure_run:
        names, _ = _work(context, Request(op="names", base=base), {})
        current, round_ = secure.unpack(msg.content, names["names"])
    else:
        current, round_ = to_numpy(msg.content["arrays"]), int(msg.content["config"].get("server-round", 0))
    figures, arrays = _work(context, Request(op="train", base=base, data=train_path, steps=cfg.local_steps,
                                             lr=cfg.lr, seed=1000 * round_ + site), current)
    arrays = OrderedDict((name, arrays[name]) for name in current)  # the order the server sent
    if secure_run:  # the server cannot check a masked update, so an honest site bounds its own
        arrays = applied(current, Privacy(cfg.site_bound()).clip(difference(arrays, current)))
    if poisoned:  # a hostile site, for the robustness test and bench; it ignores any bound
        arrays = type(arrays)((k, (np.random.default_rng(site).normal(0, 5, v.shape)).astype(v.dtype))
                              for k, v in arrays.items())
    metrics = {"num-examples": figures["examples"], "train-loss": figures["loss"], "site": site}
    if secure_run:
        return Message(secure.pack(arrays, metrics), reply_to=msg)
    return Message(RecordDict({"arrays": to_record(arrays), "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    site, _, test_path, _ = site_files(context)
    figures, _ = _work(context, Request(op="evaluate", base=Path(str(settings(context).base_model)), data=test_path),
                       to_numpy(msg.content["arrays"]))
    metrics = MetricRecord({"num-examples": figures["examples"], "accuracy": figures["accuracy"], "site": site})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
