"""Federated fine-tuning: what leaves a site, hostile updates, robust and
private aggregation, and a Flower simulation run with one poisoned site."""

from __future__ import annotations

import shutil
import socket
import stat
import struct
import subprocess
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from bastion.models import build_models
from federated import task
from federated.client_app import train as client_train
from federated.simulation import simulate
from federated.sites import make_sites, read_site
from federated.strategy import Privacy, aggregate, check_update, to_record
from federated.trainer import Request, TrainerError, call, receive


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rich.console import Console

    return build_models(tmp_path_factory.mktemp("models"), Console(quiet=True), quick=True).parent / "tool-caller"


def _arrays() -> OrderedDict[str, np.ndarray]:
    return OrderedDict([("a.lora_A.weight", np.zeros((4, 8), np.float32)), ("a.lora_B.weight", np.zeros((8, 4), np.float32))])


def test_hostile_updates_are_rejected_naming_the_site() -> None:
    current = _arrays()
    nan = OrderedDict((k, v.copy()) for k, v in current.items())
    nan["a.lora_A.weight"][0, 0] = np.nan
    shape = OrderedDict([("a.lora_A.weight", np.zeros((4, 9), np.float32)), ("a.lora_B.weight", current["a.lora_B.weight"])])
    big = OrderedDict((k, v + 100) for k, v in current.items())
    extra = OrderedDict([*current.items(), ("backdoor", np.ones(3, np.float32))])
    assert "site bank: a.lora_A.weight holds non-finite values" == check_update("bank", nan, current, 10)
    assert "shape (4, 9)" in (check_update("bank", shape, current, 10) or "")
    assert "update norm" in (check_update("clinic", big, current, 10) or "")
    assert "do not match" in (check_update("clinic", extra, current, 10) or "")
    assert check_update("ok", OrderedDict((k, v + 0.01) for k, v in current.items()), current, 10) is None


def test_robust_aggregation_resists_one_outlier_and_dp_clips() -> None:
    honest = [OrderedDict([("w", np.full(3, 1.0 + i * 0.1))]) for i in range(4)]
    poisoned = OrderedDict([("w", np.full(3, 50.0))])
    deltas, weights = [*honest, poisoned], [1.0] * 5
    assert aggregate(deltas, weights, "mean", 0.2)["w"][0] > 9
    assert aggregate(deltas, weights, "median", 0.2)["w"][0] == pytest.approx(1.2)
    assert aggregate(deltas, weights, "trimmed-mean", 0.2)["w"][0] == pytest.approx(1.2)
    clipped = Privacy(clip_norm=1.0).clip(poisoned)
    assert np.linalg.norm(clipped["w"]) == pytest.approx(1.0)
    noisy = Privacy(clip_norm=1.0, noise_multiplier=1.0).noise(OrderedDict([("w", np.zeros(1000))]), 5,
                                                                np.random.default_rng(0))
    assert 0.1 < np.std(noisy["w"]) < 0.3  # sigma * C / n = 0.2


def test_base_models_loaded_one_after_another_warn_of_nothing(base: Path, tmp_path: Path) -> None:
    """A site's trainer keeps running while its base model moves or changes:
    each load gets a LoRA config of its own, so peft has no earlier path to
    warn that it renamed."""
    moved = tmp_path / "tool-caller"
    shutil.copytree(base, moved)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, _ = task.load(base)
        second, _ = task.load(moved)
    assert [str(w.message) for w in caught if "peft" in w.filename] == []
    assert [m.peft_config["default"].base_model_name_or_path for m in (first, second)] == [str(base), str(moved)]


def test_only_adapter_arrays_and_numbers_leave_a_site(base: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):  # what a SuperNode's process would carry
        monkeypatch.setattr(TaskIdentity, attr, 1)
    sites = make_sites(tmp_path / "sites", 1, train=20, test=5)
    train, test = sites["hospital"]
    model, _ = task.load(base)
    message = Message(RecordDict({"arrays": to_record(task.get_adapter(model)), "config": ConfigRecord({"server-round": 1})}),
                      dst_node_id=1, message_type="train")
    context = Context(run_id=1, node_id=1, node_config={"site": 0, "train-path": str(train), "test-path": str(test)},
                      state=RecordDict(), run_config={"base-model": str(base), "local-steps": 2, "lr": 0.005})
    reply = client_train(message, context)  # the ClientApp's train handler itself
    assert set(reply.content.keys()) == {"arrays", "metrics"}
    sent = reply.content["arrays"]
    assert list(sent.keys()) == list(task.get_adapter(model).keys())
    assert all("lora_" in k or k.startswith(task.POINTER) for k in sent.keys())
    assert any(k.startswith(task.POINTER) for k in sent.keys())  # the pointer learns the site's phrasing too
    assert sum(v.numpy().nbytes for v in sent.values()) < 0.02 * sum(p.numel() * 4 for p in model.parameters())
    assert all(isinstance(v, (int, float)) for v in reply.content["metrics"].values())
    train_text = train.read_text()
    assert not any(prompt in str(dict(reply.content["metrics"])) for prompt, _ in read_site(train)[:3])
    assert train_text  # the site's data stayed in its file


def test_a_sites_trainer_does_the_clientapps_work_and_refuses_bad_requests_in_one_line(
        base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower starts a process per message; the site's trainer keeps the model
    loaded between them. Its update is the one the ClientApp computes in its
    own process; a malformed or oversized request is refused in one line
    naming the field or the bound, and the trainer goes on serving."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
    train, test = make_sites(tmp_path / "sites", 1, train=20, test=5)["hospital"]
    sock = tmp_path / "t.sock"
    proc = subprocess.Popen([sys.executable, "-m", "federated.trainer", str(sock)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "trainer listening" in proc.stdout.readline()
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600  # only the site's user may ask it for work
        replies = []
        for node in ({}, {"trainer": str(sock)}):
            model, _ = task.load(base)
            message = Message(RecordDict({"arrays": to_record(task.get_adapter(model)),
                                          "config": ConfigRecord({"server-round": 1})}), dst_node_id=1, message_type="train")
            context = Context(run_id=1, node_id=1, state=RecordDict(),
                              node_config={"site": 0, "train-path": str(train), "test-path": str(test), **node},
                              run_config={"base-model": str(base), "local-steps": 2, "lr": 0.005})
            replies.append(client_train(message, context).content)
        here, there = replies
        assert list(here["arrays"].keys()) == list(there["arrays"].keys())
        for name in here["arrays"].keys():
            assert np.allclose(here["arrays"][name].numpy(), there["arrays"][name].numpy(), atol=1e-6), name
        assert here["metrics"]["train-loss"] == pytest.approx(there["metrics"]["train-loss"], abs=1e-6)

        with pytest.raises(TrainerError, match="request: field steps: Input should be greater than or equal to 0$"):
            call(sock, Request.model_construct(op="train", base=base, data=train, steps=-1), {})
        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(str(sock))
            raw.sendall(struct.pack(">IQ", 1 << 30, 0))
            header, _ = receive(raw)
        assert "over the trainer's bounds" in header["error"]
        figures, _ = call(sock, Request(op="evaluate", base=base, data=test), dict(task.get_adapter(model)))
        assert figures["examples"] == 5 and 0 <= figures["accuracy"] <= 1
    finally:
        proc.kill()
        proc.wait()


def test_simulation_with_a_poisoned_site_still_improves(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "fl"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = simulate(base, 3, 2, out, poisoned=[2], **{"local-steps": 15, "lr": 0.01, "max-update-norm": 5.0,
                                                              "aggregation": "median"})
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
    assert {r["site"] for r in report["rejections"]} == {"clinic"}
    assert all("update norm" in r["reason"] for r in report["rejections"])
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    honest = read_site(out / "sites" / "hospital-test.jsonl") + read_site(out / "sites" / "bank-test.jsonl")
    assert task.heldout_loss(base, out / "adapter", honest) < task.heldout_loss(base, None, honest)
    assert report["adapter_bytes"] <= 0.01 * report["model_bytes"] * 2  # tiny quick model: within 2%


def test_secure_aggregation_hides_each_site_yet_gives_the_same_mean(base: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    options = {"local-steps": 15, "lr": 0.01, "max-update-norm": 1000.0}  # no site's own bound bites
    plain = simulate(base, 3, 1, tmp_path / "plain", **options)
    secure = simulate(base, 3, 1, tmp_path / "secure", **options, **{"secure-aggregation": True})
    assert secure["secure_aggregation"] and not plain["secure_aggregation"]
    assert plain["rounds"][0]["readable_updates"] == 3
    assert secure["rounds"][0]["readable_updates"] == 0  # only masked vectors reached the server
    assert secure["rounds"][0]["bytes_up"] > secure["adapter_bytes"] * 3  # ...and they did reach it
    assert {f"accuracy-site-{i}" for i in range(3)} <= set(secure["rounds"][0]["evaluate"])
    a, b = (load_file(tmp_path / run / "adapter" / "adapter_model.safetensors") for run in ("plain", "secure"))
    assert max(float(np.abs(a[k]).max()) for k in a) > 0.01  # training moved the adapter
    assert all(np.allclose(a[k], b[k], atol=1e-4) for k in a)  # the unmasked mean is the mean, to quantization


def test_secure_aggregation_refuses_a_robust_rule_in_one_line() -> None:
    from bastion.cli import main

    with pytest.raises(SystemExit, match="--aggregation: SecAgg\\+ reveals only the sum"):
        main(["fl", "run", "--secure-aggregation", "--aggregation", "median"])


def test_fl_run_on_a_real_superlink_and_supernodes_over_tls_under_secagg(tmp_path: Path) -> None:
    from rich.console import Console

    from agents.backends import OpenAICompatibleBackend, TransformersBackend
    from bastion.models import specialist_dir
    from bastion.federated_run import run_federated

    console = Console(record=True, width=160)
    out = tmp_path / "fl"
    report = run_federated(console, 3, 1, out, simulation=False,
                           **{"local-steps": 2, "lr": 0.01, "secure-aggregation": True})
    shown = console.export_text()
    assert "acc hospital" in shown and "SecAgg+: the server read 0 of the sites' updates" in shown
    (round_,) = report["rounds"]
    assert round_["readable_updates"] == 0 and round_["bytes_up"] > 3 * report["adapter_bytes"]
    assert {f"accuracy-site-{i}" for i in range(3)} <= set(round_["evaluate"])
    deployment = out / "deployment"
    for site in ("hospital", "bank", "clinic"):  # each SuperNode ran as its own process, authenticated
        assert "SuperNode ID" in (deployment / f"supernode-{site}.log").read_text()
    # the aggregated adapter serves in the agents' backend, its weights those the round produced
    from peft import PeftModel
    from safetensors.numpy import load_file

    backend = TransformersBackend("tool-caller", specialist_dir(Console(quiet=True)), out / "adapter")
    assert isinstance(backend.model, PeftModel)
    served = task.get_adapter(backend.model)  # type: ignore[arg-type]
    written = load_file(out / "adapter" / "adapter_model.safetensors")
    assert len(served) == len(written) and any(np.abs(v).max() > 0 for k, v in served.items() if "lora_B" in k)
    pointer = load_file(out / "adapter" / "pointer.safetensors")  # and it places arguments with the round's pointer
    assert backend.decoder.pointer is not None
    assert np.array_equal(backend.decoder.pointer.start.weight.detach().numpy(), pointer["start.weight"])
    # a vLLM backend's local copy narrows the grammar it sends with the round's pointer too
    served_by_vllm = OpenAICompatibleBackend("vllm", "http://127.0.0.1:9", "site-adapter", structured=True,
                                             pointer_model=specialist_dir(Console(quiet=True)),
                                             pointer_adapter=out / "adapter")
    assert served_by_vllm.local is not None and served_by_vllm.local.decoder.pointer is not None
    assert np.array_equal(served_by_vllm.local.decoder.pointer.start.weight.detach().numpy(), pointer["start.weight"])
    # read back as a round's arrays (bench/federated.py evaluates it so), it is the adapter and the pointer
    arrays = task.read_adapter(out / "adapter")
    fresh, _ = task.load(specialist_dir(Console(quiet=True)))
    task.set_adapter(fresh, arrays)
    again = task.get_adapter(fresh)
    assert again.keys() == arrays.keys() and {k for k in arrays if k.startswith(task.POINTER)}
    assert all(np.array_equal(again[k], arrays[k]) for k in arrays)
