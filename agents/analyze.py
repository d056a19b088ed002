"""`bastion agents analyze LOG`: which of an agent's requests a specialist SLM
could take over. Embeds the logged requests, clusters them, and says for
each cluster how big and how repetitive it is."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from agents.interaction_log import read_log
from agents.router import Encoder

MIN_SHARE = 0.05  # a cluster worth a specialist is at least this share of the traffic
MIN_REPETITIVENESS = 0.6  # mean cosine similarity of its requests to their centroid


@dataclass(frozen=True)
class Cluster:
    size: int
    share: float
    example: str
    repetitiveness: float
    top_tool: str
    top_tool_share: float
    members: tuple[int, ...]  # indices of its requests

    @property
    def specialist_fits(self) -> bool:
        return self.share >= MIN_SHARE and self.repetitiveness >= MIN_REPETITIVENESS and self.top_tool_share >= 0.6


def runs_of(log: Path) -> tuple[list[str], list[str], list[str]]:
    """Each agent run's id and request once, with the first tool it called."""
    tasks: dict[str, str] = {}
    tools: dict[str, str] = {}
    for r in read_log(log):
        if r["type"] == "lm":
            tasks.setdefault(r["run"], r["task"])
        elif r["type"] == "tool":
            tools.setdefault(r["run"], r["tool"])
    runs = list(tasks)
    return runs, [tasks[r] for r in runs], [tools.get(r, "-") for r in runs]


def cluster(texts: list[str], tools: list[str], max_k: int = 8, seed: int = 0) -> list[Cluster]:
    if len(texts) < 3:
        raise ValueError(f"need at least 3 logged requests to cluster, found {len(texts)}")
    emb = Encoder.encode(texts)
    best: tuple[float, np.ndarray] | None = None
    for k in range(2, min(max_k, len(texts) - 1) + 1):
        labels = KMeans(n_clusters=k, n_init=5, random_state=seed).fit_predict(emb)
        score = silhouette_score(emb, labels)
        if best is None or score > best[0]:
            best = (score, labels)
    assert best is not None
    labels = best[1]
    out = []
    for c in sorted(set(labels), key=lambda c: -int(np.sum(labels == c))):
        idx = np.flatnonzero(labels == c)
        centroid = emb[idx].mean(axis=0)
        centroid /= np.linalg.norm(centroid) or 1
        sims = emb[idx] @ centroid
        tool, count = Counter(tools[i] for i in idx).most_common(1)[0]
        out.append(Cluster(size=len(idx), share=len(idx) / len(texts), example=texts[idx[int(np.argmax(sims))]],
                           repetitiveness=float(sims.mean()), top_tool=tool, top_tool_share=count / len(idx),
                           members=tuple(int(i) for i in idx)))
    return out
