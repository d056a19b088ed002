"""Reading and writing files that Bastion does not trust.

Any path Bastion is given may name a FIFO (an open that never returns), a
device (/dev/zero never ends), a huge file or a document nested deep enough
to exhaust the parser's stack; any output path may name a device, a
directory or a symlink. Every such case here is one `InputError` whose
message starts with the path. Imports nothing of Bastion's own, so every
package may use it."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

MAX_DEPTH = 32  # far deeper than any policy, config or profile header


class InputError(ValueError):
    """A file that cannot be used; the message names it and says why."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path | str, limit: int) -> IO[bytes]:
    """Open a regular file of at most `limit` bytes for reading, without
    blocking on a FIFO and without reading a device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise InputError(f"{path}: {st.st_size} bytes is more than the {limit} allowed")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def lines(path: Path | str, limit: int, line_limit: int) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a regular file of at most `limit` bytes, each
    line at most `line_limit` bytes, read as they come."""
    with open_regular(path, limit) as fh:
        for lineno, line in enumerate(iter(lambda: fh.readline(line_limit + 1), b""), 1):
            if len(line) > line_limit:
                raise InputError(f"{path}:{lineno}: a line longer than {line_limit} bytes")
            yield lineno, line


def read_bytes(path: Path | str, limit: int) -> bytes:
    """The whole of a regular file of at most `limit` bytes."""
    with open_regular(path, limit) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:  # it grew while being read
        raise InputError(f"{path}: more than the {limit} bytes allowed")
    return data


def read_text(path: Path | str, limit: int) -> str:
    try:
        return read_bytes(path, limit).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def check_depth(data: Any, source: str, limit: int = MAX_DEPTH) -> Any:
    """Refuse data nested deeper than `limit` (walked without recursion)."""
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                raise InputError(f"{source}: nested more than {limit} levels deep")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return data


def parse_yaml(text: str, source: str) -> Any:
    """YAML (safe_load: plain data only), with nesting bounded."""
    import yaml  # here: the command line's fast paths read no YAML

    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise InputError(f"{source}: nested more than {MAX_DEPTH} levels deep") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark else ""
        raise InputError(f"{source}:{line} not valid YAML") from None
    return check_depth(data, source)


def parse_json(text: str | bytes, source: str) -> Any:
    try:
        data = json.loads(text)
    except RecursionError:
        raise InputError(f"{source}: nested more than {MAX_DEPTH} levels deep") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: not valid JSON ({exc})") from None
    return check_depth(data, source)


def check_output(path: Path | str) -> Path:
    """An output path: absent, or a regular file (never a device, directory,
    FIFO or symlink, whose target an atomic rename would not write)."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: is {_kind(st.st_mode)}; outputs go only to regular files or new paths")
    return path


def write_bytes(path: Path | str, data: bytes) -> None:
    """Write a whole output atomically: a temporary file beside it, renamed
    over it only if it is absent or a regular file."""
    path = check_output(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.")
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        check_output(path)  # still not replaced by something else
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_output(path: Path | str, mode: str = "w") -> IO[Any]:
    """Open an output for streaming writes (JSONL, CSV): a regular file or a
    new one, never following a symlink, never blocking on a FIFO."""
    path = check_output(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    flags |= os.O_APPEND if mode.startswith("a") else os.O_TRUNC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InputError(f"{path}: is {_kind(st.st_mode)}; outputs go only to regular files or new paths")
    os.set_blocking(fd, True)
    return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""}))


def ours_alone(path: Path) -> bool:
    """Owned by this process's user and writable by no one else."""
    st = path.lstat()
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def cached(cache: Path, name: str, build: Callable[[str], None], mode: int) -> Path:
    """cache/name, built on first use by build(a temporary path beside it)
    and renamed into place with `mode`, so that concurrent users never see
    half a file. What runs as root must not come from a place others can
    write: the cache and the file must be ours alone."""
    path = cache / name
    if path.exists() and ours_alone(path) and ours_alone(cache):
        return path
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not ours_alone(cache):
        raise InputError(f"{cache}: writable by others or not ours; nothing is kept there")
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".build-")
    os.close(fd)
    try:
        build(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
