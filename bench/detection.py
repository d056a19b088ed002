"""Detection quality and speed of the guard, on this machine's kernel and
on the public trace sets in ../shared/datasets.

Records benign tool runs and the attack corpus through the sensor, trains a
profile on some benign variations, then prints, side by side: detection rate,
false positives on benign variations not used in training, AUC of STIDE, of
each detector and of their combination, detection-to-enforcement latency of
live runs, and scoring throughput on one core. Then the same AUC table for
each public dataset (trained on normal_train, scored on normal_test against
attack).

Run as root:  .venv/bin/python bench/detection.py [--datasets-only] [--datasets DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bastion import logs  # noqa: E402
from bastion.guarded import GuardedSandboxes, Recording, record_runs  # noqa: E402
from ebpf.sensor import Sensor, require_root  # noqa: E402
from guard import audit  # noqa: E402
from guard.profile import Profile  # noqa: E402
from guard.traces import Behaviour, read_trace_dir  # noqa: E402
from guard.training import Settings, train  # noqa: E402
from sandbox.policy import Policy  # noqa: E402
from tests.attacks import BENIGN, HERE, allowed_api, command, corpus_policy  # noqa: E402

FALSE_ALARM_RUNS = 200  # live runs of each benign tool, half of them beside a CPU-bound process
TRAIN_REPEAT = 15  # recorded runs of each training variation: enough held-out traces to calibrate
TRAIN_VARIANTS = {"json_csv.py": ["0", "5", "40", "300"], "sqlite.py": ["0", "10", "200", "1000"], "http_get.py": ["1", "3", "8"]}
UNSEEN_VARIANTS = {"json_csv.py": ["2", "17", "120"], "sqlite.py": ["3", "60", "500"], "http_get.py": ["2", "5"]}
# Containment cases (a full workdir, a tool outliving its supervisor) are not
# detection cases: tests/test_containment.py checks them.
NOT_DETECTION = {"__init__.py", "fill_workdir.py", "outlive_supervisor.py"}
ATTACKS = sorted(p.name for p in HERE.iterdir() if p.suffix in (".py", ".sh") and p.name not in NOT_DETECTION
                 and not p.name.startswith("test_"))


def benign_commands(variants: dict[str, list[str]], port: int, repeat: int) -> list[list[str]]:
    cmds = []
    for tool, args in variants.items():
        for arg in args:
            argv = [str(port), arg] if tool == "http_get.py" else [arg]
            cmds += [command(BENIGN / tool, argv)] * repeat
    return cmds


def attack_command(name: str, sink: int, api_port: int) -> list[str]:
    """The corpus convention: argv[1] where stolen data would go; the staging
    attack sends it to the allowed API (argv[2]) instead."""
    return command(HERE / name, [str(sink), str(api_port)])


def record(sensor: Sensor, cmds: list[list[str]], policy: Policy, label: str, progress: Progress) -> list[Recording]:
    task = progress.add_task(f"recording {label}", total=len(cmds))
    return record_runs(sensor, cmds, policy, on_done=lambda _r: progress.advance(task))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets",
                        help="a directory of trace sets (normal_train/, normal_test/, attack/ each)")
    parser.add_argument("--datasets-only", action="store_true", help="only the public trace sets (no root needed)")
    args = parser.parse_args()
    console = Console(width=150)  # the tables are wide; a log file gets them whole
    log = Path(tempfile.gettempdir()) / "bastion-bench-detection.log"
    logs.to_file(log)  # the guard's alerts on the attacks, as structured records, not on the terminal
    console.print(f"structured log: {log}")
    if not args.datasets_only:
        corpus(console)
    if args.datasets.is_dir():
        datasets(args.datasets, console)
    else:
        console.print(f"no trace sets at {args.datasets}")
    return 0


def corpus(console: Console) -> None:
    """The project's own tools and attack corpus, recorded and run live."""
    require_root()
    settings = Settings()
    with Sensor(ngram_n=settings.ngram_n) as sensor, allowed_api() as port, Progress(console=console) as progress:
        policy = corpus_policy(port)
        sink = 1 << 15  # a port nothing listens on: attacks that get out still fail
        train_runs = record(sensor, benign_commands(TRAIN_VARIANTS, port, TRAIN_REPEAT), policy, "training runs",
                            progress)
        unseen_runs = record(sensor, benign_commands(UNSEEN_VARIANTS, port, 2), policy, "unseen benign", progress)
        attack_runs = record(sensor, [attack_command(a, sink, port) for a in ATTACKS], policy, "attacks", progress)

        traces, behaviour = [], Behaviour()
        for run in train_runs:
            assert run.result.exit_status == 0, run.result.stderr
            traces += run.traces(settings.ngram_n)
            behaviour.update(run.behaviour())
        profile = train(traces, behaviour, "corpus-tools", settings, progress)

        # offline: each run scored from its full recorded stream
        benign_runs = [[t.syscalls for t in run.traces(settings.ngram_n)] for run in unseen_runs]
        attack_traces = [[t.syscalls for t in run.traces(settings.ngram_n)] for run in attack_runs]
        aucs, combined = auc_table(profile, benign_runs, attack_traces)
        threshold = profile.meta.thresholds.combined
        benign_flagged = int(np.sum(combined[:len(benign_runs)] > threshold))
        scores = Table(title=f"offline combined score of each run (threshold {threshold:.2f})")
        scores.add_column("run")
        scores.add_column("score", justify="right")
        for name, score in [*zip(ATTACKS, combined[len(benign_runs):]), *(("unseen benign", s) for s in combined[:len(benign_runs)])]:
            scores.add_row(name, f"{score:.2f}")
        console.print(scores)
        rate = throughput(profile, [t.syscalls for t in traces])

        # live: the guard with the profile loaded stops each attack in flight
        live = live_runs(sensor, profile, policy, port, sink, progress, console)
        alarms = false_alarms(sensor, profile, policy, port, progress)

    print_report(console, profile, live, benign_flagged, len(benign_runs), aucs, rate)
    print_false_alarms(console, alarms)


def stide(runs: Sequence[Sequence[np.ndarray]], profile: Profile) -> np.ndarray:
    """STIDE's score of each run: the share of its n-grams the profile never saw."""
    out = []
    for traces in runs:
        miss = [profile.ngrams.mismatches(t) for t in traces]
        out.append(float(np.concatenate(miss).mean()) if miss and sum(map(len, miss)) else 0.0)
    return np.array(out)


def auc_table(profile: Profile, normal: Sequence[Sequence[np.ndarray]], attack: Sequence[Sequence[np.ndarray]]
              ) -> tuple[dict[str, float], np.ndarray]:
    """AUC of STIDE, of each detector and of the combination, runs of one or
    more traces each scored by their most anomalous trace; and the combined
    score of each run (normal first)."""
    runs = [*normal, *attack]
    flat = [t for traces in runs for t in traces]
    owner = np.repeat(np.arange(len(runs)), [len(traces) for traces in runs])
    per_trace = profile.detector_scores(flat)
    per_trace["combined"] = profile.combine({k: v for k, v in per_trace.items()})

    def by_run(values: np.ndarray) -> np.ndarray:
        out = np.full(len(runs), -np.inf)
        np.maximum.at(out, owner, values)
        return np.where(np.isfinite(out), out, 0.0)

    labels = [0] * len(normal) + [1] * len(attack)
    aucs = {"STIDE": float(roc_auc_score(labels, stide(runs, profile)))}
    aucs |= {name: float(roc_auc_score(labels, by_run(v))) for name, v in per_trace.items()}
    return aucs, by_run(per_trace["combined"])


def throughput(profile: Profile, traces: list[np.ndarray]) -> float:
    """Syscalls per second through every detector, scoring batches of traces on one core."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        profile.score_traces(traces)
        return sum(map(len, traces)) / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)


def datasets(root: Path, console: Console) -> None:
    """The AUC table and throughput for each public trace set under root."""
    table = Table(title="public trace sets: AUC, normal_test against attack (trained on normal_train)")
    for col in ("set", "STIDE", "n-gram", "frequency", "sequence", "sequence mean", "combined", "train s", "syscalls/s"):
        table.add_column(col, justify="right" if col != "set" else "left")
    for d in sorted(p for p in root.iterdir() if (p / "normal_train").is_dir()):
        train_set = read_trace_dir(d / "normal_train")
        started = time.perf_counter()
        with Progress(console=console, transient=True) as progress:
            profile = train(train_set, Behaviour(), d.name, Settings(), progress)
        trained = time.perf_counter() - started
        normal = [[t.syscalls] for t in read_trace_dir(d / "normal_test")]
        attack = [[t.syscalls] for t in read_trace_dir(d / "attack")]
        aucs, _ = auc_table(profile, normal, attack)
        rate = throughput(profile, [t[0] for t in normal + attack])
        best_single = max(v for k, v in aucs.items() if k != "combined")

        def cell(name: str) -> str:
            v = aucs[name]
            mark = "[green]" if name == "combined" and v >= best_single else ""
            return f"{mark}{v:.4f}"
        table.add_row(d.name, *(cell(k) for k in ("STIDE", "ngram", "frequency", "sequence", "sequence_mean",
                                                  "combined")), f"{trained:.0f}", f"{rate / 1e3:.0f}k")
    console.print(table)


def live_runs(sensor: Sensor, profile: Profile, policy: Policy, port: int, sink: int, progress: Progress,
              console: Console) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "audit.jsonl"
        stopped, latencies, benign_alerts = {}, [], 0
        task = progress.add_task("live runs under the guard", total=len(ATTACKS) + 3)
        with GuardedSandboxes(sensor, audit.AuditLog(log), [profile]) as guarded:
            labels = {"agent": profile.meta.agent}
            for name in ATTACKS:
                run = guarded.run(attack_command(name, sink, port), policy, labels=labels)
                result, alerts = run.result, run.alerts
                first = f"{alerts[0].detector}: {alerts[0].rule}" if alerts else "-"
                refused = result.exit_status != 0 or bool(result.denials)
                mine = [a.latency_ms for a in alerts if a.latency_ms is not None]
                stopped[name] = (refused and bool(alerts), first, max(mine, default=None))
                latencies += mine
                progress.advance(task)
            for cmd in benign_commands({k: v[:1] for k, v in UNSEEN_VARIANTS.items()}, port, 1):
                for a in guarded.run(cmd, policy, labels=labels).alerts:
                    benign_alerts += 1
                    console.print(f"benign alert {a.detector}: {a.rule} score {a.score:.2f} {a.evidence}", markup=False)
                progress.advance(task)
            guarded.audit.close()
        records = audit.verify(log).records
    return {"stopped": stopped, "latencies": latencies, "benign_alerts": benign_alerts, "audited": records}


@contextmanager
def cpu_hog() -> Iterator[None]:
    """A CPU-bound process on the host beside the sandbox, for the length of the block."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def false_alarms(sensor: Sensor, profile: Profile, policy: Policy, port: int, progress: Progress) -> dict:
    """Every benign tool run FALSE_ALARM_RUNS times live under the guard, with
    inputs of every size in the range the training variations span, half of
    the runs beside a CPU-bound process: alerts per detector, and the
    enforced ones (quarantine and stronger)."""
    rng = np.random.default_rng(1)
    # the range the training variations span, every size in it; beyond it the work itself changes
    sizes = {"json_csv.py": (0, 400), "sqlite.py": (0, 1200), "http_get.py": (1, 8)}
    task = progress.add_task("benign runs for false alarms", total=FALSE_ALARM_RUNS * len(sizes))
    alerts: dict[str, dict[str, int]] = {tool: {} for tool in sizes}
    enforced: dict[str, int] = dict.fromkeys(sizes, 0)
    failed: dict[str, int] = dict.fromkeys(sizes, 0)
    with tempfile.TemporaryDirectory() as tmp, \
            GuardedSandboxes(sensor, audit.AuditLog(Path(tmp) / "audit.jsonl"), [profile]) as guarded:
        labels = {"agent": profile.meta.agent}
        for tool, (low, high) in sizes.items():
            for i in range(FALSE_ALARM_RUNS):
                size = str(int(rng.integers(low, high + 1)))
                argv = [str(port), size] if tool == "http_get.py" else [size]
                with cpu_hog() if i % 2 else nullcontext():
                    run = guarded.run(command(BENIGN / tool, argv), policy, labels=labels)
                for a in run.alerts:
                    alerts[tool][a.detector] = alerts[tool].get(a.detector, 0) + 1
                    enforced[tool] += a.action.enforced
                failed[tool] += run.result.exit_status != 0
                progress.advance(task)
    return {"alerts": alerts, "enforced": enforced, "failed": failed}


def print_false_alarms(console: Console, alarms: dict) -> None:
    detectors = ("rule", "novelty", "ngram", "frequency", "sequence")
    table = Table(title=f"false alarms per 1,000 benign runs ({FALSE_ALARM_RUNS} live runs of each tool, half beside "
                        "a CPU-bound process; target: 0 enforced, at most 1 alert)")
    for col in ("tool", *detectors, "enforced", "failed runs"):
        table.add_column(col, justify="left" if col == "tool" else "right")
    per_k = 1000 / FALSE_ALARM_RUNS
    for tool, counts in alarms["alerts"].items():
        table.add_row(tool, *(f"{counts.get(d, 0) * per_k:.0f}" for d in detectors),
                      f"{alarms['enforced'][tool] * per_k:.0f}", str(alarms["failed"][tool]))
    console.print(table)


def print_report(console: Console, profile: Profile, live: dict, benign_flagged: int, benign_runs: int,
                 aucs: dict[str, float], rate: float) -> None:
    table = Table(title="attacks under the guard (live)")
    for col in ("attack", "stopped and alerted", "first alert", "slowest enforcement"):
        table.add_column(col)
    for name, (ok, rule, slowest) in live["stopped"].items():
        table.add_row(name, "[green]yes[/]" if ok else "[bold red]NO[/]", rule,
                      "-" if slowest is None else f"{slowest:.2f} ms")
    console.print(table)

    lat = np.array(live["latencies"]) if live["latencies"] else np.zeros(1)
    detected = sum(ok for ok, _, _ in live["stopped"].values()) / len(live["stopped"])
    summary = Table(title=f"guard quality and speed (profile: {profile.meta.trained_on})")
    for col in ("measure", "value", "target"):
        summary.add_column(col)
    summary.add_row("attacks stopped and alerted", f"{detected:.0%}", "100%")
    summary.add_row("unseen benign runs above the combined threshold (offline)", f"{benign_flagged} of {benign_runs}", "0")
    summary.add_row("alerts on unseen benign runs (live)", str(live["benign_alerts"]), "0")
    for name, auc in aucs.items():
        summary.add_row(f"AUC {name}, attack vs unseen benign runs", f"{auc:.3f}",
                        "above every single detector" if name == "combined" else "")
    summary.add_row("detection-to-enforcement p50 / p99", f"{np.percentile(lat, 50):.2f} / {np.percentile(lat, 99):.2f} ms",
                    "p99 <= 10 ms")
    summary.add_row("scoring throughput, one core, all detectors", f"{rate / 1e3:.0f}k syscalls/s", ">= 200k/s")
    summary.add_row("audit records verified", str(live["audited"]), "all")
    console.print(summary)


if __name__ == "__main__":
    sys.exit(main())
