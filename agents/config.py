"""The agents' one config: backends, routes, the router's classifier, tool
policies. YAML validated with errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.backends import Backend, OpenAICompatibleBackend, TransformersBackend
from agents.router import Route, Router, TaskClassifier
from common.models import ModelError, load_model
from sandbox.policy import Destination


class ConfigError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TransformersSpec(_Strict):
    kind: Literal["transformers"]
    path: Path
    adapter: Path | None = None
    device: str = "cpu"
    constrained: bool = Field(True, description="decode only answers the tools' schemas allow (xgrammar)")
    cost_per_1k_tokens: float = Field(0.0, ge=0)


class OpenAISpec(_Strict):
    kind: Literal["openai"]
    base_url: str = Field(pattern=r"^https?://")
    model: str
    api_key: str = ""
    structured: bool = Field(False, description="send the answer's grammar (vLLM structured outputs)")
    pointer_model: Path | None = Field(None, description="a local copy of the served model: its pointer narrows "
                                                         "the grammar to where the arguments lie")
    pointer_adapter: Path | None = Field(None, description="a local copy of the adapter served (`model`), whose "
                                                           "pointer was trained with it")
    cost_per_1k_tokens: float = Field(0.0, ge=0)


class RouteSpec(_Strict):
    name: str
    task_types: list[str]
    backend: str


class AgentsConfig(_Strict):
    backends: dict[str, Annotated[TransformersSpec | OpenAISpec, Field(discriminator="kind")]]
    routes: list[RouteSpec]
    escalate_to: str = Field(description="the route that takes requests the classifier is unsure of")
    escalate_below: float = Field(0.6, ge=0, le=1)
    classifier: Path
    max_steps: int = Field(4, ge=1, le=32)
    max_retries: int = Field(2, ge=0, le=10)
    approved: list[Destination] = Field(default_factory=list, max_length=64,
                                        description="where http_get and http_request may go (none: nowhere)")

    def resolve(self, base: Path) -> AgentsConfig:
        """Relative paths are relative to the config file."""
        def fix(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() else base / p

        def fixed(spec: TransformersSpec | OpenAISpec) -> TransformersSpec | OpenAISpec:
            if isinstance(spec, TransformersSpec):
                return spec.model_copy(update={"path": fix(spec.path), "adapter": fix(spec.adapter)})
            return spec.model_copy(update={"pointer_model": fix(spec.pointer_model),
                                           "pointer_adapter": fix(spec.pointer_adapter)})

        backends = {name: fixed(spec) for name, spec in self.backends.items()}
        return self.model_copy(update={"backends": backends, "classifier": fix(self.classifier)})


def load_config(path: Path) -> AgentsConfig:
    try:
        return load_model(AgentsConfig, path).resolve(path.parent)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None


def build_backend(name: str, spec: TransformersSpec | OpenAISpec) -> Backend:
    if isinstance(spec, TransformersSpec):
        return TransformersBackend(name, spec.path, spec.adapter, spec.device, spec.constrained)
    return OpenAICompatibleBackend(name, spec.base_url, spec.model, spec.api_key, structured=spec.structured,
                                   pointer_model=spec.pointer_model, pointer_adapter=spec.pointer_adapter)


def build_router(config: AgentsConfig, backends: dict[str, Backend] | None = None) -> Router:
    """The router of a config; `backends` may supply already-loaded ones."""
    loaded = dict(backends or {})
    for name, spec in config.backends.items():
        if name not in loaded:
            loaded[name] = build_backend(name, spec)
    routes = [Route(r.name, tuple(r.task_types), r.backend) for r in config.routes]
    cost = {name: spec.cost_per_1k_tokens for name, spec in config.backends.items()}
    return Router(TaskClassifier.load(config.classifier), routes, loaded, config.escalate_to,
                  config.escalate_below, cost)
