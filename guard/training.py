"""Learning a profile from benign traces, and scoring traces against one.

Medians and thresholds are calibrated on benign traces held out from
fitting: each detector's threshold is its score at its share of the target
false-positive rate over those traces' most anomalous windows, so that any
of them alerting keeps to the target; the combined threshold is the
combination's score at the target rate on the same traces. The n-gram
and frequency detectors are then refitted on every trace, which can only
lower benign scores; the sequence model keeps the fit that stopped at its
best loss on held-out traces."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from rich.progress import Progress

from ebpf.events import NOVELTY_WINDOW_MAX
from guard.detectors import MAX_PACKED_N, FrequencyDetector, NgramDetector, pack
from guard.profile import Medians, Profile, ProfileMeta, SequenceMeta, Thresholds
from guard.traces import Behaviour, Trace

if TYPE_CHECKING:
    from guard.sequence import SequenceModel

MAX_REFERENCE = 5000  # benign windows kept for the nearest-neighbour model
# One changed syscall makes n novel n-grams in a row: 0.5 * (n/window + n/frame),
# about 0.18 with the defaults. Timing alone changes a syscall now and then
# (a short read, an EAGAIN), so that much is tolerated whatever training saw.
FLOOR_NGRAM = 0.25
FLOOR_FREQUENCY = 0.35
# A window must cost the model more than benign runs' median by at least
# this many times that median (within the bounds, nats per syscall): a
# program whose benign runs the model reads with some doubt varies more than
# one it predicts exactly, and a few held-out traces cannot show how much.
FLOOR_SEQUENCE = (5.0, 0.1, 1.0)
# Below this many held-out traces the sequence model's threshold is a guess:
# it scores traces offline but does not judge running sandboxes.
MIN_LIVE_HELDOUT = 10
CEILINGS = {"ngram": 1.0, "frequency": 2.0 ** 0.5}  # the highest score each can give


@dataclass(frozen=True)
class Settings:
    ngram_n: int = 6
    frame: int = 20
    window: int = 100
    stride: int = 50
    neighbours: int = 3
    fpr_target: float = 0.01
    holdout: float = 0.25
    seed: int = 0
    sequence: bool = True  # train the syscall language model (torch)
    sequence_window: int = 100  # live: longer windows ride out a burst of timing-made syscalls
    sequence_steps: int = 1200  # the model's training budget, in optimizer steps

    def __post_init__(self) -> None:
        if not 2 <= self.frame <= self.window <= NOVELTY_WINDOW_MAX:
            raise ValueError(f"window: {self.window} syscalls, where the kernel counts novel n-grams over "
                             f"{self.frame} (the frame) to {NOVELTY_WINDOW_MAX}")


SCALES = (1, 4, 16)  # live windows span whatever a sandbox ran between two reads


def multiscale_histograms(detector: FrequencyDetector, syscalls: np.ndarray, s: Settings) -> np.ndarray:
    """Windows of the trained size and of larger ones, up to the whole trace."""
    rows = [detector.histograms(syscalls, s.window * k, s.stride * k) for k in SCALES]
    return np.concatenate([*rows, detector.histograms(syscalls, len(syscalls), len(syscalls))])


def _fit(traces: Sequence[np.ndarray], s: Settings, rng: np.random.Generator) -> tuple[NgramDetector, FrequencyDetector]:
    codes = [pack(t, s.ngram_n) for t in traces]
    known = np.unique(np.concatenate(codes)) if codes else np.empty(0, np.uint64)
    vocab = np.unique(np.concatenate(traces)).astype(np.int64)
    bootstrap = FrequencyDetector(vocab, np.zeros((1, len(vocab) + 1), np.float32), s.neighbours)
    counts = np.concatenate([multiscale_histograms(bootstrap, t, s) for t in traces])
    # duplicates stay: a window benign runs repeat exactly must have all k neighbours at 0
    reference = bootstrap.embed_counts(counts)
    if len(reference) > MAX_REFERENCE:
        reference = reference[rng.choice(len(reference), MAX_REFERENCE, replace=False)]
    return NgramDetector(s.ngram_n, known, s.frame), FrequencyDetector(vocab, reference, s.neighbours)


def train(traces: Sequence[Trace], behaviour: Behaviour, agent: str, settings: Settings = Settings(),
          progress: Progress | None = None) -> Profile:
    """A profile from benign traces; at least two are needed to calibrate."""
    s = settings
    if not 2 <= s.ngram_n <= MAX_PACKED_N:
        raise ValueError(f"ngram_n must be between 2 and {MAX_PACKED_N}")
    usable = [t for t in traces if len(t.syscalls) >= s.ngram_n]
    if len(usable) < 2:
        raise ValueError(f"training needs at least 2 traces of {s.ngram_n}+ syscalls, got {len(usable)}")
    rng = np.random.default_rng(s.seed)
    order = rng.permutation(len(usable))
    held = max(1, int(len(usable) * s.holdout))
    fit_part = [usable[i].syscalls for i in order[held:]]
    held_part = [usable[i].syscalls for i in order[:held]]

    ngram, frequency = _fit(fit_part, s, rng)
    sequence, seq_meta = None, None
    if s.sequence:
        sequence, seq_meta = _fit_sequence(fit_part, held_part, s, progress)
    placeholder = Thresholds(ngram=1, frequency=1, combined=1, **({"sequence": 1, "sequence_mean": 1} if s.sequence else {}))
    draft = Profile(_meta(s, agent, placeholder, sequence=seq_meta), ngram, frequency, sequence)
    task = progress.add_task("calibrating", total=None) if progress else None
    scores = draft.detector_scores(held_part)
    if progress and task is not None:
        progress.update(task, total=1, completed=1)
    # each detector gets its share of the false-positive budget, so their maximum keeps to it
    alpha = s.fpr_target / len(scores)
    medians = {name: float(np.median(v)) for name, v in scores.items()}
    limits = {name: tail_threshold(v, alpha) for name, v in scores.items()}
    limits["ngram"] = max(limits["ngram"], FLOOR_NGRAM, medians["ngram"] + FLOOR_NGRAM)
    limits["frequency"] = max(limits["frequency"], FLOOR_FREQUENCY, medians["frequency"] + FLOOR_FREQUENCY / 2)
    for name in ("sequence", "sequence_mean"):
        if name in limits:
            factor, least, most = FLOOR_SEQUENCE
            limits[name] = max(limits[name], medians[name] + min(max(factor * medians[name], least), most))
    for name, ceiling in CEILINGS.items():
        # held-out traces that already score near a detector's ceiling leave it a narrow band, not none
        limits[name] = min(limits[name], ceiling)
        medians[name] = min(medians[name], limits[name] / 2)

    calibrated = Profile(_meta(s, agent, Thresholds(**limits, combined=1.0), Medians(**medians), seq_meta),
                         ngram, frequency, sequence)
    combined = max(1.0, tail_threshold(calibrated.combine(scores), s.fpr_target))
    ngram, frequency = _fit([t.syscalls for t in usable], s, rng)
    meta = _meta(s, agent, Thresholds(**limits, combined=combined), Medians(**medians), seq_meta)
    meta.binaries = sorted(behaviour.binaries)
    meta.path_prefixes = sorted(behaviour.path_prefixes)
    meta.destinations = sorted(behaviour.destinations)
    meta.endpoints = dict(sorted(behaviour.endpoints.items()))
    meta.endpoint_calls = dict(sorted(behaviour.calls.items()))
    meta.trained_on = {
        "traces": len(usable),
        "syscalls": int(sum(len(t.syscalls) for t in usable)),
        "heldout_traces": len(held_part),
        "ngrams": int(len(ngram.known)),
    }
    return Profile(meta, ngram, frequency, sequence)


def tail_threshold(scores: np.ndarray, alpha: float) -> float:
    """The score that benign traces exceed with probability alpha. A few
    hundred held-out traces cannot show a 1-in-400 quantile, so the tail
    above the median is taken as exponential, its scale the mean excess
    over the median; the empirical quantile wins where it is higher."""
    median = float(np.median(scores))
    excess = scores[scores > median] - median
    quantile = float(np.quantile(scores, 1 - alpha))
    above = len(excess) / len(scores)
    if not len(excess) or above <= alpha:
        return quantile
    return max(quantile, median + float(excess.mean()) * float(np.log(above / alpha)))


def _meta(s: Settings, agent: str, thresholds: Thresholds, medians: Medians | None = None,
          sequence: SequenceMeta | None = None) -> ProfileMeta:
    return ProfileMeta(agent=agent, ngram_n=s.ngram_n, frame=s.frame, window=s.window, stride=s.stride,
                       neighbours=s.neighbours, fpr_target=s.fpr_target, thresholds=thresholds,
                       medians=medians or Medians(), sequence=sequence)


def _fit_sequence(fit_part: list[np.ndarray], held_part: list[np.ndarray], s: Settings,
                  progress: Progress | None) -> tuple[SequenceModel, SequenceMeta]:
    from guard.sequence import LmSettings, train_lm

    lm = LmSettings(max_steps=s.sequence_steps, seed=s.seed)
    task = progress.add_task("sequence model", total=lm.max_checks) if progress else None

    def epoch(n: int, loss: float) -> None:
        if progress and task is not None:
            progress.update(task, completed=n + 1, description=f"sequence model (held-out loss {loss:.3f})")

    model = train_lm(fit_part, lm, on_epoch=epoch, held_out=held_part)
    if progress and task is not None:
        progress.update(task, completed=lm.max_checks)
    live = len(held_part) >= MIN_LIVE_HELDOUT
    return model, SequenceMeta(embed=lm.embed, hidden=lm.hidden, window=s.sequence_window, live=live)


def score_traces(profile: Profile, traces: Iterable[Trace], progress: Progress | None = None,
                 total: int | None = None, batch: int = 512) -> list[tuple[str, float]]:
    """(trace name, combined score) per trace, scored a batch of traces at a time."""
    task = progress.add_task("scoring", total=total) if progress else None
    rows: list[tuple[str, float]] = []
    pending: list[Trace] = []

    def flush() -> None:
        scores = profile.score_traces([t.syscalls for t in pending])
        rows.extend((t.name, float(x)) for t, x in zip(pending, scores))
        if progress and task is not None:
            progress.advance(task, len(pending))
        pending.clear()

    for t in traces:
        pending.append(t)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return rows
