"""The syscall language model: it learns a program's normal order, scores
what is foreign to it, stores safely in a profile, and judges live sandboxes
from the sensor's batches of syscall ids."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from common.verdicts import Verdict
from guard.detectors import window_means
from guard.profile import ProfileError, load_profile
from guard.sequence import LmSettings, train_lm
from guard.traces import Behaviour, Trace
from guard.training import Settings, train
from tests.profiles import rewrite_profile

# A program's normal work: a loop of reads and writes, now and then a stat.
READ_LOOP = [0, 1, 0, 1, 3]
STAT = [4, 5, 3]
FOREIGN = [57, 59, 33, 33, 42, 41, 2]  # fork, execve, dup2 x2, connect, socket, open


def _normal(rng: np.random.Generator) -> np.ndarray:
    seq: list[int] = [2, 9, 9]  # open, mmap, mmap
    for _ in range(rng.integers(20, 50)):
        seq += READ_LOOP if rng.random() < 0.85 else STAT
    return np.array(seq + [60])


@pytest.fixture(scope="module")
def traces() -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(3)
    fit = [_normal(rng) for _ in range(40)]
    unseen = [_normal(rng) for _ in range(40)]
    injected = []
    for _ in range(20):
        t = _normal(rng).tolist()
        at = int(rng.integers(3, len(t) - 1))
        injected.append(np.array(t[:at] + FOREIGN + t[at:]))
    return fit, unseen, injected


@pytest.fixture(scope="module")
def model(traces):  # type: ignore[no-untyped-def]
    fit, _, _ = traces
    return train_lm(fit, LmSettings(max_steps=300))


def test_a_foreign_sequence_scores_above_every_normal_trace(model, traces) -> None:  # type: ignore[no-untyped-def]
    _, unseen, injected = traces
    score = [window_means(x, 30).max() for x in model.nll(unseen + injected)]
    normal, attacked = score[:len(unseen)], score[len(unseen):]
    assert min(attacked) > max(normal)


def test_live_batches_score_as_the_whole_sequence_does(model, traces) -> None:  # type: ignore[no-untyped-def]
    """Threads read 32 syscalls at a time, several side by side, carrying
    the model's state, get the numbers the model gives each sequence whole."""
    _, unseen, _ = traces
    seqs = [t[:100] for t in unseen[:3]]  # every normal trace is longer
    whole = model.nll(seqs)
    states = [None] * len(seqs)
    live: list[list[float]] = [[] for _ in seqs]
    for start in range(0, 100, 32):
        nlls, states = model.step([s[start:start + 32] for s in seqs], states)
        for row, x in enumerate(nlls):
            live[row] += x.tolist()
    for row in range(len(seqs)):
        np.testing.assert_allclose(live[row], whole[row], atol=1e-4)


@pytest.fixture(scope="module")
def profile_path(traces, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    fit, _, _ = traces
    profile = train([Trace(f"t{i}", t) for i, t in enumerate(fit)], Behaviour(), "reader",
                    Settings(window=50, stride=25, sequence_steps=150))
    path = tmp_path_factory.mktemp("profile") / "reader.safetensors"
    profile.save(path)
    return path


def test_a_stored_model_scores_as_it_did_when_trained(profile_path: Path, traces) -> None:  # type: ignore[no-untyped-def]
    _, unseen, injected = traces
    profile = load_profile(profile_path)
    assert profile.sequence is not None
    scores = profile.score_traces(unseen + injected)
    threshold = profile.meta.thresholds.combined
    assert all(scores[len(unseen):] > threshold)
    assert sum(scores[:len(unseen)] > threshold) <= 1


def _nan(arrays: dict[str, np.ndarray]) -> None:
    arrays["lm.gru.weight_hh_l0"][0, 0] = np.nan


@pytest.mark.parametrize(("arrays_edit", "meta_edit", "message"), [
    (_nan, None, "array lm.gru.weight_hh_l0: holds values that are not finite"),
    (lambda a: a.update({"lm.out.weight": a["lm.out.weight"][:-1]}), None, r"array lm.out.weight: shape \("),
    (lambda a: a.update({"lm.vocab": a["lm.vocab"][::-1].copy()}), None, "array lm.vocab: must be sorted"),
    (lambda a: a.pop("lm.embed.weight"), None, "arrays .* are not"),
    (None, lambda m: m["sequence"].update(hidden=7), r"array lm.gru.weight_ih_l0: shape \(288, 32\), expected \(21, 32\)"),
    (None, lambda m: m["thresholds"].update(sequence=None), "a sequence model needs thresholds.sequence"),
    (None, lambda m: m["thresholds"].update(sequence=0.001), "thresholds.sequence must be above medians.sequence"),
])
def test_a_hostile_model_in_a_profile_is_refused_naming_the_array(profile_path: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                   arrays_edit, meta_edit, message: str) -> None:
    bad = rewrite_profile(profile_path, tmp_path / "bad.safetensors", meta_edit, arrays_edit)
    with pytest.raises(ProfileError, match=message) as err:
        load_profile(bad)
    assert str(err.value).startswith(str(bad))


# live ----------------------------------------------------------------------

def test_live_guard_catches_known_ngrams_in_an_order_never_seen(kernel: None, workload: Path, tmp_path: Path,
                                                              request: pytest.FixtureRequest) -> None:
    """Benign runs mark each phase of their work with the same syscall; the
    attack switches between two. Every 6-gram of it is one the benign runs
    made, so the n-gram detector has nothing to say; the model remembers
    which marker the run began with."""
    from bastion.guarded import GuardedSandboxes, record_runs
    from ebpf.sensor import Sensor
    from guard import audit
    from sandbox.policy import Filesystem, Policy

    tools = Path(tempfile.mkdtemp(prefix="bastion-test-tools-"))  # pytest's own is root's alone
    tools.chmod(0o755)
    binary = tools / "workload"
    shutil.copy(workload, binary)
    binary.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(tools))
    fs = Filesystem()
    policy = Policy(filesystem=fs.model_copy(update={"read_only": [*fs.read_only, tools]}))

    def run(marks: str, rounds: int) -> list[str]:
        return [str(binary), "phase", marks, str(rounds)]

    benign = [run(m * n, k) for m in "pt" for n in (4, 6, 8) for k in (2, 3) for _ in range(4)]
    with Sensor() as sensor:
        recorded = record_runs(sensor, benign, policy)
        traces = [t for r in recorded for t in r.traces(sensor.ngram_n)]
        seen = Behaviour()
        for r in recorded:
            seen.update(r.behaviour())
        profile = train(traces, seen, "phases", Settings(window=20, stride=10, sequence_window=30, sequence_steps=500))
        known = set(profile.known_ngrams())
        attack = run("ptptptptpt", 2)
        attack_run = record_runs(sensor, [attack], policy)[0]
        attack_trace = attack_run.traces(sensor.ngram_n)[0].syscalls.tolist()
        grams = {tuple(attack_trace[i:i + sensor.ngram_n]) for i in range(len(attack_trace) - sensor.ngram_n + 1)}
        assert grams <= known, "the attack must make only n-grams the benign runs made"

        log = tmp_path / "audit.jsonl"
        with GuardedSandboxes(sensor, audit.AuditLog(log), [profile]) as guarded:
            labels = {"agent": "phases", "step": "7"}
            quiet = guarded.run(run("ttttttt", 3), policy, labels=labels)
            caught = guarded.run(attack, policy, labels=labels)
            guarded.audit.close()

    assert quiet.alerts == [] and quiet.verdict is Verdict.ALLOW
    detectors = {a.detector for a in caught.alerts}
    assert "sequence" in detectors and "ngram" not in detectors, (caught.alerts, profile.meta)
    alert = next(a for a in caught.alerts if a.detector == "sequence")
    assert alert.step == "7" and alert.score > alert.threshold
    assert caught.verdict is Verdict.QUARANTINE
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(r["kind"] == "alert" and r["body"]["detector"] == "sequence" for r in records)
    assert audit.verify(log).records == len(records)
