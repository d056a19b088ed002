"""Detection quality and speed of the guard, on this machine's kernel.

Records benign tool runs and the attack corpus through the sensor, trains a
profile on some benign variations, then prints, side by side: detection rate,
false-positive windows on benign variations not used in training, AUC,
detection-to-enforcement latency of live runs, and scoring throughput on one
core.  Run as root:  .venv/bin/python bench/detection.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bastion.guarded import GuardedSandboxes, Recording, record_runs  # noqa: E402
from ebpf.sensor import Sensor, require_root  # noqa: E402
from guard import audit  # noqa: E402
from guard.profile import Profile  # noqa: E402
from guard.traces import Behaviour  # noqa: E402
from guard.training import Settings, train  # noqa: E402
from sandbox.policy import Policy  # noqa: E402
from tests.attacks import BENIGN, HERE, allowed_api, command, corpus_policy  # noqa: E402

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
    require_root()
    console = Console()
    settings = Settings()
    with Sensor(ngram_n=settings.ngram_n) as sensor, allowed_api() as port, Progress(console=console) as progress:
        policy = corpus_policy(port)
        sink = 1 << 15  # a port nothing listens on: attacks that get out still fail
        train_runs = record(sensor, benign_commands(TRAIN_VARIANTS, port, 5), policy, "training runs", progress)
        unseen_runs = record(sensor, benign_commands(UNSEEN_VARIANTS, port, 2), policy, "unseen benign", progress)
        attack_runs = record(sensor, [attack_command(a, sink, port) for a in ATTACKS], policy, "attacks", progress)

        traces, behaviour = [], Behaviour()
        for run in train_runs:
            assert run.result.exit_status == 0, run.result.stderr
            traces += run.traces(settings.ngram_n)
            behaviour.update(run.behaviour())
        profile = train(traces, behaviour, "corpus-tools", settings, progress)

        # offline: windows and traces scored from the full recorded streams
        def run_scores(runs: list[Recording]) -> tuple[list[float], np.ndarray]:
            per_run, windows = [], []
            for run in runs:
                w = [profile.score(t.syscalls) for t in run.traces(settings.ngram_n) if len(t.syscalls) >= settings.ngram_n]
                windows += w
                per_run.append(float(max((x.max() for x in w), default=0.0)))
            return per_run, np.concatenate(windows) if windows else np.zeros(0)

        benign_scores, benign_windows = run_scores(unseen_runs)
        attack_scores, _ = run_scores(attack_runs)
        threshold = profile.meta.thresholds.combined
        fp_windows = float(np.mean(benign_windows > threshold))
        scores = Table(title="offline score of each run (its most anomalous window; threshold 1.0)")
        scores.add_column("run")
        scores.add_column("score", justify="right")
        for name, score in [*zip(ATTACKS, attack_scores), *(("unseen benign", s) for s in benign_scores)]:
            scores.add_row(name, f"{score:.2f}")
        console.print(scores)
        auc = roc_auc_score([0] * len(benign_scores) + [1] * len(attack_scores), benign_scores + attack_scores)

        # throughput: every recorded syscall scored again, one thread
        all_syscalls = [t.syscalls for t in traces] * 20
        started = time.perf_counter()
        scored = sum(len(profile.score(s)) and len(s) for s in all_syscalls)
        rate = scored / (time.perf_counter() - started)

        # live: the guard with the profile loaded stops each attack in flight
        live = live_runs(sensor, profile, policy, port, sink, progress, console)

    print_report(console, profile, live, fp_windows, auc, rate, len(benign_windows))
    return 0


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


def print_report(console: Console, profile: Profile, live: dict, fp_windows: float, auc: float, rate: float,
                 windows: int) -> None:
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
    summary.add_row(f"false-positive windows, unseen benign ({windows} windows)", f"{fp_windows:.2%}", "<= 1%")
    summary.add_row("alerts on unseen benign runs (live)", str(live["benign_alerts"]), "0")
    summary.add_row("AUC, attack vs unseen benign runs", f"{auc:.3f}", ">= 0.93")
    summary.add_row("detection-to-enforcement p50 / p99", f"{np.percentile(lat, 50):.2f} / {np.percentile(lat, 99):.2f} ms",
                    "p99 <= 10 ms")
    summary.add_row("scoring throughput, one core", f"{rate / 1e6:.2f} M syscalls/s", ">= 0.2 M/s")
    summary.add_row("audit records verified", str(live["audited"]), "all")
    console.print(summary)


if __name__ == "__main__":
    sys.exit(main())
