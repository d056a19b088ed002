"""bastion package."""

# guard first, before anything imports grpc: it turns gRPC's fork handlers off,
# and the node forks sandboxes while gRPC threads run (see guard/__init__.py)
import console  # noqa: F401
