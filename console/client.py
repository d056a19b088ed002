"""A client of the guard node's service, for the TUI and the command line:
every call carries the bearer token; TLS when a CA certificate is given."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import grpc

from console.proto import bastion_pb2 as pb
from console.proto import bastion_pb2_grpc as pb_grpc


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation: Any, details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)


class NodeClient:
    def __init__(self, address: str, token: str, ca_cert: bytes | None = None, server_name: str | None = None) -> None:
        if ca_cert is not None:
            options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
            channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca_cert), options)
        else:
            channel = grpc.insecure_channel(address)
        self.channel = channel
        self.stub = pb_grpc.GuardNodeStub(grpc.intercept_channel(channel, _Bearer(token)))

    def watch(self, after_id: str = "") -> Iterator[pb.AlertMessage]:
        """Alerts after `after_id`, then live ones; cancel() the iterator to stop."""
        return self.stub.WatchAlerts(pb.WatchRequest(after_id=after_id))  # type: ignore[no-any-return]

    def watch_api_calls(self, from_seq: int = 0) -> Iterator[pb.ApiCallMessage]:
        """API calls from place `from_seq` in the node's stream among those
        it keeps, then live ones; cancel() the iterator to stop."""
        return self.stub.WatchApiCalls(pb.WatchApiCallsRequest(from_seq=from_seq))  # type: ignore[no-any-return]

    def alerts(self, **filters: Any) -> list[pb.AlertMessage]:
        return list(self.stub.ListAlerts(pb.ListRequest(**filters)).alerts)

    def acknowledge(self, alert_id: str, analyst: str, comment: str = "") -> pb.AlertMessage:
        return self.stub.Acknowledge(pb.ReviewRequest(alert_id=alert_id, analyst=analyst, comment=comment)).alert

    def resolve(self, alert_id: str, analyst: str, comment: str = "") -> pb.AlertMessage:
        return self.stub.Resolve(pb.ReviewRequest(alert_id=alert_id, analyst=analyst, comment=comment)).alert

    def status(self) -> pb.Status:
        return self.stub.GetStatus(pb.StatusRequest())

    def update_policy(self, name: str, yaml_text: str) -> str:
        return str(self.stub.UpdatePolicy(pb.PolicyRequest(name=name, yaml=yaml_text)).name)

    def run(self, request: pb.RunRequest, timeout: float | None = None) -> str:
        return str(self.stub.RunSandbox(request, timeout=timeout).result_json)

    def close(self) -> None:
        self.channel.close()
