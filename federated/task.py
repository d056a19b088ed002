"""The learning task every site runs: LoRA fine-tuning of the agents' built
tool-calling model on the site's own examples, and its evaluation. Only the
adapter's arrays ever leave this module."""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from agents.model_builder import answer_loss, packed
from agents.decoding import Decoder
from agents.prompt import json_schema, request_of, same_call

# small on purpose: what travels each round is this adapter, about 1% of the model
LORA = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def load(base: Path) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """The base model with a fresh LoRA adapter (seeded: every site starts equal)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True)
    return get_peft_model(model, LORA), AutoTokenizer.from_pretrained(base)


def get_adapter(model: PeftModel) -> OrderedDict[str, np.ndarray]:
    return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in get_peft_model_state_dict(model).items())


def set_adapter(model: PeftModel, arrays: dict[str, np.ndarray]) -> None:
    set_peft_model_state_dict(model, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})


def train(model: PeftModel, tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]], steps: int,
          lr: float = 2e-3, batch: int = 16, seed: int = 0, on_step: Callable[[int], None] | None = None) -> float:
    """Local LoRA steps on (prompt, answer) pairs; returns the mean loss."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        loss = answer_loss(model, packed(tokenizer, rng.sample(pairs, min(batch, len(pairs)))))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        if on_step:
            on_step(step)
    model.eval()
    return float(np.mean(losses)) if losses else 0.0


def accuracy(model: PeftModel, tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]]) -> float:
    """Share of prompts answered with exactly the right call, decoded as the
    agents decode: within the tools' schemas, arguments grounded in the prompt."""
    decoder = Decoder(model, tokenizer)
    right = 0
    for prompt, answer in pairs:
        text, _, _ = decoder.decode(prompt, json_schema=json_schema(request_of(prompt)))
        right += same_call(text, answer)
    return right / len(pairs) if pairs else 0.0


def heldout_loss(base: Path, adapter: Path | None, pairs: list[tuple[str, str]]) -> float:
    """Mean loss of the answers, with the adapter or without (the base model)."""
    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    tokenizer = AutoTokenizer.from_pretrained(base)
    with torch.inference_mode():
        return float(answer_loss(model, packed(tokenizer, pairs)))
