"""Judging an API call the agent's profile did not expect: to an endpoint it
never saw, while the kernel holds it (its distance to the nearest call the
profile learned on the same host, over the method, the path template and
the body size), or to a learned endpoint more often in one run than any
benign run called it (the kernel counts, and passes the call)."""

from __future__ import annotations

import math

from ebpf.api import path_segments, template
from guard.traces import split_endpoint_key

ALERT_AT = 0.25  # below: allowed quietly; up to 1: allowed with an alert; 1 and above: the policy's response
METHOD_WEIGHT = 0.5
BODY_WEIGHT = 0.25  # per doubling beyond the largest body the endpoint was seen with
NO_LEARNED_CALL = 2.0
# A run making this many times the most calls a benign run made to an endpoint
# scores 1: the policy's response. Fewer than ALERT_AT's share of it pass quietly.
STOP_FACTOR = 8


def _distance(method: str, segments: list[str], body: int, l_method: str, l_segments: list[str],
              l_body: int) -> float:
    shared = 0
    for a, b in zip(segments, l_segments):
        if a != b:
            break
        shared += 1
    path = 1.0 - shared / max(len(segments), len(l_segments), 1)
    growth = max(0.0, math.log2((body + 1) / (l_body + 1)))
    return (METHOD_WEIGHT if method != l_method else 0.0) + path + BODY_WEIGHT * growth


def unseen_call_score(endpoints: dict[str, int], method: str, host: str, target: str, body: int) -> float:
    """0 for a call like one learned on the same host; 1 or more for one
    unlike all of them, or on a host where no call was learned."""
    segments = path_segments(template(target))
    scores = []
    for key, learned_body in endpoints.items():
        l_method, l_host, l_path = split_endpoint_key(key)
        if l_host == host:
            scores.append(_distance(method, segments, body, l_method, path_segments(l_path), learned_body))
    return min(scores, default=NO_LEARNED_CALL)


def many_calls_score(most: int, made: int) -> float:
    """0 at the most calls one benign run made to the endpoint, 1 at
    STOP_FACTOR times as many; in between by their ratio's logarithm."""
    return math.log2(max(made, 1) / most) / math.log2(STOP_FACTOR)


def call_budget(most: int, made: int = 0) -> int:
    """The calls the kernel lets a run make before the guard hears of the
    next: up to the count at which the verdict on `made` calls would next
    change (an alert at ALERT_AT, the response at 1). Never 0, which the
    kernel reads as no budget."""
    next_at = ALERT_AT if many_calls_score(most, made) < ALERT_AT else 1.0
    return max(1, math.ceil(most * STOP_FACTOR ** next_at) - 1)
