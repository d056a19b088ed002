"""`bastion doctor`: check each kernel capability Bastion uses by using it."""

from __future__ import annotations

import gzip
import os
import platform
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from common.files import read_bytes, read_text
from ebpf import probe
from sandbox import landlock
from sandbox.cgroup import Cgroup, cgroup2_mount
from sandbox.launch import launcher_binary
from sandbox.quiet import QuietGroup
from sandbox.seccomp import Filter, set_no_new_privs


class Check(BaseModel):
    name: str
    required: bool
    ok: bool
    detail: str
    fix: str = ""


SETUP = "run `make setup` as root"


def _root() -> str:
    if os.geteuid() != 0:
        raise RuntimeError(f"running as uid {os.geteuid()}")
    return "uid 0"


def _cgroup2() -> str:
    mount = cgroup2_mount()
    cg = Cgroup.create(f"doctor-{uuid.uuid4().hex[:8]}")
    try:
        cg.freeze(True)
        cg.freeze(False)
        cg.kill()
    finally:
        cg.remove()
    return f"{mount}; created, froze, thawed, killed and removed a leaf"


def _tracefs() -> str:
    events = Path("/sys/kernel/tracing/events/syscalls")
    if not events.is_dir():
        raise RuntimeError("/sys/kernel/tracing has no syscall events (tracefs not mounted)")
    return "/sys/kernel/tracing"


def _headers() -> str:
    build = Path(f"/lib/modules/{platform.release()}")
    for link, probe_file in (("build", "include/generated"), ("source", "include/linux/kconfig.h")):
        if not (build / link / probe_file).exists():
            raise RuntimeError(f"{build / link / probe_file} is missing")
    return str((build / "build").resolve())


def _bcc() -> str:
    import bcc

    return f"bcc {getattr(bcc, '__version__', '?')} from {Path(bcc.__file__).parent}"


def _in_a_fresh_cgroup(attach: Callable[[int], str]) -> Callable[[], str]:
    """A check that attaches programs to a cgroup made for it, then removes it."""
    def check() -> str:
        cg = Cgroup.create(f"doctor-{uuid.uuid4().hex[:8]}")
        fd = cg.open_fd()
        try:
            return attach(fd)
        finally:
            os.close(fd)
            cg.remove()
    return check




def _btf() -> str:
    if not Path("/sys/kernel/btf/vmlinux").exists():
        raise RuntimeError("/sys/kernel/btf/vmlinux is missing")
    return "/sys/kernel/btf/vmlinux"


def _landlock() -> str:
    version = landlock.abi()
    if version < 1:
        raise RuntimeError("Landlock is not enabled (add landlock to the lsm= boot parameter)")
    return f"ABI {version}"


def _seccomp() -> str:
    """Fork a child that denies itself getcwd() and checks it gets EPERM."""
    flt = Filter(["getcwd"])
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 1
        try:
            set_no_new_privs()
            flt.load()
            os.getcwd()
        except PermissionError:
            code = 0
        finally:
            os._exit(code)
    flt.release()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("a filter was loaded but getcwd() was not denied")
    return "filter loaded in a child; denied syscall returned EPERM"


# Models under which a BPF program can be preempted part way: the API
# programs share a per-CPU scratch along a chain of tail calls, and a call
# parsed on the same CPU meanwhile would overwrite the state of the first.
PREEMPTIBLE = ("full", "lazy", "laziest", "rt")
_BUILD_MODELS = (("CONFIG_PREEMPT_RT=y", "rt"), ("CONFIG_PREEMPT=y", "full"), ("CONFIG_PREEMPT_LAZY=y", "lazy"),
                 ("CONFIG_PREEMPT_VOLUNTARY=y", "voluntary"), ("CONFIG_PREEMPT_NONE=y", "none"))


def preemption_model(config: str, cmdline: str) -> str:
    """The kernel's preemption model: `preempt=` on its command line where
    the build lets the boot choose (CONFIG_PREEMPT_DYNAMIC), else the build's."""
    options = set(config.splitlines())
    if "CONFIG_PREEMPT_DYNAMIC=y" in options:
        for arg in cmdline.split():
            if arg.startswith("preempt="):
                return arg.removeprefix("preempt=")
    for option, model in _BUILD_MODELS:
        if option in options:
            return model
    raise RuntimeError("the kernel's build configuration names no preemption model")


def _preemption() -> str:
    boot = Path(f"/boot/config-{platform.release()}")
    config = (gzip.decompress(read_bytes("/proc/config.gz", 1 << 20)).decode() if Path("/proc/config.gz").exists()
              else read_text(boot, 1 << 22))
    model = preemption_model(config, read_text("/proc/cmdline", 1 << 16))
    if model in PREEMPTIBLE:
        raise RuntimeError(f"preemption {model}: an API call program can be preempted between its tail calls, "
                           "and a call parsed on its CPU meanwhile would overwrite its state")
    return f"{model}: a BPF program runs to its end on its CPU"


def _idle_cpu_group() -> str:
    """Where the recorder of allowed API calls would wait for idle CPUs:
    tried on a short-lived child."""
    child = subprocess.Popen(["sleep", "10"])
    try:
        group = QuietGroup(child.pid)
        child.kill()
        child.wait()
        group.remove()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if group.path is None:
        raise RuntimeError("no cpu controller offers cpu.idle: the recorder of allowed API calls runs at "
                           "SCHED_IDLE, which autogroups weigh within the node's session only")
    return f"cpu.idle set on a group under {group.path.parent}"


CHECKS: list[tuple[str, bool, Callable[[], str], str]] = [
    ("root", True, _root, "run Bastion as root (it loads BPF programs and manages cgroups)"),
    ("cgroup v2", True, _cgroup2, "mount cgroup2 (e.g. `mount -t cgroup2 none /sys/fs/cgroup`)"),
    ("tracefs", True, _tracefs, "mount -t tracefs tracefs /sys/kernel/tracing"),
    ("kernel headers", True, _headers, SETUP + " (installs linux-headers-amd64 and links it)"),
    ("bcc", True, _bcc, SETUP + " (installs python3-bpfcc and links it into .venv)"),
    ("tracepoint programs", True, probe.load_tracepoints, "needs CONFIG_BPF_EVENTS and CAP_BPF"),
    ("cgroup sock_addr programs", True, _in_a_fresh_cgroup(probe.attach_cgroup_connect), "needs CONFIG_CGROUP_BPF"),
    ("API call programs", True, _in_a_fresh_cgroup(probe.attach_api_programs),
     "needs CONFIG_BPF_STREAM_PARSER (sk_msg) and CONFIG_UPROBE_EVENTS"),
    ("BTF", False, _btf, "kernel built without CONFIG_DEBUG_INFO_BTF: not needed by BCC"),
    ("landlock", True, _landlock, "boot with lsm=...,landlock"),
    ("seccomp", True, _seccomp, "apt-get install libseccomp2; kernel needs CONFIG_SECCOMP_FILTER"),
    ("kernel preemption", False, _preemption, "boot with preempt=none or preempt=voluntary"),
    ("idle cpu group", False, _idle_cpu_group,
     "mount the v1 cpu controller, or enable cpu in the v2 hierarchy (kernel 5.15 or later for cpu.idle)"),
    ("sandbox launcher", True, lambda: f"built at {launcher_binary()}", SETUP + " (installs gcc and libc6-dev)"),
]


def run_checks() -> list[Check]:
    results = []
    for name, required, fn, fix in CHECKS:
        try:
            results.append(Check(name=name, required=required, ok=True, detail=fn()))
        except Exception as exc:  # each failure becomes a row, not a crash
            results.append(Check(name=name, required=required, ok=False, detail=str(exc).splitlines()[0], fix=fix))
    return results


def healthy(results: list[Check]) -> bool:
    return all(c.ok for c in results if c.required)

