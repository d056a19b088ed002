"""`bastion tui`: review a node's alerts in a terminal.

A live table sorted by severity then time, a detail pane (evidence timeline,
the agent's step and tool call, action and latency), filters, keys to
acknowledge, resolve and propose an allowlist change, and a status bar with
event rates and lost events. The alert stream resumes after the last alert
seen when the connection drops, so nothing is missed."""

from __future__ import annotations

import threading
from datetime import datetime

import grpc
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Header, Input, Select, Static

from guard.alerts import Severity
from guard.client import NodeClient
from guard.proposal import propose
from guard.proto import bastion_pb2 as pb

SEVERITY_RANK = {s.value: i for i, s in enumerate(Severity)}
SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "dim"}
RECONNECT_S = 1.0


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S")


def detail_text(a: pb.AlertMessage, proposal: str = "") -> Text:
    """The detail pane for one alert."""
    out = Text()
    out.append(f"{a.severity.upper()} ", style=SEVERITY_STYLE.get(a.severity, ""))
    out.append(f"{a.rule}\n\n", style="bold")
    rows = [
        ("sandbox", a.sandbox), ("agent", a.agent or "-"), ("step", a.step or "-"),
        ("tool call", a.tool_call or "-"), ("arguments", a.tool_args or "-"),
        ("detector", f"{a.detector}  score {a.score:.2f} / threshold {a.threshold:.2f}"),
        ("action", a.action),
        ("latency", f"{(a.enforced_ts_ns - a.event_ts_ns) / 1e6:.2f} ms" if a.enforced_ts_ns else "-"),
        ("status", f"{a.status}{' by ' + a.analyst if a.analyst else ''}{': ' + a.comment if a.comment else ''}"),
    ]
    for key, value in rows:
        out.append(f"{key:>10}  ", style="dim")
        out.append(f"{value}\n")
    out.append("\nevidence\n", style="bold")
    first = a.evidence[0].ts_ns if a.evidence else 0
    for e in a.evidence:
        out.append(f"  +{(e.ts_ns - first) / 1e6:7.2f} ms  {e.kind:<8} {e.comm}[{e.pid}] {e.detail}\n")
    if not a.evidence:
        out.append("  (a window of syscalls, no single event)\n", style="dim")
    if proposal:
        out.append("\nproposed allowlist change (recorded with the acknowledgement)\n", style="bold green")
        out.append(proposal, style="green")
    return out


class AlertsApp(App[None]):
    TITLE = "Bastion alerts"
    CSS = """
    #filters { height: 3; }
    #filters Input { width: 1fr; }
    #filters Select { width: 22; }
    #table { width: 3fr; }
    #detail { width: 2fr; border-left: solid $accent; padding: 0 1; overflow-y: auto; }
    #status { height: 1; background: $boost; padding: 0 1; }
    """
    BINDINGS = [
        Binding("a", "acknowledge", "Acknowledge"),
        Binding("r", "resolve", "Resolve"),
        Binding("p", "propose", "Propose allowlist change"),
        Binding("slash", "focus_filter", "Filter"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, client: NodeClient, analyst: str) -> None:
        super().__init__()
        self.client = client
        self.analyst = analyst
        self.alerts: dict[str, pb.AlertMessage] = {}
        self.last_id = ""
        self.shown: list[str] = []
        self._dirty = False
        self._stop = threading.Event()
        self._stream: grpc.RpcError | None = None
        self.connected = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="filters"):
            yield Select([(s.value, s.value) for s in reversed(Severity)], prompt="any severity", id="severity")
            yield Input(placeholder="sandbox", id="sandbox")
            yield Input(placeholder="agent", id="agent")
            yield Input(placeholder="text", id="text")
        with Horizontal():
            yield DataTable(id="table", cursor_type="row", zebra_stripes=True)
            with Vertical(id="detail"):
                yield Static("select an alert", id="detail-body")
        yield Static("connecting...", id="status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for col in ("severity", "time", "sandbox", "agent", "detector", "action", "status", "rule"):
            table.add_column(col, key=col)
        self.watch_alerts()
        self.set_interval(0.2, self._refresh_if_dirty)
        self.set_interval(1.0, self.poll_status)

    def on_unmount(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.cancel()  # type: ignore[attr-defined]

    # data ------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="watch")
    def watch_alerts(self) -> None:
        while not self._stop.is_set():
            try:
                stream = self.client.watch(self.last_id)
                self._stream = stream  # type: ignore[assignment]
                self.connected = True
                for alert in stream:
                    self.call_from_thread(self.add_alert, alert)
            except grpc.RpcError as exc:
                self.connected = False
                if self._stop.is_set():
                    return
                self.call_from_thread(self.set_status, f"[red]disconnected[/] ({exc.code().name}); retrying")
            self._stop.wait(RECONNECT_S)

    def add_alert(self, alert: pb.AlertMessage) -> None:
        self.alerts[alert.id] = alert
        self.last_id = alert.id
        self._dirty = True

    @work(thread=True, exclusive=True, group="status")
    def poll_status(self) -> None:
        try:
            st = self.client.status()
        except grpc.RpcError as exc:
            self.call_from_thread(self.set_status, f"[red]no status[/] ({exc.code().name})")
            return
        lost = f"[bold red]{st.lost_total} lost[/]" if st.lost_total else "0 lost"
        self.call_from_thread(
            self.set_status,
            f"{st.events_per_s:,.0f} events/s · {st.events_total:,} events · {lost} · "
            f"{len(st.sandboxes)} sandboxes · {st.alerts_total} alerts · profiles: {', '.join(st.profiles) or '-'}",
        )

    def set_status(self, text: str) -> None:
        self.query_one("#status", Static).update(text)

    # the table ---------------------------------------------------------------
    def _visible(self) -> list[pb.AlertMessage]:
        severity = self.query_one("#severity", Select).value
        sandbox = self.query_one("#sandbox", Input).value.strip()
        agent = self.query_one("#agent", Input).value.strip()
        text = self.query_one("#text", Input).value.strip().lower()
        floor = SEVERITY_RANK.get(str(severity), 0) if severity != Select.BLANK else 0
        rows = [
            a for a in self.alerts.values()
            if SEVERITY_RANK.get(a.severity, 0) >= floor
            and (not sandbox or sandbox in a.sandbox)
            and (not agent or agent == a.agent)
            and (not text or text in f"{a.rule} {a.sandbox} {a.agent} {a.detector} {a.comment}".lower())
        ]
        return sorted(rows, key=lambda a: (-SEVERITY_RANK.get(a.severity, 0), -a.time))

    def _refresh_if_dirty(self) -> None:
        if self._dirty:
            self.refresh_table()

    def refresh_table(self) -> None:
        self._dirty = False
        table = self.query_one(DataTable)
        selected = self.selected()
        table.clear()
        self.shown = []
        for a in self._visible():
            style = SEVERITY_STYLE.get(a.severity, "")
            table.add_row(Text(a.severity, style=style), _when(a.time), a.sandbox, a.agent or "-", a.detector,
                          a.action, a.status, Text(a.rule, style="bold" if a.status == "open" else "dim"), key=a.id)
            self.shown.append(a.id)
        if selected is not None and selected.id in self.shown:
            table.move_cursor(row=self.shown.index(selected.id))

    def selected(self) -> pb.AlertMessage | None:
        table = self.query_one(DataTable)
        if not self.shown or table.cursor_row is None or table.cursor_row >= len(self.shown):
            return None
        return self.alerts.get(self.shown[table.cursor_row])

    @on(DataTable.RowHighlighted)
    def show_detail(self) -> None:
        alert = self.selected()
        if alert is not None:
            self.query_one("#detail-body", Static).update(detail_text(alert))

    @on(Input.Changed)
    @on(Select.Changed)
    def filters_changed(self) -> None:
        self._dirty = True

    # actions -----------------------------------------------------------------
    def _review(self, resolve: bool, comment: str = "") -> pb.AlertMessage | None:
        alert = self.selected()
        if alert is None:
            return None
        call = self.client.resolve if resolve else self.client.acknowledge
        updated = call(alert.id, self.analyst, comment)
        self.alerts[updated.id] = updated
        self.refresh_table()
        return updated

    def action_acknowledge(self) -> None:
        if (alert := self._review(resolve=False)) is not None:
            self.query_one("#detail-body", Static).update(detail_text(alert))

    def action_resolve(self) -> None:
        if (alert := self._review(resolve=True)) is not None:
            self.query_one("#detail-body", Static).update(detail_text(alert))

    def action_propose(self) -> None:
        alert = self.selected()
        if alert is None:
            return
        proposal = propose(alert.detector, alert.rule)
        updated = self._review(resolve=False, comment=f"proposed allowlist change:\n{proposal}")
        self.query_one("#detail-body", Static).update(detail_text(updated or alert, proposal))

    def action_focus_filter(self) -> None:
        self.query_one("#text", Input).focus()
