"""Prometheus metrics of a guard node: events, lost events, alerts by
severity, and the detection-to-enforcement latency of verdicts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from guard.alerts import Alert


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter("bastion_events", "Sensor events received from watched sandboxes",
                              registry=self.registry)
        self.lost = Counter("bastion_lost_events", "Sensor events lost (each triggers the policy's action)",
                            registry=self.registry)
        self.alerts = Counter("bastion_alerts", "Alerts published", ["severity", "detector"], registry=self.registry)
        self.latency = Histogram(
            "bastion_verdict_latency_seconds", "From the triggering kernel event to the action taking hold",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5), registry=self.registry,
        )

    def observe_alert(self, alert: Alert) -> None:
        """A guard sink."""
        self.alerts.labels(alert.severity.value, alert.detector).inc()
        if alert.latency_ms is not None:
            self.latency.observe(alert.latency_ms / 1000)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose /metrics over HTTP."""
        start_http_server(port, addr, registry=self.registry)
