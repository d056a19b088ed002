"""A site's trainer: keeps the base model loaded between rounds and does the
site's local training and evaluation for its ClientApp. Flower starts a
process per message, and each would spend seconds importing torch, peft
and transformers before a second of work; the trainer imports them once.

It listens on a Unix socket in a directory only its user can enter. A
request and its reply are each a JSON header and the adapter's arrays as
safetensors bytes, both length-prefixed and bounded; nothing is unpickled.

    python -m federated.trainer SOCKET
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.models import field_error

MAX_HEADER = 64 * 1024
MAX_ARRAYS = 256 * 1024 * 1024  # far above a LoRA adapter of the agents' models
REQUEST_TIMEOUT_S = 60.0


class TrainerError(RuntimeError):
    """The trainer could not be reached or refused the request; the message says why."""


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["train", "evaluate", "names"]  # names: of the adapter's arrays, in order
    base: Path
    data: Path | None = None
    steps: int = Field(0, ge=0, le=100_000)
    lr: float = Field(0.0, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _data_for_work(self) -> Request:
        if self.op != "names" and self.data is None:
            raise ValueError(f"{self.op} needs the site's data file")
        return self


def _send(sock: socket.socket, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save

    head, body = json.dumps(header).encode(), save(arrays) if arrays else b""
    sock.sendall(struct.pack(">IQ", len(head), len(body)) + head + body)


def _exactly(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise TrainerError(f"the connection closed {left} bytes short")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from safetensors.numpy import load

    head_n, body_n = struct.unpack(">IQ", _exactly(sock, 12))
    if head_n > MAX_HEADER or body_n > MAX_ARRAYS:
        raise TrainerError(f"a frame of {head_n} + {body_n} bytes is over the trainer's bounds")
    header = json.loads(_exactly(sock, head_n))
    body = _exactly(sock, body_n)
    return header, (load(body) if body else {})


def call(path: Path, request: Request, arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One request to the trainer at `path`: its figures and arrays."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise TrainerError(f"trainer at {path}: {exc.strerror}") from None
        _send(sock, request.model_dump(mode="json"), arrays)
        header, out = receive(sock)
    if "error" in header:
        raise TrainerError(f"trainer at {path}: {header['error']}")
    return header, out


def handle(request: Request, arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The work itself, done where it is called: by the trainer, or in the
    ClientApp's own process where that lives on (Flower's simulation)."""
    from federated import task
    from federated.sites import read_site

    model, tokenizer = _loaded(request.base)
    if request.op == "names" or request.data is None:  # validated: only names comes without data
        return {"names": list(task.get_adapter(model))}, {}
    task.set_adapter(model, arrays)
    pairs = read_site(request.data)
    if request.op == "evaluate":
        return {"accuracy": task.accuracy(model, tokenizer, pairs), "examples": len(pairs)}, {}
    loss = task.train(model, tokenizer, pairs, steps=request.steps, lr=request.lr, seed=request.seed)
    return {"loss": loss, "examples": len(pairs)}, dict(task.get_adapter(model))


_models: dict[Path, tuple[Any, Any]] = {}


def _loaded(base: Path) -> tuple[Any, Any]:
    from federated import task

    if base not in _models:
        _models[base] = task.load(base)
    return _models[base]


def serve(path: Path) -> None:
    """Answer requests one at a time until the process that started it ends."""
    from federated import task  # noqa: F401  (the imports it exists to pay once)

    parent = os.getppid()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        old = os.umask(0o177)
        try:
            server.bind(str(path))
        finally:
            os.umask(old)
        server.listen()
        server.settimeout(1.0)
        print(f"trainer listening on {path}", flush=True)
        while os.getppid() == parent:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(REQUEST_TIMEOUT_S)  # a caller that stalls mid-request frees the trainer
                _answer(conn)


def _answer(conn: socket.socket) -> None:
    """One request's reply; a bad request gets a one-line error and ends nothing else."""
    try:
        header, arrays = receive(conn)
        _send(conn, *handle(Request.model_validate(header), arrays))
        return
    except ValidationError as exc:
        error = str(field_error("request", exc))
    except Exception as exc:  # noqa: BLE001  (the site's trainer outlives any one request)
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
    with contextlib.suppress(OSError):
        _send(conn, {"error": error}, {})


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
