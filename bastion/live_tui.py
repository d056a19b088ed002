"""`bastion demo --tui`: the agents' batch runs in a worker thread while the
alerts TUI holds the terminal, so the analyst watches the alerts arrive and
reviews them as they would on a node; q hands the terminal back to the demo
(it waits for the batch if it is still running)."""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from rich.console import Console

from console.alert_store import AlertStore
from console.api_feed import ApiCallFeed
from console.client import NodeClient
from console.proto import bastion_pb2 as pb
from console.service import NodeHooks, RequestError, Service
from console.tui import AlertsApp

Batch = Callable[[Callable[[str], None]], None]  # runs the work, reporting progress in a line


def _read_only(*_: object) -> str:
    raise RequestError("the demo's node serves alerts only")


def watch_live(console: Console, store: AlertStore, status: Callable[[], pb.Status], batch: Batch,
               auto_pilot: Callable[[Any], Coroutine[Any, Any, None]] | None = None,
               api_calls: ApiCallFeed | None = None) -> None:
    """Serve the store (and the API calls) on loopback, run the batch in a
    thread and the TUI in the foreground; re-raises what the batch raised.
    auto_pilot drives the TUI headless (tests)."""
    token = secrets.token_urlsafe(16)
    service = Service(store, NodeHooks(status=status, update_policy=_read_only, run_sandbox=_read_only),
                      token, "127.0.0.1:0", api_calls=api_calls)
    app = AlertsApp({"this host": NodeClient(f"127.0.0.1:{service.port}", token)}, "demo")
    failure: list[BaseException] = []

    def tell(line: str) -> None:
        with contextlib.suppress(RuntimeError):  # the analyst may have left the TUI already
            app.call_from_thread(app.notify, line)

    def work() -> None:
        try:
            batch(tell)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread below
            failure.append(exc)
        tell("the batch is done: press q for the summary")

    worker = threading.Thread(target=work, name="demo-batch")
    try:
        worker.start()
        app.run(headless=auto_pilot is not None, auto_pilot=auto_pilot)
        if worker.is_alive():
            console.print("waiting for the agents' batch to finish...")
        worker.join()
    finally:
        service.stop()
    if failure:
        raise failure[0]
