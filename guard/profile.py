"""Behaviour profiles: what one agent's tools normally do, and the detectors
learned from it. Stored as one safetensors file, arrays plus a JSON header
validated field by field: nothing in it is ever executed or unpickled.

Each detector's score is read against two numbers calibrated on benign
traces held out from fitting: its median there and its threshold. The ratio
(score - median) / (threshold - median) is 1 at the threshold whatever the
detector's units. Live, each detector alerts on its own ratio above 1. A
trace's combined score adds the detectors' ratios above 0, so evidence that
several detectors see adds up and no detector's calm cancels another's
alarm; it is anomalous above thresholds.combined, calibrated the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.numpy import load, save

from common.files import InputError, parse_json, read_bytes, write_bytes
from common.models import field_error
from ebpf.events import NOVELTY_WINDOW_MAX

from guard.detectors import MAX_PACKED_N, FrequencyDetector, NgramDetector, unpack, window_means
from guard.traces import Behaviour

if TYPE_CHECKING:
    from guard.sequence import SequenceModel

FORMAT = "bastion-profile/2"
ENDPOINT_KEY = r"^(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS) [^ /]+ /[^ ]*$"
MAX_BYTES = 256 << 20


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and what is wrong."""


class Thresholds(BaseModel):
    """Each detector's score at its share of the target false-positive rate
    on held-out benign traces."""

    # finite and in range: an infinite threshold would silently detect nothing
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    ngram: float = Field(gt=0, le=1, description="a mismatch rate")
    frequency: float = Field(gt=0, le=2, description="a Hellinger distance (at most sqrt 2)")
    sequence: float | None = Field(default=None, gt=0, le=50, description="a window's mean NLL, nats per syscall")
    sequence_mean: float | None = Field(default=None, gt=0, le=50, description="a trace's mean NLL")
    combined: float = Field(gt=0, le=100)


class Medians(BaseModel):
    """Each detector's median score on the same held-out benign traces."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    ngram: float = Field(default=0.0, ge=0, le=1)
    frequency: float = Field(default=0.0, ge=0, le=2)
    sequence: float = Field(default=0.0, ge=0, le=50)
    sequence_mean: float = Field(default=0.0, ge=0, le=50)


class SequenceMeta(BaseModel):
    """The shape of the syscall language model stored in the lm.* arrays."""

    model_config = ConfigDict(extra="forbid")
    embed: int = Field(ge=1, le=512)
    hidden: int = Field(ge=1, le=1024)
    window: int = Field(ge=1, le=10_000, description="syscalls per live scoring window")
    live: bool = Field(description="judge running sandboxes: calibrated on enough held-out traces to trust")


class ProfileMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    format: Literal["bastion-profile/2"] = FORMAT
    agent: str = Field(min_length=1, max_length=128)
    ngram_n: int = Field(ge=2, le=MAX_PACKED_N)
    frame: int = Field(ge=2, le=1000)
    window: int = Field(ge=10, le=NOVELTY_WINDOW_MAX, description="syscalls per scoring window; the kernel counts "
                        "each thread's novel n-grams over its last window")
    stride: int = Field(ge=1, le=100_000)
    neighbours: int = Field(ge=1, le=50)
    fpr_target: float = Field(gt=0, lt=0.5)
    thresholds: Thresholds
    medians: Medians = Field(default_factory=Medians)
    sequence: SequenceMeta | None = None
    binaries: list[str] = Field(default_factory=list, max_length=10_000)
    path_prefixes: list[str] = Field(default_factory=list, max_length=10_000)
    destinations: list[str] = Field(default_factory=list, max_length=10_000)
    endpoints: dict[Annotated[str, StringConstraints(pattern=ENDPOINT_KEY, max_length=400)],
                    Annotated[int, Field(ge=0)]] = Field(default_factory=dict, max_length=10_000,
                                                         description="API calls seen: largest body per endpoint")
    endpoint_calls: dict[Annotated[str, StringConstraints(pattern=ENDPOINT_KEY, max_length=400)],
                         Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, max_length=10_000, description="API calls seen: the most to each endpoint in one run")
    trained_on: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ProfileMeta:
        if self.frame > self.window:
            raise ValueError(f"frame ({self.frame}) must be at most window ({self.window})")
        for name in Medians.model_fields:
            threshold = getattr(self.thresholds, name)
            if threshold is not None and threshold <= getattr(self.medians, name):
                raise ValueError(f"thresholds.{name} must be above medians.{name}")
        if (self.sequence is None) != (self.thresholds.sequence is None or self.thresholds.sequence_mean is None):
            raise ValueError("a sequence model needs thresholds.sequence and thresholds.sequence_mean, and they need it")
        return self


@dataclass
class Profile:
    meta: ProfileMeta
    ngrams: NgramDetector
    frequency: FrequencyDetector
    sequence: SequenceModel | None = None

    @property
    def judges_live(self) -> bool:
        """Whether its sequence model judges running sandboxes (it was
        calibrated on enough held-out traces), not only traces offline."""
        return self.sequence is not None and self.meta.sequence is not None and self.meta.sequence.live

    @property
    def behaviour(self) -> Behaviour:
        m = self.meta
        return Behaviour(set(m.binaries), set(m.path_prefixes), set(m.destinations), dict(m.endpoints),
                         dict(m.endpoint_calls))

    def known_ngrams(self) -> list[tuple[int, ...]]:
        """The n-grams for the sensor's `known` map."""
        return [unpack(c, self.meta.ngram_n) for c in self.ngrams.known]

    def ratio(self, detector: str, score: np.ndarray | float) -> np.ndarray:
        """A detector's score against its calibration: 0 at the benign median, 1 at its threshold."""
        median = getattr(self.meta.medians, detector)
        return (np.asarray(score, dtype=np.float64) - median) / (getattr(self.meta.thresholds, detector) - median)

    def score_at(self, detector: str, ratio: float) -> float:
        """The detector's score where ratio() gives `ratio`."""
        median = getattr(self.meta.medians, detector)
        return float(median + ratio * (getattr(self.meta.thresholds, detector) - median))

    def detector_scores(self, traces: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Per trace, each detector's score of it: the most anomalous window
        of the n-gram, frequency and sequence detectors, and the sequence
        model's mean over the whole trace."""
        m = self.meta
        ngram = [self.ngrams.windows(t, m.window, m.stride).max() if len(t) >= m.ngram_n else 0.0 for t in traces]
        # every trace's windows through the nearest-neighbour model in one call
        hists = [self.frequency.histograms(t, m.window, m.stride) for t in traces]
        per_window = self.frequency.score_counts(np.concatenate(hists)) if hists else np.zeros(0)
        bounds = np.cumsum([0, *(len(h) for h in hists)])
        freq = [per_window[a:b].max() if len(t) else 0.0 for t, a, b in zip(traces, bounds[:-1], bounds[1:])]
        scores = {"ngram": np.array(ngram), "frequency": np.array(freq)}
        if self.sequence is not None and m.sequence is not None:
            nlls = self.sequence.nll(traces)
            scores["sequence"] = np.array([window_means(x, m.sequence.window).max() for x in nlls])
            scores["sequence_mean"] = np.array([x.mean() if len(x) else 0.0 for x in nlls])
        return scores

    def combine(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """The combined score: the sum of the calibrated ratios above 0."""
        return np.stack([self.ratio(name, s).clip(min=0) for name, s in scores.items()]).sum(axis=0)

    def score_traces(self, traces: Sequence[np.ndarray]) -> np.ndarray:
        """Each trace's combined score; above thresholds.combined is anomalous."""
        return self.combine(self.detector_scores(traces)) if traces else np.zeros(0)

    # storage -------------------------------------------------------------
    def save(self, path: Path | str) -> None:
        tensors = {
            "known": np.ascontiguousarray(self.ngrams.known, dtype=np.uint64),
            "vocab": np.ascontiguousarray(self.frequency.vocab, dtype=np.int64),
            "reference": np.ascontiguousarray(self.frequency.reference, dtype=np.float32),
        }
        if self.sequence is not None:
            tensors["lm.vocab"] = np.ascontiguousarray(self.sequence.vocab, dtype=np.int64)
            tensors |= {f"lm.{name}": a for name, a in self.sequence.arrays().items()}
        write_bytes(path, save(tensors, metadata={"bastion": self.meta.model_dump_json()}))


def _check_arrays(path: Path, arrays: dict[str, np.ndarray], meta: ProfileMeta) -> None:
    def bad(name: str, why: str) -> ProfileError:
        return ProfileError(f"{path}: array {name}: {why}")

    expected = {"known": np.uint64, "vocab": np.int64, "reference": np.float32}
    if meta.sequence is not None:
        expected["lm.vocab"] = np.int64
        expected |= {f"lm.{name}": np.float32 for name in _lm_shapes(arrays, meta.sequence)}
    if set(arrays) != set(expected):
        raise ProfileError(f"{path}: arrays {sorted(arrays)} are not {sorted(expected)}")
    for name, dtype in expected.items():
        if arrays[name].dtype != dtype:
            raise bad(name, f"dtype {arrays[name].dtype}, expected {np.dtype(dtype)}")
    known, vocab, ref = arrays["known"], arrays["vocab"], arrays["reference"]
    if known.ndim != 1 or np.any(known[1:] <= known[:-1]):
        raise bad("known", "must be sorted, unique packed n-grams")
    if np.any(known >> np.uint64(10 * meta.ngram_n)):
        raise bad("known", f"holds codes wider than {meta.ngram_n} syscalls")
    if vocab.ndim != 1 or len(vocab) == 0 or vocab.min() < 0 or vocab.max() > 1023 or len(set(vocab.tolist())) != len(vocab):
        raise bad("vocab", "must be unique syscall numbers in 0..1023")
    if ref.ndim != 2 or ref.shape[0] == 0 or ref.shape[1] != len(vocab) + 1:
        raise bad("reference", f"shape {ref.shape} does not fit a vocabulary of {len(vocab)}")
    if not np.all(np.isfinite(ref)) or ref.min() < 0 or ref.max() > 1:
        raise bad("reference", "holds values outside 0..1 (not a Hellinger embedding)")
    if meta.sequence is not None:
        lm_vocab = arrays["lm.vocab"]
        if lm_vocab.ndim != 1 or not len(lm_vocab) or lm_vocab.min() < 0 or lm_vocab.max() > 1023 \
                or np.any(lm_vocab[1:] <= lm_vocab[:-1]):
            raise bad("lm.vocab", "must be sorted, unique syscall numbers in 0..1023")
        for name, shape in _lm_shapes(arrays, meta.sequence).items():
            a = arrays[f"lm.{name}"]
            if a.shape != shape:
                raise bad(f"lm.{name}", f"shape {a.shape}, expected {shape} for this vocabulary and model size")
            if not np.all(np.isfinite(a)):
                raise bad(f"lm.{name}", "holds values that are not finite")


def _lm_shapes(arrays: dict[str, np.ndarray], seq: SequenceMeta) -> dict[str, tuple[int, ...]]:
    """The sequence model's weight shapes for the stored vocabulary, computed
    without torch: an embedding, one GRU layer and an output layer."""
    vocab = len(arrays["lm.vocab"]) + 2 if "lm.vocab" in arrays else 0
    h, e = seq.hidden, seq.embed
    return {"embed.weight": (vocab, e), "gru.weight_ih_l0": (3 * h, e), "gru.weight_hh_l0": (3 * h, h),
            "gru.bias_ih_l0": (3 * h,), "gru.bias_hh_l0": (3 * h,), "out.weight": (vocab, h), "out.bias": (vocab,)}


def _header(path: Path, data: bytes) -> dict[str, object]:
    """The safetensors metadata: an 8-byte length, then a JSON header."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < size <= len(data) - 8:
        raise ProfileError(f"{path}: not a safetensors profile (header length)")
    try:
        header = parse_json(data[8:8 + size], str(path))
    except InputError as exc:
        raise ProfileError(f"{path}: not a safetensors profile: {exc}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def load_profile(path: Path | str) -> Profile:
    """Load a profile, checking every field and array; raises ProfileError."""
    path = Path(path)
    try:
        data = read_bytes(path, MAX_BYTES)
    except InputError as exc:
        raise ProfileError(str(exc)) from None
    header = _header(path, data)
    try:
        arrays = load(data)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ProfileError(f"{path}: not a safetensors profile: {exc}") from None
    if not isinstance(header.get("bastion"), str):
        raise ProfileError(f"{path}: no Bastion profile header")
    try:
        meta = ProfileMeta.model_validate(parse_json(header["bastion"], f"{path}: the profile header"))
    except InputError as exc:
        raise ProfileError(str(exc)) from None
    except ValidationError as exc:
        raise ProfileError(str(field_error(str(path), exc))) from None
    _check_arrays(path, arrays, meta)
    sequence = None
    if meta.sequence is not None:
        from guard.sequence import SequenceModel  # torch, only for profiles that hold a model

        weights = {k.removeprefix("lm."): v for k, v in arrays.items() if k.startswith("lm.") and k != "lm.vocab"}
        sequence = SequenceModel.from_arrays(arrays["lm.vocab"], weights)
    return Profile(
        meta=meta,
        ngrams=NgramDetector(meta.ngram_n, arrays["known"], meta.frame),
        frequency=FrequencyDetector(arrays["vocab"], arrays["reference"], meta.neighbours),
        sequence=sequence,
    )
