"""The records API, its policy and the tool call that the API-call tests share."""

from __future__ import annotations

from agents.tools import TOOLS
from bastion.guarded import GuardedRun, GuardedSandboxes
from bastion.local_api import LocalApi, api_rules
from sandbox.policy import Destination, Network, Policy, parse_policy

LABELS = {"agent": "clinic", "step": "task-7/2", "tool_call": "http_request"}


def api_policy(api: LocalApi) -> Policy:
    """The records API's endpoints allowed, on both its ports, its CA trusted."""
    return parse_policy(api_policy_yaml(api), "records-api policy")


def allowing(policy: Policy, allow: list[Destination]) -> Policy:
    """The same policy with these destinations allowed instead of its own."""
    assert isinstance(policy.network, Network)
    return policy.model_copy(update={"network": policy.network.model_copy(update={"allow": allow})})


def ip_port_only(policy: Policy) -> Policy:
    """The same policy with its destinations' API rules removed: allowed by IP:port only."""
    assert isinstance(policy.network, Network)
    return allowing(policy, [d.model_copy(update={"api": []}) for d in policy.network.allow])


def api_policy_yaml(api: LocalApi) -> str:
    rules = "\n".join(f"        - {r}" for r in api_rules()).replace("'", '"')
    return f"""
name: records-api
network:
  allow:
    - host: 127.0.0.1
      ports: [{api.port}, {api.tls_port}]
      api:
{rules}
filesystem:
  read_only: [/usr, /bin, /lib, /lib64, /etc, /dev/urandom, {api.ca_file.parent}]
env:
  set: {{HOME: /nonexistent, SSL_CERT_FILE: {api.ca_file}, CURL_CA_BUNDLE: {api.ca_file}}}
limits: {{wall_timeout_s: 15, pids: 32}}
on_violation: kill
"""


def base(api: LocalApi, tls: bool) -> str:
    return f"https://127.0.0.1:{api.tls_port}" if tls else f"http://127.0.0.1:{api.port}"


def http_request_command(method: str, url: str, body: dict[str, object] | None = None) -> list[str]:
    tool = TOOLS["http_request"]
    return tool.command(tool.args.model_validate({"method": method, "url": url, "body": body}))


def request(guarded: GuardedSandboxes, policy: Policy, method: str, url: str,
            body: dict[str, object] | None = None) -> GuardedRun:
    return guarded.run(http_request_command(method, url, body), policy, labels=LABELS)
