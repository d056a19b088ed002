"""The sites' own data: each site reads one JSONL of {prompt, completion}
pairs, the format of the agents' interaction log. The shipped synthetic
sites differ in what they hold (non-IID): a hospital, a bank, a clinic
that mostly handles referral documents."""

from __future__ import annotations

import json
from pathlib import Path

from agents import domain
from agents.prompt import END, render

# which kinds of task each synthetic site holds
SITE_TOOLS = {
    "hospital": {"lookup_code", "triage_score", "write_note"},
    "bank": {"parse_loan_application", "debt_to_income", "query_ledger"},
    "clinic": {"lookup_code", "http_get", "python", "query_ledger"},
}


# how each site's staff phrase their requests: styles the base model never saw,
# which is what the site's data can teach the shared adapter
SITE_STYLE = {
    "hospital": lambda text: f"pls, from the ward desk: {text} thanks",
    "bank": lambda text: f"Re: ticket {sum(map(ord, text)) % 9000 + 1000} - {text} - regards, loans team",
    "clinic": lambda text: f"FW: {text} (sent from the clinic tablet)",
}


def site_names(n: int) -> list[str]:
    names = list(SITE_TOOLS)
    return [names[i % len(names)] + ("" if i < len(names) else f"-{i}") for i in range(n)]


def synthetic_pairs(site: str, n: int, seed: int) -> list[tuple[str, str]]:
    kind = site.split("-")[0]
    wanted, style = SITE_TOOLS[kind], SITE_STYLE[kind]
    pairs = []
    for task in domain.tasks(n * 12, seed):
        if task.tool in wanted:
            pairs.append((render(style(task.text)), f" {task.call()} {END}"))
        if len(pairs) == n:
            break
    return pairs


def write_site(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for prompt, completion in pairs:
            fh.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    return path


def read_site(path: Path) -> list[tuple[str, str]]:
    """A site's pairs; an interaction log's LM records are read the same way."""
    pairs = []
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                pairs.append((str(record["prompt"]), str(record["completion"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{lineno}: not a prompt/completion record") from None
    if not pairs:
        raise ValueError(f"{path}: holds no examples")
    return pairs


def make_sites(directory: Path, n_sites: int, train: int = 240, test: int = 60) -> dict[str, tuple[Path, Path]]:
    """Train and test files for each synthetic site."""
    out = {}
    for i, name in enumerate(site_names(n_sites)):
        pairs = synthetic_pairs(name, train + test, seed=1000 + i)
        out[name] = (write_site(directory / f"{name}-train.jsonl", pairs[:train]),
                     write_site(directory / f"{name}-test.jsonl", pairs[train:]))
    return out
