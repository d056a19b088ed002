"""A causal language model over syscall ids: a small GRU that predicts each
syscall from the ones before it. A sequence is anomalous when the model
finds it unlikely; the score of a stretch is the mean negative
log-likelihood (nats per syscall) of its syscalls.

torch is imported here and nowhere on the CLI's start path: only commands
that train or score a model load this module. The weights travel in the
profile's safetensors as float32 arrays, and loading checks every shape."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PAD = 0  # input padding and the token before a sequence's first syscall
UNKNOWN = 1  # a syscall number the training traces never made
CHUNK = 128  # syscalls per training example
SCORE_CHUNK = 512  # syscalls per scored chunk: few warm-ups, so offline reads as live does
CONTEXT = 32  # syscalls of warm-up before each scored chunk
MAX_VALIDATION = 1024  # held-out chunks scored at each judgement
EVAL_STEPS = 25


@dataclass(frozen=True)
class LmSettings:
    embed: int = 32
    hidden: int = 96
    lr: float = 5e-3
    batch: int = 64
    # a budget of work, not of time: a busy machine trains the same model, only later (about 16 steps/s here)
    max_steps: int = 1500
    max_checks: int = 40  # held-out judgements, each after an epoch or EVAL_STEPS steps
    patience: int = 3  # judgements without a 1% better held-out loss before stopping
    holdout: float = 0.15  # share of traces that judge when to stop
    seed: int = 0


class SyscallLm(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        y, h = self.gru(self.embed(tokens), h)
        return self.out(y), h


@dataclass
class SequenceModel:
    """The model and its vocabulary: token = index in `vocab` plus 2."""

    vocab: np.ndarray  # int64 syscall numbers, sorted
    net: SyscallLm

    def __post_init__(self) -> None:
        self._index = np.full(1024, UNKNOWN, dtype=np.int64)
        self._index[self.vocab] = np.arange(len(self.vocab)) + 2
        self.net.eval()

    @classmethod
    def from_arrays(cls, vocab: np.ndarray, weights: dict[str, np.ndarray]) -> SequenceModel:
        embed = weights["embed.weight"]
        net = SyscallLm(len(vocab) + 2, embed.shape[1], weights["gru.weight_hh_l0"].shape[1])
        net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()})
        return cls(vocab, net)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy().astype(np.float32) for k, v in self.net.state_dict().items()}

    def tokens(self, syscalls: np.ndarray) -> np.ndarray:
        return self._index[np.clip(syscalls, 0, 1023)] if len(syscalls) else np.empty(0, np.int64)

    def nll(self, traces: Sequence[np.ndarray], batch: int = 64) -> list[np.ndarray]:
        """Per syscall of each trace: -log p(syscall | the ones before it).
        Long traces are cut into SCORE_CHUNK-syscall chunks scored side by
        side, each after CONTEXT syscalls of warm-up, so a batch is wide
        whatever the lengths; `step` reads a thread whole, as it runs."""
        out = [np.empty(len(t), np.float32) for t in traces]
        pieces = [(i, s, e) for i, t in enumerate(traces) for s, e in chunks(len(t), SCORE_CHUNK)]
        tokens = [self.tokens(np.asarray(t)) for t in traces]
        with torch.inference_mode():
            for b in range(0, len(pieces), batch):
                group = pieces[b:b + batch]
                inputs, targets = examples([(tokens[i], s, e) for i, s, e in group], SCORE_CHUNK)
                used = max(e - max(0, s - CONTEXT) for _, s, e in group)  # short traces: no padding run
                inputs, targets = inputs[:, :used], targets[:, :used]
                logits, _ = self.net(torch.from_numpy(inputs))
                logp = torch.log_softmax(logits, dim=-1)
                picked = -logp.gather(2, torch.from_numpy(targets).clamp(min=0).unsqueeze(-1)).squeeze(-1).numpy()
                for row, (i, s, e) in enumerate(group):
                    warm = s - max(0, s - CONTEXT)
                    out[i][s:e] = picked[row, warm:warm + e - s]
        return out

    # live ----------------------------------------------------------------
    def step(self, batches: Sequence[np.ndarray], states: Sequence[LiveState | None]
             ) -> tuple[list[np.ndarray], list[LiveState]]:
        """Continue several threads' sequences at once: each thread's next
        syscalls (at least one) and its state (None at its start). Returns each syscall's
        NLL and each thread's new state; the same numbers as `nll` over the
        whole sequence, without its chunking."""
        lengths = [len(b) for b in batches]
        inputs = np.full((len(batches), max(lengths)), PAD, np.int64)
        h0 = torch.zeros(1, len(batches), self.net.gru.hidden_size)
        toks = [self.tokens(np.asarray(b)) for b in batches]
        for row, (tok, st) in enumerate(zip(toks, states)):
            inputs[row, 0] = st.last if st else PAD
            inputs[row, 1:len(tok)] = tok[:-1]
            if st:
                h0[0, row] = st.hidden
        with torch.inference_mode():
            packed = pack_padded_sequence(self.net.embed(torch.from_numpy(inputs)), lengths, batch_first=True,
                                          enforce_sorted=False)
            y, hn = self.net.gru(packed, h0)
            y, _ = pad_packed_sequence(y, batch_first=True, total_length=inputs.shape[1])
            logp = torch.log_softmax(self.net.out(y), dim=-1)
        nlls = [-logp[row, :len(tok)].gather(1, torch.from_numpy(tok).unsqueeze(1)).squeeze(1).numpy()
                for row, tok in enumerate(toks)]
        return nlls, [LiveState(hn[0, row].clone(), int(tok[-1])) for row, tok in enumerate(toks)]


@dataclass
class LiveState:
    """Where one thread's sequence stands: the GRU state after all but its
    newest syscall, and that syscall's token (the next step's first input)."""

    hidden: torch.Tensor
    last: int


def chunks(length: int, size: int = CHUNK) -> list[tuple[int, int]]:
    return [(s, min(s + size, length)) for s in range(0, length, size)]


def examples(pieces: Sequence[tuple[np.ndarray, int, int]], chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and targets for chunks (tokens, start, end) of sequences:
    each row is the CONTEXT syscalls before `start` (inputs only, target -1)
    then the chunk. Input j is the token before target j, PAD at a sequence's
    start; rows are left-aligned and padded on the right."""
    width = CONTEXT + chunk
    inputs = np.full((len(pieces), width), PAD, np.int64)
    targets = np.full((len(pieces), width), -1, np.int64)
    for row, (tok, s, e) in enumerate(pieces):
        lo = max(0, s - CONTEXT)
        shifted = tok[lo - 1:e - 1] if lo else np.concatenate([[PAD], tok[:e - 1]])
        inputs[row, :e - lo] = shifted
        targets[row, s - lo:e - lo] = tok[s:e]
    return inputs, targets


def train_lm(traces: Sequence[np.ndarray], settings: LmSettings = LmSettings(),
             on_epoch: Callable[[int, float], None] | None = None,
             held_out: Sequence[np.ndarray] = ()) -> SequenceModel:
    """Fit the model on benign sequences and keep the weights with the lowest
    loss on benign traces held out from fitting (`held_out`, or a share of
    `traces`): a model that memorises its training traces calls every new
    benign one unlikely. Stops after `patience` judgements without a better
    held-out loss, or after settings.max_steps optimizer steps."""
    s = settings
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    vocab = np.unique(np.concatenate([np.asarray(t) for t in traces])).astype(np.int64)
    model = SequenceModel(vocab, SyscallLm(len(vocab) + 2, s.embed, s.hidden))
    if held_out:
        fit, val = list(traces), list(held_out)
    else:
        order = rng.permutation(len(traces))
        held = max(1, int(len(traces) * s.holdout)) if len(traces) > 1 else 0
        fit, val = [traces[i] for i in order[held:]], [traces[i] for i in order[:held]] or list(traces)
    fit_x, fit_y = _examples_of(model, fit)
    val_x, val_y = _examples_of(model, val)
    if len(val_x) > MAX_VALIDATION:  # a sample judges as well and keeps memory bounded
        keep = torch.from_numpy(rng.choice(len(val_x), MAX_VALIDATION, replace=False))
        val_x, val_y = val_x[keep], val_y[keep]
    net = model.net
    opt = torch.optim.Adam(net.parameters(), lr=s.lr)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-1)
    best, stale, steps = math.inf, 0, 0
    best_state = {k: v.clone() for k, v in net.state_dict().items()}
    # judged every epoch, or every EVAL_STEPS steps where an epoch is shorter, so small sets train enough
    batches_per_epoch = max(1, math.ceil(len(fit_x) / s.batch))
    epochs_per_check = max(1, math.ceil(EVAL_STEPS / batches_per_epoch))
    for check in range(s.max_checks):
        net.train()
        for _ in range(epochs_per_check):
            for idx in torch.from_numpy(rng.permutation(len(fit_x))).split(s.batch):
                logits, _ = net(fit_x[idx])
                loss = loss_fn(logits.reshape(-1, logits.shape[-1]), fit_y[idx].reshape(-1))
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                steps += 1
        net.eval()
        with torch.inference_mode():
            logits, _ = net(val_x)
            val = float(loss_fn(logits.reshape(-1, logits.shape[-1]), val_y.reshape(-1)))
        if on_epoch:
            on_epoch(check, val)
        if val < best:
            stale = 0 if val < best * 0.99 else stale + 1
            best, best_state = val, {k: v.clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
        if stale >= s.patience or steps >= s.max_steps:
            break
    net.load_state_dict(best_state)
    net.eval()
    return model


def _examples_of(model: SequenceModel, traces: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    pieces = []
    for t in traces:
        tok = model.tokens(np.asarray(t))
        pieces += [(tok, start, end) for start, end in chunks(len(tok))]
    inputs, targets = examples(pieces)
    return torch.from_numpy(inputs), torch.from_numpy(targets)
