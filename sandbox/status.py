"""A finished sandbox's exit status as the command line reports it: the
command's own, 128+N for a signal, or 126 when Bastion stopped it. Light on
purpose: the CLI computes it from a node's reply without the result model."""

from __future__ import annotations

STOPPED_EXIT = 126  # exit status when Bastion stopped the command


def exit_status(stopped_by: str | None, signal: int | None, exit_code: int | None) -> int:
    if stopped_by is not None:
        return STOPPED_EXIT
    if signal:
        return 128 + signal
    return exit_code or 0
