"""Learning a profile from benign traces, and scoring traces against one.

Thresholds are calibrated on benign traces held out from fitting, each
detector at half the target false-positive rate so that their combination
(the larger ratio to its threshold) keeps to the target; the detectors are then refitted on every trace,
which can only lower benign scores."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from rich.progress import Progress

from guard.detectors import MAX_PACKED_N, FrequencyDetector, NgramDetector, pack
from guard.profile import Profile, ProfileMeta, Thresholds
from guard.traces import Behaviour, Trace

MAX_REFERENCE = 5000  # benign windows kept for the nearest-neighbour model
# One changed syscall makes n novel n-grams in a row: 0.5 * (n/window + n/frame),
# about 0.18 with the defaults. Timing alone changes a syscall now and then
# (a short read, an EAGAIN), so that much is tolerated whatever training saw.
FLOOR_NGRAM = 0.25
FLOOR_FREQUENCY = 0.35


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


SCALES = (1, 4, 16)  # live windows span whatever a sandbox ran between two reads


def multiscale_histograms(detector: FrequencyDetector, syscalls: np.ndarray, s: Settings) -> np.ndarray:
    """Windows of the trained size and of larger ones, up to the whole trace."""
    rows = [detector.histograms(syscalls, s.window * k, s.stride * k) for k in SCALES]
    return np.concatenate([*rows, detector.histograms(syscalls, len(syscalls), len(syscalls))])


def _fit(traces: Sequence[Trace], s: Settings, rng: np.random.Generator) -> tuple[NgramDetector, FrequencyDetector]:
    codes = [pack(t.syscalls, s.ngram_n) for t in traces]
    known = np.unique(np.concatenate(codes)) if codes else np.empty(0, np.uint64)
    vocab = np.unique(np.concatenate([t.syscalls for t in traces])).astype(np.int64)
    bootstrap = FrequencyDetector(vocab, np.zeros((1, len(vocab) + 1), np.float32), s.neighbours)
    counts = np.concatenate([multiscale_histograms(bootstrap, t.syscalls, s) for t in traces])
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
    fit_part = [usable[i] for i in order[held:]]
    held_part = [usable[i] for i in order[:held]]

    task = progress.add_task("calibrating", total=len(held_part)) if progress else None
    ngram, frequency = _fit(fit_part, s, rng)
    ng_scores, fq_scores = [], []
    for t in held_part:
        ng_scores.append(ngram.windows(t.syscalls, s.window, s.stride))
        fq_scores.append(frequency.windows(t.syscalls, s.window, s.stride))
        if progress and task is not None:
            progress.advance(task)
    # each detector gets half the false-positive budget, so their maximum keeps to it
    q = 1 - s.fpr_target / 2
    ng_all, fq_all = np.concatenate(ng_scores), np.concatenate(fq_scores)
    t_ng = max(float(np.quantile(ng_all, q)), FLOOR_NGRAM)
    t_fq = max(float(np.quantile(fq_all, q)), FLOOR_FREQUENCY)

    ngram, frequency = _fit(usable, s, rng)
    meta = ProfileMeta(
        agent=agent,
        ngram_n=s.ngram_n,
        frame=s.frame,
        window=s.window,
        stride=s.stride,
        neighbours=s.neighbours,
        fpr_target=s.fpr_target,
        thresholds=Thresholds(ngram=t_ng, frequency=t_fq, combined=1.0),
        binaries=sorted(behaviour.binaries),
        path_prefixes=sorted(behaviour.path_prefixes),
        destinations=sorted(behaviour.destinations),
        trained_on={
            "traces": len(usable),
            "syscalls": int(sum(len(t.syscalls) for t in usable)),
            "heldout_windows": int(len(ng_all)),
            "ngrams": int(len(ngram.known)),
        },
    )
    return Profile(meta, ngram, frequency)


def score_traces(profile: Profile, traces: Iterable[Trace], progress: Progress | None = None,
                 total: int | None = None) -> list[tuple[str, float]]:
    """(trace name, score) per trace: its most anomalous window."""
    task = progress.add_task("scoring", total=total) if progress else None
    rows = []
    for t in traces:
        score = float(profile.score(t.syscalls).max()) if len(t.syscalls) >= profile.meta.ngram_n else 0.0
        rows.append((t.name, score))
        if progress and task is not None:
            progress.advance(task)
    return rows
