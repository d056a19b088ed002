"""The learning task every site runs: LoRA fine-tuning of the agents' built
tool-calling model on the site's own examples, with the model's pointer
(which places the calls' arguments, agents.pointer), and its evaluation.
Only the adapter's and the pointer's arrays ever leave this module."""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from agents.backends import peft_quietly
from agents.model_builder import answer_loss, packed
from agents.decoding import Decoder
from agents.pointer import POINTER_FILE, Pointer
from agents.prompt import json_schema, request_of, same_call


def lora() -> LoraConfig:
    """Small on purpose: what travels each round is this adapter, about 1% of
    the model. A config of its own for each model: peft writes the base
    model's path into the config it is given, and warns when a later model
    renames it."""
    return LoraConfig(r=3, lora_alpha=12, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


POINTER = "pointer."  # the pointer's arrays travel beside the adapter's under this prefix


def load(base: Path) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """The base model with a fresh LoRA adapter (seeded: every site starts
    equal) and the base's pointer, trained with it: a site's requests may
    place their arguments in ways the base never saw ("Re: ticket 6999 -")."""
    torch.manual_seed(0)
    base_model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True)
    with peft_quietly():
        model = get_peft_model(base_model, lora())
    model.pointer = Pointer.load(base, base_model.config.hidden_size)
    return model, AutoTokenizer.from_pretrained(base)


def _pointer(model: PeftModel) -> Pointer | None:
    """The pointer that load() gave the model; a model loaded otherwise has none."""
    return getattr(model, "pointer", None)


def get_adapter(model: PeftModel) -> OrderedDict[str, np.ndarray]:
    arrays = OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in get_peft_model_state_dict(model).items())
    if (pointer := _pointer(model)) is not None:
        arrays.update((POINTER + k, v.detach().cpu().numpy().copy()) for k, v in pointer.state_dict().items())
    return arrays


def set_adapter(model: PeftModel, arrays: dict[str, np.ndarray]) -> None:
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    if (pointer := _pointer(model)) is not None:
        pointer.load_state_dict({k.removeprefix(POINTER): v for k, v in tensors.items() if k.startswith(POINTER)})
    set_peft_model_state_dict(model, {k: v for k, v in tensors.items() if not k.startswith(POINTER)})


def save(model: PeftModel, directory: Path) -> None:
    """The adapter in peft format, and the pointer beside it (agents.backends loads both)."""
    model.save_pretrained(directory, safe_serialization=True)
    if (pointer := _pointer(model)) is not None:
        pointer.save(directory)


def read_adapter(directory: Path) -> dict[str, np.ndarray]:
    """What save() wrote, as get_adapter() gives it: the adapter's arrays,
    and the pointer's under its prefix where it has one."""
    from safetensors.numpy import load_file

    arrays = dict(load_file(directory / "adapter_model.safetensors"))
    if (directory / POINTER_FILE).is_file():
        arrays |= {POINTER + k: v for k, v in load_file(directory / POINTER_FILE).items()}
    return arrays


def train(model: PeftModel, tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]], steps: int,
          lr: float = 2e-3, batch: int = 16, seed: int = 0, on_step: Callable[[int], None] | None = None) -> float:
    """Local LoRA steps on (prompt, answer) pairs; returns the mean loss."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        loss = answer_loss(model, packed(tokenizer, rng.sample(pairs, min(batch, len(pairs)))), _pointer(model))
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
    agents decode: within the tools' schemas, arguments grounded in the
    prompt and placed by the pointer."""
    decoder = Decoder(model, tokenizer, pointer=_pointer(model))
    right = 0
    for prompt, answer in pairs:
        text, _, _ = decoder.decode(prompt, json_schema=json_schema(request_of(prompt)))
        right += same_call(text, answer)
    return right / len(pairs) if pairs else 0.0


def heldout_loss(base: Path, adapter: Path | None, pairs: list[tuple[str, str]]) -> float:
    """Mean loss of the answers, with the adapter or without (the base model)."""
    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True)
    if adapter is not None:
        with peft_quietly():
            model = PeftModel.from_pretrained(model, adapter)
    tokenizer = AutoTokenizer.from_pretrained(base)
    with torch.inference_mode():
        return float(answer_loss(model, packed(tokenizer, pairs)))
