"""The audit log: append-only JSONL in which every record carries the hash of
the one before, fsynced before the append returns (or, for an append that
must not wait on the disk, before anyone is shown it), so a record someone
has seen is on disk and any edit, removal or reordering shows.

A hash chain alone proves nothing against someone who can write the file:
they can cut its end, or recompute the whole chain. So the node signs the
chain's head with its own ed25519 key every `checkpoint_every` records and
on shutdown (a `checkpoint` record, itself chained), and can send each
signed head out of the host. Verified with the node's public key, a
rewritten or re-chained log fails at its first checkpoint; a log whose end
no checkpoint covers is reported as possibly truncated; a head sent out that
the log no longer holds proves truncation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.files import InputError, lines, open_regular, parse_json

GENESIS = "0" * 64
CHECKPOINT = "checkpoint"
# Another log's head, vouched for by this one: `log` (a file beside it),
# `covers` and `head` as a checkpoint's (guard.recorder's calls log)
ANCHOR = "anchor"
MAX_LOG_BYTES = 4 << 30
MAX_RECORD_BYTES = 1 << 20
_FIELDS = {"seq", "prev", "hash", "kind", "body"}


class AuditError(ValueError):
    """A broken chain; the message names the first bad record."""


# One encoder for every record: json.dumps with arguments builds a new one
# per call, half the cost of encoding a small record.
_COMPACT = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _compact(value: Any) -> str:
    return _COMPACT.encode(value)


def _digest(prev: str, seq: int, kind: str, body: dict[str, Any]) -> str:
    return _digest_of(prev, seq, _compact(kind), _compact(body))


def _digest_of(prev: str, seq: int, kind_json: str, body_json: str) -> str:
    """The hash of the record's canonical form, which is exactly
    _compact({"prev", "seq", "kind", "body"}) built around a body
    serialized once, for the writer's line as well."""
    canonical = f'{{"body":{body_json},"kind":{kind_json},"prev":{_compact(prev)},"seq":{seq}}}'
    return hashlib.sha256(canonical.encode()).hexdigest()


# A head with this `covers` is the node's signed word that the log it names
# was set aside (found broken) and a new one started at the same path.
SET_ASIDE = -1


def _set_aside(kept: str) -> str:
    return f"set aside as {kept}"


def _signed_bytes(covers: int, head: str, key: str) -> bytes:
    return _compact({"covers": covers, "head": head, "key": key}).encode()


class Signer:
    """The node's ed25519 key, kept in a root-only file that no sandbox can
    read (sandboxes run as another user, under Landlock, in /usr and /etc)."""

    def __init__(self, private: Any) -> None:
        from cryptography.hazmat.primitives import serialization

        self._private = private
        self.public_key = private.public_key()
        self.public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.key_id = key_id(private.public_key())

    @classmethod
    def from_pem(cls, pem: bytes) -> Signer:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = serialization.load_pem_private_key(pem, None)
        if not isinstance(key, Ed25519PrivateKey):
            raise AuditError("not an ed25519 private key")
        return cls(key)

    def private_pem(self) -> bytes:
        """The private key, for a process of the node's own that signs a log of its own."""
        from cryptography.hazmat.primitives import serialization

        return bytes(self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))

    @classmethod
    def load_or_create(cls, path: Path) -> Signer:
        """The key at `path` (made 0600 on first use) and its public half
        written beside it as PATH.pub."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if path.exists():
            try:
                signer = cls.from_pem(_read_key(path))
            except (AuditError, TypeError, ValueError):
                raise AuditError(f"{path}: not an ed25519 private key") from None
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            signer = cls(Ed25519PrivateKey.generate())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(signer.private_pem())
        pub = public_key_path(path)
        if not pub.exists() or _read_key(pub) != signer.public_pem:
            pub.write_bytes(signer.public_pem)
        return signer

    def checkpoint(self, covers: int, head: str) -> dict[str, Any]:
        sig = self._private.sign(_signed_bytes(covers, head, self.key_id)).hex()
        return {"covers": covers, "head": head, "key": self.key_id, "sig": sig}

    def set_aside(self, log: Path, kept: Path) -> dict[str, Any]:
        """The signed head that ends `log`'s heads: those sent before it
        belong to `kept`, those after it to the new log at `log`."""
        return {**self.checkpoint(SET_ASIDE, _set_aside(kept.name)), "log": str(log)}


def public_key_path(private: Path) -> Path:
    return private.with_name(private.name + ".pub")


def _read_key(path: Path) -> bytes:
    try:
        return open_regular(path, 64 << 10).read()
    except InputError as exc:
        raise AuditError(str(exc)) from None


def key_id(public: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: Path | str) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(_read_key(Path(path)))
    except ValueError:
        raise AuditError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{path}: not an ed25519 public key")
    return key


def records(path: Path) -> Iterator[dict[str, Any]]:
    """Every record of a log, parsed, with its line number as `_line`."""
    for lineno, line in _lines(path):
        try:
            record = parse_json(line, f"{path}:{lineno}")
        except InputError:
            raise AuditError(f"{path}:{lineno}: record is not valid JSON") from None
        if not isinstance(record, dict) or not _FIELDS <= record.keys() or not isinstance(record["body"], dict):
            raise AuditError(f"{path}:{lineno}: record lacks seq, prev, hash, kind or body")
        record["_line"] = lineno
        yield record


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        yield from lines(path, MAX_LOG_BYTES, MAX_RECORD_BYTES)
    except InputError as exc:
        raise AuditError(str(exc)) from None


def _open_for_append(path: Path) -> int:
    """The log's fd for appending: a regular file, never through a symlink,
    never blocking on a FIFO."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise AuditError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AuditError(f"{path}: is not a regular file")
    os.set_blocking(fd, True)
    return fd


class AuditLog:
    """Appends records to a hash-chained log; safe to share between threads.
    With a signer, a signed checkpoint follows every `checkpoint_every`
    records and closes the log; `heads` sinks receive each checkpoint."""

    def __init__(self, path: Path | str, signer: Signer | None = None, checkpoint_every: int = 64,
                 heads: Iterable[Callable[[dict[str, Any]], None]] = ()) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.heads = list(heads)
        self._seq, self._last, self._unsigned = 0, GENESIS, 0
        if self.path.exists():
            for record in records(self.path):
                self._seq, self._last = record["seq"] + 1, record["hash"]
                self._unsigned = 0 if record["kind"] == CHECKPOINT else self._unsigned + 1
        self._fd = _open_for_append(self.path)
        self._lock = threading.Lock()  # the chain
        self._io = threading.Lock()  # the file
        self._unwritten: list[str] = []  # lines appended, not yet written
        self._unsent: list[dict[str, Any]] = []  # heads among them

    def head(self) -> tuple[int, str]:
        """The newest record's sequence number and hash (-1 and GENESIS in an empty log)."""
        with self._lock:
            return self._seq - 1, self._last

    def append(self, kind: str, body: dict[str, Any]) -> int:
        """Write one record durably; returns its sequence number."""
        return self.append_many(kind, [body])[0]

    def _line(self, kind: str, body: dict[str, Any]) -> str:
        body_json, kind_json = _compact(body), _compact(kind)
        digest = _digest_of(self._last, self._seq, kind_json, body_json)
        line = f'{{"seq":{self._seq},"prev":"{self._last}","kind":{kind_json},"body":{body_json},"hash":"{digest}"}}\n'
        self._seq, self._last = self._seq + 1, digest
        self._unsigned = 0 if kind == CHECKPOINT else self._unsigned + 1
        return line

    def append_many(self, kind: str, bodies: list[dict[str, Any]], durable: bool = True) -> list[int]:
        """Write records in order with one fsync; returns their sequence
        numbers. With durable=False they only take their place in the chain:
        `sync` writes them, so the caller never waits on the disk."""
        with self._lock:
            seqs = []
            for body in bodies:
                seqs.append(self._seq)
                self._unwritten.append(self._line(kind, body))
            if self.signer is not None and self._unsigned >= self.checkpoint_every:
                self._sign()
        if durable:
            self.sync()
        return seqs

    def _sign(self) -> None:
        """A checkpoint that signs the chain so far; its head is sent out
        once it is on disk."""
        assert self.signer is not None
        head = self.signer.checkpoint(self._seq - 1, self._last)
        self._unwritten.append(self._line(CHECKPOINT, head))
        self._unsent.append(head)

    def sync(self) -> None:
        """Write and fsync every record appended, then send out the heads
        among them. One write or fsync at a time: a write into a file that
        is being fsynced can wait for the disk, and appending must not."""
        with self._io:
            with self._lock:
                lines, self._unwritten = self._unwritten, []
                heads, self._unsent = self._unsent, []
            if not lines:
                return  # a sync before this one wrote and fsynced them
            os.write(self._fd, "".join(lines).encode())
            os.fsync(self._fd)
        for head in heads:
            self._send(head)

    def checkpoint(self) -> None:
        """Sign the current head now, if any record is not yet covered, and
        sync."""
        with self._lock:
            if self.signer is not None and self._unsigned:
                self._sign()
        self.sync()

    def _send(self, head: dict[str, Any]) -> None:
        for sink in self.heads:
            sink({**head, "log": str(self.path)})

    def close(self) -> None:
        self.checkpoint()
        os.close(self._fd)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Verified:
    """What verification established."""

    records: int
    checkpoints: int
    covered: int  # records that a valid signed checkpoint covers (0 without a key)
    signed: bool  # checked against a public key
    anchored: int = 0  # records of the logs this one anchors, each checked too

    @property
    def uncovered(self) -> int:
        return self.records - self.covered


def verify(path: Path | str, public_key: Any = None, heads: Iterable[dict[str, Any]] = ()) -> Verified:
    """Check the whole chain, and with the node's public key every signed
    checkpoint and every head sent out of the host; then every log that an
    `anchor` record names, the same way, against the heads anchored. Raises
    AuditError naming the first record edited, removed, out of order or
    re-chained, or the first head the log no longer holds."""
    path = Path(path)
    if not path.exists():
        raise AuditError(f"{path}: no such audit log")
    verified, hashes, anchors = _chain(path, public_key)
    _holds(path, hashes, _heads_of(path, heads), "whose signed head was sent out of the host")
    anchored = 0
    for name, held in anchors.items():
        log = path.with_name(name)
        if not log.exists():
            raise AuditError(f"{log}: no such audit log, though {path.name} anchors it: it was removed")
        inner, inner_hashes, _ = _chain(log, public_key)
        _holds(log, inner_hashes, held, f"whose head {path.name} anchors")
        anchored += inner.records
    return dataclasses.replace(verified, anchored=anchored)


def _chain(path: Path, public_key: Any) -> tuple[Verified, dict[int, str], dict[str, list[dict[str, Any]]]]:
    """One log's chain and checkpoints; its hashes by seq, and the heads its
    anchors hold for each other log."""
    from cryptography.exceptions import InvalidSignature

    kid = key_id(public_key) if public_key is not None else None
    expected_seq, prev, checkpoints, covered = 0, GENESIS, 0, 0
    hashes: dict[int, str] = {}
    anchors: dict[str, list[dict[str, Any]]] = {}
    for record in records(path):
        where = f"{path}:{record['_line']}: record seq {record['seq']}"
        if record["seq"] != expected_seq:
            raise AuditError(f"{where}: expected seq {expected_seq}: a record was removed or reordered")
        if record["prev"] != prev:
            raise AuditError(f"{where}: does not follow the record before it (removed or reordered)")
        if _digest(prev, record["seq"], record["kind"], record["body"]) != record["hash"]:
            raise AuditError(f"{where}: its content does not match its hash (edited)")
        if record["kind"] == CHECKPOINT and public_key is not None:
            body = record["body"]
            try:
                if body.get("key") != kid or body.get("covers") != expected_seq - 1 or body.get("head") != prev:
                    raise InvalidSignature
                public_key.verify(bytes.fromhex(body["sig"]), _signed_bytes(body["covers"], body["head"], kid))
            except (InvalidSignature, KeyError, TypeError, ValueError):
                raise AuditError(f"{where}: checkpoint is not signed by this node's key over the chain before "
                                 f"it: the log was rewritten or re-chained at or before this record") from None
            checkpoints += 1
            covered = expected_seq + 1
        if record["kind"] == ANCHOR:
            anchors.setdefault(_anchored_name(record["body"], where), []).append(record["body"])
        hashes[expected_seq] = record["hash"]
        expected_seq, prev = expected_seq + 1, record["hash"]
    return Verified(expected_seq, checkpoints, covered, public_key is not None), hashes, anchors


def _anchored_name(body: dict[str, Any], where: str) -> str:
    name = body.get("log")
    if not isinstance(name, str) or not name or name.startswith(".") or Path(name).name != name:
        raise AuditError(f"{where}: anchors {name!r}, not a log beside this one")
    return name


def _holds(path: Path, hashes: dict[int, str], heads: list[dict[str, Any]], whose: str) -> None:
    for head in heads:
        seq, digest = head.get("covers"), head.get("head")
        if hashes.get(seq) != digest:  # type: ignore[arg-type]
            state = "is missing" if not isinstance(seq, int) or seq >= len(hashes) else "differs"
            raise AuditError(f"{path}: record seq {seq}, {whose}, {state} in the log: it was truncated or replaced")


def _heads_of(log: Path, heads: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The heads sent while `log` was the live log: those after the last
    set-aside, or for a set-aside log those before the head naming it."""
    live: list[dict[str, Any]] = []
    for head in heads:
        if head.get("covers") != SET_ASIDE:
            live.append(head)
        elif head.get("head") == _set_aside(log.name):
            return live
        else:
            live = []
    return live


def read_heads(path: Path | str, public_key: Any) -> list[dict[str, Any]]:
    """Signed heads from a file of JSON lines (a head sink's output), each
    checked against the key; heads of other logs are kept too."""
    from cryptography.exceptions import InvalidSignature

    out = []
    kid = key_id(public_key)
    for lineno, line in _lines(Path(path)):
        head = parse_json(line, f"{path}:{lineno}") if line.strip() else None
        if head is None:
            continue
        try:
            if not isinstance(head, dict) or head.get("key") != kid:
                raise InvalidSignature
            public_key.verify(bytes.fromhex(head["sig"]), _signed_bytes(head["covers"], head["head"], kid))
        except (InvalidSignature, KeyError, TypeError, ValueError):
            raise AuditError(f"{path}:{lineno}: not a head signed by this node's key") from None
        out.append(head)
    return out


class HeadFile:
    """A head sink: each signed head appended as a JSON line to a file,
    meant to live elsewhere (another host's mount, a log shipper's input)."""

    def __init__(self, path: Path) -> None:
        from common.files import open_output

        try:
            self._fh = open_output(path, "a")
        except InputError as exc:
            raise AuditError(str(exc)) from None
        self._lock = threading.Lock()

    def __call__(self, head: dict[str, Any]) -> None:
        with self._lock:
            self._fh.write(json.dumps(head, separators=(",", ":")) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def read(path: Path | str, kind: str | None = None, anchored: bool = False) -> list[dict[str, Any]]:
    """The bodies of the records, optionally of one kind; with anchored,
    then those of every log it anchors."""
    path = Path(path)
    bodies, names = [], []
    for r in records(path):
        if kind is None or r["kind"] == kind:
            bodies.append(r["body"])
        if anchored and r["kind"] == ANCHOR:
            name = _anchored_name(r["body"], f"{path}:{r['_line']}")
            if name not in names:
                names.append(name)
    for name in names:
        bodies += read(path.with_name(name), kind)
    return bodies
