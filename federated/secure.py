"""Secure aggregation (SecAgg+) on the path Flower 1.41 supports it: the
legacy DefaultWorkflow with SecAggPlusWorkflow on the server and
secaggplus_mod at each site. The server then learns only the weighted mean
of the sites' adapters, so it cannot check each site's update: honest sites
clip their own update before masking, and the server checks the one mean it
sees (and adds the DP noise to it)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from federated.settings import FlSettings
from federated.strategy import (Arrays, Outcome, Privacy, Rejection, applied, check_update, difference, per_site_metrics,
                                reject, to_record)


def secure_if_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """SecAgg+ for the messages of a secure run; the plain path passes by."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_secure(content: RecordDict) -> bool:
    return "fitins.parameters" in content.array_records


def unpack(content: RecordDict, names: Iterable[str]) -> tuple[Arrays, int]:
    """The global adapter and the round from the legacy FitIns SecAgg+ sends."""
    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    return _arrays(list(names), fitins.parameters), int(fitins.config.get("server-round", 0))


def pack(arrays: Arrays, metrics: dict[str, Any]) -> RecordDict:
    """A legacy FitRes, which secaggplus_mod masks before it leaves the site."""
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(list(arrays.values())), int(metrics["num-examples"]),
                 metrics)
    return compat.fitres_to_recorddict(res, keep_input=True)


def _arrays(names: list[str], parameters: Parameters) -> Arrays:
    return OrderedDict(zip(names, parameters_to_ndarrays(parameters), strict=True))


class SecureFedAvg(FedAvg):
    """Flower's legacy FedAvg, given the mean SecAgg+ unmasked: it checks
    that mean and adds the noise of differential privacy."""

    def __init__(self, *, initial: Arrays, max_update_norm: float, privacy: Privacy, **kwargs: Any) -> None:
        super().__init__(initial_parameters=ndarrays_to_parameters(list(initial.values())),
                         on_fit_config_fn=lambda r: {"server-round": r},
                         fit_metrics_aggregation_fn=lambda results: per_site_metrics([m for _, m in results]),
                         **kwargs)
        self.names = list(initial)
        self.max_update_norm, self.privacy = max_update_norm, privacy
        self.rng = np.random.default_rng(privacy.seed)
        self.rejections: list[Rejection] = []
        self._current = initial

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: Any) -> list[tuple[ClientProxy, Any]]:
        self._current = _arrays(self.names, parameters)
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Any]]:
        if not results:
            return None, {}
        mean = _arrays(self.names, results[0][1].parameters)  # SecAgg+ gave every result the same mean
        site = f"the secure mean of {len(results)} sites"
        if (reason := check_update(site, mean, self._current, self.max_update_norm)) is not None:
            reject(self.rejections, server_round, site, reason)
            return None, {}
        delta = self.privacy.noise(difference(mean, self._current), len(results), self.rng)
        metrics = self.fit_metrics_aggregation_fn([(r.num_examples, r.metrics) for _, r in results])
        return ndarrays_to_parameters(list(applied(self._current, delta).values())), metrics


def run(grid: Grid, context: Context, cfg: FlSettings, initial: Arrays) -> Outcome:
    """All rounds under SecAgg+; evaluation is the plain message path, since
    it sends the global adapter, which every site already holds."""
    n = cfg.num_sites
    strategy = SecureFedAvg(initial=initial, max_update_norm=cfg.max_update_norm,
                            privacy=Privacy(cfg.dp_clip, cfg.dp_noise),
                            min_fit_clients=n, min_available_clients=n, fraction_evaluate=0.0)
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=cfg.num_server_rounds), strategy=strategy)
    outcome = Outcome(arrays=initial, rejections=strategy.rejections)

    def global_adapter(ctx: Context) -> Arrays:
        return OrderedDict(zip(strategy.names, (a.numpy() for a in ctx.state.array_records[MAIN_PARAMS_RECORD].values()),
                               strict=True))

    def evaluate(grid: Grid, ctx: Context) -> None:
        current = int(ctx.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])  # type: ignore[arg-type]
        content = RecordDict({"arrays": to_record(global_adapter(ctx)), "config": ConfigRecord({"server-round": current})})
        replies = grid.send_and_receive([Message(content, dst_node_id=node, message_type=MessageType.EVALUATE)
                                         for node in grid.get_node_ids()])
        outcome.evaluate[current] = per_site_metrics([r.content["metrics"] for r in replies if r.has_content()])

    # every site shares its mask seeds with all others; any n-1 of them can unmask if one drops out.
    # Flower's default max_weight (1000 examples per site) keeps the quantization fine.
    secagg = SecAggPlusWorkflow(num_shares=n, reconstruction_threshold=max(2, n - 1))
    DefaultWorkflow(fit_workflow=secagg, evaluate_workflow=evaluate)(grid, legacy)
    outcome.arrays = global_adapter(legacy)
    for key, series in legacy.history.metrics_distributed_fit.items():
        for r, value in series:
            outcome.train.setdefault(r, {})[key] = float(value)  # type: ignore[arg-type]
    return outcome
