"""The malicious-behaviour corpus: small programs run inside a sandbox."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from bastion.local_api import LocalApi, serve
from sandbox.policy import Network, Policy, load_policy

HERE = Path(__file__).parent
BENIGN = HERE.parent / "benign"
POLICY = HERE / "policy.yaml"


def command(script: Path, args: Sequence[str] = ()) -> list[str]:
    """Run a corpus script inside a sandbox by its source, not its path: the
    sandbox may not read the repository."""
    source = script.read_text()
    if script.suffix == ".sh":
        return ["/bin/sh", "-c", source]
    return ["/usr/bin/python3", "-c", source, *args]


_apis: list[LocalApi] = []  # every allowed API served so far


def api_requests() -> list[str]:
    """The paths the allowed APIs have been asked for."""
    return [p for api in _apis for p in api.paths]


@contextlib.contextmanager
def allowed_api() -> Iterator[int]:
    """The one local API the corpus policy allows; yields its port."""
    with serve() as api:
        _apis.append(api)
        yield api.port


def corpus_policy(api_port: int) -> Policy:
    """The corpus policy with the allowed API's real port."""
    base = load_policy(POLICY)
    assert isinstance(base.network, Network)
    allow = [base.network.allow[0].model_copy(update={"ports": [api_port]})]
    return base.model_copy(update={"network": base.network.model_copy(update={"allow": allow})})
