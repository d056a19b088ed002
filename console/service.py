"""The guard node's gRPC service: alerts for analysts (stream with resume,
list, acknowledge, resolve), the stream of API calls, status, policy updates
and sandboxed runs.

A bearer token is required on every call and failures are audited; TLS when
a certificate is given; request sizes and concurrent streams are bounded.
What the node does (status, policies, runs) comes in as callables, so this
module knows nothing of sandboxes."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from console.alert_store import AlertStore, Filters, Review, UnknownAlert
from console.api_feed import ApiCallFeed
from common.verdicts import Severity
from guard.alerts import Alert, ApiCallRecord
from guard.audit import AuditLog
from console.proto import bastion_pb2 as pb
from console.proto import bastion_pb2_grpc as pb_grpc

log = logging.getLogger("bastion.service")

MAX_REQUEST_BYTES = 1 << 20
MAX_STREAMS = 32
WAIT_S = 0.25  # how often an idle stream checks that its client is still there


class RequestError(ValueError):
    """Bad input from a client; answered with INVALID_ARGUMENT and this message."""


@dataclass
class NodeHooks:
    """What the node behind the service does."""

    status: Callable[[], pb.Status]
    update_policy: Callable[[str, str], None]  # raises RequestError naming the field
    run_sandbox: Callable[[pb.RunRequest], str]  # the result as JSON; raises RequestError


def to_message(seq: int, alert: Alert, review: Review) -> pb.AlertMessage:
    return pb.AlertMessage(
        seq=seq, id=alert.id, time=alert.time, sandbox=alert.sandbox, agent=alert.agent or "",
        step=alert.step or "", tool_call=alert.tool_call or "", tool_args=alert.tool_args or "", detector=alert.detector, rule=alert.rule,
        score=alert.score, threshold=alert.threshold, severity=alert.severity.value, action=alert.action.value,
        evidence=[pb.Evidence(**e.model_dump()) for e in alert.evidence],
        event_ts_ns=alert.event_ts_ns, enforced_ts_ns=alert.enforced_ts_ns,
        status=review.status, analyst=review.analyst, comment=review.comment,
    )


def api_call_message(place: int, call: ApiCallRecord) -> pb.ApiCallMessage:
    return pb.ApiCallMessage(
        seq=place, record=call.seq, log=call.log, time=call.time, sandbox=call.sandbox, agent=call.agent or "", step=call.step or "",
        tool_call=call.tool_call or "", method=call.method, host=call.host, path=call.path, port=call.port,
        tls=call.tls, body_bytes=call.body_bytes, allowed=call.allowed, held=call.held, reason=call.reason,
        pid=call.pid,
    )


class _Servicer(pb_grpc.GuardNodeServicer):
    def __init__(self, store: AlertStore, api_calls: ApiCallFeed, hooks: NodeHooks,
                 stopping: threading.Event) -> None:
        self.store = store
        self.api_calls = api_calls
        self.hooks = hooks
        self.stopping = stopping
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)

    def WatchAlerts(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[pb.AlertMessage]:  # noqa: N802
        if not self.streams.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {MAX_STREAMS} alert streams at once")
        try:
            try:
                seq = self.store.position_after(request.after_id)
            except UnknownAlert:
                context.abort(grpc.StatusCode.NOT_FOUND, f"after_id: no alert {request.after_id!r}")
            while context.is_active() and not self.stopping.is_set():
                if self.store.wait_beyond(seq, WAIT_S):
                    yield to_message(seq, *self.store.get(seq))
                    seq += 1
        finally:
            self.streams.release()

    def WatchApiCalls(self, request: pb.WatchApiCallsRequest,  # noqa: N802
                      context: grpc.ServicerContext) -> Iterator[pb.ApiCallMessage]:
        if not self.streams.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {MAX_STREAMS} streams at once")
        try:
            place = max(request.from_seq, 0)
            while context.is_active() and not self.stopping.is_set():
                for at, call in self.api_calls.wait_from(place, WAIT_S):
                    yield api_call_message(at, call)
                    place = at + 1
        finally:
            self.streams.release()

    def ListAlerts(self, request: pb.ListRequest, context: grpc.ServicerContext) -> pb.ListResponse:  # noqa: N802
        if request.severity and request.severity not in Severity.__members__.values():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"severity: {request.severity!r} is not one of "
                                                            f"{', '.join(s.value for s in Severity)}")
        filters = Filters(request.severity, request.sandbox, request.agent, request.status, request.text,
                          request.limit)
        return pb.ListResponse(alerts=[to_message(i, *self.store.get(i)) for i in self.store.select(filters)])

    def _review(self, request: pb.ReviewRequest, context: grpc.ServicerContext, status: str) -> pb.ReviewResponse:
        if not request.analyst:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "analyst: who reviews the alert must be named")
        try:
            seq = self.store.review(request.alert_id, status, request.analyst, request.comment)
        except UnknownAlert:
            context.abort(grpc.StatusCode.NOT_FOUND, f"alert_id: no alert {request.alert_id!r}")
        return pb.ReviewResponse(alert=to_message(seq, *self.store.get(seq)))

    def Acknowledge(self, request: pb.ReviewRequest, context: grpc.ServicerContext) -> pb.ReviewResponse:  # noqa: N802
        return self._review(request, context, "acknowledged")

    def Resolve(self, request: pb.ReviewRequest, context: grpc.ServicerContext) -> pb.ReviewResponse:  # noqa: N802
        return self._review(request, context, "resolved")

    def GetStatus(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.Status:  # noqa: N802
        return self.hooks.status()

    def UpdatePolicy(self, request: pb.PolicyRequest, context: grpc.ServicerContext) -> pb.PolicyResponse:  # noqa: N802
        try:
            self.hooks.update_policy(request.name, request.yaml)
        except RequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.PolicyResponse(name=request.name)

    def RunSandbox(self, request: pb.RunRequest, context: grpc.ServicerContext) -> pb.RunResponse:  # noqa: N802
        try:
            return pb.RunResponse(result_json=self.hooks.run_sandbox(request))
        except RequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


def peer_of(context: grpc.ServicerContext) -> str:
    """Who called: the address without its ephemeral port, and the TLS
    client's certificate name when it presented one."""
    peer = context.peer() or "unknown"
    if peer.startswith(("ipv4:", "ipv6:")):
        peer = peer.rsplit(":", 1)[0]
    names = (context.auth_context() or {}).get("x509_common_name") or []
    return peer + "".join(f" cn={n.decode(errors='replace')}" for n in names)


class Refusals:
    """Refused calls counted per peer and method and audited in aggregate,
    one record per `every_s`, so a flood of bad calls cannot become a flood
    of fsyncs, and is still on record with who sent it."""

    def __init__(self, audit: AuditLog, every_s: float = 5.0) -> None:
        self._audit = audit
        self._every = every_s
        self._counts: dict[tuple[str, str, bool], list[float | int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="refusals", daemon=True)
        self._thread.start()

    def add(self, peer: str, method: str, had_token: bool) -> None:
        now = time.time()
        with self._lock:
            entry = self._counts.setdefault((peer, method, had_token), [0, now, now])
            entry[0] += 1
            entry[2] = now
            first = entry[0] == 1
        if first:
            log.warning("refused a call without a valid token", extra={"fields": {"method": method, "peer": peer}})

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
        if counts:
            self._audit.append("auth_failures", {"refused": [
                {"peer": peer, "method": method, "had_token": had, "count": c, "first": first, "last": last}
                for (peer, method, had), (c, first, last) in sorted(counts.items())]})

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._every + 1)
        self.flush()


class _TokenAuth(grpc.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>`, counting them."""

    def __init__(self, token: str, refusals: Refusals) -> None:
        self._expected = f"Bearer {token}".encode()
        self._refusals = refusals

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(given).encode(), self._expected):
            return continuation(details)

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            self._refusals.add(peer_of(context), details.method, bool(str(given).removeprefix("Bearer").strip()))
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")

        handler = continuation(details)
        if handler is not None and handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


@dataclass
class Tls:
    cert_chain: bytes
    private_key: bytes


class Service:
    """The running gRPC server."""

    def __init__(self, store: AlertStore, hooks: NodeHooks, token: str, address: str,
                 tls: Tls | None = None, workers: int = MAX_STREAMS + 8, api_calls: ApiCallFeed | None = None) -> None:
        if not token:
            raise ValueError("a bearer token is required")
        self.stopping = threading.Event()
        self.refusals = Refusals(store.log)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
            interceptors=[_TokenAuth(token, self.refusals)],
            options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                     ("grpc.max_concurrent_streams", MAX_STREAMS * 2)],
            maximum_concurrent_rpcs=workers,
        )
        feed = ApiCallFeed() if api_calls is None else api_calls
        pb_grpc.add_GuardNodeServicer_to_server(_Servicer(store, feed, hooks, self.stopping), self.server)
        if tls is not None:
            creds = grpc.ssl_server_credentials([(tls.private_key, tls.cert_chain)])
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        self.server.start()

    def stop(self, grace: float = 1.0) -> None:
        self.stopping.set()
        self.server.stop(grace).wait()
        self.refusals.close()
