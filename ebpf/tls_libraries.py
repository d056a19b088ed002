"""The TLS libraries whose writes the sensor reads, and the private copies
that its uprobes are attached to.

A uprobe traps every process that maps the probed file, sandboxed or not,
though the program returns at once for the rest: with the probes on the
host's libssl, an unsandboxed TLS client here paid ~6 µs a request and its
round trip ~15-20 µs (client and server both trap). So the probes go on a
copy of each library, and a sandbox whose policy has API rules mounts the
copy over the library's path (sandbox/launcher.c): only its processes map
a probed file. A copy is named by a hash of its content, so a library
upgraded on the host gets a fresh copy, probed, when the sensor next
starts.

Where a probe sits matters as much. The kernel emulates some instructions
at a probe (a push, a call) and single-steps the rest out of line: here a
uprobe and its uretprobe cost ~0.6 µs on a function that begins with a
push and ~3.8 µs on one that begins with `sub $8,%rsp`, as libssl's
SSL_read_ex and SSL_write_ex do. Their bodies are one call to libssl's
internal read or write, which SSL_read and SSL_write call too and which
begins with a push; so where the library has that shape, the probes go on
the internal function, found through the call, and otherwise on the public
ones. GnuTLS's gnutls_record_send begins with `xor`: it only zeroes two
arguments and jumps, through the PLT, to gnutls_record_send2, which begins
with a push and which a client may call itself; where the jump's slot is
bound to that name, the probe goes there."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.files import cached

# A process that brings its own TLS code is not read: its records on an API
# destination are dropped. Functions that send records of their own
# (handshake, reads, shutdown) are marked so that their records pass.
TLS_LIBRARIES = {
    "libssl.so.3": (("SSL_write", "SSL_write_ex"),
                    ("SSL_do_handshake", "SSL_connect", "SSL_read", "SSL_read_ex", "SSL_peek",
                     "SSL_peek_ex", "SSL_shutdown")),
    "libgnutls.so.30": (("gnutls_record_send",), ("gnutls_handshake", "gnutls_record_recv", "gnutls_bye")),
}
# A wrapper whose body is one call to an internal function, and the other
# public functions that call it: probed at that function instead (above).
WRAPPERS = {"libssl.so.3": {"SSL_write_ex": ("SSL_write",), "SSL_read_ex": ("SSL_read",), "SSL_peek_ex": ("SSL_peek",)}}
# A public function that only zeroes arguments and jumps to another public
# one through the PLT: probed at the other (above).
FORWARDS = {"libgnutls.so.30": {"gnutls_record_send": "gnutls_record_send2"}}
Probe = str | int  # a symbol, or the address of an internal function
ENDBR64 = b"\xf3\x0f\x1e\xfa"
R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT = 6, 7

LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib")
COPIES = Path("/var/cache/bastion/tls")


@dataclass(frozen=True)
class TlsLibrary:
    path: Path  # the host's file (symlinks resolved), where a sandbox finds the copy
    copy: Path  # what the uprobes are attached to
    writes: tuple[Probe, ...]  # functions that write a request
    others: tuple[Probe, ...]  # functions that send records of their own


def where(probe: Probe) -> dict[str, str | int]:
    """BCC's words for where a uprobe goes: a symbol, or an address."""
    return {"sym": probe} if isinstance(probe, str) else {"addr": probe}


def tls_libraries(dirs: Iterable[str] = LIBRARY_DIRS) -> dict[str, str]:
    """Each TLS library file of this machine once (/lib may be /usr/lib),
    with its name in TLS_LIBRARIES."""
    found: dict[str, str] = {}
    for directory in dirs:
        for name in TLS_LIBRARIES:
            path = Path(directory) / name
            if path.is_file():
                found.setdefault(str(path.resolve()), name)
    return found


def private_copies(copies: Path = COPIES, dirs: Iterable[str] = LIBRARY_DIRS) -> list[TlsLibrary]:
    """Each TLS library with its copy, made where missing. Sandboxed
    processes run the copy's code, so the copies are kept where only root
    can write (common.files.cached refuses anything else)."""
    libraries = []
    for path, name in tls_libraries(dirs).items():
        original = Path(path)
        image = original.read_bytes()  # once: hashed, copied and read for the probes' places alike
        digest = hashlib.sha256(image).hexdigest()[:16]
        copy = cached(copies, f"{digest}-{original.name}", lambda tmp: Path(tmp).write_bytes(image), 0o644)
        writes, others = TLS_LIBRARIES[name]
        inner = _internal(copy, image, WRAPPERS.get(name, {}), FORWARDS.get(name, {}))
        libraries.append(TlsLibrary(original, copy, _through(writes, inner), _through(others, inner)))
    return libraries


def _through(funcs: Sequence[str], inner: dict[str, Probe]) -> tuple[Probe, ...]:
    """The probes for these public functions: each wrapped or forwarding
    one by where its calls go, once."""
    return tuple(dict.fromkeys(inner.get(f, f) for f in funcs))


def _internal(path: Path, image: bytes, wrappers: dict[str, tuple[str, ...]],
              forwards: dict[str, str]) -> dict[str, Probe]:
    """Each public function, wrapper or caller, whose internal function was
    found in the library at path (its content: image): a wrapper
    `sub $n,%rsp; call F` whose F begins with a push and is called near the
    start of each listed caller. And each forwarding function whose jump
    lands, through the PLT, on its named target, which begins with a push.
    A function not so found stays probed where it is."""
    from bcc import BPF

    if not wrappers and not forwards:
        return {}
    segments = _load_segments(image)
    names = sorted({*wrappers, *(c for callers in wrappers.values() for c in callers), *forwards, *forwards.values()})
    address = {name.decode(): int(a)
               for name, a in BPF.get_user_functions_and_addresses(str(path), f"^({'|'.join(names)})$")}

    def code(vaddr: int, n: int) -> bytes:
        """Up to n bytes from vaddr, within its segment."""
        for start, size, offset in segments:
            if start <= vaddr < start + size:
                return image[offset + vaddr - start:offset + min(vaddr - start + n, size)]
        return b""

    def calls(vaddr: int, span: int) -> set[int]:
        body = code(vaddr, span)
        return {vaddr + i + 5 + int.from_bytes(body[i + 1:i + 5], "little", signed=True)
                for i in range(len(body) - 4) if body[i] == 0xE8}

    def pushes(vaddr: int) -> bool:
        first = code(vaddr, 2)
        return len(first) == 2 and (0x50 <= first[0] <= 0x57 or (first[0] == 0x41 and 0x50 <= first[1] <= 0x57))

    found: dict[str, Probe] = {}
    for wrapper, callers in wrappers.items():
        head = code(address[wrapper], 9) if wrapper in address else b""
        if len(head) < 9 or head[:3] != b"\x48\x83\xec" or head[4] != 0xE8:
            continue
        inner = address[wrapper] + 9 + int.from_bytes(head[5:9], "little", signed=True)
        if pushes(inner) and all(c in address and inner in calls(address[c], 64) for c in callers):
            found.update(dict.fromkeys((wrapper, *callers), inner))
    slots = _plt_slots(image) if forwards else {}
    for forward, target in forwards.items():
        stub = _jump_after_zeroing(code, address[forward]) if forward in address else None
        if stub is not None and slots.get(_plt_slot(code, stub) or 0) == target and target in address \
                and pushes(address[target]):
            found[forward] = target
    return found


def _jump_after_zeroing(code: Callable[[int, int], bytes], vaddr: int) -> int | None:
    """Where a function whose body is register `xor`s and a `jmp` jumps to."""
    body, i = code(vaddr, 16), 0
    while True:
        rex = int(i < len(body) and 0x40 <= body[i] <= 0x4F)
        if i + rex + 2 <= len(body) and body[i + rex] == 0x31 and body[i + rex + 1] >= 0xC0:
            i += rex + 2
        else:
            break
    if i + 5 > len(body) or body[i] != 0xE9:
        return None
    return vaddr + i + 5 + int.from_bytes(body[i + 1:i + 5], "little", signed=True)


def _plt_slot(code: Callable[[int, int], bytes], stub: int) -> int | None:
    """The GOT slot a PLT stub jumps through: `[endbr64] [bnd] jmp *slot(%rip)`."""
    body = code(stub, 16)
    i = len(ENDBR64) if body.startswith(ENDBR64) else 0
    i += body[i:i + 1] == b"\xf2"
    if body[i:i + 2] != b"\xff\x25" or len(body) < i + 6:
        return None
    return stub + i + 6 + int.from_bytes(body[i + 2:i + 6], "little", signed=True)


def _plt_slots(image: bytes) -> dict[int, str]:
    """An ELF64 file's GOT slots bound to a symbol by name (JUMP_SLOT and
    GLOB_DAT relocations); none where its section headers do not read."""
    try:
        shoff, = struct.unpack_from("<Q", image, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", image, 0x3A)
        # name, type, flags, addr, offset, size, link, info, addralign, entsize
        sections = [struct.unpack_from("<IIQQQQIIQQ", image, shoff + i * shentsize) for i in range(shnum)]
        slots = {}
        for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
            if sh_type != 4 or entsize != 24:  # SHT_RELA
                continue
            symbols, symsize, strings = sections[link][4], sections[link][9], sections[sections[link][6]][4]
            for r in range(offset, offset + size, entsize):
                r_offset, r_info = struct.unpack_from("<QQ", image, r)
                if r_info & 0xFFFFFFFF in (R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT):
                    name, = struct.unpack_from("<I", image, symbols + (r_info >> 32) * symsize)
                    start = strings + name
                    slots[r_offset] = image[start:image.index(b"\0", start)].decode()
        return slots
    except (struct.error, IndexError, ValueError, UnicodeDecodeError):
        return {}


def _load_segments(image: bytes) -> list[tuple[int, int, int]]:
    """An ELF64 file's loaded segments: (address, size in the file, offset)."""
    if image[:5] != b"\x7fELF\x02":
        return []
    phoff, = struct.unpack_from("<Q", image, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", image, 0x36)
    segments = []
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", image, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            segments.append((p_vaddr, p_filesz, p_offset))
    return segments
