"""The learned detectors, scored window by window over syscall sequences.

Both are array maths with no per-syscall Python: the n-gram detector packs
each n-gram into one integer and checks membership with a sorted search; the
frequency detector is a brute-force nearest-neighbour model over the
Hellinger embedding of syscall histograms."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

BITS = 10  # per syscall number in a packed n-gram
MAX_PACKED_N = 64 // BITS
DISTANCES_AT_ONCE = 1 << 22  # float64s of a frequency scoring's distance matrix held at a time (32 MiB)


def pack(syscalls: np.ndarray, n: int) -> np.ndarray:
    """The packed codes of every n-gram of a sequence, oldest syscall highest."""
    if len(syscalls) < n:
        return np.empty(0, dtype=np.uint64)
    windows = sliding_window_view(syscalls.astype(np.uint64), n)
    shifts = np.arange(n - 1, -1, -1, dtype=np.uint64) * np.uint64(BITS)
    return np.bitwise_or.reduce(windows << shifts, axis=1)


def unpack(code: int, n: int) -> tuple[int, ...]:
    mask = (1 << BITS) - 1
    return tuple((int(code) >> (BITS * (n - 1 - i))) & mask for i in range(n))


def window_starts(length: int, size: int, stride: int) -> np.ndarray:
    """Start offsets of sliding windows; a short sequence is one window."""
    if length <= size:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, length - size + 1, stride)
    if starts[-1] != length - size:  # cover the tail too
        starts = np.append(starts, length - size)
    return starts


def window_means(nll: np.ndarray, size: int) -> np.ndarray:
    """Mean NLL of every `size`-syscall window; a short sequence is one window."""
    if len(nll) <= size:
        return np.array([float(nll.mean()) if len(nll) else 0.0])
    c = np.concatenate([[0.0], np.cumsum(nll, dtype=np.float64)])
    return (c[size:] - c[:-size]) / size


@dataclass
class NgramDetector:
    """Mismatch rate over a window and the locality frame count: how many of
    the last `frame` n-grams were never seen in training."""

    n: int
    known: np.ndarray  # sorted packed codes
    frame: int = 20

    def mismatches(self, syscalls: np.ndarray) -> np.ndarray:
        codes = pack(syscalls, self.n)
        if not len(self.known):
            return np.ones(len(codes), dtype=bool)
        at = np.searchsorted(self.known, codes).clip(max=len(self.known) - 1)
        return self.known[at] != codes

    def windows(self, syscalls: np.ndarray, size: int, stride: int) -> np.ndarray:
        """Per window: 0.5 * (mismatch rate + peak locality frame / frame)."""
        miss = self.mismatches(syscalls).astype(np.float64)
        if not len(miss):
            return np.zeros(1)
        csum = np.concatenate([[0.0], np.cumsum(miss)])
        lfc = csum[1:] - csum[np.maximum(np.arange(1, len(miss) + 1) - self.frame, 0)]
        starts = window_starts(len(miss), size, stride)
        ends = np.minimum(starts + size, len(miss))
        rate = (csum[ends] - csum[starts]) / (ends - starts)
        if len(miss) <= size:
            peak = np.array([lfc.max()])
        else:
            peak = sliding_window_view(lfc, size)[starts].max(axis=1)
        return 0.5 * (rate + peak / self.frame)

    def score_counts(self, in_window: int, in_frame: int, size: int) -> float:
        """The same score live, from the kernel's counts of a thread's novel
        n-grams in its last `size` syscalls and its last frame."""
        return 0.5 * (in_window / size + in_frame / self.frame)

    def count_limit(self, score: float, size: int) -> int:
        """The kernel's form of a score: in_window * frame + in_frame * size
        is above this integer exactly when score_counts is above `score`."""
        return math.floor(2 * score * size * self.frame)


@dataclass
class FrequencyDetector:
    """Distance from a window's syscall histogram to its nearest benign ones."""

    vocab: np.ndarray  # syscall numbers seen in training; others share one bucket
    reference: np.ndarray  # float32 (windows, len(vocab) + 1) Hellinger embeddings
    k: int = 3
    _index: np.ndarray = field(init=False, repr=False)
    _ref: np.ndarray = field(init=False, repr=False)  # the reference in float64, as distances need
    _ref_sq: np.ndarray = field(init=False, repr=False)  # its rows' squared norms

    def __post_init__(self) -> None:
        self._index = np.full(1024, len(self.vocab), dtype=np.int64)
        self._index[self.vocab] = np.arange(len(self.vocab))
        self._ref = self.reference.astype(np.float64)
        self._ref_sq = (self._ref * self._ref).sum(axis=1)

    def embed_counts(self, counts: np.ndarray) -> np.ndarray:
        """Hellinger embedding of rows of bucket counts."""
        totals = counts.sum(axis=1, keepdims=True)
        return np.sqrt(counts / np.maximum(totals, 1)).astype(np.float32)

    def histograms(self, syscalls: np.ndarray, size: int, stride: int) -> np.ndarray:
        buckets = self._index[syscalls]
        width = len(self.vocab) + 1
        starts = window_starts(len(buckets), size, stride)
        return np.stack([np.bincount(buckets[s : s + size], minlength=width) for s in starts])

    def score_counts(self, counts: np.ndarray) -> np.ndarray:
        """Each row's mean Euclidean distance to its k nearest reference
        windows. In numpy rather than sklearn's kneighbors, whose checks
        cost 0.5-1.2 ms a call: the guard scores a running sandbox's mix
        every 0.1 s on the pump, and a held call waited on it."""
        x = self.embed_counts(counts).astype(np.float64)
        k = min(self.k, len(self._ref))
        scores = np.empty(len(x))
        step = max(1, DISTANCES_AT_ONCE // len(self._ref))
        for i in range(0, len(x), step):
            part = x[i:i + step]
            squared = part @ self._ref.T
            squared *= -2.0
            squared += self._ref_sq
            squared += (part * part).sum(axis=1)[:, None]
            # squares order as distances do; float32 halves the partition's work
            nearest = np.partition(squared.astype(np.float32), k - 1, axis=1)[:, :k].astype(np.float64)
            scores[i:i + step] = np.sqrt(np.maximum(nearest, 0.0)).mean(axis=1)
        return scores

    def windows(self, syscalls: np.ndarray, size: int, stride: int) -> np.ndarray:
        return self.score_counts(self.histograms(syscalls, size, stride))

    def counts_of(self, by_syscall: dict[int, int]) -> np.ndarray:
        """One row of bucket counts from syscall-number counts."""
        row = np.zeros((1, len(self.vocab) + 1))
        for nr, count in by_syscall.items():
            row[0, self._index[nr] if 0 <= nr < 1024 else len(self.vocab)] += count
        return row
