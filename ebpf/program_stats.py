"""The kernel's own count of each loaded program's runs and run time, which
it keeps only while the bpf_stats sysctl is on (for benches and tests: the
count costs every program run two clock reads)."""

from __future__ import annotations

import contextlib
import ctypes as ct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


class ProgInfo(ct.Structure):
    """struct bpf_prog_info up to run_cnt (linux/bpf.h)."""

    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("tag", ct.c_uint8 * 8),
                ("jited_prog_len", ct.c_uint32), ("xlated_prog_len", ct.c_uint32),
                ("jited_prog_insns", ct.c_uint64), ("xlated_prog_insns", ct.c_uint64), ("load_time", ct.c_uint64),
                ("created_by_uid", ct.c_uint32), ("nr_map_ids", ct.c_uint32), ("map_ids", ct.c_uint64),
                ("name", ct.c_char * 16), ("ifindex", ct.c_uint32), ("gpl_compatible", ct.c_uint32),
                ("netns_dev", ct.c_uint64), ("netns_ino", ct.c_uint64), ("nr_jited_ksyms", ct.c_uint32),
                ("nr_jited_func_lens", ct.c_uint32), ("jited_ksyms", ct.c_uint64), ("jited_func_lens", ct.c_uint64),
                ("btf_id", ct.c_uint32), ("func_info_rec_size", ct.c_uint32), ("func_info", ct.c_uint64),
                ("nr_func_info", ct.c_uint32), ("nr_line_info", ct.c_uint32), ("line_info", ct.c_uint64),
                ("jited_line_info", ct.c_uint64), ("nr_jited_line_info", ct.c_uint32),
                ("line_info_rec_size", ct.c_uint32), ("jited_line_info_rec_size", ct.c_uint32),
                ("nr_prog_tags", ct.c_uint32), ("prog_tags", ct.c_uint64), ("run_time_ns", ct.c_uint64),
                ("run_cnt", ct.c_uint64)]


@contextlib.contextmanager
def counting() -> Iterator[None]:
    """bpf_stats on, then back as it was."""
    was = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    try:
        yield
    finally:
        BPF_STATS.write_text(was)


def runs(bpf: Any, names: Iterable[str]) -> tuple[int, int]:
    """The runs of these programs of a BCC module, and their time in ns, so
    far (a tail-called program's time counts in its caller's); a program
    not loaded counts nothing."""
    from bcc import libbcc

    count = time_ns = 0
    for name in names:
        fn = bpf.funcs.get(name.encode())
        if fn is None:
            continue
        info = ProgInfo()
        size = ct.c_uint32(ct.sizeof(info))
        if libbcc.lib.bpf_obj_get_info_by_fd(fn.fd, ct.byref(info), ct.byref(size)) != 0:
            raise OSError(f"cannot read the kernel's statistics of the program {name}")
        count += info.run_cnt
        time_ns += info.run_time_ns
    return count, time_ns
