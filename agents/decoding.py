"""Greedy decoding of a loaded causal LM (a built model, or one with a LoRA
adapter in training), free or within the answer's JSON schema: the
schema as a grammar (xgrammar, the engine vLLM uses), so every answer
parses and validates.

Greedy decoding picks a number from its first digit: of 107 and 98 as the
systolic pressure, a small model's "1" wins. So where the schema lets an
argument be one of several numbers or identifiers, each is tried in the
whole answer, and the value of the likeliest answer kept. A model built
with a pointer (agents.pointer) says itself where in the request each
number and each run of words (a note) lies: the schema is narrowed to
those before decoding."""

from __future__ import annotations

from typing import Any

import torch
import xgrammar

from agents.answer_grammar import AnswerGrammars
from agents.grounding import assigned, occurrences
from agents.pointer import Pointer, pointed_schema
from agents.prompt import END, LEAD, PromptTooLong, choices, request_of, with_arg


class Decoder:
    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu", constrained: bool = True,
                 pointer: Pointer | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.pointer = pointer
        self._grammars = None
        if constrained:
            self._grammars = AnswerGrammars(tokenizer, model.config.vocab_size)

    def decode(self, prompt: str, max_tokens: int = 128, json_schema: dict[str, Any] | None = None
               ) -> tuple[str, int, int]:
        """The answer up to END, the prompt's length and the answer's, in
        tokens; an answer that would run past the model's context is cut
        there (and comes back invalid)."""
        enc, offsets = self._encode(prompt)
        prompt_ids = enc["input_ids"][0].tolist()
        max_tokens = min(max_tokens, self.context - len(prompt_ids))
        if self._grammars is None or json_schema is None:
            with torch.inference_mode():
                out = self.model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                          eos_token_id=self.tokenizer.eos_token_id,
                                          pad_token_id=self.tokenizer.pad_token_id)
            new = out[0, len(prompt_ids):].tolist()
            text = self.tokenizer.decode(new, skip_special_tokens=True).split(END, 1)[0].strip()
        else:
            json_schema = self._narrow(prompt, enc["input_ids"], offsets, json_schema)
            matcher = self._grammars.matcher(json_schema)
            new = self._follow(prompt_ids, matcher, max_tokens)
            text = self.tokenizer.decode(new).strip()
            if matcher.is_terminated():  # an answer cut short by max_tokens goes back as it is: invalid, retried
                text = self._choose(prompt_ids, text, json_schema, request_of(prompt))
        return text, len(prompt_ids), len(new)

    def narrow(self, prompt: str, json_schema: dict[str, Any]) -> dict[str, Any]:
        """The schema narrowed to where the pointer places the arguments, for
        a backend that decodes elsewhere (vLLM cannot run the pointer)."""
        enc, offsets = self._encode(prompt)
        return self._narrow(prompt, enc["input_ids"], offsets, json_schema)

    @property
    def context(self) -> int:
        """The positions the model was trained on: its prompt and answer together."""
        return int(self.model.config.max_position_embeddings)

    def _encode(self, prompt: str) -> tuple[Any, list[tuple[int, int]]]:
        """The prompt's tokens on the device, and each token's characters
        (where the pointer reads). A prompt that leaves no room for an
        answer is refused: past the positions it learned, a model's output
        means nothing."""
        # verbose=False: the length is checked here, not by a warning from the tokenizer
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False, return_offsets_mapping=True,
                             verbose=False)
        if (n := enc["input_ids"].shape[1]) >= self.context:
            raise PromptTooLong(f"the prompt is {n} tokens and the model reads at most {self.context}")
        offsets = enc.pop("offset_mapping")[0].tolist()
        return enc.to(self.device), offsets

    def _narrow(self, prompt: str, ids: torch.Tensor, offsets: list[tuple[int, int]], json_schema: dict[str, Any]
                ) -> dict[str, Any]:
        if self.pointer is None:
            return json_schema
        return pointed_schema(json_schema, self.pointer.read(self.model, ids, offsets, prompt), request_of(prompt))

    def _follow(self, prompt: list[int], matcher: Any, max_tokens: int) -> list[int]:
        """Greedy decoding within the grammar. Text the grammar forces is
        appended without asking the model (jump-forward decoding, as vLLM and
        SGLang do), then fed to it in one forward pass."""
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
                    if matcher.is_terminated() or len(new) >= max_tokens:
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

    def _choose(self, prompt: list[int], text: str, schema: dict[str, Any], request: str) -> str:
        """Each field that may be one of several values set to its likeliest,
        every variant scored in one batch; the number fields together, so
        that a number of the request fills no more arguments than it appears."""
        fields = choices(text, schema)
        variants = [(name, v) for name, values in fields if len(values) > 1 for v in values]
        if not variants:
            return text
        scored: dict[str, dict[object, float]] = {name: {values[0]: 0.0} for name, values in fields if len(values) == 1}
        for (name, v), score in zip(variants, self._scores(prompt, [with_arg(text, name, v) for name, v in variants])):
            scored.setdefault(name, {})[v] = score
        numbers = {name: s for name, s in scored.items() if all(isinstance(v, int | float) for v in s)}
        best = {name: max(s, key=s.__getitem__) for name, s in scored.items()}
        best.update(assigned(numbers, occurrences(request)))
        for name, v in best.items():
            text = with_arg(text, name, v)
        return text

    def _scores(self, prompt: list[int], answers: list[str]) -> list[float]:
        """The log-likelihood of each answer after the prompt, in one batch."""
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
