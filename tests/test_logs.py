"""Structured logs: one JSON object per line, on the stderr of the moment."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from bastion import logs


def test_a_record_is_one_json_line_with_its_fields_on_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    logs.setup("info")
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)  # as the TUI or a test capture does after setup
    logging.getLogger("bastion.test").info("sandbox started", extra={"fields": {"sandbox": "sb-1"}})
    (line,) = later.getvalue().splitlines()
    record = json.loads(line)
    assert (record["level"], record["logger"], record["msg"], record["sandbox"]) == \
        ("info", "bastion.test", "sandbox started", "sb-1")
