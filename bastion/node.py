"""`bastion node`: the long-running process of one host. It holds the sensor
(programs compiled once), the guard with the agents' profiles and the sandbox
manager, and serves them over gRPC to analysts' TUIs and local clients."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bastion import paths
from bastion.guarded import GuardedSandboxes
from ebpf.events import Event
from ebpf.sensor import Sensor, require_root
from console.alert_store import AlertStore
from console.api_feed import ApiCallFeed
from common.verdicts import Severity, Verdict
from guard.alerts import Alert
from guard.audit import AuditError, AuditLog, HeadFile, Signer, verify
from console.falco import FalcoSink
from console.metrics import Metrics
from guard.profile import load_profile
from console.proto import bastion_pb2 as pb
from console.service import NodeHooks, RequestError, Service, Tls
from common.files import read_bytes, read_text
from sandbox.manager import Sandbox, SandboxError
from sandbox.policy import Policy, PolicyError, parse_policy

log = logging.getLogger("bastion.node")

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def sandbox_rows(guarded: GuardedSandboxes) -> list[pb.SandboxStatus]:
    """The running sandboxes as the status call reports them."""
    now = time.monotonic()
    return [pb.SandboxStatus(name=sb.name, agent=sb.labels.get("agent", ""), running_s=now - sb.started,
                             events=sb.received, lost=sb.lost_seen,
                             verdict=sb.strongest.value)
            for sb in guarded.manager.sandboxes()]


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    local: str = Field(paths.LOCAL_ADDRESS, description="address for clients on this host (a unix socket)")
    listen: str | None = Field(None, description="host:port for analysts elsewhere; needs tls_cert and tls_key")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token_file: Path = paths.TOKEN_FILE
    profiles: Path | None = Field(None, description="a directory of *.safetensors profiles")
    audit: Path = paths.AUDIT_LOG
    signing_key: Path = Field(paths.SIGNING_KEY,
                              description="ed25519 key that signs the audit log's checkpoints (made 0600 if absent)")
    checkpoint_every: int = Field(64, ge=1, le=100_000, description="records between signed checkpoints")
    audit_heads: Path | None = Field(None, description="also append each signed head here (a file off this host)")
    falco: Path | None = Field(None, description="also write alerts and signed heads here as Falco JSON lines")
    metrics_port: int | None = Field(None, ge=1, le=65535)
    node_cpu: int | None = Field(None, ge=0, description="a CPU kept for the event pump and the audit writer; "
                                 "sandboxes run on the others (their work never shares a CPU with the guard's, "
                                 "and sandboxes that saturate their CPUs leave the node's alone)")


def read_or_make_token(path: Path) -> str:
    """The node's bearer token, created (0600) on first start."""
    if path.exists():
        return read_text(path, 4096).strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


class _Rate:
    """Events per second over the last few seconds."""

    def __init__(self, span_s: float = 5.0) -> None:
        self.span = span_s
        self.total = 0
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.total += n
            now = time.monotonic()
            self._samples.append((now, self.total))
            while self._samples and now - self._samples[0][0] > self.span:
                self._samples.popleft()

    def per_second(self) -> float:
        with self._lock:
            if len(self._samples) < 2:
                return 0.0
            (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
            return (n1 - n0) / max(time.monotonic() - t0, t1 - t0, 1e-3)


class Node:
    def __init__(self, config: NodeConfig) -> None:
        require_root()
        self.config = config
        self.policies: dict[str, Policy] = {}
        self.metrics = Metrics()
        self.rate = _Rate()
        self.lost_total = 0
        profiles = sorted(config.profiles.glob("*.safetensors")) if config.profiles else []
        self.falco = FalcoSink(config.falco) if config.falco else None
        self.head_file = HeadFile(config.audit_heads) if config.audit_heads else None
        heads = [sink for sink in (self.falco and self.falco.head, self.head_file) if sink]
        signer = Signer.load_or_create(config.signing_key)
        problem = check_audit_log(config.audit, signer, heads)
        self.audit = AuditLog(config.audit, signer, config.checkpoint_every, heads)
        if problem:
            self._node_alert(problem)
        self.store = AlertStore(self.audit)
        sinks = [self.store.add, self.metrics.observe_alert] + ([self.falco] if self.falco else [])
        self.sensor = Sensor().start()
        self.api_calls = ApiCallFeed()
        self.guarded = GuardedSandboxes(self.sensor, self.audit, [load_profile(p) for p in profiles], sinks,
                                        api_sinks=[self.api_calls.add], node_cpu=config.node_cpu)
        if self.guarded.manager.orphans:
            self.audit.append("cleanup", {"orphans": self.guarded.manager.orphans,
                                          "why": "their supervising node had died"})
        self.guarded.manager.listeners.append(self._count)
        self.guarded.manager.finishers.append(self._lost)
        hooks = NodeHooks(status=self.status, update_policy=self.update_policy, run_sandbox=self.run_sandbox)
        token = read_or_make_token(config.token_file)
        self.services = [Service(self.store, hooks, token, config.local, api_calls=self.api_calls)]
        if config.listen:
            if not (config.tls_cert and config.tls_key):
                raise ValueError("listen: a network address needs tls_cert and tls_key")
            tls = Tls(read_bytes(config.tls_cert, 1 << 20), read_bytes(config.tls_key, 1 << 20))
            self.services.append(Service(self.store, hooks, token, config.listen, tls, api_calls=self.api_calls))
        if config.metrics_port:
            self.metrics.serve(config.metrics_port)
        log.info("node started", extra={"fields": {"local": config.local, "listen": config.listen,
                                                   "profiles": list(self.guarded.profiles)}})

    def _node_alert(self, problem: tuple[Severity, str]) -> None:
        """An alert about the node itself, audited first as every alert is."""
        severity, rule = problem
        alert = Alert(sandbox="node", detector="audit", rule=rule, severity=severity, action=Verdict.ALERT)
        self.audit.append("alert", alert.model_dump(mode="json"))
        if self.falco:
            self.falco(alert)
        log.error("audit log", extra={"fields": {"problem": rule}})

    def _count(self, sb: Sandbox, events: list[Event]) -> None:
        self.metrics.events.inc(len(events))
        self.rate.add(len(events))

    def _lost(self, sb: Sandbox) -> None:
        if sb.lost_seen:
            self.metrics.lost.inc(sb.lost_seen)
            self.lost_total += sb.lost_seen

    # hooks -----------------------------------------------------------------
    def status(self) -> pb.Status:
        return pb.Status(sandboxes=sandbox_rows(self.guarded), events_per_s=self.rate.per_second(),
                         events_total=self.rate.total, lost_total=self.lost_total, profiles=sorted(self.guarded.profiles),
                         policies=sorted(self.policies), alerts_total=len(self.store),
                         api_calls_allowed=self.api_calls.allowed, api_calls_stopped=self.api_calls.stopped)

    def update_policy(self, name: str, text: str) -> None:
        if not _NAME.match(name):
            raise RequestError(f"name: {name!r} must be 1-64 of a-z, 0-9, '_', '.', '-'")
        try:
            policy = parse_policy(text, source=f"policy {name}")
        except PolicyError as exc:
            raise RequestError(str(exc)) from None
        self.policies[name] = policy
        self.audit.append("policy", {"name": name, "yaml": text})

    def run_sandbox(self, request: pb.RunRequest) -> str:
        if not request.command:
            raise RequestError("command: give the command to run")
        if request.policy_name:
            if request.policy_name not in self.policies:
                raise RequestError(f"policy_name: no policy {request.policy_name!r} on this node")
            policy = self.policies[request.policy_name]
        elif request.policy_yaml:
            try:
                policy = parse_policy(request.policy_yaml, source="policy_yaml")
            except PolicyError as exc:
                raise RequestError(str(exc)) from None
        else:
            policy = Policy()
        try:
            run = self.guarded.run(list(request.command), policy, timeout=request.timeout_s or None,
                                   labels=dict(request.labels))
        except (SandboxError, PolicyError) as exc:
            raise RequestError(str(exc)) from None
        return json.dumps({"result": run.result.model_dump(mode="json"),
                           "alerts": [a.model_dump(mode="json") for a in run.alerts]})

    def close(self) -> None:
        for service in self.services:
            service.stop()
        self.guarded.close()
        self.sensor.close()
        self.audit.close()  # signs the last head, which goes to the head sinks
        for sink in (self.falco, self.head_file):
            if sink:
                sink.close()


def check_audit_log(path: Path, signer: Signer,
                    heads: list[Callable[[dict[str, Any]], None]]) -> tuple[Severity, str] | None:
    """Verify the log before appending to it. A broken one is set aside
    (kept, never appended to) and a new one started, and the head sinks are
    told so in a signed head; either is an alert."""
    if not path.exists():
        return None
    try:
        report = verify(path, signer.public_key)
    except AuditError as exc:
        kept = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%dT%H%M%S')}")
        os.rename(path, kept)
        for sink in heads:
            sink(signer.set_aside(path, kept))
        return Severity.CRITICAL, f"the audit log failed verification and was set aside as {kept}: {exc}"
    if report.uncovered:
        return Severity.HIGH, (f"audit log records {report.covered}..{report.records - 1} were not covered by a "
                               f"signed checkpoint at start: the node stopped without signing (a crash), "
                               f"or the log was cut")
    return None

def wait_for_signal(node: Node) -> None:
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    node.close()
