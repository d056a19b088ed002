"""The audit log against someone who can write it: truncation, replacement
by a freshly computed chain, an edit with the chain recomputed. Each is
detected by `bastion audit verify --key`, naming where, and a node refuses
to append to a broken log, saying why in an alert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bastion.cli import main
from guard import audit
from guard.audit import AuditError, AuditLog, HeadFile, Signer, _digest, load_public_key, read_heads, verify


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer.load_or_create(tmp_path / "node.key")


def _write_log(path: Path, signer: Signer, heads: Path | None = None, n: int = 10) -> None:
    sinks = [HeadFile(heads)] if heads else []
    log = AuditLog(path, signer, checkpoint_every=4, heads=sinks)
    for i in range(n):
        log.append("alert", {"id": f"a{i}", "rule": f"finding {i}"})
    log.close()  # the shutdown checkpoint
    for sink in sinks:
        sink.close()


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rechain(records: list[dict[str, Any]]) -> str:
    """What an attacker with the file but not the key can do: recompute every hash."""
    prev, out = audit.GENESIS, []
    for seq, r in enumerate(records):
        r = {**r, "seq": seq, "prev": prev}
        r["hash"] = prev = _digest(prev, seq, r["kind"], r["body"])
        out.append(json.dumps(r) + "\n")
    return "".join(out)


def _verify_cli(log: Path, key: Path, *extra: str) -> int:
    return main(["audit", "verify", str(log), "--key", str(key), *extra])


def test_a_signed_log_verifies_whole(tmp_path: Path, signer: Signer, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, signer, heads=tmp_path / "heads.jsonl")
    report = verify(log, signer.public_key)
    assert report.records == 13 and report.checkpoints == 3 and report.uncovered == 0  # 10 + 2 periodic + shutdown
    key = tmp_path / "node.key.pub"
    assert (tmp_path / "node.key").stat().st_mode & 0o777 == 0o600
    assert _verify_cli(log, key, "--heads", str(tmp_path / "heads.jsonl")) == 0
    assert "3 signed checkpoints, all 3 heads sent out of the host present" in capsys.readouterr().out


def test_truncation_is_reported_where(tmp_path: Path, signer: Signer, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, signer)
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-2]))  # the last alert and the shutdown checkpoint
    assert _verify_cli(log, tmp_path / "node.key.pub") == 1
    out = capsys.readouterr().out
    assert "possibly truncated after seq 9" in out and "1 records not covered" in out


def test_truncation_at_a_checkpoint_is_caught_by_the_heads_sent_out(tmp_path: Path, signer: Signer) -> None:
    log, heads = tmp_path / "audit.jsonl", tmp_path / "heads.jsonl"
    _write_log(log, signer, heads=heads)
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:5]))  # ends at the first checkpoint: looks whole on its own
    assert verify(log, signer.public_key).uncovered == 0
    with pytest.raises(AuditError, match="record seq 8, whose signed head was sent out of the host, is missing"):
        verify(log, signer.public_key, read_heads(heads, signer.public_key))


def test_heads_sent_before_a_set_aside_check_the_kept_log_not_its_successor(tmp_path: Path, signer: Signer) -> None:
    log, kept, heads = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.broken-1", tmp_path / "heads.jsonl"
    _write_log(log, signer, heads=heads)
    log.rename(kept)
    sink = HeadFile(heads)
    sink(signer.set_aside(log, kept))
    sink.close()
    _write_log(log, signer, heads=heads, n=3)  # the new log: its seq 0..3 differ from the kept one's
    signed = read_heads(heads, signer.public_key)
    assert verify(log, signer.public_key, signed).records == 4
    assert verify(kept, signer.public_key, signed).records == 13
    kept.write_text("".join(kept.read_text().splitlines(keepends=True)[:5]))
    with pytest.raises(AuditError, match="record seq 8, whose signed head was sent out of the host, is missing"):
        verify(kept, signer.public_key, signed)


def test_a_replaced_log_with_a_fresh_chain_is_caught(tmp_path: Path, signer: Signer,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, signer)
    forged = [{"kind": "alert", "body": {"id": f"a{i}", "rule": "nothing to see"}} for i in range(5)]
    log.write_text(_rechain(forged))
    assert verify(log).records == 5  # the chain alone is fine
    assert _verify_cli(log, tmp_path / "node.key.pub") == 1
    assert "possibly truncated anywhere: no signed checkpoint" in capsys.readouterr().out
    # with checkpoints signed by another key
    other = Signer.load_or_create(tmp_path / "other.key")
    forged_log = tmp_path / "forged.jsonl"
    _write_log(forged_log, other)
    with pytest.raises(AuditError, match="seq 4: checkpoint is not signed by this node's key"):
        verify(forged_log, signer.public_key)


def test_an_edit_with_the_chain_recomputed_is_caught_at_the_next_checkpoint(tmp_path: Path, signer: Signer) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, signer)
    records = _lines(log)
    records[6]["body"]["rule"] = "benign"
    log.write_text(_rechain(records))
    assert verify(log).records == 13  # without the key the chain looks whole
    with pytest.raises(AuditError, match="record seq 9: checkpoint is not signed by this node's key over the chain"):
        verify(log, signer.public_key)
    assert main(["audit", "verify", str(log), "--key", str(tmp_path / "node.key.pub")]) == 2


def test_the_allowed_calls_log_is_checked_through_the_node_logs_anchor(tmp_path: Path, signer: Signer,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The recorder's log of allowed API calls is signed with the node's key
    and anchored in the node's log: verifying the node's log checks it, and
    an edit with its chain recomputed fails at its next checkpoint."""
    calls = tmp_path / "audit.calls-1-1.jsonl"
    log = AuditLog(calls, signer, checkpoint_every=4)
    for i in range(6):
        log.append("api_call", {"method": "GET", "path": f"/records/{i}"})
    log.close()
    covers, head = log.head()
    node = AuditLog(tmp_path / "audit.jsonl", signer)
    node.append(audit.ANCHOR, {"sandbox": None, "log": calls.name, "calls": 6, "covers": covers, "head": head})
    node.close()
    assert verify(node.path, signer.public_key).anchored == 8  # 6 calls, a periodic and the closing checkpoint
    assert _verify_cli(node.path, tmp_path / "node.key.pub") == 0
    assert "(and 8 in the allowed calls' logs it anchors)" in capsys.readouterr().out

    records = _lines(calls)
    records[1]["body"]["path"] = "/patients/export"
    calls.write_text(_rechain(records))
    with pytest.raises(AuditError, match=rf"{calls.name}:5: record seq 4: checkpoint is not signed by this node's key"):
        verify(node.path, signer.public_key)
    assert _verify_cli(node.path, tmp_path / "node.key.pub") == 2


def test_a_head_file_with_a_forged_head_is_refused(tmp_path: Path, signer: Signer) -> None:
    heads = tmp_path / "heads.jsonl"
    heads.write_text(json.dumps({"covers": 3, "head": "0" * 64, "key": signer.key_id, "sig": "00" * 64}) + "\n")
    with pytest.raises(AuditError, match="heads.jsonl:1: not a head signed by this node's key"):
        read_heads(heads, load_public_key(tmp_path / "node.key.pub"))


def test_the_node_refuses_to_append_to_a_broken_log(kernel: None, tmp_path: Path) -> None:
    from bastion.node import Node, NodeConfig

    config = NodeConfig(local=f"unix://{tmp_path}/node.sock", token_file=tmp_path / "token",
                        audit=tmp_path / "audit.jsonl", signing_key=tmp_path / "node.key",
                        audit_heads=tmp_path / "heads.jsonl", falco=tmp_path / "falco.jsonl")
    earlier = Node(config)
    earlier.update_policy("claims", "network: none")  # a record, so closing sends a signed head out
    earlier.close()
    log = tmp_path / "audit.jsonl"
    signer = Signer.load_or_create(tmp_path / "node.key")
    with AuditLog(log, signer) as writer:
        writer.append("policy", {"name": "claims", "yaml": "network: none"})
    records = _lines(log)
    records[0]["body"]["yaml"] = "network: {allow: [{host: 0.0.0.0/0}]}"
    log.write_text(_rechain(records))

    node = Node(config)
    node.close()
    (kept,) = tmp_path.glob("audit.jsonl.broken-*")
    assert "0.0.0.0/0" in kept.read_text(), "the broken log must be kept as evidence"
    first = _lines(log)[0]
    assert first["kind"] == "alert" and first["body"]["detector"] == "audit"
    assert first["body"]["severity"] == "critical" and str(kept) in first["body"]["rule"]
    assert "not signed by this node's key" in first["body"]["rule"]
    # the head sent before the set-aside belongs to the kept log, not the new one
    heads = read_heads(tmp_path / "heads.jsonl", signer.public_key)
    assert verify(log, signer.public_key, heads).uncovered == 0
    assert [h["head"] for h in heads if h["covers"] == -1] == [f"set aside as {kept.name}"]
    with pytest.raises(AuditError, match="not signed by this node's key"):
        verify(kept, signer.public_key, heads)
    falco = [json.loads(line) for line in (tmp_path / "falco.jsonl").read_text().splitlines()]
    assert any(f["rule"] == "bastion audit checkpoint" for f in falco)
