"""The sensor: compiles Bastion's BPF programs once, attaches them, and turns
the ring buffer into batches of Events for the cgroups it is told to watch."""

from __future__ import annotations

import ctypes as ct
import ipaddress
import mmap
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebpf.api import KernelApiDest, host_hash
from ebpf.kallsyms import function_range
from ebpf.events import (NOVELTY_WINDOW_MAX, NR_COUNTED, UNIX_PATH_LEN, WATCH_SLOTS, CgStats, Event, Novelty, SlotInfo,
                         WatchInfo, cgroup_of, decode)
from ebpf.ring import Ring
from ebpf.tls_libraries import TlsLibrary, private_copies, where

BPF_DIR = Path(__file__).parent / "bpf"
# One module: the programs share the watched map, the ring buffer and stats.
SOURCES = ("proc.bpf.c", "file.bpf.c", "net.bpf.c", "enter.bpf.c", "seq.bpf.c", "sensitive.bpf.c", "egress.bpf.c",
           "api.bpf.c")
_MAPS_INCLUDE = '#include "maps.bpf.h"'

WATCH_DETECT_NOVEL = 1
WATCH_QUARANTINE = 2
WATCH_SEQUENCE = 4

# cgroup sock_addr programs of egress.bpf.c and their attach types.
EGRESS_PROGRAMS = {
    "egress_connect4": 10,  # BPF_CGROUP_INET4_CONNECT
    "egress_connect6": 11,
    "egress_sendmsg4": 14,  # BPF_CGROUP_UDP4_SENDMSG
    "egress_sendmsg6": 15,
    "egress_unix_connect": 49,  # BPF_CGROUP_UNIX_CONNECT (Linux 6.7)
    "egress_unix_sendmsg": 50,  # BPF_CGROUP_UNIX_SENDMSG
}
BPF_CGROUP_INET_EGRESS = 1
BPF_CGROUP_SOCK_OPS = 3
UNIX_ALLOW = 1
UNIX_QUIET = 2
PROTO_TCP = 1
PROTO_UDP = 2
TRACEFS_SYSCALLS = Path("/sys/kernel/tracing/events/syscalls")
_TRACEPOINT_NAMES = {"umount2": "umount"}  # where the kernel's name differs


@dataclass(frozen=True, slots=True)
class EgressRule:
    """One network as the kernel holds it: the TCP ports and the UDP ports
    allowed there (None: not that protocol; empty: any port)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    tcp: tuple[int, ...] | None
    udp: tuple[int, ...] | None


class SensorError(RuntimeError):
    """The sensor could not be built, loaded or queried."""


@dataclass(frozen=True, slots=True)
class CgroupStats:
    syscalls: int = 0
    events: int = 0
    lost: int = 0
    opens_repeated: int = 0
    packets_dropped: int = 0  # while quarantined


IDLE_S = 2.0  # nothing watched this long: the per-syscall programs are detached
# BCC's names for TRACEPOINT_PROBE and RAW_TRACEPOINT_PROBE functions
_TRACEPOINT, _RAW_TRACEPOINT = b"tracepoint__", b"raw_tracepoint__"


def _programs(module: Any) -> dict[bytes, tuple[bytes, bool]]:
    """The module's tracepoint programs: function -> (tracepoint, whether it
    runs on every syscall of the host). The raw tracepoints (sys_enter, and
    sched_switch, on every context switch) count as such: attached only
    while a cgroup is watched."""
    from bcc import lib

    found = {}
    for i in range(lib.bpf_num_functions(module)):
        name = lib.bpf_function_name(module, i)
        if name.startswith(_TRACEPOINT):
            tp = name[len(_TRACEPOINT):].replace(b"__", b":")
            found[name] = (tp, tp.startswith(b"syscalls:"))
        elif name.startswith(_RAW_TRACEPOINT):
            found[name] = (name[len(_RAW_TRACEPOINT):], True)
    return found


def _mapped(fd: int, rows: int, columns: int) -> Any:
    """A u64 array map made with BPF_F_MMAPABLE, as a rows x columns numpy
    view of its shared mapping."""
    import numpy as np

    size = -(-rows * columns * 8 // mmap.PAGESIZE) * mmap.PAGESIZE
    mapped = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    return np.frombuffer(mapped, dtype=np.uint64, count=rows * columns).reshape(rows, columns)


def _loader() -> Any:
    """BCC's BPF class, attaching at load only the programs that run on
    process events (fork, exit, signals): those on every syscall are the
    Sensor's to attach while a cgroup is watched."""
    from bcc import BPF

    class Loader(BPF):  # type: ignore[misc]
        def _trace_autoload(self) -> None:
            for fn, (tp, every_syscall) in _programs(self.module).items():
                if not every_syscall:
                    self.attach_tracepoint(tp=tp, fn_name=fn)

    return Loader


def module_text() -> str:
    """The sensor's C source as one text.

    BCC rewrites map calls only in its main text, not in #included files, so
    maps.bpf.h (maps and the helpers that use them) is inlined once, first.
    bastion.h, which holds only structs, stays a real include."""
    parts = [(BPF_DIR / "maps.bpf.h").read_text()]
    parts += [(BPF_DIR / name).read_text().replace(_MAPS_INCLUDE, "") for name in SOURCES]
    return "\n".join(parts)


class Sensor:
    """Kernel event source for watched cgroups.

    Use one per process: `start()` compiles everything and attaches the
    programs on process events (about two seconds). Watching the first cgroup
    attaches those on every syscall (about 2 ms); once none has been watched
    for IDLE_S they are detached in the background, so an idle host pays
    nothing."""

    # 4 MiB: a burst of about 100k distinct opens (each record as long as its
    # path) waits there while the pump catches up
    def __init__(self, ngram_n: int = 6, ringbuf_pages: int = 1024, api_sockets: int = 65535) -> None:
        if not 2 <= ngram_n <= 8:
            raise ValueError(f"ngram_n must be between 2 and 8, not {ngram_n}")
        if ringbuf_pages < 1 or ringbuf_pages & (ringbuf_pages - 1):
            raise ValueError(f"ringbuf_pages must be a power of two, not {ringbuf_pages}")
        self.ngram_n = ngram_n
        self.ringbuf_pages = ringbuf_pages
        self.api_sockets = api_sockets  # connected TCP sockets of all sandboxes at once; the next quarantines its own
        self.tls_libraries: list[TlsLibrary] = []  # probed: a sandbox with API rules mounts their copies
        self._bpf: Any = None
        self._tags: dict[int, str] = {}
        self._slots: dict[int, int] = {}  # watched cgroup -> its row of syscall_counts
        self._counts: Any = None  # syscall_counts, mapped: WATCH_SLOTS x NR_COUNTED u64
        self._lost_any: Any = None  # lost_any, mapped: 1 x 1 u64
        self._next_tag = 0
        # a reader for each ring: the pump waits on `events`; `calls` is read apart
        self._events: Ring | None = None
        self._calls: Ring | None = None
        self._decode_errors: dict[int, int] = {}  # by cgroup id, 0 when even the header was unreadable
        self._attempts: set[str] = set()
        # The programs on every syscall of the host (tracepoint or raw
        # tracepoint name -> function) cost every process a slower syscall
        # path: attached while a cgroup is watched, detached after the last.
        self._syscall_hooks: dict[bytes, bytes] = {}
        self._attached: dict[tuple[bytes, bytes], int] = {}  # (tracepoint, function) -> descriptor
        self._hooks_lock = threading.Lock()
        self._idle_since = 0.0

    # lifecycle -----------------------------------------------------------
    def start(self) -> Sensor:
        if self._bpf is not None:
            return self
        try:
            import bcc  # noqa: F401 - Debian's python3-bpfcc; see the Makefile
        except ImportError as exc:
            raise SensorError("BCC is not importable: run `make setup` (installs python3-bpfcc)") from exc
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
        cflags = [
            f"-I{BPF_DIR}",
            f"-DNGRAM_N={self.ngram_n}",
            f"-DRINGBUF_PAGES={self.ringbuf_pages}",
            f"-DPID_MAX={pid_max}",
            f"-DAPI_SOCKS={self.api_sockets}",
        ]
        try:
            self._bpf = _loader()(text=module_text(), cflags=cflags)
        except Exception as exc:
            raise SensorError(f"loading the BPF programs failed: {exc} (run `bastion doctor`)") from exc
        try:
            self._events = Ring(self._bpf["events"].get_fd())
            self._calls = Ring(self.calls_fd())
        except OSError as exc:
            self.close()
            raise SensorError(f"cannot read the sensor's ring buffers: {exc}") from exc
        self._counts = _mapped(self._bpf["syscall_counts"].get_fd(), WATCH_SLOTS, NR_COUNTED)
        self._lost_any = _mapped(self._bpf["lost_any"].get_fd(), 1, 1)
        self._syscall_hooks = {tp: fn for fn, (tp, every_syscall) in _programs(self._bpf.module).items()
                               if every_syscall}
        try:
            self._start_api()
        except Exception as exc:
            self.close()
            raise SensorError(f"attaching the API call programs failed: {exc} (run `bastion doctor`)") from exc
        return self

    def calls_fd(self) -> int:
        """The `calls` ring's map fd, for a reader in another process (the
        node's recorder); without one, drain_calls reads it here."""
        from bcc import libbcc

        return int(libbcc.lib.bpf_table_fd(self.bpf.module, b"calls"))

    def _start_api(self) -> None:
        """The SK_MSG verdict on every socket that joins `api_socks`, and
        the uprobes on a private copy of each TLS library of this machine,
        which only sandboxes with API rules map (ebpf.tls_libraries)."""
        from bcc import BPF, BPFAttachType, libbcc

        bpf = self._bpf
        for i, name in enumerate(("api_http", "api_http_headers", "api_hello")):
            bpf["api_progs"][ct.c_int(i)] = ct.c_int(bpf.load_func(name, BPF.SK_MSG).fd)
        for i, name in enumerate(("tls_headers", "tls_retry", "tls_write", "tls_failed")):
            bpf["tls_progs"][ct.c_int(i)] = ct.c_int(bpf.load_func(name, BPF.KPROBE).fd)
        bpf["tls_calls"]  # BCC makes its Table now, not in the first held call's release (0.15 ms)
        wait = bpf["connect_wait"]
        for i, address in enumerate(function_range("sk_stream_wait_connect")):
            wait[ct.c_int(i)] = ct.c_uint64(address)
        msg = bpf.load_func("api_msg", BPF.SK_MSG)
        BPF.attach_func(msg, libbcc.lib.bpf_table_fd(bpf.module, b"api_socks"), BPFAttachType.SK_MSG_VERDICT)
        self.tls_libraries = private_copies()
        for library in self.tls_libraries:
            copy = str(library.copy)
            for at in library.writes:
                bpf.attach_uprobe(name=copy, **where(at), fn_name="tls_write")
            for at in library.others:
                bpf.attach_uprobe(name=copy, **where(at), fn_name="tls_enter")
            for at in library.writes + library.others:
                bpf.attach_uretprobe(name=copy, **where(at), fn_name="tls_leave")
            for end in library.ends:
                bpf.attach_uprobe(name=copy, sym=end, fn_name="tls_forget")
            for ref in library.refs:
                bpf.attach_uprobe(name=copy, sym=ref, fn_name="tls_ref")
            for setter, argument in library.callbacks:
                bpf.attach_uprobe(name=copy, sym=setter, fn_name=f"tls_callback{argument}")

    def close(self) -> None:
        with self._hooks_lock:
            if self._bpf is not None:
                for hook in list(self._attached):
                    self._detach(hook)
                for ring in (self._events, self._calls):
                    if ring is not None:
                        ring.close()
                self._events = self._calls = None
                self._counts = self._lost_any = None  # the views hold the mappings until dropped
                self._slots.clear()
                self._bpf.cleanup()
                self._bpf = None
                self._attempts.clear()
                self._syscall_hooks.clear()

    # the programs on every syscall -----------------------------------------
    def _wanted_hooks(self) -> list[tuple[bytes, bytes]]:
        """(tracepoint, function) pairs; a raw tracepoint's function is named for it."""
        return [*self._syscall_hooks.items(),
                *((f"syscalls:sys_exit_{tp}".encode(), b"sensitive_exit") for tp in sorted(self._attempts))]

    def _hook(self) -> None:
        """Attach every per-syscall program not attached yet (about 2 ms in
        all); call with the lock held. The descriptors are the sensor's, not
        BCC's, which keys them by tracepoint and so holds one per tracepoint."""
        bpf = self.bpf
        for tp, fn in self._wanted_hooks():
            if (tp, fn) in self._attached:
                continue
            if fn.startswith(_RAW_TRACEPOINT):
                bpf.attach_raw_tracepoint(tp=tp, fn_name=fn)
                self._attached[(tp, fn)] = bpf.raw_tracepoint_fds.pop(tp)
            else:
                bpf.attach_tracepoint(tp=tp, fn_name=fn)
                self._attached[(tp, fn)] = bpf.tracepoint_fds.pop(tp)

    def _detach(self, hook: tuple[bytes, bytes]) -> None:
        from bcc import lib

        fd = self._attached.pop(hook)
        if hook[1].startswith(_RAW_TRACEPOINT):
            os.close(fd)
        else:
            lib.bpf_close_perf_event_fd(fd)

    def _unhook_when_idle(self, since: float) -> None:
        """Once nothing has been watched for IDLE_S, detach the per-syscall
        programs one by one. Each detach waits for the kernel's RCU grace
        period (about 35 ms), so it runs in the background, yields to a new
        watch, and waits out a pause between sandboxes run one after another."""
        time.sleep(IDLE_S)
        while True:
            with self._hooks_lock:
                if self._bpf is None or self._tags or self._idle_since != since or not self._attached:
                    return
                self._detach(next(iter(self._attached)))

    def syscall_hooks_attached(self) -> int:
        """How many of the per-syscall programs are attached now."""
        with self._hooks_lock:
            return len(self._attached)

    def __enter__(self) -> Sensor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bpf(self) -> Any:
        if self._bpf is None:
            raise SensorError("the sensor is not started")
        return self._bpf

    # watching ------------------------------------------------------------
    def watch(self, cgroup_id: int, tag: str, detect_novel: bool = False,
              sensitive: Iterable[int] = (), sequences: bool = False) -> None:
        """Start watching a cgroup: from now on its tasks' syscalls are seen.
        Attempts of the `sensitive` syscall numbers are reported as events;
        with `sequences`, every syscall id, in batches per thread."""
        with self._hooks_lock:
            slot = self._slots.get(cgroup_id)
            if slot is None:
                free = set(range(WATCH_SLOTS)) - set(self._slots.values())
                if not free:
                    raise SensorError(f"{WATCH_SLOTS} cgroups are watched already: no room to watch another")
                slot = self._slots[cgroup_id] = min(free)
            self._hook()
            self._tags[cgroup_id] = tag
        self._next_tag += 1
        stats = self.bpf["stats"]
        stats[stats.Key(cgroup_id)] = stats.Leaf()
        self._counts[slot] = 0
        flags = (WATCH_DETECT_NOVEL if detect_novel else 0) | (WATCH_SEQUENCE if sequences else 0)
        info = WatchInfo(self._next_tag & 0xFFFFFFFF, flags, slot=slot)
        for nr in sensitive:
            if not 0 <= nr < 64 * len(info.sensitive):
                raise SensorError(f"syscall number {nr} is outside the sensitive bitmap")
            info.sensitive[nr // 64] |= 1 << (nr % 64)
        self._store_watch(cgroup_id, info)

    def is_watched(self, cgroup_id: int) -> bool:
        return ct.c_uint64(cgroup_id) in self.bpf["watched"]

    def set_flag(self, cgroup_id: int, flag: int, on: bool) -> None:
        info = self._watch_info(cgroup_id)
        info.flags = (info.flags | flag) if on else (info.flags & ~flag)
        self._store_watch(cgroup_id, info)

    def count_novel(self, cgroup_id: int, window: int, frame: int, quarantine_at: int = 0) -> None:
        """Count each thread's novel n-grams over its last `window` syscalls
        and its last `frame`, sent with each novel n-gram; with
        `quarantine_at`, the kernel quarantines the cgroup at the first
        novel n-gram whose counts give in_window * frame + in_frame * window
        above it. Set before the cgroup's first task runs."""
        if not 1 <= frame <= window <= NOVELTY_WINDOW_MAX:
            raise SensorError(f"novel n-grams are counted over 1 <= frame <= window <= {NOVELTY_WINDOW_MAX} "
                              f"syscalls, not frame {frame} and window {window}")
        if not 0 <= quarantine_at < 2**32:
            raise SensorError(f"quarantine_at {quarantine_at} does not fit the kernel's 32 bits")
        info = self._watch_info(cgroup_id)
        info.novelty.window, info.novelty.frame, info.novelty.quarantine_at = window, frame, quarantine_at
        self._store_watch(cgroup_id, info)

    def _watch_info(self, cgroup_id: int) -> WatchInfo:
        try:
            return self.bpf["watched"][ct.c_uint64(cgroup_id)]
        except KeyError:
            raise SensorError(f"cgroup {cgroup_id} is not watched") from None

    def _store_watch(self, cgroup_id: int, info: WatchInfo) -> None:
        """The cgroup's watch_info, and its slot's copy of what the
        every-syscall program reads there instead."""
        self.bpf["slots"][ct.c_uint32(info.slot)] = SlotInfo(cgroup_id, info.flags,
                                                             novelty=Novelty.from_buffer_copy(info.novelty))
        self.bpf["watched"][ct.c_uint64(cgroup_id)] = info

    def unwatch(self, cgroup_id: int) -> CgroupStats:
        """Stop watching a cgroup; returns its final stats and frees its maps."""
        final = self.stats(cgroup_id)
        key = ct.c_uint64(cgroup_id)
        for name in ("watched", "stats", "tls_callbacks"):
            table = self.bpf[name]
            if key in table:
                del table[key]
        slot = self._slots.get(cgroup_id)
        if slot is not None:
            self.bpf["slots"][ct.c_uint32(slot)] = SlotInfo()
        self.clear_egress(cgroup_id)
        self._decode_errors.pop(cgroup_id, None)
        with self._hooks_lock:
            self._tags.pop(cgroup_id, None)
            self._slots.pop(cgroup_id, None)  # zeroed when next taken
            idle = not self._tags
            if idle:
                self._idle_since = time.monotonic()
        if idle:
            threading.Thread(target=self._unhook_when_idle, args=(self._idle_since,), name="sensor-unhook",
                             daemon=True).start()
        return final

    # reading -------------------------------------------------------------
    def _decode(self, raw: list[bytes]) -> list[Event]:
        batch = []
        for record in raw:
            try:
                batch.append(decode(record, self.ngram_n, self._tags))
            except ValueError:
                cgroup = cgroup_of(record)
                self._decode_errors[cgroup] = self._decode_errors.get(cgroup, 0) + 1
        return batch

    def wait(self, timeout_ms: int) -> bool:
        """Wait up to timeout_ms for a record sent with a wakeup. True if one
        came: it and everything else `events` held are then pending for
        drain. Allowed API calls' records, sent without a wakeup to `calls`,
        wait there."""
        return self._ring(self._events).wait(timeout_ms)

    def poll(self, timeout_ms: int = 100) -> list[Event]:
        """Wait up to timeout_ms for events and return everything pending."""
        self.wait(timeout_ms)
        return self.drain()

    def fetch(self, limit: int | None = None) -> int:
        """Copy records out of `events`, without waiting or decoding them:
        everything, or until `limit` are pending. Returns how many are
        pending for drain."""
        return self._ring(self._events).fetch(limit)

    @staticmethod
    def _ring(ring: Ring | None) -> Ring:
        if ring is None:
            raise SensorError("the sensor is not started")
        return ring

    def drain(self, limit: int | None = None, calls: bool = True) -> list[Event]:
        """What the ring buffers hold now, without waiting, after any records
        fetched before: everything, or about `limit` records, the rest left
        for the next call. Allowed API calls' records come after the rest;
        with calls=False they are left for drain_calls."""
        events = self._ring(self._events).take(limit)
        if calls and (limit is None or len(events) < limit):
            return self._decode(events) + self.drain_calls(None if limit is None else limit - len(events))
        return self._decode(events)

    def drain_calls(self, limit: int | None = None) -> list[Event]:
        """Only the records of API calls the kernel allowed, which ask user
        space for nothing but their log: everything, or about `limit`."""
        return self._decode(self._ring(self._calls).take(limit))

    def calls_backlog(self) -> int:
        """Bytes of allowed API calls' records that no reader has taken yet."""
        return self._ring(self._calls).backlog()

    def stats(self, cgroup_id: int) -> CgroupStats:
        table = self.bpf["stats"]
        try:
            per_cpu: Iterable[CgStats] = table[table.Key(cgroup_id)]
        except KeyError:
            return CgroupStats()
        sums = {f: sum(getattr(s, f) for s in per_cpu) for f, _ in CgStats._fields_}
        return CgroupStats(syscalls=sum(self.syscall_counts(cgroup_id).values()), **sums)

    def losses(self) -> int:
        """Events any cgroup lost and records that could not be decoded, since
        the sensor started: it moves whenever a cgroup's losses do, and is
        read from a mapping, with no syscall."""
        return int(self._lost_any[0, 0]) + sum(self._decode_errors.values())

    def decode_errors(self, cgroup_id: int) -> int:
        """Records of the cgroup that could not be decoded, plus those whose
        cgroup could not be read (they may have been any cgroup's)."""
        return self._decode_errors.get(cgroup_id, 0) + self._decode_errors.get(0, 0)

    # sensitive syscalls --------------------------------------------------
    def report_attempts(self, names: Iterable[str]) -> list[str]:
        """Report attempts of these syscalls (for cgroups whose bitmap has
        them) from their sys_exit tracepoints. Returns the names this kernel
        has no tracepoint for: the caller must trap those instead."""
        missing = []
        for name in names:
            tp = _TRACEPOINT_NAMES.get(name, name)
            if tp in self._attempts:
                continue
            if not (TRACEFS_SYSCALLS / f"sys_exit_{tp}").is_dir():
                missing.append(name)
                continue
            with self._hooks_lock:
                self._attempts.add(tp)
                if self._tags:  # else attached with the others at the next watch
                    self._hook()
        return missing

    # egress --------------------------------------------------------------
    def _egress_programs(self) -> list[tuple[Any, int]]:
        from bcc import BPF

        return [
            (self.bpf.load_func(name, BPF.CGROUP_SOCK_ADDR, attach_type=attach), attach)
            for name, attach in EGRESS_PROGRAMS.items()
        ]

    def attach_egress(self, cgroup_fd: int) -> None:
        """Decide the cgroup's connects and UDP sends in the kernel from now on,
        what its TCP sockets send to API destinations, and that none of its
        packets leave once it is quarantined. Removing the cgroup releases
        the attachments."""
        from bcc import BPF

        ops = self.bpf.load_func("api_sockops", BPF.SOCK_OPS)
        packets = self.bpf.load_func("egress_packet", BPF.CGROUP_SKB)
        for fn, attach in [*self._egress_programs(), (ops, BPF_CGROUP_SOCK_OPS),
                           (packets, BPF_CGROUP_INET_EGRESS)]:
            try:
                BPF.attach_func(fn, cgroup_fd, attach)
            except Exception as exc:  # an older kernel lacks the unix hooks: no sandbox without them
                raise SensorError(f"attaching {fn.name.decode()} to a sandbox cgroup failed: {exc}") from exc

    def set_egress(self, cgroup_id: int, rules: Iterable[EgressRule]) -> None:
        """Replace the cgroup's allowlist. Longest prefix wins in the trie, so
        callers merge the ports of covering networks into each rule."""
        self.clear_egress(cgroup_id)
        table = self.bpf["egress_rules"]
        for rule in rules:
            key = table.Key()
            net = rule.network
            addr = net.network_address
            if isinstance(addr, ipaddress.IPv4Address):
                addr = _ipv4_mapped(addr)
                key.prefixlen = 64 + 96 + net.prefixlen
            else:
                key.prefixlen = 64 + net.prefixlen
            key.cgroup[:] = list(cgroup_id.to_bytes(8, "little"))
            key.addr[:] = list(addr.packed)
            leaf = table.Leaf()
            for proto, ports, name in ((PROTO_TCP, rule.tcp, "tcp"), (PROTO_UDP, rule.udp, "udp")):
                if ports is None:
                    continue
                if len(ports) > 8:
                    raise SensorError(f"egress rule {rule.network}: at most 8 {name} ports, got {len(ports)}")
                getattr(leaf, f"{name}_ports")[: len(ports)] = list(ports)
                setattr(leaf, f"n{name}", len(ports))
                leaf.protos |= proto
            table[key] = leaf

    def set_api(self, cgroup_id: int, dests: Iterable[KernelApiDest]) -> None:
        """The cgroup's destinations with API rules; on every other one a
        connected socket keeps the IP:port meaning."""
        peers, hosts, rules = self.bpf["api_peers"], self.bpf["api_hosts"], self.bpf["api_dests"]
        reached: dict[tuple[bytes, int], int] = {}  # each peer's destinations, a bit per id
        for dest in dests:
            for addr, port in dest.peers:
                packed = (addr if addr.version == 6 else _ipv4_mapped(addr)).packed
                reached[packed, port] = reached.get((packed, port), 0) | 1 << dest.id
            for port in dest.ports:
                key = hosts.Key()
                key.cgroup_id, key.host, key.port = cgroup_id, host_hash(dest.host), port
                hosts[key] = ct.c_uint32(dest.id)
            key = rules.Key()
            key.cgroup_id, key.id = cgroup_id, dest.id
            leaf = rules.Leaf()
            leaf.host, leaf.id, leaf.nrules = host_hash(dest.host), dest.id, len(dest.rules)
            for slot, rule in zip(leaf.rules, dest.rules):
                slot.methods, slot.max_body, slot.tail = rule.methods, rule.max_body, int(rule.tail)
                slot.nsegs = len(rule.segments)
                slot.segs[: len(rule.segments)] = list(rule.segments)
            rules[key] = leaf
        for (packed, port), bits in reached.items():
            key = peers.Key()
            key.cgroup_id, key.port = cgroup_id, port
            key.addr[:] = list(packed)
            peers[key] = ct.c_uint32(bits)

    def learn_endpoints(self, cgroup_id: int, dest_id: int, endpoints: Mapping[int, int]) -> None:
        """The destination's calls were learned: only these endpoint hashes
        pass in the kernel, each up to its budget of calls in this run (0:
        none); an allowed call to any other is held."""
        learned = self.bpf["api_learned"]
        key = learned.Key()
        key.cgroup_id, key.id = cgroup_id, dest_id
        for endpoint, budget in endpoints.items():
            self.allow_endpoint(cgroup_id, dest_id, endpoint, budget)
        learned[key] = ct.c_uint8(1)

    def allow_endpoint(self, cgroup_id: int, dest_id: int, endpoint: int, budget: int = 0) -> None:
        """Calls to the endpoint pass in the kernel; past `budget` of them in
        this run (0: no budget), each still passes, and the guard hears of it."""
        known, key = self._by_endpoint("api_known", cgroup_id, dest_id, endpoint)
        known[key] = ct.c_uint32(budget)

    def calls_made(self, cgroup_id: int, dest_id: int, endpoint: int) -> int:
        """The calls to a budgeted endpoint in this run so far, the kernel's count."""
        made, key = self._by_endpoint("api_made", cgroup_id, dest_id, endpoint)
        try:
            return int(made[key].value)
        except KeyError:
            return 0

    def _by_endpoint(self, name: str, cgroup_id: int, dest_id: int, endpoint: int) -> tuple[Any, Any]:
        """A map keyed by endpoint (api_known, api_made), and this endpoint's key in it."""
        table = self.bpf[name]
        key = table.Key()
        key.cgroup_id, key.dest, key.endpoint = cgroup_id, dest_id, endpoint
        return table, key

    def release_thread(self, tid: int) -> bool:
        """Let a thread held in a TLS write send again (its process is still
        stopped: the caller continues it). False if it holds nothing."""
        calls = self.bpf["tls_calls"]
        key = calls.Key(tid)
        try:
            call = calls[key]
        except KeyError:
            return False
        if not call.held:
            return False
        call.held = 0
        calls[key] = call
        return True

    def clear_egress(self, cgroup_id: int) -> None:
        table = self.bpf["egress_rules"]
        mine = cgroup_id.to_bytes(8, "little")
        _delete(table, [k for k in table.keys() if bytes(k.cgroup) == mine])
        for name in ("api_peers", "api_hosts", "api_dests", "api_learned", "api_known", "api_made", "unix_allow"):
            table = self.bpf[name]
            _delete(table, [k for k in table.keys() if k.cgroup_id == cgroup_id])

    def set_unix_sockets(self, cgroup_id: int, allowed: Iterable[str], quiet: Iterable[str] = ()) -> None:
        """The unix socket paths the cgroup may connect or send to; `quiet`
        ones are refused without an event. Every other one is refused."""
        table = self.bpf["unix_allow"]
        for paths, verdict in ((quiet, UNIX_QUIET), (allowed, UNIX_ALLOW)):
            for path in paths:
                raw = path.encode()
                if not raw or len(raw) >= UNIX_PATH_LEN:
                    raise SensorError(f"unix socket path {path!r} is empty or too long for the kernel map")
                key = table.Key()
                key.cgroup_id = cgroup_id
                key.path = raw
                table[key] = ct.c_uint8(verdict)

    def quarantine(self, cgroup_id: int, on: bool = True) -> None:
        """Deny all egress of the cgroup from this instant (or lift that)."""
        self.set_flag(cgroup_id, WATCH_QUARANTINE, on)

    # syscall counts and n-grams ---------------------------------------------
    def syscall_counts(self, cgroup_id: int) -> dict[int, int]:
        """How often each syscall number occurred in a watched cgroup since
        its watch began (-1: any number from NR_COUNTED - 1 up); read from
        the mapped array, with no syscall."""
        slot = self._slots.get(cgroup_id)
        if slot is None:
            return {}
        row = self._counts[slot].copy()  # one read: numpy's nonzero() fails if cells change under it
        return {(nr if nr < NR_COUNTED - 1 else -1): int(row[nr]) for nr in row.nonzero()[0]}

    def load_known(self, grams: Iterable[tuple[int, ...]]) -> int:
        """Replace the `known` n-gram set; returns how many were loaded."""
        known = self.bpf["known"]
        known.clear()
        wanted = [g for g in grams if len(g) == self.ngram_n]
        if wanted:
            key_arr = (known.Key * len(wanted))()
            for key, gram in zip(key_arr, wanted):
                key.seq[: len(gram)] = gram
            val_arr = (known.Leaf * len(wanted))(*([1] * len(wanted)))
            known.items_update_batch(key_arr, val_arr)
        return len(wanted)


def _delete(table: Any, keys: list[Any]) -> None:
    """Delete these keys of a map. A walk of a map starts over when the key
    it stands on goes (another sandbox clearing its own at the same time),
    so it may have listed a key twice."""
    for key in keys:
        try:
            del table[key]
        except KeyError:
            pass


def _ipv4_mapped(addr: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    """::ffff:a.b.c.d, the form IPv4 takes in the kernel maps that hold both families."""
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + addr.packed)


def require_root() -> None:
    if os.geteuid() != 0:
        raise SensorError("the sensor needs root (CAP_BPF and CAP_PERFMON)")
