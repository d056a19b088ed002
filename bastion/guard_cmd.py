"""`bastion guard train|score` and `bastion audit verify`: profiles and the
audit log from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from guard.traces import Behaviour, Trace


def _inputs(args: argparse.Namespace, ngram_n: int) -> tuple[list[Trace], Behaviour]:
    from guard.traces import Behaviour, read_event_files, read_trace_dir

    if args.traces:
        return read_trace_dir(args.traces), Behaviour()
    return read_event_files(args.events, ngram_n)


def _train(args: argparse.Namespace, console: Console) -> int:
    from rich.progress import Progress

    from common.files import check_output
    from guard.training import Settings, train

    check_output(args.out)  # before the work, not after
    settings = Settings(ngram_n=args.ngram, window=args.window, stride=args.window // 2, fpr_target=args.fpr,
                        sequence=not args.no_sequence)
    traces, behaviour = _inputs(args, settings.ngram_n)
    with Progress(console=console, transient=True) as progress:
        profile = train(traces, behaviour, args.agent, settings, progress)
    profile.save(args.out)
    t = profile.meta.thresholds
    sequence = f", sequence {t.sequence:.3f} nats (trace mean {t.sequence_mean:.3f})" if t.sequence else ""
    console.print(f"profile for {args.agent}: {profile.meta.trained_on}; thresholds n-gram {t.ngram:.3f}, "
                  f"frequency {t.frequency:.3f}{sequence} -> {args.out}", soft_wrap=True)
    return 0


def _score(args: argparse.Namespace, console: Console) -> int:
    import csv

    from rich.progress import Progress

    from common.files import open_output
    from guard.profile import load_profile
    from guard.training import score_traces

    profile = load_profile(args.profile)
    normal = 0
    if args.normal:
        from guard.traces import read_trace_dir

        if not args.attack:
            raise ValueError("--normal: give --attack too, the traces to tell apart from the normal ones")
        traces = read_trace_dir(args.normal)
        normal = len(traces)
        traces += read_trace_dir(args.attack)
    else:
        traces, _ = _inputs(args, profile.meta.ngram_n)
    with Progress(console=console, transient=True) as progress:
        rows = score_traces(profile, traces, progress, total=len(traces))
    with open_output(args.out) as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "score"])
        writer.writerows((name, f"{score:.6f}") for name, score in rows)
    flagged = sum(score > profile.meta.thresholds.combined for _, score in rows)
    console.print(f"{len(rows)} traces scored, {flagged} above the threshold "
                  f"{profile.meta.thresholds.combined:g} -> {args.out}", soft_wrap=True)
    if normal:
        from sklearn.metrics import roc_auc_score

        labels = [0] * normal + [1] * (len(rows) - normal)
        auc = roc_auc_score(labels, [score for _, score in rows])
        console.print(f"AUC {auc:.4f}: {normal} normal traces ({args.normal}) against {len(rows) - normal} "
                      f"attack traces ({args.attack})", soft_wrap=True)
    return 0


def _verify(args: argparse.Namespace, console: Console) -> int:
    """0: intact and every record covered by a signed checkpoint (or no key
    given); 1: intact, but records after the last checkpoint could have been
    cut off; 2: broken (one line naming where)."""
    from guard.audit import load_public_key, read_heads, verify

    key = load_public_key(args.key) if args.key else None
    if args.heads and key is None:
        raise ValueError("--heads: signed heads are checked with the node's key: give --key too")
    heads = read_heads(args.heads, key) if args.heads else []
    report = verify(args.file, key, heads)
    records = f"{args.file}: {report.records} records"
    if report.anchored:
        records += f" (and {report.anchored} in the allowed calls' logs it anchors)"
    if key is None:
        console.print(f"{records}, chain intact (signatures not checked: no --key)", soft_wrap=True)
        return 0
    summary = f"{records}, chain intact, {report.checkpoints} signed checkpoints"
    if heads:
        summary += f", all {len(heads)} heads sent out of the host present"
    if report.uncovered:
        where = f"after seq {report.covered - 1}" if report.covered else "anywhere: no signed checkpoint"
        console.print(f"{summary}; possibly truncated {where} ({report.uncovered} records not covered "
                      f"by a signed checkpoint: a crash, or a cut)", style="yellow", markup=False, highlight=False,
                      soft_wrap=True)
        return 1
    console.print(summary, soft_wrap=True)
    return 0


def _guarded(func):  # type: ignore[no-untyped-def]
    """Bad input is one line naming the file, and exit status 2."""

    def run(args: argparse.Namespace, console: Console) -> int:
        try:
            return int(func(args, console))
        except ValueError as exc:  # every input error of theirs is one: a FIFO, a bad field, a broken chain
            console.print(f"bastion: {exc}", style="bold red", markup=False, highlight=False, soft_wrap=True)
            return 2

    return run


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    guard = sub.add_parser("guard", help="behaviour profiles").add_subparsers(dest="action", required=True)
    for name, func, helptext in (("train", _train, "learn a profile from benign runs"),
                                 ("score", _score, "score traces against a profile (CSV path,score)")):
        p = guard.add_parser(name, help=helptext)
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--from", dest="events", type=Path, nargs="+", help="recorded sensor events (JSONL)")
        source.add_argument("--traces", type=Path, help="a directory of traces: whitespace-separated syscall numbers")
        if name == "score":
            source.add_argument("--normal", type=Path, help="a directory of normal traces; with --attack, prints the AUC")
            p.add_argument("--attack", type=Path, help="a directory of attack traces (with --normal)")
        p.add_argument("--out", type=Path, required=True, help="the profile (train) or the scores CSV (score)")
        p.set_defaults(func=_guarded(func))
        if name == "train":
            p.add_argument("--agent", default="default", help="whose profile this is (sandboxes labelled agent=NAME)")
            p.add_argument("--ngram", type=int, default=6, help="n-gram length (the sensor's; default 6)")
            p.add_argument("--window", type=int, default=100, help="syscalls per scoring window, at most 1024 (default 100)")
            p.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate (default 0.01)")
            p.add_argument("--no-sequence", action="store_true",
                           help="leave out the syscall language model (trains in seconds, not a minute or two)")
        else:
            p.add_argument("--profile", type=Path, required=True)

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(dest="action", required=True)
    p = audit.add_parser("verify", help="check the hash chain and signed checkpoints; names the first bad record")
    p.add_argument("file", type=Path)
    p.add_argument("--key", type=Path, help="the node's public key (node.key.pub): checks every signed checkpoint")
    p.add_argument("--heads", type=Path, help="signed heads the node sent out of the host: each must be in the log")
    p.set_defaults(func=_guarded(_verify))
