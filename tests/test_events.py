"""The user-side mirror of bastion.h and the JSONL record/replay format."""

from __future__ import annotations

import ctypes as ct
import json
import subprocess
from pathlib import Path

import pytest

from ebpf import events
from ebpf.events import EVENT_WIRE, Event, EventKind
from ebpf.record import EventFileError, JsonlWriter, read_jsonl
from ebpf.sensor import BPF_DIR

C_STRUCTS = {
    "ev_hdr": events.EvHdr,
    "ev_exec": events.EvExec,
    "ev_fork": events.EvFork,
    "ev_exit": events.EvExit,
    "ev_open": events.EvOpen,
    "ev_net": events.EvNet,
    "ev_ngram": events.EvNgram,
    "ev_syscall": events.EvSyscall,
    "ev_seq": events.EvSeq,
    "ev_api": events.EvApi,
    "watch_info": events.WatchInfo,
    "slot_info": events.SlotInfo,
    "novelty": events.Novelty,
    "cg_stats": events.CgStats,
}


def test_ctypes_mirror_matches_the_c_header(tmp_path: Path) -> None:
    prints = "".join(f'printf("{name} %zu\\n", sizeof(struct {name}));' for name in C_STRUCTS)
    src = tmp_path / "sizes.c"
    src.write_text(
        "#include <stdio.h>\n#include <stdint.h>\n"
        "typedef uint8_t u8; typedef uint16_t u16; typedef uint32_t u32; typedef int32_t s32; typedef uint64_t u64; typedef int64_t s64;\n"
        f'#include "bastion.h"\nint main(void) {{ {prints} return 0; }}\n'
    )
    subprocess.run(["gcc", f"-I{BPF_DIR}", "-o", str(tmp_path / "sizes"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "sizes")], capture_output=True, text=True, check=True).stdout
    c_sizes = dict(line.split() for line in out.splitlines())
    assert {name: ct.sizeof(cls) for name, cls in C_STRUCTS.items()} == {k: int(v) for k, v in c_sizes.items()}


def _sample() -> list[Event]:
    return [
        Event(EventKind.EXEC, 1, 42, 100, 100, "sh", path="/bin/sh", argv=("sh", "-c", "true")),
        Event(EventKind.CONNECT, 2, 42, 100, 101, "curl", ret=-111, family=2, addr="127.0.0.1", port=9),
        Event(EventKind.EXIT, 3, 42, 100, 100, "sh", exit_code=7),
        Event(EventKind.NGRAM, 4, 42, 100, 100, "sh", ngram=(1, 2, 3, 4, 5, 6)),
    ]


def test_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with JsonlWriter(path) as w:
        w.write(_sample())
    assert list(read_jsonl(path)) == _sample()


def test_wire_model_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="surprise"):
        EVENT_WIRE.validate_python({**_sample()[0].to_dict(), "surprise": 1})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"events\.jsonl:2: not valid JSON"),
        ('{"kind": "teleport", "ts_ns": 1, "cgroup_id": 1, "pid": 1, "tid": 1, "comm": "x"}', r":2: field kind:"),
        ('{"kind": "exec", "ts_ns": "soon", "cgroup_id": 1, "pid": 1, "tid": 1, "comm": "x"}', r":2: field ts_ns:"),
        ('{"kind": "exec", "cgroup_id": 1, "pid": 1, "tid": 1, "comm": "x"}', r":2: field ts_ns:"),
    ],
)
def test_malformed_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(_sample()[0].to_dict()) + "\n" + line + "\n")
    with pytest.raises(EventFileError, match=message):
        list(read_jsonl(path))
