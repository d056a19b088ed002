"""A federated fine-tuning run of the tool-calling adapter across sites, on a
real local SuperLink and SuperNodes (default) or on Flower's simulation
engine, with its round table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bastion.certs import make_certs
from bastion.models import specialist_dir


def baseline(base: Path, tests: dict[str, Path]) -> dict[str, float]:
    """Each site's accuracy of the base model (a fresh adapter changes nothing)."""
    from federated import task
    from federated.sites import read_site

    model, tokenizer = task.load(base)
    return {name: task.accuracy(model, tokenizer, read_site(path)) for name, path in tests.items()}


def round_table(report: dict[str, Any], sites: list[str], before: dict[str, float]) -> Table:
    table = Table(title="federated rounds (accuracy: exact tool call on each site's held-out requests)")
    table.add_column("round", justify="right")
    table.add_column("train loss", justify="right")
    for s in sites:
        table.add_column(f"acc {s}", justify="right")
    table.add_column("up", justify="right")
    table.add_column("down", justify="right")
    table.add_row("base", "-", *[f"{before[s]:.0%}" for s in sites], "-", "-")
    for r in report["rounds"]:
        ev, tr = r["evaluate"], r["train"]
        table.add_row(str(r["round"]), f"{tr.get('train-loss', float('nan')):.3f}",
                      *[f"{ev.get(f'accuracy-site-{i}', float('nan')):.0%}" for i in range(len(sites))],
                      f"{r['bytes_up'] / 1024:.0f} KiB", f"{r['bytes_down'] / 1024:.0f} KiB")
    return table


def gain_table(report: dict[str, Any], sites: list[str], sizes: dict[str, int]) -> Table:
    """Each site's exact tool calls before and after, with 95% Wilson intervals."""
    from common.stats import share_with_interval

    last = report["rounds"][-1]["evaluate"] if report["rounds"] else {}
    table = Table(title="each site's held-out requests: base model against the federated adapter")
    for col in ("site", "requests", "base [95% CI]", "federated [95% CI]", "gain"):
        table.add_column(col, justify="right")
    for i, s in enumerate(sites):
        n = sizes[s]
        before, after = round(report["before"][s] * n), round(last.get(f"accuracy-site-{i}", 0.0) * n)
        table.add_row(s, str(n), share_with_interval(before, n), share_with_interval(after, n),
                      f"{(after - before) / n:+.1%}")
    return table


def run_federated(console: Console, sites: int, rounds: int, out: Path, simulation: bool,
                  poisoned: tuple[int, ...] = (), **options: Any) -> dict[str, Any]:
    from federated.sites import site_names

    base = specialist_dir(console)
    out.mkdir(parents=True, exist_ok=True)
    run_config = {"base-model": str(base), "output-dir": str(out), "num-server-rounds": rounds, **options}
    with Progress(console=console) as progress:
        task = progress.add_task(f"{sites} sites, {rounds} rounds ({'simulation' if simulation else 'SuperLink + SuperNodes over TLS'})",
                                 total=rounds)
        if simulation:
            from federated.simulation import simulate

            report = simulate(base, sites, rounds, out, poisoned=list(poisoned), **options)
        else:
            from federated.deployment import LocalDeployment

            certs = make_certs(out / "certs")
            with LocalDeployment(out / "deployment", sites, (certs.ca_cert, certs.server_cert, certs.server_key),
                                 poisoned) as deployment:
                report = deployment.run(run_config, on_round=lambda r: progress.update(task, completed=r - 1))
        progress.update(task, completed=rounds)
    names = site_names(sites)
    tests = {n: out / ("sites" if simulation else "deployment/sites") / f"{n}-test.jsonl" for n in names}
    report["before"] = baseline(base, tests)
    from federated.sites import read_site
    from federated.task import heldout_loss

    heldout = [pair for path in tests.values() for pair in read_site(path)]
    report["heldout_loss"] = (heldout_loss(base, None, heldout), heldout_loss(base, out / "adapter", heldout))
    report["test_sizes"] = {n: len(read_site(path)) for n, path in tests.items()}
    console.print(round_table(report, names, report["before"]))
    console.print(gain_table(report, names, report["test_sizes"]))
    if report["secure_aggregation"]:
        readable = sum(r["readable_updates"] for r in report["rounds"])
        console.print(f"SecAgg+: the server read {readable} of the sites' updates; it saw only their masked sum")
    for rej in report["rejections"]:
        console.print(f"[bold red]rejected[/] round {rej['round']}: {rej['reason']}")
    up = sum(r["bytes_up"] for r in report["rounds"]) / max(1, len(report["rounds"])) / sites
    console.print(f"on the wire {up / 1024:.0f} KiB up per site per round = {up / report['model_bytes']:.2%} of the "
                  f"model (the adapter: {report['adapter_bytes'] / 1024:.0f} KiB); aggregated adapter (peft, "
                  f"safetensors): {out / 'adapter'}")
    return report
