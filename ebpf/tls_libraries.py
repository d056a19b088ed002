"""The TLS libraries whose writes the sensor reads, and the private copies
that its uprobes are attached to.

A uprobe traps every process that maps the probed file, sandboxed or not,
though the program returns at once for the rest: with the probes on the
host's libssl, an unsandboxed TLS client here paid ~6 µs a request and its
round trip ~15-20 µs (client and server both trap). So the probes go on a
copy of each library, and a sandbox whose policy has API rules mounts the
copy over the library's path (sandbox/launcher.c): only its processes map
a probed file. A
copy is named by a hash of its content, so a library upgraded on the host
gets a fresh copy, probed, when the sensor next starts."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable
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
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib")
COPIES = Path("/var/cache/bastion/tls")


@dataclass(frozen=True)
class TlsLibrary:
    path: Path  # the host's file (symlinks resolved), where a sandbox finds the copy
    copy: Path  # what the uprobes are attached to
    writes: tuple[str, ...]  # functions that write a request
    others: tuple[str, ...]  # functions that send records of their own


def tls_libraries(dirs: Iterable[str] = LIBRARY_DIRS) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Each TLS library file of this machine once (/lib may be /usr/lib)."""
    found: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for directory in dirs:
        for name, funcs in TLS_LIBRARIES.items():
            path = Path(directory) / name
            if path.is_file():
                found.setdefault(str(path.resolve()), funcs)
    return found


def private_copies(copies: Path = COPIES, dirs: Iterable[str] = LIBRARY_DIRS) -> list[TlsLibrary]:
    """Each TLS library with its copy, made where missing. Sandboxed
    processes run the copy's code, so the copies are kept where only root
    can write (common.files.cached refuses anything else)."""
    libraries = []
    for path, (writes, others) in tls_libraries(dirs).items():
        original = Path(path)
        digest = hashlib.sha256(original.read_bytes()).hexdigest()[:16]
        copy = cached(copies, f"{digest}-{original.name}", lambda tmp: shutil.copyfile(original, tmp), 0o644)
        libraries.append(TlsLibrary(original, copy, writes, others))
    return libraries
