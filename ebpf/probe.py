"""Capability probes: load and attach the smallest programs of each kind the
sensor uses, so `bastion doctor` checks features by using them."""

from __future__ import annotations

from ebpf.sensor import BPF_CGROUP_SOCK_OPS, BPF_DIR
from ebpf.tls_libraries import private_copies, where

CGROUP_INET4_CONNECT = 10


def load_tracepoints() -> str:
    """Load and attach a tracepoint, a raw tracepoint and a ring buffer."""
    from bcc import BPF

    bpf = BPF(src_file=str(BPF_DIR / "probe.bpf.c"))
    try:
        return f"{bpf.num_open_tracepoints()} tracepoint, 1 raw tracepoint attached"
    finally:
        bpf.cleanup()


def attach_cgroup_connect(cgroup_fd: int) -> str:
    """Load a cgroup/connect4 program and attach it to a cgroup, then detach."""
    from bcc import BPF

    bpf = BPF(src_file=str(BPF_DIR / "probe.bpf.c"))
    try:
        fn = bpf.load_func("probe_connect4", BPF.CGROUP_SOCK_ADDR, attach_type=CGROUP_INET4_CONNECT)
        BPF.attach_func(fn, cgroup_fd, CGROUP_INET4_CONNECT)
        BPF.detach_func(fn, cgroup_fd, CGROUP_INET4_CONNECT)
        return "cgroup/connect4 attached and detached"
    finally:
        bpf.cleanup()


def attach_api_programs(cgroup_fd: int) -> str:
    """Attach a sock_ops program to a cgroup and an sk_msg program to a
    sockhash (the plain HTTP checks), and a uprobe to the write of each TLS
    library's private copy, made as the sensor makes it (the TLS checks)."""
    from bcc import BPF, BPFAttachType, libbcc

    bpf = BPF(src_file=str(BPF_DIR / "probe.bpf.c"))
    try:
        ops = bpf.load_func("probe_sockops", BPF.SOCK_OPS)
        BPF.attach_func(ops, cgroup_fd, BPF_CGROUP_SOCK_OPS)
        BPF.detach_func(ops, cgroup_fd, BPF_CGROUP_SOCK_OPS)
        msg = bpf.load_func("probe_msg", BPF.SK_MSG)
        BPF.attach_func(msg, libbcc.lib.bpf_table_fd(bpf.module, b"probe_socks"), BPFAttachType.SK_MSG_VERDICT)
        libraries = private_copies()
        for library in libraries:
            bpf.attach_uprobe(name=str(library.copy), **where(library.writes[0]), fn_name="probe_uprobe")
        if not libraries:
            return "sock_ops, sk_msg attached; no TLS library found: TLS calls cannot be read"
        names = ", ".join(library.path.name for library in libraries)
        return f"sock_ops, sk_msg attached; uprobes on the copies of {names} in {libraries[0].copy.parent}"
    finally:
        bpf.cleanup()
