"""A small records and ledger API on loopback, over plain HTTP and over HTTPS:
the approved endpoint of the demo's agents and of the attack corpus's tools.
It records every request it received, so a check can see exactly what got
out of a sandbox."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import ssl
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.certs import make_certs

# The endpoints it serves, as a policy names them (see api_rules).
_RECORD = re.compile(r"/records/(\d+)")
_ACCOUNT = re.compile(r"/ledger/accounts/([A-Z0-9-]+)")


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    body: bytes


@dataclass
class LocalApi:
    port: int  # plain HTTP
    tls_port: int  # HTTPS, with a certificate of its own CA
    ca_file: Path
    received: list[Received] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.received]


def api_rules() -> list[dict[str, object]]:
    """The endpoints a tool needs, as a policy's `api` list."""
    return [
        {"methods": ["GET"], "path": "/"},
        {"methods": ["GET"], "path": "/formulary"},
        {"methods": ["GET"], "path": "/records/{id}"},
        {"methods": ["GET"], "path": "/records/{id}/allergies"},
        {"methods": ["POST"], "path": "/notes", "max_body_bytes": 4096},
        {"methods": ["GET"], "path": "/ledger/accounts/{account}"},
    ]


def _reply(method: str, path: str, body: bytes, default: bytes) -> tuple[int, bytes]:
    route = path.split("?", 1)[0]
    if method == "GET" and (m := _RECORD.fullmatch(route)):
        return 200, json.dumps({"id": int(m[1]), "name": "Test Patient", "allergies": ["penicillin"]}).encode()
    if method == "GET" and (m := _ACCOUNT.fullmatch(route)):
        return 200, json.dumps({"account": m[1], "balance": "1204.50"}).encode()
    if method == "POST" and route == "/notes":
        return 201, json.dumps({"stored": len(body)}).encode()
    if method == "POST" and route == "/patients/export":
        return 200, b'{"exported": true}'  # what an injected agent wants: the kernel must stop it first
    if method == "GET":
        return 200, default
    return 404, b'{"error": "no such endpoint"}'


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # a tool killed mid-request resets its connection: expected here, no traceback for it
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve(body: bytes = b"hello from the allowed API", certs_dir: Path | None = None) -> Iterator[LocalApi]:
    """Serve on two loopback ports; GET of any other path answers `body`."""
    with contextlib.ExitStack() as stack:
        directory = certs_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bastion-api-")))
        directory.chmod(0o755)  # sandboxed tools read the CA file
        certs = make_certs(directory)
        certs.ca_cert.chmod(0o644)
        api = LocalApi(0, 0, certs.ca_cert)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(min(length, 1 << 20))
                api.received.append(Received(self.command, self.path, data))
                status, out = _reply(self.command, self.path, data, body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs.server_cert, certs.server_key)
        servers = []
        for tls in (False, True):
            server = _Server(("127.0.0.1", 0), Handler)
            if tls:
                server.socket = context.wrap_socket(server.socket, server_side=True)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
        api.port, api.tls_port = (s.server_address[1] for s in servers)
        try:
            yield api
        finally:
            for server in servers:
                server.shutdown()
                server.server_close()
