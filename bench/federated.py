"""Federated against local-only and centralized fine-tuning, side by side in
one run, on the shipped non-IID synthetic sites: task accuracy (exact tool
call) of the base model, of each site's local-only adapter, of the federated
adapter (Flower's simulation engine) and of centralized fine-tuning on the
pooled data with the same number of steps; bytes per round against the full
model's size, as serialized on the wire.
Run:  .venv/bin/python bench/federated.py [--rounds 12] [--secure-aggregation]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bastion.models import specialist_dir  # noqa: E402
from federated import task  # noqa: E402
from federated.simulation import simulate  # noqa: E402
from federated.sites import read_site  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--secure-aggregation", action="store_true", help="the federated run under SecAgg+")
    args = parser.parse_args()
    console = Console()
    base = specialist_dir(console)
    out = Path(tempfile.mkdtemp(prefix="bastion-fl-bench-"))

    with console.status("federated: Flower simulation engine, 3 sites"):
        report = simulate(base, 3, args.rounds, out / "fed", **{"local-steps": args.local_steps, "lr": args.lr,
                                                                 "secure-aggregation": args.secure_aggregation})
    names = ["hospital", "bank", "clinic"]
    sites = {n: (read_site(out / "fed" / "sites" / f"{n}-train.jsonl"), read_site(out / "fed" / "sites" / f"{n}-test.jsonl"))
             for n in names}
    steps = args.rounds * args.local_steps

    def evaluate(arrays: dict | None) -> dict[str, float]:  # type: ignore[type-arg]
        model, tokenizer = task.load(base)
        if arrays is not None:
            task.set_adapter(model, arrays)
        return {n: task.accuracy(model, tokenizer, sites[n][1]) for n in names}

    def finetune(pairs: list[tuple[str, str]], n_steps: int) -> dict:  # type: ignore[type-arg]
        model, tokenizer = task.load(base)
        task.train(model, tokenizer, pairs, steps=n_steps, lr=args.lr)
        return task.get_adapter(model)

    rows: dict[str, dict[str, float]] = {}
    with console.status("base, local-only and centralized fine-tuning, and evaluation"):
        rows["base model"] = evaluate(None)
        for n in names:
            rows[f"local-only {n}"] = evaluate(finetune(sites[n][0], steps))
        fed_label = "federated (SecAgg+)" if args.secure_aggregation else "federated"
        rows[fed_label] = evaluate(task.read_adapter(out / "fed" / "adapter"))
        pooled = [p for n in names for p in sites[n][0]]
        rows["centralized (pooled data)"] = evaluate(finetune(pooled, steps * len(names)))

    table = Table(title=f"exact tool-call accuracy on each site's held-out requests ({args.rounds} rounds x "
                        f"{args.local_steps} local steps)")
    table.add_column("adapter")
    for n in names:
        table.add_column(n, justify="right")
    table.add_column("mean", justify="right")
    table.add_column("others' data", justify="right")
    for label, acc in rows.items():
        own = label.removeprefix("local-only ") if label.startswith("local-only") else None
        others = [acc[n] for n in names if n != own] if own else []
        table.add_row(label, *[f"{acc[n]:.0%}" for n in names], f"{sum(acc.values()) / len(names):.0%}",
                      f"{sum(others) / len(others):.0%}" if others else "")
    console.print(table)
    fed_mean = sum(rows[fed_label].values()) / 3
    central_mean = sum(rows["centralized (pooled data)"].values()) / 3
    beats_local = all(
        sum(rows[fed_label][m] for m in names if m != n) > sum(rows[f"local-only {n}"][m] for m in names if m != n)
        for n in names)
    console.print(f"federated - centralized: {100 * (fed_mean - central_mean):+.1f} points (target >= -2); "
                  f"federated above every local-only adapter on the other sites' data: {beats_local}")
    rounds = report["rounds"]
    up, down = (sum(r[k] for r in rounds) / len(rounds) / len(names) for k in ("bytes_up", "bytes_down"))
    console.print(f"bytes per round per client on the wire: {up / 1024:.0f} KiB up ({up / report['model_bytes']:.2%} "
                  f"of the full model, {report['model_bytes'] / 1e6:.1f} MB; target <= 1%), {down / 1024:.0f} KiB down; "
                  f"the adapter itself is {report['adapter_bytes'] / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
