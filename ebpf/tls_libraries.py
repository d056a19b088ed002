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
bound to that name, the probe goes there.

So does how often a probe traps. A TLS library sends records of its own,
not a request (handshake messages, a renegotiation's or a key update's
answer, alerts), and the functions that send them are probed so that
those records pass. Probing the reads for that made every response trap
as well: in bench/api_calls.py, 2-4 µs of an allowed TLS call's round
trip at p50, and about half of its p99 tail on shared CPUs. OpenSSL 3.0
writes and flushes every handshake message inside its state machine,
which a read enters only when a handshake message has arrived, and sends
every alert from ssl_dispatch_alert; where both are found through the
method table that TLS_method returns, they replace the reads, handshake
and shutdown. GnuTLS's reads are still probed."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.files import cached

# A process that brings its own TLS code is not read: its records on an API
# destination are dropped. Functions that may send records of the library's
# own (handshake, reads, shutdown) are marked so that their records pass.
TLS_LIBRARIES = {
    "libssl.so.3": (("SSL_write", "SSL_write_ex"),
                    ("SSL_do_handshake", "SSL_connect", "SSL_read", "SSL_read_ex", "SSL_peek",
                     "SSL_peek_ex", "SSL_shutdown")),
    "libgnutls.so.30": (("gnutls_record_send",), ("gnutls_handshake", "gnutls_record_recv", "gnutls_bye")),
}
# Functions that end an object's connection (free it, or clear it for
# another): what the kernel kept for the object goes with it, since a new
# object may take its address. And the function that takes a reference to
# an object, after which SSL_free may free nothing.
ENDS = {"libssl.so.3": ("SSL_free", "SSL_clear"), "libgnutls.so.30": ("gnutls_deinit",)}
REFS = {"libssl.so.3": ("SSL_up_ref",)}
# A wrapper whose body is one call to an internal function, and the other
# public functions that call it: probed at that function instead (above).
WRAPPERS = {"libssl.so.3": {"SSL_write_ex": ("SSL_write",), "SSL_read_ex": ("SSL_read",), "SSL_peek_ex": ("SSL_peek",)}}
# A public function that only zeroes arguments and jumps to another public
# one through the PLT: probed at the other (above).
FORWARDS = {"libgnutls.so.30": {"gnutls_record_send": "gnutls_record_send2"}}
# Functions that give the library a function of the program's to call from
# inside its calls, with the argument that holds it: message, info, verify,
# certificate, PSK, record padding, security and CT callbacks, and any other
# by its control code (Python's `_msg_callback` and `sni_callback` come
# through those). What such a callback sends is sent inside the library's
# call, where it would pass for the library's own records, so a sandbox
# whose program gives one has its TLS records on API sockets stopped. Not
# here: the session callback, which curl gives to keep a ticket; the key log
# callback, which Python and curl give where SSLKEYLOGFILE is set and whose
# code is theirs; custom extensions, whose callbacks come in later arguments;
# and the setters only a server calls. Python's `ssl` gives none of these by
# default, and curl none unless asked to trace (-v). A setter a build lacks
# (no SRP, say) is left out.
CALLBACK_SETTERS = {"libssl.so.3": {
    "SSL_CTX_callback_ctrl": 3, "SSL_callback_ctrl": 3,
    "SSL_CTX_set_info_callback": 2, "SSL_set_info_callback": 2,
    "SSL_CTX_set_verify": 3, "SSL_set_verify": 3, "SSL_CTX_set_cert_verify_callback": 2,
    "SSL_CTX_set_cert_cb": 2, "SSL_set_cert_cb": 2, "SSL_CTX_set_client_cert_cb": 2,
    "SSL_CTX_set_psk_client_callback": 2, "SSL_set_psk_client_callback": 2,
    "SSL_CTX_set_psk_use_session_callback": 2, "SSL_set_psk_use_session_callback": 2,
    "SSL_CTX_set_record_padding_callback": 2, "SSL_set_record_padding_callback": 2,
    "SSL_CTX_set_security_callback": 2, "SSL_set_security_callback": 2,
    "SSL_CTX_set_ct_validation_callback": 2, "SSL_set_ct_validation_callback": 2,
    "SSL_CTX_set_next_proto_select_cb": 2, "SSL_CTX_set_srp_client_pwd_callback": 2,
}}
# A library that sends each record of its own (handshake, alert) from one
# of two internal functions, found through the method table this public
# function returns: where found, those two are its `others`, so a read
# that sends nothing traps nothing (above).
METHOD_TABLES = {"libssl.so.3": "TLS_method"}
# Where OpenSSL 3.0's struct ssl_method_st keeps ssl_accept, ssl_connect
# and ssl_dispatch_alert.
METHOD_ACCEPT, METHOD_CONNECT, METHOD_DISPATCH_ALERT = 40, 48, 120
SSL3_RT_ALERT = b"\x15\0\0\0"  # as an imm32
Probe = str | int  # a symbol, or the address of an internal function
ENDBR64 = b"\xf3\x0f\x1e\xfa"
R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT, R_X86_64_RELATIVE = 6, 7, 8

LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib")
COPIES = Path("/var/cache/bastion/tls")


@dataclass(frozen=True)
class TlsLibrary:
    path: Path  # the host's file (symlinks resolved), where a sandbox finds the copy
    copy: Path  # what the uprobes are attached to
    writes: tuple[Probe, ...]  # functions that write a request
    others: tuple[Probe, ...]  # functions that send records of their own
    callbacks: tuple[tuple[str, int], ...] = ()  # callback setters, with the argument that holds the callback
    ends: tuple[str, ...] = ()  # functions that end an object's connection
    refs: tuple[str, ...] = ()  # functions that take a reference to an object


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
        inner, writers = _internal(copy, image, name)
        libraries.append(TlsLibrary(original, copy, _through(writes, inner), writers or _through(others, inner),
                                    _callback_setters(copy, name), ENDS[name], REFS.get(name, ())))
    return libraries


def _callback_setters(path: Path, name: str) -> tuple[tuple[str, int], ...]:
    """The library's callback setters (above) that it exports, with the
    argument that holds the callback."""
    from bcc import BPF

    setters = CALLBACK_SETTERS.get(name, {})
    if not setters:
        return ()
    found = {symbol.decode() for symbol, _ in
             BPF.get_user_functions_and_addresses(str(path), f"^({'|'.join(setters)})$")}
    return tuple((setter, argument) for setter, argument in setters.items() if setter in found)


def _through(funcs: Sequence[str], inner: dict[str, Probe]) -> tuple[Probe, ...]:
    """The probes for these public functions: each wrapped or forwarding
    one by where its calls go, once."""
    return tuple(dict.fromkeys(inner.get(f, f) for f in funcs))


class _Code:
    """An ELF64 file's loaded bytes, read by address."""

    def __init__(self, image: bytes) -> None:
        self.image = image
        self.segments = _load_segments(image)

    def at(self, vaddr: int, n: int) -> bytes:
        """Up to n bytes from vaddr, within its segment."""
        for start, size, offset in self.segments:
            if start <= vaddr < start + size:
                return self.image[offset + vaddr - start:offset + min(vaddr - start + n, size)]
        return b""

    def body(self, vaddr: int, n: int) -> tuple[int, bytes]:
        """A function's address and first n bytes after any endbr64."""
        skip = len(ENDBR64) if self.at(vaddr, len(ENDBR64)) == ENDBR64 else 0
        return vaddr + skip, self.at(vaddr + skip, n)

    def calls(self, vaddr: int, span: int) -> set[int]:
        body = self.at(vaddr, span)
        return {vaddr + i + 5 + _rel32(body, i + 1) for i in range(len(body) - 4) if body[i] == 0xE8}

    def pushes(self, vaddr: int) -> bool:
        """Whether the instruction at vaddr, where a probe would sit, is a push."""
        first = self.at(vaddr, 2)
        return len(first) == 2 and (0x50 <= first[0] <= 0x57 or (first[0] == 0x41 and 0x50 <= first[1] <= 0x57))


def _rel32(body: bytes, i: int) -> int:
    return int.from_bytes(body[i:i + 4], "little", signed=True)


def _internal(path: Path, image: bytes, name: str) -> tuple[dict[str, Probe], tuple[int, ...]]:
    """Where the library at path (its content: image) has the shapes above:
    each public function, wrapper, caller or forwarder, with the internal
    or public function its calls go to; and its own record writers, where
    its method table leads to them."""
    from bcc import BPF

    wrappers, forwards, method = WRAPPERS.get(name, {}), FORWARDS.get(name, {}), METHOD_TABLES.get(name)
    names = sorted({*wrappers, *(c for callers in wrappers.values() for c in callers), *forwards, *forwards.values(),
                    *([method] if method else [])})
    if not names:
        return {}, ()
    address = {symbol.decode(): int(a)
               for symbol, a in BPF.get_user_functions_and_addresses(str(path), f"^({'|'.join(names)})$")}
    code = _Code(image)
    named, relative = _relocations(image)
    found = _wrapped(code, address, wrappers) | _forwarded(code, address, forwards, named)
    writers = _record_writers(code, relative, address[method]) if method in address else ()
    return found, writers


def _wrapped(code: _Code, address: dict[str, int], wrappers: dict[str, tuple[str, ...]]) -> dict[str, Probe]:
    """Each wrapper `sub $n,%rsp; call F`, and its listed callers, where F
    begins with a push and is called near the start of each caller: at F."""
    found: dict[str, Probe] = {}
    for wrapper, callers in wrappers.items():
        head = code.at(address[wrapper], 9) if wrapper in address else b""
        if len(head) < 9 or head[:3] != b"\x48\x83\xec" or head[4] != 0xE8:
            continue
        inner = address[wrapper] + 9 + _rel32(head, 5)
        if code.pushes(inner) and all(c in address and inner in code.calls(address[c], 64) for c in callers):
            found.update(dict.fromkeys((wrapper, *callers), inner))
    return found


def _forwarded(code: _Code, address: dict[str, int], forwards: dict[str, str], slots: dict[int, str]) -> dict[str, Probe]:
    """Each forwarder whose jump lands, through the PLT, on its named target,
    which begins with a push: at the target."""
    found: dict[str, Probe] = {}
    for forward, target in forwards.items():
        stub = _jump_after_zeroing(code, address[forward]) if forward in address else None
        if stub is not None and slots.get(_plt_slot(code, stub) or 0) == target and target in address \
                and code.pushes(address[target]):
            found[forward] = target
    return found


def _record_writers(code: _Code, relative: dict[int, int], method: int) -> tuple[int, ...]:
    """OpenSSL 3.0's writers of its own records, through the SSL_METHOD that
    `method` returns: its state machine, where ssl_connect (`xor %esi,%esi;
    jmp M`) and ssl_accept (`mov $1,%esi; jmp M`) both go, which writes and
    flushes every handshake message, a renegotiation's and a key update's
    too; and ssl_dispatch_alert, which begins by loading SSL3_RT_ALERT. Both
    must begin with a push. None where anything does not read so: the
    layout or the code is another version's."""
    at, body = code.body(method, 8)
    if body[:3] != b"\x48\x8d\x05" or body[7:8] != b"\xc3":  # lea table(%rip),%rax; ret
        return ()
    table = at + 7 + _rel32(body, 3)
    connect, accept, alert = (relative.get(table + f) for f in (METHOD_CONNECT, METHOD_ACCEPT, METHOD_DISPATCH_ALERT))
    if connect is None or accept is None or alert is None:
        return ()
    machine = _jump_after_zeroing(code, connect)
    at, body = code.body(accept, 10)
    if machine is None or body[:5] != b"\xbe\x01\0\0\0" or body[5:6] != b"\xe9" or at + 10 + _rel32(body, 6) != machine:
        return ()
    _, alert_head = code.body(alert, 16)
    if code.pushes(machine) and code.pushes(alert) and b"\xbe" + SSL3_RT_ALERT in alert_head:
        return machine, alert
    return ()


def _jump_after_zeroing(code: _Code, vaddr: int) -> int | None:
    """Where a function whose body is register `xor`s and a `jmp` jumps to."""
    body, i = code.at(vaddr, 16), 0
    while True:
        rex = int(i < len(body) and 0x40 <= body[i] <= 0x4F)
        if i + rex + 2 <= len(body) and body[i + rex] == 0x31 and body[i + rex + 1] >= 0xC0:
            i += rex + 2
        else:
            break
    if i + 5 > len(body) or body[i] != 0xE9:
        return None
    return vaddr + i + 5 + _rel32(body, i + 1)


def _plt_slot(code: _Code, stub: int) -> int | None:
    """The GOT slot a PLT stub jumps through: `[endbr64] [bnd] jmp *slot(%rip)`."""
    at, body = code.body(stub, 12)
    i = int(body[:1] == b"\xf2")
    if body[i:i + 2] != b"\xff\x25" or len(body) < i + 6:
        return None
    return at + i + 6 + _rel32(body, i + 2)


def _relocations(image: bytes) -> tuple[dict[int, str], dict[int, int]]:
    """An ELF64 file's GOT slots bound to a symbol by name (JUMP_SLOT and
    GLOB_DAT relocations), and the addresses its RELATIVE relocations
    write; none where its section headers do not read."""
    try:
        shoff, = struct.unpack_from("<Q", image, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", image, 0x3A)
        # name, type, flags, addr, offset, size, link, info, addralign, entsize
        sections = [struct.unpack_from("<IIQQQQIIQQ", image, shoff + i * shentsize) for i in range(shnum)]
        named, relative = {}, {}
        for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
            if sh_type != 4 or entsize != 24:  # SHT_RELA
                continue
            symbols, symsize, strings = sections[link][4], sections[link][9], sections[sections[link][6]][4]
            for r in range(offset, offset + size, entsize):
                r_offset, r_info, addend = struct.unpack_from("<QQq", image, r)
                if r_info & 0xFFFFFFFF == R_X86_64_RELATIVE:
                    relative[r_offset] = addend
                elif r_info & 0xFFFFFFFF in (R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT):
                    name, = struct.unpack_from("<I", image, symbols + (r_info >> 32) * symsize)
                    start = strings + name
                    named[r_offset] = image[start:image.index(b"\0", start)].decode()
        return named, relative
    except (struct.error, IndexError, ValueError, UnicodeDecodeError):
        return {}, {}


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
