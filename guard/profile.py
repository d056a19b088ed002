"""Behaviour profiles: what one agent's tools normally do, and the detectors
learned from it. Stored as one safetensors file, arrays plus a JSON header
validated field by field: nothing in it is ever executed or unpickled."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.numpy import load, save

from common.files import InputError, parse_json, read_bytes, write_bytes
from common.models import field_error

from guard.detectors import MAX_PACKED_N, FrequencyDetector, NgramDetector, unpack
from guard.traces import Behaviour

FORMAT = "bastion-profile/1"
MAX_BYTES = 256 << 20


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and what is wrong."""


class Thresholds(BaseModel):
    """Each detector's score at its share of the target false-positive rate
    on held-out benign windows; the combined score is the larger of the two
    ratios score/threshold, anomalous above `combined`."""

    # finite and in range: an infinite threshold would silently detect nothing
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    ngram: float = Field(gt=0, le=1, description="a mismatch rate")
    frequency: float = Field(gt=0, le=2, description="a Hellinger distance (at most sqrt 2)")
    combined: float = Field(gt=0, le=100)


class ProfileMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    format: Literal["bastion-profile/1"] = FORMAT
    agent: str = Field(min_length=1, max_length=128)
    ngram_n: int = Field(ge=2, le=MAX_PACKED_N)
    frame: int = Field(ge=2, le=1000)
    window: int = Field(ge=10, le=100_000)
    stride: int = Field(ge=1, le=100_000)
    neighbours: int = Field(ge=1, le=50)
    fpr_target: float = Field(gt=0, lt=0.5)
    thresholds: Thresholds
    binaries: list[str] = Field(default_factory=list, max_length=10_000)
    path_prefixes: list[str] = Field(default_factory=list, max_length=10_000)
    destinations: list[str] = Field(default_factory=list, max_length=10_000)
    trained_on: dict[str, int] = Field(default_factory=dict)


@dataclass
class Profile:
    meta: ProfileMeta
    ngrams: NgramDetector
    frequency: FrequencyDetector

    @property
    def behaviour(self) -> Behaviour:
        m = self.meta
        return Behaviour(set(m.binaries), set(m.path_prefixes), set(m.destinations))

    def known_ngrams(self) -> list[tuple[int, ...]]:
        """The n-grams for the sensor's `known` map."""
        return [unpack(c, self.meta.ngram_n) for c in self.ngrams.known]

    def window_scores(self, syscalls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per window: the n-gram score and the frequency score."""
        m = self.meta
        ng = self.ngrams.windows(syscalls, m.window, m.stride)
        fq = self.frequency.windows(syscalls, m.window, m.stride)
        size = min(len(ng), len(fq))  # n-gram windows start n-1 later; align on the shorter
        return ng[:size], fq[:size]

    def combine(self, ngram: np.ndarray | float, frequency: np.ndarray | float) -> np.ndarray:
        t = self.meta.thresholds
        return np.maximum(np.asarray(ngram) / t.ngram, np.asarray(frequency) / t.frequency)

    def score(self, syscalls: np.ndarray) -> np.ndarray:
        """Combined score of each window; above thresholds.combined is anomalous."""
        return self.combine(*self.window_scores(syscalls))

    # storage -------------------------------------------------------------
    def save(self, path: Path | str) -> None:
        tensors = {
            "known": np.ascontiguousarray(self.ngrams.known, dtype=np.uint64),
            "vocab": np.ascontiguousarray(self.frequency.vocab, dtype=np.int64),
            "reference": np.ascontiguousarray(self.frequency.reference, dtype=np.float32),
        }
        write_bytes(path, save(tensors, metadata={"bastion": self.meta.model_dump_json()}))


def _check_arrays(path: Path, arrays: dict[str, np.ndarray], meta: ProfileMeta) -> None:
    def bad(name: str, why: str) -> ProfileError:
        return ProfileError(f"{path}: array {name}: {why}")

    expected = {"known": np.uint64, "vocab": np.int64, "reference": np.float32}
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
    return Profile(
        meta=meta,
        ngrams=NgramDetector(meta.ngram_n, arrays["known"], meta.frame),
        frequency=FrequencyDetector(arrays["vocab"], arrays["reference"], meta.neighbours),
    )
