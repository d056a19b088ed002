"""The server's aggregation, separate from transport: every site's adapter
update is checked (finite, the right arrays and shapes, not outsized) and a
bad one is rejected naming the site; then mean, coordinate-wise median or
trimmed mean; optionally differential privacy (clip each update, add
Gaussian noise to the aggregate)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

log = logging.getLogger("bastion.federated")

Arrays = OrderedDict[str, np.ndarray]


def to_numpy(record: ArrayRecord) -> Arrays:
    return OrderedDict((k, v.numpy()) for k, v in record.items())


def to_record(arrays: Arrays) -> ArrayRecord:
    return ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in arrays.items()))


def difference(update: Arrays, base: Arrays) -> Arrays:
    """What an update changes, array by array."""
    return OrderedDict((k, update[k] - base[k]) for k in base)


def applied(base: Arrays, delta: Arrays) -> Arrays:
    """The base moved by a delta, in the base's dtypes."""
    return OrderedDict((k, (base[k] + delta[k]).astype(base[k].dtype)) for k in base)


@dataclass
class Rejection:
    round: int
    site: str
    reason: str


def reject(rejections: list[Rejection], server_round: int, site: str, reason: str) -> None:
    rejections.append(Rejection(server_round, site, reason))
    log.warning("rejected an update", extra={"fields": {"round": server_round, "reason": reason}})


def check_update(site: str, update: Arrays, current: Arrays, max_norm: float) -> str | None:
    """Why an update must be rejected, or None."""
    if list(update) != list(current):
        return f"site {site}: arrays {sorted(set(update) ^ set(current))[:3]} do not match the adapter's"
    for name, value in update.items():
        if value.shape != current[name].shape:
            return f"site {site}: {name} has shape {value.shape}, expected {current[name].shape}"
        if not np.all(np.isfinite(value)):
            return f"site {site}: {name} holds non-finite values"
    norm = float(np.sqrt(sum(np.sum((update[k] - current[k]) ** 2) for k in current)))
    if norm > max_norm:
        return f"site {site}: update norm {norm:.2f} exceeds {max_norm:g}"
    return None


def aggregate(deltas: list[Arrays], weights: list[float], method: str, trim: float) -> Arrays:
    out: Arrays = OrderedDict()
    w = np.asarray(weights, dtype=np.float64)
    for name in deltas[0]:
        stack = np.stack([d[name] for d in deltas])
        if method == "median":
            out[name] = np.median(stack, axis=0)
        elif method == "trimmed-mean":
            k = int(len(deltas) * trim)
            ordered = np.sort(stack, axis=0)
            out[name] = ordered[k : len(deltas) - k].mean(axis=0) if len(deltas) > 2 * k else ordered.mean(axis=0)
        else:
            out[name] = np.tensordot(w / w.sum(), stack, axes=1)
    return out


@dataclass
class Privacy:
    clip_norm: float = 0.0  # 0: off
    noise_multiplier: float = 0.0
    seed: int = 0

    def clip(self, delta: Arrays) -> Arrays:
        if self.clip_norm <= 0:
            return delta
        norm = float(np.sqrt(sum(np.sum(v**2) for v in delta.values())))
        scale = min(1.0, self.clip_norm / max(norm, 1e-12))
        return OrderedDict((k, v * scale) for k, v in delta.items())

    def noise(self, mean: Arrays, n: int, rng: np.random.Generator) -> Arrays:
        if self.clip_norm <= 0 or self.noise_multiplier <= 0:
            return mean
        std = self.noise_multiplier * self.clip_norm / n
        return OrderedDict((k, v + rng.normal(0, std, v.shape)) for k, v in mean.items())


def per_site_metrics(replies: list[Mapping[str, Any]], weight_key: str = "num-examples") -> dict[str, float]:
    """The weighted means, and each site's own value (sites' replies carry the
    same keys, as Flower requires; the site is one of the values)."""
    out: dict[str, float] = {}
    total = sum(float(m[weight_key]) for m in replies) or 1.0
    for key in ("accuracy", "train-loss"):
        values = [(float(m[key]), float(m[weight_key])) for m in replies if key in m]
        if values:
            out[key] = sum(v * w for v, w in values) / total
        for m in replies:
            if key in m:
                out[f"{key}-site-{int(m['site'])}"] = float(m[key])
    return out


def record_metrics(contents: list[Any], weight_key: str) -> MetricRecord:
    """per_site_metrics in the shape Flower's message strategies call."""
    return MetricRecord(per_site_metrics([c["metrics"] for c in contents], weight_key))


@dataclass
class Outcome:
    """What a federated run leaves, whichever workflow ran it."""

    arrays: Arrays
    train: dict[int, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[int, dict[str, float]] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)


class GuardedFedAvg(FedAvg):
    """FedAvg whose aggregation checks updates and can be robust and private."""

    def __init__(self, *, method: str = "mean", trim: float = 0.2, max_update_norm: float = 10.0,
                 privacy: Privacy | None = None, site_names: dict[int, str] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if method not in ("mean", "median", "trimmed-mean"):
            raise ValueError(f"aggregation: {method!r} is not mean, median or trimmed-mean")
        self.method, self.trim, self.max_update_norm = method, trim, max_update_norm
        self.privacy = privacy or Privacy()
        self.rng = np.random.default_rng(self.privacy.seed)
        self.site_names = site_names or {}
        self.rejections: list[Rejection] = []
        self._current: Arrays = OrderedDict()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._current = to_numpy(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [r for r in replies if r.has_content()]
        deltas, weights, accepted = [], [], []
        for reply in replies:
            metrics = reply.content["metrics"]
            site = self.site_names.get(int(metrics.get("site", -1)), f"node {reply.metadata.src_node_id}")
            update = to_numpy(reply.content["arrays"])
            reason = check_update(site, update, self._current, self.max_update_norm)
            if reason is not None:
                reject(self.rejections, server_round, site, reason)
                continue
            deltas.append(self.privacy.clip(difference(update, self._current)))
            weights.append(float(metrics.get("num-examples", 1)))
            accepted.append(reply)
        if not deltas:
            return None, None
        mean = self.privacy.noise(aggregate(deltas, weights, self.method, self.trim), len(deltas), self.rng)
        new = applied(self._current, mean)
        metrics = self.train_metrics_aggr_fn([r.content for r in accepted], self.weighted_by_key)
        return to_record(new), metrics
