"""Language-model backends behind one protocol: a local model directory
through transformers (with an optional peft LoRA adapter), or any
OpenAI-compatible server (`vllm serve` on GPUs, `transformers serve` on CPU)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agents.prompt import END, LEAD, choices, with_arg


class BackendError(RuntimeError):
    """A backend that cannot answer; the message names it."""


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


class TransformersBackend:
    """A local Hugging Face model directory, greedy decoding up to END; given
    the answer's JSON schema, decoding follows it (xgrammar, the grammar
    engine vLLM uses), so the answer always parses and validates.

    Greedy decoding picks a number from its first digit: of 107 and 98 as
    the systolic pressure, a small model's "1" wins. So where the schema
    lets an argument be one of several numbers or identifiers, each is
    tried in the whole answer, and the value of the likeliest answer kept."""

    def __init__(self, name: str, model_dir: Path, adapter_dir: Path | None = None, device: str = "cpu",
                 constrained: bool = True) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

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

            if not (adapter_dir / "adapter_model.safetensors").is_file():
                raise BackendError(f"{adapter_dir}: not a LoRA adapter (adapter_model.safetensors is missing)")
            model = PeftModel.from_pretrained(model, adapter_dir)
        self.model = model.to(device).eval()
        self._torch = torch
        self._grammars = None
        if constrained:
            from agents.answer_grammar import AnswerGrammars

            self._grammars = AnswerGrammars(self.tokenizer, model.config.vocab_size)

    def complete(self, prompt: str, max_tokens: int = 128, json_schema: dict[str, Any] | None = None) -> Completion:
        started = time.perf_counter()
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        prompt_ids = enc["input_ids"][0].tolist()
        if self._grammars is None or json_schema is None:
            with self._torch.inference_mode():
                out = self.model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                          eos_token_id=self.tokenizer.eos_token_id,
                                          pad_token_id=self.tokenizer.pad_token_id)
            new = out[0, len(prompt_ids):].tolist()
            text = self.tokenizer.decode(new, skip_special_tokens=True).split(END, 1)[0].strip()
        else:
            new = self._follow(prompt_ids, self._grammars.matcher(json_schema), max_tokens)
            text = self._choose(prompt_ids, self.tokenizer.decode(new).strip(), json_schema)
        return Completion(text, len(prompt_ids), len(new), time.perf_counter() - started)

    def _follow(self, prompt: list[int], matcher: Any, max_tokens: int) -> list[int]:
        """Greedy decoding within the grammar. Text the grammar forces is
        appended without asking the model (jump-forward decoding, as vLLM and
        SGLang do), then fed to it in one forward pass."""
        import xgrammar

        torch = self._torch
        mask = xgrammar.allocate_token_bitmask(1, self._grammars.vocab_size)
        new: list[int] = []
        feed, past = prompt, None
        with torch.inference_mode():
            while not matcher.is_terminated() and len(new) < max_tokens:
                if forced := matcher.find_jump_forward_string():
                    matcher.accept_string(forced)
                    tokens = self.tokenizer(forced, add_special_tokens=False)["input_ids"]
                    new += tokens
                    feed = feed + tokens
                    if matcher.is_terminated():
                        break
                out = self.model(input_ids=torch.tensor([feed], device=self.device), past_key_values=past,
                                 use_cache=True)
                past = out.past_key_values
                logits = out.logits[:, -1, :].float().cpu()
                matcher.fill_next_token_bitmask(mask)
                xgrammar.apply_token_bitmask_inplace(logits, mask)
                token = int(logits.argmax())
                if token == self.tokenizer.eos_token_id or not matcher.accept_token(token):
                    break
                new.append(token)
                feed = [token]
        return new

    def _choose(self, prompt: list[int], text: str, schema: dict[str, Any]) -> str:
        """Each field that may be one of several values set to its likeliest,
        every variant scored in one batch."""
        fields = choices(text, schema)
        if not fields:
            return text
        variants = [(name, v) for name, values in fields for v in values]
        scores = self._scores(prompt, [with_arg(text, name, v) for name, v in variants])
        best: dict[str, tuple[float, object]] = {}
        for (name, v), score in zip(variants, scores):
            if name not in best or score > best[name][0]:
                best[name] = (score, v)
        for name, (_, v) in best.items():
            text = with_arg(text, name, v)
        return text

    def _scores(self, prompt: list[int], answers: list[str]) -> list[float]:
        """The log-likelihood of each answer after the prompt, in one batch."""
        torch = self._torch
        tails = [self.tokenizer(f"{LEAD}{a} {END}", add_special_tokens=False)["input_ids"] for a in answers]
        width = len(prompt) + max(map(len, tails))
        ids = torch.full((len(tails), width), self.tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, tail in enumerate(tails):
            ids[i, :len(prompt) + len(tail)] = torch.tensor(prompt + tail)
            mask[i, :len(prompt) + len(tail)] = 1
        with torch.inference_mode():
            logp = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.log_softmax(-1)
        return [float(logp[i, len(prompt) - 1:len(prompt) + len(t) - 1]
                      .gather(-1, torch.tensor(t, device=self.device).unsqueeze(-1)).sum())
                for i, t in enumerate(tails)]


class OpenAICompatibleBackend:
    """Any server with /v1/completions: `vllm serve MODEL --enable-lora
    --lora-modules NAME=ADAPTER` (the adapter is chosen by model name) or
    `transformers serve MODEL_DIR`. The prompt format is the agents' own,
    so the raw completions endpoint is used; vLLM also gets the answer's
    JSON schema as its structured output (`structured_outputs.json`, the
    field of the vLLM the `gpu` extra pins) when `structured` is set."""

    def __init__(self, name: str, base_url: str, model: str, api_key: str = "", timeout_s: float = 60,
                 structured: bool = False) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.structured = structured

    def complete(self, prompt: str, max_tokens: int = 128, json_schema: dict[str, Any] | None = None) -> Completion:
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens,
                                "temperature": 0, "stop": [END]}
        if json_schema is not None and self.structured:
            body["structured_outputs"] = {"json": json_schema}
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
