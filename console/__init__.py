"""The analyst's side: the node's gRPC service and its client, the alert
store, the TUI, and the Falco and Prometheus outputs. Joined to the guard
only through alerts and the audit log."""

import os

# The node forks sandboxes while gRPC threads run; gRPC's fork handlers then
# try to start threads inside the half-built sandbox child and spam its stderr.
# Bastion's children never use gRPC, so the handlers are not needed.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
