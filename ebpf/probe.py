"""Capability probes: load and attach the smallest programs of each kind the
sensor uses, so `bastion doctor` checks features by using them."""

from __future__ import annotations

from ebpf.sensor import BPF_DIR

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
