"""The malicious-behaviour corpus: small programs run inside a sandbox."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from sandbox.policy import Network, Policy, load_policy

HERE = Path(__file__).parent
BENIGN = HERE.parent / "benign"
POLICY = HERE / "policy.yaml"


def command(script: Path, args: Sequence[str] = ()) -> list[str]:
    """Run a corpus script inside a sandbox by its source, not its path: the
    sandbox may not read the repository."""
    source = script.read_text()
    if script.suffix == ".sh":
        return ["/bin/sh", "-c", source]
    return ["/usr/bin/python3", "-c", source, *args]


class _Hello(http.server.BaseHTTPRequestHandler):
    paths: list[str] = []  # every path requested, so tests can see what got out

    def do_GET(self) -> None:  # noqa: N802
        self.paths.append(self.path)
        body = b"hello from the allowed API"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def api_requests() -> list[str]:
    """The paths the allowed API has been asked for."""
    return list(_Hello.paths)


@contextlib.contextmanager
def allowed_api() -> Iterator[int]:
    """The one local API the corpus policy allows; yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def corpus_policy(api_port: int) -> Policy:
    """The corpus policy with the allowed API's real port."""
    base = load_policy(POLICY)
    assert isinstance(base.network, Network)
    allow = [base.network.allow[0].model_copy(update={"ports": [api_port]})]
    return base.model_copy(update={"network": base.network.model_copy(update={"allow": allow})})
