"""Agents without the kernel: redaction, call parsing, the interaction log,
request clustering, the router's classifier, and the backends against a
small built model, through transformers, peft and a real `transformers serve`."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import save_file

from agents import domain
from agents.analyze import cluster, runs_of
from agents.backends import BackendError, OpenAICompatibleBackend, TransformersBackend, peft_quietly
from agents.config import ConfigError, build_router, load_config
from agents.interaction_log import InteractionLog, read_log
from agents.answer_grammar import answer_grammar
from agents.model_builder import packed, train_tokenizer
from agents.pointer import FIELDS, POINTER_FILE, targets
from agents.prompt import END, LEAD, CallError, PromptTooLong, json_schema, parse, render, request_of
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
    # the answer's JSON ends the call, not the first "</call>": a string may hold it
    code = parse('{"tool": "python", "args": {"code": "print(\'</call>\')"}} </call>').args.code  # type: ignore[union-attr]
    assert code == "print('</call>')"
    for answer, message in [
        ("lookup_code(E11.9)", "not JSON"),
        ('{"done": true} and more', "not JSON"),
        ('{"tool": "rm_rf", "args": {}}', "unknown tool 'rm_rf'"),
        ('{"tool": "debt_to_income", "args": {"monthly_debt": 5, "monthly_income": 0}}', "args.monthly_income"),
        ('{"tool": "write_note", "args": {"patient_id": "P12345", "text": "x", "extra": 1}}', "args.extra"),
    ]:
        with pytest.raises(CallError, match=message):
            parse(answer)


def test_an_agent_is_offered_and_may_call_only_its_tools() -> None:
    """The clinic agent gets the healthcare tools and the HTTP tools: not python,
    not the bank's; an agent outside the fleet's list keeps every tool."""
    from bastion.fleet import agent_tools

    tools = agent_tools("clinic")
    assert tools is not None and {"lookup_code", "write_note", "http_get"} <= set(tools)
    assert "python" not in tools and "debt_to_income" not in tools
    request = "Work out 2 ** 10 for patient P12345"
    offered = {a["properties"]["tool"]["const"] for a in json_schema(request, tools)["anyOf"] if "tool" in a["properties"]}
    assert "python" not in offered and "python" in {
        a["properties"]["tool"]["const"] for a in json_schema(request)["anyOf"] if "tool" in a["properties"]}
    with pytest.raises(CallError, match="unknown tool 'python'; tools: lookup_code"):
        parse('{"tool": "python", "args": {"code": "print(2 ** 10)"}}', request, tools)
    assert parse('{"tool": "python", "args": {"code": "print(2 ** 10)"}}', request) is not None
    assert agent_tools("assistant") is None


def test_copied_arguments_must_come_from_the_request_or_an_earlier_result() -> None:
    request = "Add a note to P19091: follow up in two weeks"
    good = '{"tool": "write_note", "args": {"patient_id": "P19091", "text": "follow up in two weeks"}}'
    assert parse(good, request) is not None
    invented = good.replace("P19091", "P11111")
    assert parse(invented) is not None  # well-formed; only the request can tell it was invented
    with pytest.raises(CallError, match=r"write_note args.patient_id: 'P11111' is not in the request"):
        parse(invented, request)
    with pytest.raises(CallError, match="args.text"):
        parse(good.replace("two weeks", "two days"), request)
    # what an earlier tool result held counts as grounds too
    assert parse(invented, f"{request}\nfound patient P11111") is not None
    # a possessive names the patient too
    assert parse(good, "Please write on P19091's chart: follow up in two weeks") is not None
    # the schema a decoder follows offers only the request's values, and no tool it cannot fill
    schema = json_schema("Triage: HR 43, RR 12, temp 37.5, BP 108, SpO2 93.")
    tools = {a["properties"]["tool"]["const"]: a["properties"]["args"] for a in schema["anyOf"]
             if "tool" in a["properties"]}
    assert tools["triage_score"]["properties"]["spo2"] == {"enum": [93]}
    assert tools["triage_score"]["properties"]["temp_c"] == {"enum": [43.0, 37.5]}
    assert "write_note" not in tools and "lookup_code" not in tools and "python" in tools


def test_a_note_may_be_any_run_of_the_requests_words_but_never_the_prompts_markup() -> None:
    """Staff end requests with courtesies ("... thanks"): the note before
    them must be copyable. A logged prompt's markup is not the request."""
    prompt = render("Add a note to P3907: referred to cardiology thanks")
    notes = [a["properties"]["args"]["properties"]["text"]["enum"] for a in json_schema(request_of(prompt))["anyOf"]
             if a["properties"].get("tool", {}).get("const") == "write_note"][0]
    assert "referred to cardiology" in notes
    assert not [n for n in notes if "<" in n or ">" in n]


def test_constrained_decoding_gives_only_valid_grounded_calls(quick_models: Path) -> None:
    """An untrained model writes anything; constrained to the schema it
    writes only calls that parse, validate and copy the request's values,
    digits exactly as the request has them."""
    model = quick_models / "tool-caller"
    free, constrained = TransformersBackend("free", model, constrained=False), TransformersBackend("c", model)
    tasks = [t for t in domain.tasks(60, seed=31) if t.domain != "generic"][:12]
    invalid = 0
    for task in tasks:
        schema = json_schema(task.text)
        try:
            parse(free.complete(render(task.text), json_schema=schema).text, task.text)
        except CallError:
            invalid += 1
        answer = constrained.complete(render(task.text), json_schema=schema).text
        call = parse(answer, task.text)
        if call is not None:
            for value in json.loads(answer)["args"].values():
                assert json.dumps(value) in answer, (task.text, answer)  # 39.1, not 39.100000000000001
    assert invalid > 0, "the untrained model should fail without the constraint, or this test shows nothing"


def test_an_answer_cut_short_by_max_tokens_is_returned_as_invalid_not_raised(quick_models: Path) -> None:
    """A model that writes on past its token budget (a long code argument)
    leaves JSON unfinished: the agent loop must get it back as an invalid
    call to retry, not an exception."""
    text = "Run this check: print(2 ** 10)"
    answer = TransformersBackend("c", quick_models / "tool-caller").complete(
        render(text), max_tokens=3, json_schema=json_schema(text, ["python"])).text
    with pytest.raises(CallError, match="not JSON"):
        parse(answer, text)


def test_a_prompt_that_outgrows_the_models_context_ends_the_run_naming_both_lengths(quick_models: Path) -> None:
    """A hijacked agent that retries a stopped call grows its prompt with each
    refusal. Past the positions the model was trained on its answer means
    nothing: the prompt is refused before the model runs, and the agent's
    run ends saying why, without running a tool."""
    from agents.agent import Agent

    long = "Handle this referral: " + " ".join(f"line {i} of the notes." for i in range(80))
    backend = TransformersBackend("c", quick_models / "tool-caller")
    with pytest.raises(PromptTooLong, match=r"^the prompt is \d+ tokens and the model reads at most 256$"):
        backend.complete(render(long), json_schema=json_schema(long))

    class NoTools:
        def run(self, tool: Any, args: Any, labels: dict[str, str]) -> Any:
            raise AssertionError(f"a tool ran: {tool}")

    run = Agent("clinic", build_router(load_config(quick_models / "agents.yaml")), NoTools()).run(long)
    assert run.ended.startswith("the prompt outgrew the model's context: the prompt is"), run.ended
    assert run.tool_calls == 0


def test_each_number_of_the_request_fills_no_more_arguments_than_it_appears(quick_models: Path) -> None:
    """A small model's favourite number wins every field it may fill (the
    pulse as the systolic pressure too). Decoded together, the request's
    five vital signs fill the five fields, each once; a value written twice
    may fill two."""
    backend = TransformersBackend("c", quick_models / "tool-caller")
    requests = {"Patient came in with pulse 118, respirations 24, temperature 38.6, systolic 92 and sats 90.":
                [118, 24, 38.6, 92, 90],
                "HR 96, RR 18, temp 37.2, BP 96 systolic, SpO2 96": [96, 18, 37.2, 96, 96]}
    for text, values in requests.items():
        answer = backend.complete(render(text), json_schema=json_schema(text, ["triage_score"])).text
        assert sorted(json.loads(answer)["args"].values()) == sorted(values), answer


def test_training_rows_point_at_where_each_argument_is_copied_from() -> None:
    """The pointer learns from the tokens each number and each note was
    copied from; a number written twice points nowhere (which would it be?)."""
    pairs = [(render(t.text), f" {t.call()} {END}") for t in domain.tasks(90, seed=3) if t.domain != "generic"]
    tokenizer = train_tokenizer([p + a for p, a in pairs], 512)
    seen = set()
    for prompt, answer in pairs:
        args = json.loads(answer.split(END)[0])["args"]
        rows = packed(tokenizer, [(prompt, answer)])
        for _, first, end, field, a, b in rows["spans"].tolist():
            name = FIELDS[field][1]
            copied, want = tokenizer.decode(rows["input_ids"][0, a:b + 1]).strip(), args[name]
            assert first <= a <= b < end and (copied == want if isinstance(want, str) else float(copied) == want)
            seen.add(name)
    assert {"heart_rate", "temp_c", "text", "document", "monthly_debt"} <= seen
    twice = render("HR 96, RR 18, temp 37.2, BP 96 systolic, SpO2 97")
    call = json.dumps({"tool": "triage_score", "args": {"heart_rate": 96, "resp_rate": 18, "temp_c": 37.2,
                                                        "systolic_bp": 96, "spo2": 97}})
    offsets = tokenizer(twice, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert sorted(FIELDS[f][1] for f, _, _ in targets(twice, call, offsets)) == ["resp_rate", "spo2", "temp_c"]


def test_a_corrupt_pointer_file_is_refused_naming_the_file_and_the_array(quick_models: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(quick_models / "tool-caller", model)
    (model / POINTER_FILE).write_bytes(b"\x00" * 64)
    with pytest.raises(BackendError, match=rf"{POINTER_FILE}: not a safetensors file"):
        TransformersBackend("t", model)
    save_file({"start.weight": torch.zeros(3, 3), "start.bias": torch.zeros(3)}, str(model / POINTER_FILE))
    with pytest.raises(BackendError, match=rf"{POINTER_FILE}: array 'start.weight' is missing, not of shape"):
        TransformersBackend("t", model)


def _write_log(path: Path) -> None:
    log = InteractionLog(path)
    for i, task in enumerate(domain.tasks(90, seed=5)):
        log.lm_call(agent="clinic", run=f"r{i}", step=f"r{i}-1", route="specialist", backend="tool-caller",
                    task=task.text, prompt=render(task.text), completion=task.call(), prompt_tokens=10,
                    completion_tokens=10, latency_s=0.01)
        log.tool_call(agent="clinic", run=f"r{i}", step=f"r{i}-1", tool=task.tool, args=json.dumps(task.args),
                      output="{}", verdict="allow", alerts=[], ok=True)
    log.close()


def test_interaction_log_is_redacted_and_a_fine_tuning_set(tmp_path: Path) -> None:
    path = tmp_path / "interactions.jsonl"
    _write_log(path)
    records = list(read_log(path))
    lm = [r for r in records if r["type"] == "lm"]
    assert len(lm) == 90 and all({"prompt", "completion"} <= r.keys() for r in lm)
    assert not any(re.search(rf"\b{name}\b", r["prompt"]) for r in lm for name in domain.FIRST_NAMES)
    path.write_text(path.read_text() + "{broken\n")
    with pytest.raises(ValueError, match=r"interactions\.jsonl:181: not valid JSON"):
        list(read_log(path))


def test_analyze_finds_repetitive_clusters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "interactions.jsonl"
    _write_log(path)
    _runs, texts, tools = runs_of(path)
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
    with peft_quietly():
        lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    lora.save_pretrained(tmp_path / "adapter")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        backend = TransformersBackend("s", base, tmp_path / "adapter")
    assert not [str(w.message) for w in shown if issubclass(w.category, FutureWarning)], "loading the adapter warned its user"
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


def test_vllm_gets_the_schema_in_its_structured_outputs_field(quick_models: Path) -> None:
    """vLLM 0.33 (the gpu extra's pin) reads `structured_outputs.grammar`; `guided_json` was removed in 0.12.
    Given a local copy of the model, the grammar sent keeps each note and number to where its pointer places it."""
    seen: list[dict[str, object]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            body = json.dumps({"choices": [{"text": '{"done": true} </call>'}], "usage": {}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        schema = json_schema("What is the balance of account AC-1001?")
        got = OpenAICompatibleBackend("vllm", url, "m", structured=True).complete(render("x"), json_schema=schema)
        OpenAICompatibleBackend("plain", url, "m").complete(render("x"), json_schema=schema)
        note = "Add a note to P3907: referred to cardiology, review in 2 weeks"
        pointed = OpenAICompatibleBackend("vllm", url, "m", structured=True, pointer_model=quick_models / "tool-caller")
        pointed.complete(render(note), json_schema=json_schema(note))
    finally:
        server.shutdown()
    assert got.text == '{"done": true}'
    assert seen[0]["structured_outputs"] == {"grammar": str(answer_grammar(schema))} and "guided_json" not in seen[0]
    assert "structured_outputs" not in seen[1]
    local = TransformersBackend("local", quick_models / "tool-caller", constrained=False)  # the served model, here
    narrowed = local.decoder.narrow(render(note), json_schema(note))
    assert seen[2]["structured_outputs"] == {"grammar": str(answer_grammar(narrowed))}
    def notes(schema: dict[str, Any]) -> list[str]:
        return next(a["properties"]["args"]["properties"]["text"]["enum"] for a in schema["anyOf"]
                    if a["properties"].get("tool", {}).get("const") == "write_note")
    assert len(notes(json_schema(note))) > 1 and len(notes(narrowed)) == 1 and notes(narrowed)[0] in note



def test_vllm_compiles_the_grammar_sent_to_it_into_the_calls_the_models_write(quick_models: Path) -> None:
    """vLLM 0.33 parses `structured_outputs.grammar` with `Grammar.from_ebnf` and compiles
    it with xgrammar 0.2.8 (its pin and ours). The right call, as the models write it, must
    be inside that grammar and an invented one not. Inside the JSON schema's grammar, as
    vLLM would compile `structured_outputs.json`, the right call is not (2175.0 is 2175)."""
    import xgrammar
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(quick_models / "tool-caller")
    compiler = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(tokenizer))
    as_schema_accepts = []
    for task in [t for t in domain.tasks(80, seed=77) if t.domain != "generic"][:8]:
        schema = json_schema(task.text)
        compiled = compiler.compile_grammar(xgrammar.Grammar.from_ebnf(str(answer_grammar(schema))))
        right = xgrammar.GrammarMatcher(compiled, terminate_without_stop_token=True)
        assert right.accept_string(LEAD + task.call()) and right.is_terminated(), (task.text, task.call())
        invented = json.loads(task.call())
        invented["args"] = {k: (v + 1 if isinstance(v, int | float) else f"{v}X") for k, v in invented["args"].items()}
        assert not xgrammar.GrammarMatcher(compiled).accept_string(LEAD + json.dumps(invented)), invented
        as_schema = compiler.compile_json_schema(json.dumps(schema), any_whitespace=True)
        as_schema_accepts.append(xgrammar.GrammarMatcher(as_schema).accept_string(task.call()))
    assert not all(as_schema_accepts), "the schema's grammar now writes numbers as the models do: send it instead"


def test_config_builds_the_router_and_names_bad_fields(quick_models: Path, tmp_path: Path) -> None:
    router = build_router(load_config(quick_models / "agents.yaml"))
    assert set(router.routes) == {"specialist", "generalist"}
    decision = router.decide("What is the balance of account AC-1001?")
    assert decision.task_type == "finance" and decision.route == "specialist"
    bad = tmp_path / "agents.yaml"
    bad.write_text((quick_models / "agents.yaml").read_text().replace("escalate_below: 0.6", "escalate_below: 7"))
    with pytest.raises(ConfigError, match="field escalate_below"):
        load_config(bad)


def test_specialize_fine_tunes_a_cluster_and_routes_only_when_as_accurate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    from bastion.models import build_models, default_models_dir
    from bastion.specialize import specialize

    config = tmp_path / "agents.yaml"
    config.write_text(yaml.safe_dump(load_config(build_models(default_models_dir(), Console(quiet=True)))
                                     .model_dump(mode="json")))
    log = InteractionLog(tmp_path / "interactions.jsonl")
    wanted = {"query_ledger", "lookup_code"}
    for i, task in enumerate(t for t in domain.tasks(400, seed=8) if t.tool in wanted):
        log.lm_call(agent="desk", run=f"r{i}", step=f"r{i}-1", route="generalist", backend="generalist",
                    task=task.text, prompt=render(task.text), completion=task.call(), prompt_tokens=30,
                    completion_tokens=20, latency_s=0.05)
        log.tool_call(agent="desk", run=f"r{i}", step=f"r{i}-1", tool=task.tool, args=json.dumps(task.args),
                      output="{}", verdict="allow", alerts=[], ok=i % 5 != 0)  # a fifth failed: not taught
    log.close()

    done = specialize(tmp_path / "interactions.jsonl", 1, config, tmp_path / "adapters", steps=40)
    assert (tmp_path / "adapters" / "cluster-1" / "adapter_model.safetensors").is_file()
    assert done.held_out >= 2 and done.trained_on > done.held_out
    assert done.routed == (done.specialist.exact >= done.generalist.exact)
    routed = load_config(config)
    assert ("cluster-1" in routed.backends) == done.routed
    if done.routed:
        assert routed.backends["cluster-1"].adapter == tmp_path / "adapters" / "cluster-1"
        route = next(r for r in routed.routes if r.name == "cluster-1")
        assert route.task_types == [done.task_type]
        assert all(done.task_type not in r.task_types for r in routed.routes if r.name != "cluster-1")

    assert main(["agents", "specialize", str(tmp_path / "interactions.jsonl"), "--cluster", "9",
                 "--config", str(config)]) == 2
    assert "--cluster 9: " in capsys.readouterr().out
