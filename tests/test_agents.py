"""Agents without the kernel: redaction, call parsing, the interaction log,
request clustering, the router's classifier, and the backends against a
small built model, through transformers, peft and a real `transformers serve`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents import domain
from agents.analyze import cluster, requests_of
from agents.backends import BackendError, OpenAICompatibleBackend, TransformersBackend
from agents.config import ConfigError, build_router, load_config
from agents.interaction_log import InteractionLog, read_log
from agents.prompt import CallError, parse, render
from agents.redact import Redactor
from agents.router import TaskClassifier
from bastion.cli import main

VENV_BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"


def test_redaction_removes_pii_and_phi() -> None:
    text = ("Maria Garcia (maria.g@clinic.example, +1 415-555-0134), SSN 123-45-6789, "
            "MRN 48213377, was seen by John Smith.")
    out = Redactor()(text)
    for secret in ("Maria", "Garcia", "maria.g@", "555-0134", "123-45-6789", "48213377", "John", "Smith"):
        assert secret not in out
    assert "[EMAIL]" in out and "[PHONE]" in out and "[SSN]" in out and "[MRN]" in out and "[NAME]" in out


def test_tool_calls_are_validated_naming_the_problem() -> None:
    call = parse('{"tool": "lookup_code", "args": {"code": "E11.9"}} </call> trailing')
    assert call is not None and call.tool == "lookup_code"
    assert parse('{"done": true}') is None
    for answer, message in [
        ("lookup_code(E11.9)", "not JSON"),
        ('{"tool": "rm_rf", "args": {}}', "unknown tool 'rm_rf'"),
        ('{"tool": "debt_to_income", "args": {"monthly_debt": 5, "monthly_income": 0}}', "args.monthly_income"),
        ('{"tool": "write_note", "args": {"patient_id": "P12345", "text": "x", "extra": 1}}', "args.extra"),
    ]:
        with pytest.raises(CallError, match=message):
            parse(answer)


def _write_log(path: Path) -> None:
    log = InteractionLog(path)
    for i, task in enumerate(domain.tasks(90, seed=5)):
        log.lm_call(agent="clinic", run=f"r{i}", step=f"r{i}-1", route="specialist", backend="tool-caller",
                    task=task.text, prompt=render(task.text), completion=task.call(), prompt_tokens=10,
                    completion_tokens=10, latency_s=0.01)
        log.tool_call(agent="clinic", run=f"r{i}", step=f"r{i}-1", tool=task.tool, args=json.dumps(task.args),
                      output="{}", verdict="allow", alerts=[])
    log.close()


def test_interaction_log_is_redacted_and_a_fine_tuning_set(tmp_path: Path) -> None:
    path = tmp_path / "interactions.jsonl"
    _write_log(path)
    records = list(read_log(path))
    lm = [r for r in records if r["type"] == "lm"]
    assert len(lm) == 90 and all({"prompt", "completion"} <= r.keys() for r in lm)
    assert not any(name in r["prompt"] for r in lm for name in domain.FIRST_NAMES)
    path.write_text(path.read_text() + "{broken\n")
    with pytest.raises(ValueError, match=r"interactions\.jsonl:181: not valid JSON"):
        list(read_log(path))


def test_analyze_finds_repetitive_clusters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "interactions.jsonl"
    _write_log(path)
    texts, tools = requests_of(path)
    clusters = cluster(texts, tools)
    assert sum(c.size for c in clusters) == 90 and len(clusters) >= 2
    assert any(c.specialist_fits for c in clusters)
    assert main(["agents", "analyze", str(path)]) == 0
    out = capsys.readouterr().out
    assert "90 requests" in out and "yes" in out


def test_router_classifier_round_trip_and_corruption(tmp_path: Path) -> None:
    train = domain.tasks(300, seed=1)
    clf = TaskClassifier.fit([t.text for t in train], [t.domain for t in train])
    clf.save(tmp_path / "router")
    loaded = TaskClassifier.load(tmp_path / "router")
    test = domain.tasks(60, seed=2)
    right = sum(loaded.predict(t.text)[0] == t.domain for t in test)
    assert right / len(test) >= 0.9
    (tmp_path / "router" / "head.safetensors").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match="head.safetensors: not a router classifier"):
        TaskClassifier.load(tmp_path / "router")


@pytest.fixture(scope="session")
def quick_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models")
    assert main(["agents", "build-model", "--quick", "--out", str(out)]) == 0
    return out


def test_built_model_loads_in_transformers_with_a_lora_adapter(quick_models: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = quick_models / "tool-caller"
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    lora.save_pretrained(tmp_path / "adapter")
    backend = TransformersBackend("s", base, tmp_path / "adapter")
    completion = backend.complete(render("Look up code I10"), max_tokens=8)
    assert completion.completion_tokens <= 8 and completion.prompt_tokens > 5
    with pytest.raises(BackendError, match="not a model directory"):
        TransformersBackend("s", tmp_path)
    with pytest.raises(BackendError, match="not a LoRA adapter"):
        TransformersBackend("s", base, tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(quick_models: Path) -> Iterator[tuple[str, str]]:
    """A real `transformers serve` on loopback with the built model."""
    port = _free_port()
    model = str(quick_models / "tool-caller")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([str(VENV_BIN / "transformers"), "serve", model, "--host", "127.0.0.1", "--port",
                             str(port), "--device", "cpu"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("transformers serve did not come up")
        yield url, model
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_openai_compatible_backend_against_transformers_serve(served: tuple[str, str], quick_models: Path) -> None:
    url, model = served
    remote = OpenAICompatibleBackend("served", url, model)
    local = TransformersBackend("local", Path(model))
    prompt = render("What does diagnosis code E11.9 mean?")
    got, want = remote.complete(prompt, max_tokens=12), local.complete(prompt, max_tokens=12)
    assert got.prompt_tokens == want.prompt_tokens and got.completion_tokens > 0
    assert got.text == want.text  # greedy decoding: the server and the library agree
    with pytest.raises(BackendError, match="backend nowhere"):
        OpenAICompatibleBackend("nowhere", f"http://127.0.0.1:{_free_port()}", model).complete(prompt)


def test_config_builds_the_router_and_names_bad_fields(quick_models: Path, tmp_path: Path) -> None:
    router = build_router(load_config(quick_models / "agents.yaml"))
    assert set(router.routes) == {"specialist", "generalist"}
    decision = router.decide("What is the balance of account AC-1001?")
    assert decision.task_type == "finance" and decision.route == "specialist"
    bad = tmp_path / "agents.yaml"
    bad.write_text((quick_models / "agents.yaml").read_text().replace("escalate_below: 0.6", "escalate_below: 7"))
    with pytest.raises(ConfigError, match="field escalate_below"):
        load_config(bad)
