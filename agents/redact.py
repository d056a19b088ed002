"""PII/PHI redaction for the interaction log: emails, phone numbers,
SSN-like and MRN-like numbers, and names from a list."""

from __future__ import annotations

import re
from collections.abc import Iterable

from agents.domain import FIRST_NAMES, LAST_NAMES

_PATTERNS = [
    ("EMAIL", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    ("SSN", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),
    ("MRN", re.compile(r"\b(?:MRN|medical record(?: number)?)[:#\s]*\d{6,10}\b", re.IGNORECASE)),
    ("MRN", re.compile(r"\b\d{8,10}\b")),
    ("PHONE", re.compile(r"(?<![\w.])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{3}\)|\d{3})[\s.-]\d{3}[\s.-]\d{4}\b")),
]


class Redactor:
    def __init__(self, names: Iterable[str] = (*FIRST_NAMES, *LAST_NAMES)) -> None:
        words = sorted({n for n in names if n}, key=len, reverse=True)
        self._names = re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b") if words else None

    def __call__(self, text: str) -> str:
        for label, pattern in _PATTERNS:
            text = pattern.sub(f"[{label}]", text)
        if self._names is not None:
            text = self._names.sub("[NAME]", text)
        return text
