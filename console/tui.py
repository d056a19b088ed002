"""`bastion tui`: review the alerts of one node or several in a terminal.

One table of every node's alerts, sorted by severity then time, with the
node of each; a detail pane (evidence timeline, the agent's step and tool
call, action and latency); filters (the service's own filter code); keys to
acknowledge, resolve and propose an allowlist change, each sent to the node
that raised the alert; a status bar per node. Each node's stream resumes
after the last alert seen from it when its connection drops, so nothing is
missed. A second tab follows every node's API calls, allowed and stopped,
newest first."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Footer, Header, TabbedContent, TabPane

from console.alert_store import Filters
from console.client import NodeClient
from console.proposal import propose
from console.proto import bastion_pb2 as pb
from console.widgets import (AlertDetail, AlertTable, ApiCallTable, CallEntry, Entry, FilterBar, StatusBar,
                             status_line)

RECONNECT_S = 1.0
CALLS_SHOWN = 2000


class AlertsApp(App[None]):
    TITLE = "Bastion alerts"
    CSS = """
    FilterBar { height: 3; }
    FilterBar Input { width: 1fr; }
    FilterBar Select { width: 22; }
    AlertTable { width: 3fr; }
    #detail { width: 2fr; border-left: solid $accent; padding: 0 1; overflow-y: auto; }
    StatusBar { height: 1; background: $boost; padding: 0 1; }
    """
    BINDINGS = [
        Binding("a", "acknowledge", "Acknowledge"),
        Binding("r", "resolve", "Resolve"),
        Binding("p", "propose", "Propose allowlist change"),
        Binding("slash", "focus_filter", "Filter"),
        Binding("t", "next_tab", "Alerts / API calls"),
        Binding("q", "quit", "Quit"),
    ]

    filters: reactive[Filters] = reactive(Filters, always_update=True)

    def __init__(self, clients: dict[str, NodeClient], analyst: str) -> None:
        """clients: each node's address (as the analyst named it) and its client."""
        super().__init__()
        self.clients = clients
        self.analyst = analyst
        self.alerts: dict[str, Entry] = {}
        self.last_id = {node: "" for node in clients}
        self.calls: deque[CallEntry] = deque(maxlen=CALLS_SHOWN)  # newest last
        self.next_call = {node: 0 for node in clients}  # the place each node's call stream resumes at
        self._dirty = self._calls_dirty = False
        self._stop = threading.Event()
        self._streams: dict[str, grpc.RpcError] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="tabs"):
            with TabPane("Alerts", id="alerts"):
                yield FilterBar()
                with Horizontal():
                    yield AlertTable(id="table", cursor_type="row", zebra_stripes=True)
                    with Vertical(id="detail"):
                        yield AlertDetail("select an alert", id="detail-body")
            with TabPane("API calls", id="api-calls"):
                yield ApiCallTable(id="calls", cursor_type="row", zebra_stripes=True)
        yield StatusBar("connecting...", id="status")
        yield Footer()

    def on_mount(self) -> None:
        for node in self.clients:
            self.follow_node(node)
            self.follow_api_calls(node)
        self.set_interval(0.2, self._refresh_if_dirty)
        self.set_interval(1.0, self.poll_status)

    def on_unmount(self) -> None:
        self._stop.set()
        for stream in list(self._streams.values()):
            stream.cancel()  # type: ignore[attr-defined]

    def _follow(self, node: str, kind: str, open_stream: Callable[[], Iterator[Any]],
                receive: Callable[[str, Any], None]) -> None:
        """Follow one of a node's streams, reopening it where `open_stream`
        says when the connection drops."""
        while not self._stop.is_set():
            try:
                stream = open_stream()
                self._streams[f"{node}/{kind}"] = stream  # type: ignore[assignment]
                for message in stream:
                    self.call_from_thread(receive, node, message)
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                self.call_from_thread(self.set_node_status, node, f"[red]disconnected[/] ({exc.code().name}); "
                                                                  f"retrying")
            self._stop.wait(RECONNECT_S)

    # data ------------------------------------------------------------------
    @work(thread=True)
    def follow_node(self, node: str) -> None:
        """Follow one node's alert stream, resuming after its last alert."""
        self._follow(node, "alerts", lambda: self.clients[node].watch(self.last_id[node]), self.add_alert)

    @work(thread=True)
    def follow_api_calls(self, node: str) -> None:
        """Follow one node's API calls, resuming after the last one seen."""
        self._follow(node, "api-calls", lambda: self.clients[node].watch_api_calls(self.next_call[node]),
                     self.add_call)

    def add_alert(self, node: str, alert: pb.AlertMessage) -> None:
        entry = Entry(node, alert)
        self.alerts[entry.key] = entry
        self.last_id[node] = alert.id
        self._dirty = True

    def add_call(self, node: str, call: pb.ApiCallMessage) -> None:
        self.calls.append(CallEntry(node, call))
        self.next_call[node] = call.seq + 1
        self._calls_dirty = True

    @work(thread=True, exclusive=True, group="status")
    def poll_status(self) -> None:
        for node, client in self.clients.items():
            try:
                text = status_line(client.status())
            except grpc.RpcError as exc:
                text = f"[red]no status[/] ({exc.code().name})"
            self.call_from_thread(self.set_node_status, node, text)

    def set_node_status(self, node: str, text: str) -> None:
        bar = self.query_one(StatusBar)
        bar.nodes = {**bar.nodes, node: text}

    # the table ---------------------------------------------------------------
    @property
    def shown(self) -> list[str]:
        return self.query_one(AlertTable).shown

    def _refresh_if_dirty(self) -> None:
        if self._dirty:
            self.refresh_table()
        if self._calls_dirty:
            self._calls_dirty = False
            self.query_one(ApiCallTable).entries = list(reversed(self.calls))

    def refresh_table(self) -> None:
        self._dirty = False
        rows = [e for e in self.alerts.values() if e.matches(self.filters)]
        self.query_one(AlertTable).entries = sorted(rows, key=Entry.order)

    def watch_filters(self) -> None:
        self._dirty = True

    @on(FilterBar.Changed)
    def filters_changed(self, event: FilterBar.Changed) -> None:
        self.filters = event.filters

    @on(AlertTable.RowHighlighted)
    def show_detail(self) -> None:
        entry = self.query_one(AlertTable).selected()
        if entry is not None:
            detail = self.query_one(AlertDetail)
            detail.proposal = ""
            detail.entry = entry

    # actions: each on the node that raised the alert ------------------------
    def _review(self, resolve: bool, comment: str = "") -> Entry | None:
        entry = self.query_one(AlertTable).selected()
        if entry is None:
            return None
        client = self.clients[entry.node]
        call = client.resolve if resolve else client.acknowledge
        updated = Entry(entry.node, call(entry.message.id, self.analyst, comment))
        self.alerts[updated.key] = updated
        self.refresh_table()
        self.query_one(AlertDetail).entry = updated
        return updated

    def action_acknowledge(self) -> None:
        self._review(resolve=False)

    def action_resolve(self) -> None:
        self._review(resolve=True)

    def action_propose(self) -> None:
        entry = self.query_one(AlertTable).selected()
        if entry is None:
            return
        proposal = propose(entry.message.detector, entry.message.rule)
        self._review(resolve=False, comment=f"proposed allowlist change:\n{proposal}")
        self.query_one(AlertDetail).proposal = proposal

    def action_next_tab(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = "api-calls" if tabs.active == "alerts" else "alerts"

    def action_focus_filter(self) -> None:
        self.query_one("#text").focus()
