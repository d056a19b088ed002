"""The alert TUI driven by textual's pilot against a real service on
loopback; a screenshot is saved to test-artifacts/tui.svg."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Static

from guard import audit
from guard.alert_store import AlertStore
from guard.alerts import Severity
from guard.client import NodeClient
from guard.service import Service
from guard.tui import AlertsApp
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
        app = AlertsApp(client, analyst="kim")
        async with app.run_test(size=(160, 40)) as pilot:
            table = app.query_one(DataTable)
            await _until(pilot, lambda: table.row_count == 3)
            # most severe first
            assert [app.alerts[i].severity for i in app.shown] == ["critical", "high", "low"]
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
            await _until(pilot, lambda: app.alerts[app.shown[0]].status == "resolved")

    asyncio.run(drive())
    assert (ARTIFACTS / "tui.svg").read_text().startswith("<svg")
    acks = audit.read(store.log.path, "acknowledge")
    assert acks and acks[0]["analyst"] == "kim" and "host: 192.0.2.1" in acks[0]["comment"]
    assert [r["analyst"] for r in audit.read(store.log.path, "resolve")] == ["kim"]
