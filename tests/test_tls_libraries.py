"""The TLS libraries the sensor probes: their private copies, kept only
where no one else can write, and where in a library the probes go: on the
internal function a public wrapper calls, where the kernel emulates its
first instruction (a push), and on the public functions otherwise, checked
on small libraries of the two shapes, built here."""

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


def _library(tmp_path: Path, first: str, last: str) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    lib = tmp_path / "lib"
    lib.mkdir()
    source = tmp_path / "ssl.s"
    source.write_text(SHAPE.format(first=first, last=last))
    subprocess.run([gcc, "-shared", "-nostdlib", "-o", str(lib / "libssl.so.3"), str(source)], check=True)
    return lib


def test_a_wrapper_of_an_internal_function_that_begins_with_a_push_is_probed_there(tmp_path: Path) -> None:
    pytest.importorskip("bcc")
    lib = _library(tmp_path, "push %r14", "pop %r14")
    (library,) = private_copies(tmp_path / "tls", [str(lib)])
    (inner,) = library.writes  # SSL_write and SSL_write_ex: one probe, on the function both call
    assert isinstance(inner, int)
    out = subprocess.run(["nm", str(library.copy)], capture_output=True, text=True, check=True).stdout
    assert int(next(line.split()[0] for line in out.splitlines() if line.endswith(" internal_write")), 16) == inner


def test_a_wrapper_of_another_shape_leaves_the_probes_on_the_public_functions(tmp_path: Path) -> None:
    pytest.importorskip("bcc")
    lib = _library(tmp_path, "mov %rdi,%rax", "nop")  # no push first: the kernel would single-step it anyway
    (library,) = private_copies(tmp_path / "tls", [str(lib)])
    assert library.writes == ("SSL_write", "SSL_write_ex")


def test_the_probed_copies_are_kept_only_where_no_one_else_can_write(tmp_path: Path) -> None:
    """Every sandboxed process runs the copies' code."""
    copies = tmp_path / "tls"
    made = private_copies(copies)
    assert made and all(lib.copy.parent == copies and lib.copy.read_bytes() == lib.path.read_bytes() for lib in made)
    assert private_copies(copies) == made  # named by content: kept, not made again
    copies.chmod(0o777)
    with pytest.raises(InputError, match=f"{copies}: writable by others"):
        private_copies(copies)
