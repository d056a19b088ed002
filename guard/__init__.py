"""Detection and response: profiles, detectors, verdicts, alerts, audit log,
the node's gRPC service and the TUI."""

import os

# The node forks sandboxes while gRPC threads run; gRPC's fork handlers then
# try to start threads inside the half-built sandbox child and spam its stderr.
# Bastion's children never use gRPC, so the handlers are not needed.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
