"""The TLS libraries the sensor probes: their private copies, kept only
where no one else can write, and where in a library the probes go: on the
internal function a public wrapper calls, or on the public function another
one only jumps to, where the kernel emulates its first instruction (a
push), and on the public functions otherwise; and libssl's own records
let out from the functions that send them, found through its method
table, not from its reads: checked on small libraries of each shape,
built here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from common.files import InputError
from ebpf.tls_libraries import private_copies

# SSL_write_ex is `sub $8,%rsp; call W`, and SSL_write calls W too.
SHAPE = """
    .text
    .globl SSL_write_ex
    .type SSL_write_ex,@function
SSL_write_ex:
    sub $8,%rsp
    call internal_write
    add $8,%rsp
    ret
    .globl SSL_write
    .type SSL_write,@function
SSL_write:
    sub $0x18,%rsp
    mov %rdx,%rdx
    call internal_write
    add $0x18,%rsp
    ret
internal_write:
    {first}
    mov $1,%eax
    {last}
    ret
"""


# gnutls_record_send zeroes two arguments and jumps through the PLT.
FORWARD = """
    .text
    .globl gnutls_record_send
    .type gnutls_record_send,@function
gnutls_record_send:
    xor %r8d,%r8d
    xor %ecx,%ecx
    jmp {target}@PLT
    .globl gnutls_record_send2
    .type gnutls_record_send2,@function
gnutls_record_send2:
    push %rbx
    mov $1,%eax
    pop %rbx
    ret
    .globl gnutls_record_send_range
    .type gnutls_record_send_range,@function
gnutls_record_send_range:
    push %rbx
    pop %rbx
    ret
"""


# TLS_method returns OpenSSL 3.0's SSL_METHOD: ssl_accept and ssl_connect
# pick a side and jump to the state machine, ssl_dispatch_alert sends alerts.
METHOD_TABLE = """
    .text
    .globl TLS_method
    .type TLS_method,@function
TLS_method:
    lea table(%rip),%rax
    ret
accept:
    mov $1,%esi
    jmp {accept_to}
connect:
    xor %esi,%esi
    jmp machine
    .skip 256
machine:
    push %r15
    pop %r15
    ret
other_machine:
    push %r15
    pop %r15
    ret
dispatch_alert:
    push %r12
    mov $0x15,%esi
    pop %r12
    ret
    .section .data.rel.ro
table:
    .skip 40
    .quad accept, connect
    .skip 64
    .quad dispatch_alert
    .skip 104
"""


def _library(tmp_path: Path, name: str, source: str) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    lib = tmp_path / "lib"
    lib.mkdir()
    (tmp_path / "lib.s").write_text(source)
    subprocess.run([gcc, "-shared", "-nostdlib", "-o", str(lib / name), str(tmp_path / "lib.s")], check=True)
    return lib


def test_a_wrapper_of_an_internal_function_that_begins_with_a_push_is_probed_there(tmp_path: Path) -> None:
    pytest.importorskip("bcc")
    lib = _library(tmp_path, "libssl.so.3", SHAPE.format(first="push %r14", last="pop %r14"))
    (library,) = private_copies(tmp_path / "tls", [str(lib)])
    (inner,) = library.writes  # SSL_write and SSL_write_ex: one probe, on the function both call
    assert isinstance(inner, int)
    assert _symbols(library.copy)["internal_write"] == inner


def test_a_wrapper_of_another_shape_leaves_the_probes_on_the_public_functions(tmp_path: Path) -> None:
    pytest.importorskip("bcc")
    # no push first: the kernel would single-step it anyway
    lib = _library(tmp_path, "libssl.so.3", SHAPE.format(first="mov %rdi,%rax", last="nop"))
    (library,) = private_copies(tmp_path / "tls", [str(lib)])
    assert library.writes == ("SSL_write", "SSL_write_ex")


@pytest.mark.parametrize(("target", "probed"), [("gnutls_record_send2", "gnutls_record_send2"),
                                               ("gnutls_record_send_range", "gnutls_record_send")])
def test_a_function_that_only_jumps_to_another_is_probed_there_if_its_slot_names_that_one(
        tmp_path: Path, target: str, probed: str) -> None:
    """Calls to gnutls_record_send reach gnutls_record_send2, whose probe
    then reads them too; a jump that lands elsewhere leaves the probe where
    it was."""
    pytest.importorskip("bcc")
    lib = _library(tmp_path, "libgnutls.so.30", FORWARD.format(target=target))
    (library,) = private_copies(tmp_path / "tls", [str(lib)])
    assert library.writes == (probed,)


def _symbols(library: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(library)], capture_output=True, text=True, check=True).stdout
    return {line.split()[2]: int(line.split()[0], 16) for line in out.splitlines() if len(line.split()) == 3}


def test_libssls_own_records_are_let_out_from_its_state_machine_and_alerts_not_its_reads(tmp_path: Path) -> None:
    """The probes that let a library's own records out trap only when it
    has a handshake or an alert to send, not on every read."""
    pytest.importorskip("bcc")
    lib = _library(tmp_path, "libssl.so.3", METHOD_TABLE.format(accept_to="machine"))
    (library,) = private_copies(tmp_path / "tls", [str(lib)])
    symbols = _symbols(library.copy)
    assert library.others == (symbols["machine"], symbols["dispatch_alert"])


def test_a_method_table_of_another_shape_leaves_the_reads_probed(tmp_path: Path) -> None:
    pytest.importorskip("bcc")
    # accept and connect that go to different places: not OpenSSL 3.0's state machine
    lib = _library(tmp_path, "libssl.so.3", METHOD_TABLE.format(accept_to="other_machine"))
    (library,) = private_copies(tmp_path / "tls", [str(lib)])
    assert "SSL_read" in library.others and "SSL_do_handshake" in library.others


def test_the_probed_copies_are_kept_only_where_no_one_else_can_write(tmp_path: Path) -> None:
    """Every sandboxed process runs the copies' code."""
    copies = tmp_path / "tls"
    made = private_copies(copies)
    assert made and all(lib.copy.parent == copies and lib.copy.read_bytes() == lib.path.read_bytes() for lib in made)
    assert private_copies(copies) == made  # named by content: kept, not made again
    copies.chmod(0o777)
    with pytest.raises(InputError, match=f"{copies}: writable by others"):
        private_copies(copies)
