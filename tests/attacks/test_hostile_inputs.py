"""Files given to Bastion may be FIFOs, devices, huge, deeply nested or
hostile: each is refused in one line naming the file, at once, and no output
is ever written over a device, a directory or a symlink's target."""

from __future__ import annotations

import functools
import tempfile

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agents.config import ConfigError, load_config
from ebpf.record import EventFileError, read_jsonl
from guard.audit import AuditError, AuditLog, verify
from guard.profile import ProfileError, load_profile
from guard.traces import Behaviour, Trace, TraceError, read_trace_file
from guard.training import Settings, train
from sandbox.policy import PolicyError, load_policy

REPO = Path(__file__).resolve().parents[2]

READERS: dict[str, tuple[Callable[[Path], object], type[Exception]]] = {
    "policy": (load_policy, PolicyError),
    "profile": (load_profile, ProfileError),
    "trace": (read_trace_file, TraceError),
    "agents.yaml": (load_config, ConfigError),
    "events": (lambda p: list(read_jsonl(p)), EventFileError),
    "audit log": (verify, AuditError),
}


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "input"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_fifo_is_refused_at_once(reader: str, fifo: Path) -> None:
    # in a child process: were the open to block, the test fails on its timeout instead of hanging the suite
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            f"from tests.attacks.test_hostile_inputs import READERS\nfrom pathlib import Path\n"
            f"read, error = READERS[{reader!r}]\n"
            f"try:\n    read(Path({str(fifo)!r}))\nexcept error as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"{fifo}: is a FIFO, not a regular file", out.stderr


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_device_is_refused(reader: str) -> None:
    read, error = READERS[reader]
    with pytest.raises(error, match="^/dev/zero: is a device, not a regular file$"):
        read(Path("/dev/zero"))


def test_deep_nesting_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("limits: " + "[" * 5000 + "]" * 5000)
    with pytest.raises(PolicyError, match=f"^{policy}: nested more than 32 levels deep$"):
        load_policy(policy)
    config = tmp_path / "agents.yaml"
    config.write_text("backends: " + "{a: " * 100 + "1" + "}" * 100)
    with pytest.raises(ConfigError, match="nested more than 32 levels deep"):
        load_config(config)


def test_an_oversized_policy_is_refused(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("#" * (2 << 20))
    with pytest.raises(PolicyError, match=f"^{policy}: 2097152 bytes is more than the 1048576 allowed$"):
        load_policy(policy)


@functools.cache
def _profile_bytes() -> bytes:
    rng = np.random.default_rng(0)
    traces = [Trace(f"t{i}", rng.integers(0, 8, 400)) for i in range(6)]
    with tempfile.TemporaryDirectory() as tmp:
        train(traces, Behaviour(), "clinic", Settings(sequence_steps=50)).save(Path(tmp) / "p.safetensors")
        return (Path(tmp) / "p.safetensors").read_bytes()


def _profile(tmp_path: Path) -> Path:
    """A fresh copy of one trained profile, for a test to make hostile."""
    path = tmp_path / "p.safetensors"
    path.write_bytes(_profile_bytes())
    return path


def _with_header(path: Path, edit: Callable[[dict], None]) -> None:
    """Rewrite a profile's JSON header as a hostile author would."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    meta = json.loads(header["__metadata__"]["bastion"])
    edit(meta)
    header["__metadata__"]["bastion"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + size:])


@pytest.mark.parametrize(("edit", "field"), [
    (lambda m: m["thresholds"].update(ngram=float("inf")), "thresholds.ngram"),
    (lambda m: m["thresholds"].update(frequency=float("nan")), "thresholds.frequency"),
    (lambda m: m["thresholds"].update(combined=1e300), "thresholds.combined"),
    (lambda m: m.update(window=-5), "window"),
])
def test_a_profile_that_would_detect_nothing_is_refused(tmp_path: Path, edit: Callable[[dict], None],
                                                       field: str) -> None:
    path = _profile(tmp_path)
    load_profile(path)
    _with_header(path, edit)
    with pytest.raises(ProfileError, match=f"^{path}: field {field}: "):
        load_profile(path)


def test_a_profile_header_nested_deep_is_refused(tmp_path: Path) -> None:
    path = _profile(tmp_path)
    _with_header(path, lambda m: m.update(trained_on=json.loads("[" * 500 + "]" * 500)))
    with pytest.raises(ProfileError, match=f"^{path}: .*nested more than 32 levels deep"):
        load_profile(path)


def test_outputs_are_never_written_over_a_device_or_through_a_symlink(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    for i in range(4):
        (traces / f"t{i}").write_text(" ".join(str(x) for x in np.random.default_rng(i).integers(0, 8, 300)))
    bastion = [sys.executable, "-m", "bastion.cli", "guard", "train", "--traces", str(traces), "--out"]
    out = subprocess.run([*bastion, "/dev/full"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 2 and "/dev/full: is a device; outputs go only to regular files" in out.stdout
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode), "the device node was replaced"
    target = tmp_path / "precious"
    target.write_text("keep me")
    (tmp_path / "link").symlink_to(target)
    out = subprocess.run([*bastion, str(tmp_path / "link")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 2 and "is a symlink" in out.stdout
    assert target.read_text() == "keep me"


def test_an_audit_log_path_that_is_not_a_regular_file_is_refused(tmp_path: Path, fifo: Path) -> None:
    with pytest.raises(AuditError, match="is not a regular file|is a FIFO"):
        AuditLog(fifo)
    (tmp_path / "log").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(AuditError, match="log: "):
        AuditLog(tmp_path / "log")
