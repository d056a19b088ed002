"""The alert TUI driven by textual's pilot against a real service on
loopback; screenshots are saved to test-artifacts/tui.svg and
tui-api-calls.svg."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import Input, Static, TabbedContent

from guard import audit
from console.alert_store import AlertStore
from console.api_feed import ApiCallFeed
from common.verdicts import Severity
from console.client import NodeClient
from console.service import Service
from console.tui import AlertsApp
from console.widgets import AlertTable, ApiCallTable
from guard.alerts import ApiCallRecord
from tests.test_service import HOOKS, TOKEN, make_alert, publish

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[AlertStore, NodeClient]]:
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    store = AlertStore(log)
    exfil = make_alert(0, Severity.CRITICAL, sandbox="sbx-claims", agent="finance")
    exfil = exfil.model_copy(update={"rule": "connection to unauthorized destination 192.0.2.1:443",
                                     "tool_call": "http_get", "tool_args": '{"url": "https://192.0.2.1/"}'})
    publish(store, [make_alert(1, Severity.LOW), exfil, make_alert(2, Severity.HIGH, agent="clinic")])
    svc = Service(store, HOOKS, TOKEN, "127.0.0.1:0")
    client = NodeClient(f"127.0.0.1:{svc.port}", TOKEN)
    yield store, client
    client.close()
    svc.stop(0)
    log.close()


async def _until(pilot, condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError("the TUI did not get there in time")


def _text(app: AlertsApp, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


def test_review_alerts_in_the_tui(node: tuple[AlertStore, NodeClient]) -> None:
    store, client = node

    async def drive() -> None:
        app = AlertsApp({"node-a": client}, analyst="kim")
        async with app.run_test(size=(160, 40)) as pilot:
            table = app.query_one(AlertTable)
            await _until(pilot, lambda: table.row_count == 3)
            # most severe first
            assert [app.alerts[i].message.severity for i in app.shown] == ["critical", "high", "low"]
            await _until(pilot, lambda: "events/s" in _text(app, "#status"))
            assert "profiles: clinic" in _text(app, "#status")

            # a live alert arrives on the open stream
            publish(store, [make_alert(9, Severity.MEDIUM, agent="clinic")])
            await _until(pilot, lambda: table.row_count == 4)

            # filters: agent, then text
            app.query_one("#agent", Input).value = "finance"
            await _until(pilot, lambda: table.row_count == 1)
            app.query_one("#agent", Input).value = ""
            app.query_one("#text", Input).value = "unauthorized"
            await _until(pilot, lambda: table.row_count == 1)

            table.focus()
            table.move_cursor(row=0)
            await pilot.pause()
            detail = _text(app, "#detail-body")
            assert "http_get" in detail and '{"url": "https://192.0.2.1/"}' in detail and "1.00 ms" in detail

            await pilot.press("p")
            await _until(pilot, lambda: "proposed allowlist change" in _text(app, "#detail-body"))
            assert "host: 192.0.2.1" in _text(app, "#detail-body")
            ARTIFACTS.mkdir(exist_ok=True)
            app.save_screenshot("tui.svg", str(ARTIFACTS))

            await pilot.press("r")
            await _until(pilot, lambda: app.alerts[app.shown[0]].message.status == "resolved")

    asyncio.run(drive())
    assert (ARTIFACTS / "tui.svg").read_text().startswith("<svg")
    acks = audit.read(store.log.path, "acknowledge")
    assert acks and acks[0]["analyst"] == "kim" and "host: 192.0.2.1" in acks[0]["comment"]
    assert [r["analyst"] for r in audit.read(store.log.path, "resolve")] == ["kim"]


def test_the_demo_shows_alerts_live_while_the_batch_runs(tmp_path: Path) -> None:
    import threading

    from rich.console import Console

    from bastion.live_tui import watch_live
    from console.proto import bastion_pb2 as pb

    log = audit.AuditLog(tmp_path / "audit.jsonl")
    store = AlertStore(log)
    shown = threading.Event()
    seen: dict[str, object] = {}

    def batch(progress) -> None:  # type: ignore[no-untyped-def]
        publish(store, [make_alert(1, Severity.CRITICAL, agent="clinic")])
        progress("task 1 of 2: stopped")
        assert shown.wait(10), "the TUI never showed the alert"  # the batch is still running now
        publish(store, [make_alert(2, Severity.HIGH, agent="finance")])

    async def analyst(pilot) -> None:  # type: ignore[no-untyped-def]
        app = pilot.app
        await _until(pilot, lambda: app.query_one(AlertTable).row_count == 1)
        seen["first"] = app.query_one(AlertTable).get_row_at(0)
        shown.set()
        await _until(pilot, lambda: app.query_one(AlertTable).row_count == 2)
        await _until(pilot, lambda: "2 alerts" in _text(app, "#status"))
        await pilot.press("q")

    watch_live(Console(quiet=True), store, lambda: pb.Status(alerts_total=len(store)), batch, auto_pilot=analyst)
    assert "finding 1" in str(seen["first"])
    log.close()


def test_the_demo_view_hands_back_what_the_batch_raised(tmp_path: Path) -> None:
    from rich.console import Console

    from bastion.live_tui import watch_live
    from console.proto import bastion_pb2 as pb

    log = audit.AuditLog(tmp_path / "audit.jsonl")

    def batch(progress) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("sandbox start failed")

    async def analyst(pilot) -> None:  # type: ignore[no-untyped-def]
        await pilot.pause(0.2)
        await pilot.press("q")

    with pytest.raises(RuntimeError, match="sandbox start failed"):
        watch_live(Console(quiet=True), AlertStore(log), lambda: pb.Status(), batch, auto_pilot=analyst)
    log.close()


def test_one_view_of_several_nodes(tmp_path: Path) -> None:
    """Two nodes' streams in one table, each alert with its node; a review
    goes to the node that raised the alert, and only there."""
    stores, services, clients = {}, [], {}
    for name in ("host1", "host2"):
        log = audit.AuditLog(tmp_path / f"{name}.jsonl")
        stores[name] = AlertStore(log)
        svc = Service(stores[name], HOOKS, TOKEN, "127.0.0.1:0")
        services.append(svc)
        clients[name] = NodeClient(f"127.0.0.1:{svc.port}", TOKEN)
    publish(stores["host1"], [make_alert(1, Severity.HIGH, sandbox="sbx-one")])
    publish(stores["host2"], [make_alert(2, Severity.CRITICAL, sandbox="sbx-two")])

    async def drive() -> None:
        app = AlertsApp(clients, analyst="kim")
        async with app.run_test(size=(160, 40)) as pilot:
            table = app.query_one(AlertTable)
            await _until(pilot, lambda: table.row_count == 2)
            assert [app.alerts[k].node for k in app.shown] == ["host2", "host1"]
            assert "host2" in str(table.get_row_at(0)) and "sbx-two" in str(table.get_row_at(0))
            await _until(pilot, lambda: "host1" in _text(app, "#status") and "host2" in _text(app, "#status"))
            publish(stores["host1"], [make_alert(3, Severity.CRITICAL, sandbox="sbx-three")])  # live, after resume
            await _until(pilot, lambda: table.row_count == 3)
            table.focus()
            table.move_cursor(row=[app.alerts[k].message.sandbox for k in app.shown].index("sbx-one"))
            await pilot.pause()
            await pilot.press("a")
            await _until(pilot, lambda: any(e.message.status == "acknowledged" for e in app.alerts.values()))

    asyncio.run(drive())
    for svc in services:
        svc.stop(0)
    assert [a["analyst"] for a in audit.read(stores["host1"].log.path, "acknowledge")] == ["kim"]
    assert audit.read(stores["host2"].log.path, "acknowledge") == []
    for client in clients.values():
        client.close()
    for store in stores.values():
        store.log.close()


def _call(seq: int, method: str, path: str, allowed: bool, held: bool = False) -> ApiCallRecord:
    return ApiCallRecord(seq=seq, sandbox=f"sbx-{seq}", agent="clinic", tool_call="http_request", method=method,
                         host="records.example.org", path=path, port=443, tls=True, allowed=allowed, held=held,
                         reason="allowed by an API rule" if allowed else "no API rule of the destination allows it")


def test_the_api_calls_tab_follows_the_nodes_calls(tmp_path: Path) -> None:
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    feed = ApiCallFeed()
    feed.add(_call(4, "GET", "/records/17", allowed=True))
    feed.add(_call(5, "POST", "/patients/export", allowed=False))
    svc = Service(AlertStore(log), HOOKS, TOKEN, "127.0.0.1:0", api_calls=feed)
    client = NodeClient(f"127.0.0.1:{svc.port}", TOKEN)

    async def drive() -> None:
        app = AlertsApp({"node-a": client}, analyst="kim")
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.press("t")
            assert app.query_one(TabbedContent).active == "api-calls"
            calls = app.query_one(ApiCallTable)
            await _until(pilot, lambda: calls.row_count == 2)
            newest = " ".join(map(str, calls.get_row_at(0)))
            assert "stopped" in newest and "POST https://records.example.org/patients/export" in newest
            feed.add(_call(9, "GET", "/records/18/notes", allowed=True, held=True))  # live
            await _until(pilot, lambda: calls.row_count == 3)
            assert "released" in " ".join(map(str, calls.get_row_at(0)))
            app.save_screenshot("tui-api-calls.svg", str(ARTIFACTS))
            await pilot.press("t")
            assert app.query_one(TabbedContent).active == "alerts"

    asyncio.run(drive())
    client.close()
    svc.stop(0)
    log.close()
