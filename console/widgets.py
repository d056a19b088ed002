"""The TUI's parts, each small and driven by reactive state: the filter bar,
the alert table, the detail pane and the status bar."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import DataTable, Input, Select, Static

from common.verdicts import Severity
from console.alert_store import Filters
from console.proto import bastion_pb2 as pb

SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "dim"}


@dataclass(frozen=True)
class Entry:
    """One alert as the TUI holds it: the node that raised it, and the message."""

    node: str
    message: pb.AlertMessage

    @property
    def key(self) -> str:
        return f"{self.node}/{self.message.id}"

    def matches(self, filters: Filters) -> bool:
        a = self.message
        return filters.match_fields(a.severity, a.sandbox, a.agent, a.status, a.detector, a.rule, a.comment)

    def order(self) -> tuple[int, float]:
        """Most severe first, then newest first."""
        return -Severity(self.message.severity).rank, -self.message.time


def detail_text(entry: Entry, proposal: str = "") -> Text:
    """The detail pane for one alert."""
    a = entry.message
    out = Text()
    out.append(f"{a.severity.upper()} ", style=SEVERITY_STYLE.get(a.severity, ""))
    out.append(f"{a.rule}\n\n", style="bold")
    rows = [
        ("node", entry.node), ("sandbox", a.sandbox), ("agent", a.agent or "-"), ("step", a.step or "-"),
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


class FilterBar(Horizontal):
    """Severity, sandbox, agent and free text; tells the app the filters changed."""

    class Changed(Message):
        def __init__(self, filters: Filters) -> None:
            super().__init__()
            self.filters = filters

    def compose(self) -> ComposeResult:
        yield Select([(s.value, s.value) for s in reversed(Severity)], prompt="any severity", id="severity")
        yield Input(placeholder="sandbox", id="sandbox")
        yield Input(placeholder="agent", id="agent")
        yield Input(placeholder="text", id="text")

    def filters(self) -> Filters:
        severity = self.query_one("#severity", Select).value  # a sentinel when none is chosen
        return Filters(severity=severity if severity in Severity.__members__.values() else "",
                       sandbox=self.query_one("#sandbox", Input).value.strip(),
                       agent=self.query_one("#agent", Input).value.strip(),
                       text=self.query_one("#text", Input).value.strip())

    def on_input_changed(self) -> None:
        self.post_message(self.Changed(self.filters()))

    def on_select_changed(self) -> None:
        self.post_message(self.Changed(self.filters()))


class AlertTable(DataTable[object]):
    """The visible alerts, most severe first; keeps the selected alert
    selected across updates."""

    entries: reactive[list[Entry]] = reactive(list, always_update=True, init=False)

    def on_mount(self) -> None:
        for col in ("severity", "time", "node", "sandbox", "agent", "detector", "action", "status", "rule"):
            self.add_column(col, key=col)

    @property
    def shown(self) -> list[str]:
        return [e.key for e in self.entries]

    def selected(self) -> Entry | None:
        if not self.entries or self.cursor_row is None or self.cursor_row >= len(self.entries):
            return None
        return self.entries[self.cursor_row]

    def watch_entries(self, old: list[Entry], new: list[Entry]) -> None:
        keep = old[self.cursor_row].key if old and self.cursor_row is not None and self.cursor_row < len(old) else None
        self.clear()
        for e in new:
            a = e.message
            self.add_row(Text(a.severity, style=SEVERITY_STYLE.get(a.severity, "")),
                         datetime.fromtimestamp(a.time).strftime("%H:%M:%S"), e.node, a.sandbox, a.agent or "-",
                         a.detector, a.action, a.status,
                         Text(a.rule, style="bold" if a.status == "open" else "dim"), key=e.key)
        keys = [e.key for e in new]
        if keep in keys:
            self.move_cursor(row=keys.index(keep))


@dataclass(frozen=True)
class CallEntry:
    """One API call as the TUI holds it: the node that saw it, and the message."""

    node: str
    message: pb.ApiCallMessage

    @property
    def key(self) -> str:
        return f"{self.node}/{self.message.seq}"

    def verdict(self) -> Text:
        c = self.message
        if c.allowed:
            return Text("released" if c.held else "allowed", style="green")
        return Text("stopped", style="bold red")

    def request(self) -> str:
        c = self.message
        return f"{c.method or '?'} {'https' if c.tls else 'http'}://{c.host}{c.path}"


class ApiCallTable(DataTable[object]):
    """The newest API calls first: who made them, the request and the verdict."""

    entries: reactive[list[CallEntry]] = reactive(list, always_update=True, init=False)

    def on_mount(self) -> None:
        for col in ("time", "node", "sandbox", "agent", "tool call", "verdict", "request", "bytes", "why"):
            self.add_column(col, key=col)

    def watch_entries(self, entries: list[CallEntry]) -> None:
        self.clear()
        for e in entries:
            c = e.message
            self.add_row(datetime.fromtimestamp(c.time).strftime("%H:%M:%S"), e.node, c.sandbox, c.agent or "-",
                         c.tool_call or "-", e.verdict(), e.request(), str(c.body_bytes), c.reason, key=e.key)


class AlertDetail(Static):
    """The selected alert in full, and a proposed allowlist change if any."""

    entry: reactive[Entry | None] = reactive(None, always_update=True, init=False)
    proposal: reactive[str] = reactive("", init=False)

    def watch_entry(self, entry: Entry | None) -> None:
        self.update(detail_text(entry, self.proposal) if entry else "select an alert")

    def watch_proposal(self, proposal: str) -> None:
        if self.entry is not None:
            self.update(detail_text(self.entry, proposal))


class StatusBar(Static):
    """Each node's event rate, lost events, sandboxes and alerts."""

    nodes: reactive[dict[str, str]] = reactive(dict, always_update=True, init=False)

    def watch_nodes(self, nodes: dict[str, str]) -> None:
        if len(nodes) == 1:
            self.update(next(iter(nodes.values())))
        else:
            self.update(" │ ".join(f"[b]{node}[/] {text}" for node, text in sorted(nodes.items())) or "connecting...")


def status_line(st: pb.Status) -> str:
    lost = f"[bold red]{st.lost_total} lost[/]" if st.lost_total else "0 lost"
    stopped = f"[bold red]{st.api_calls_stopped} stopped[/]" if st.api_calls_stopped else "0 stopped"
    return (f"{st.events_per_s:,.0f} events/s · {st.events_total:,} events · {lost} · {len(st.sandboxes)} sandboxes · "
            f"{st.alerts_total} alerts · API calls {st.api_calls_allowed} allowed, {stopped} · "
            f"profiles: {', '.join(st.profiles) or '-'}")
