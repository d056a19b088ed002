"""Language-model backends behind one protocol: a local model directory
through transformers (with an optional peft LoRA adapter), or any
OpenAI-compatible server (`vllm serve` on GPUs, `transformers serve` on CPU)."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agents.prompt import END


class BackendError(RuntimeError):
    """A backend that cannot answer; the message names it."""


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """Around building a peft model: peft 0.21 reads the model's
    `is_gradient_checkpointing`, which transformers 5.23 deprecates, so each
    user would see a FutureWarning that only peft can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        yield


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


class Backend(Protocol):
    name: str

    def complete(self, prompt: str, max_tokens: int = 128, json_schema: dict[str, Any] | None = None) -> Completion: ...


def _check_model_dir(path: Path) -> None:
    for needed in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (path / needed).is_file():
            raise BackendError(f"{path}: not a model directory ({needed} is missing); "
                               "build one with `bastion agents build-model`")


def _check_adapter_dir(path: Path) -> None:
    if not (path / "adapter_model.safetensors").is_file():
        raise BackendError(f"{path}: not a LoRA adapter (adapter_model.safetensors is missing)")


class TransformersBackend:
    """A local Hugging Face model directory (with an optional LoRA adapter),
    decoded greedily; given the answer's JSON schema, within it (see
    agents.decoding)."""

    def __init__(self, name: str, model_dir: Path, adapter_dir: Path | None = None, device: str = "cpu",
                 constrained: bool = True) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from agents.decoding import Decoder
        from agents.pointer import Pointer, PointerError

        _check_model_dir(model_dir)
        self.name = name
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise BackendError(f"{model_dir}: cannot load the model: {exc}") from None
        if adapter_dir is not None:
            from peft import PeftModel

            _check_adapter_dir(adapter_dir)
            with peft_quietly():
                model = PeftModel.from_pretrained(model, adapter_dir)
        self.model = model.to(device).eval()
        try:
            pointer = Pointer.beside(model_dir, adapter_dir, model.config.hidden_size)
        except PointerError as exc:
            raise BackendError(str(exc)) from None
        self.decoder = Decoder(self.model, self.tokenizer, device, constrained,
                               pointer.to(device) if pointer is not None else None)

    def complete(self, prompt: str, max_tokens: int = 128, json_schema: dict[str, Any] | None = None) -> Completion:
        started = time.perf_counter()
        text, prompt_tokens, tokens = self.decoder.decode(prompt, max_tokens, json_schema)
        return Completion(text, prompt_tokens, tokens, time.perf_counter() - started)


class OpenAICompatibleBackend:
    """Any server with /v1/completions: `vllm serve MODEL --enable-lora
    --lora-modules NAME=ADAPTER` (the adapter is chosen by model name) or
    `transformers serve MODEL_DIR`. The prompt format is the agents' own,
    so the raw completions endpoint is used. With `structured`, vLLM also
    gets the answer's grammar (`structured_outputs.grammar`, the field of
    the vLLM the `gpu` extra pins): the EBNF the transformers backend decodes
    by, not the JSON schema, from which vLLM's xgrammar would write 2175.0 as
    2175, a number the models never learned to write. With `pointer_model`
    (a local copy of the served model's directory, and `pointer_adapter`,
    of the adapter it serves), the grammar sent is narrowed first to where
    the model's pointer places the arguments, as the transformers backend
    decodes (agents.pointer)."""

    def __init__(self, name: str, base_url: str, model: str, api_key: str = "", timeout_s: float = 60,
                 structured: bool = False, pointer_model: Path | None = None,
                 pointer_adapter: Path | None = None) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.structured = structured
        self.local = None  # the served model's local copy, which only reads the pointer
        if pointer_model is not None:
            from agents.pointer import POINTER_FILE

            self.local = TransformersBackend(f"{name} (pointer)", pointer_model, pointer_adapter, constrained=False)
            if self.local.decoder.pointer is None:
                raise BackendError(f"{pointer_model}: {POINTER_FILE} is missing (models built before the pointer "
                                   "have none)")

    def complete(self, prompt: str, max_tokens: int = 128, json_schema: dict[str, Any] | None = None) -> Completion:
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens,
                                "temperature": 0, "stop": [END]}
        if json_schema is not None and self.structured:
            from agents.answer_grammar import answer_grammar  # xgrammar: only where a schema is sent

            if self.local is not None:
                json_schema = self.local.decoder.narrow(prompt, json_schema)
            body["structured_outputs"] = {"grammar": str(answer_grammar(json_schema))}
        request = urllib.request.Request(
            f"{self.base_url}/v1/completions", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})},
        )
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                reply = json.loads(resp.read())
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
            raise BackendError(f"backend {self.name} at {self.base_url}: {exc}") from None
        try:
            text = reply["choices"][0]["text"]
            usage = reply.get("usage") or {}
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"backend {self.name}: unexpected reply {str(reply)[:200]}") from None
        return Completion(text.split(END, 1)[0].strip(), int(usage.get("prompt_tokens", 0)),
                          int(usage.get("completion_tokens", 0)), time.perf_counter() - started)
