"""Formatting benchmark rows with the machine they ran on, and the one result layout.

Every saved result (`benchmarks/results/*.json`, layout in `benchmarks/results/README.md`)
starts with the same keys, :func:`provenance`'s: ``date``, ``machine``, ``commit``,
``config_hash`` (sha256 of the resolved config, None where no config is involved) and
``command``; the figures follow (``rows`` for timings, ``runs`` / ``summary`` for collected
training runs).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..provenance import git_commit, machine_description
from .common import BenchRow

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "config_hash",
    "file_hash",
    "git_commit",
    "machine_description",
    "markdown_table",
    "provenance",
    "runs_table",
    "with_provenance",
    "write_report",
]

RESULT_KEYS = ("date", "machine", "commit", "config_hash", "command")


def config_hash(config: BaseModel | None) -> str | None:
    """sha256 (hex) of the resolved config as `save_config` writes it (so the hash of a run's
    saved `config.yaml` is the same number); None for no config."""
    if config is None:
        return None
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    return hashlib.sha256(text.encode()).hexdigest()


def file_hash(path: str | Path) -> str | None:
    """sha256 (hex) of a saved config file's bytes (a run's `config.yaml`); None if absent."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def provenance(
    command: str | None = None, *, device: str = "cpu", config_hash: str | None = None
) -> dict[str, Any]:
    """The keys every saved result starts with, in this order (`RESULT_KEYS`); `command`
    defaults to this process's command line."""
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(device),
        "commit": git_commit(),
        "config_hash": config_hash,
        "command": command if command is not None else "python " + " ".join(sys.argv),
    }


def with_provenance(result: dict[str, Any], header: dict[str, Any]) -> dict[str, Any]:
    """`result` in the one layout: the `RESULT_KEYS` first (the result's own values where it
    has them, else `header`'s), then its figures."""
    out = {k: result.get(k, header.get(k)) for k in RESULT_KEYS}
    out.update({k: v for k, v in result.items() if k not in out})
    return out


def markdown_table(rows: list[BenchRow]) -> str:
    lines = [
        "| group | what | input | ms | vs | ratio | note |",
        "|---|---|---|---:|---|---:|---|",
    ]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        lines.append(
            f"| {r.group} | {r.name} | {r.shape} | {r.ms:.1f} | {r.baseline or ''} | {ratio} | {r.note} |"
        )
    return "\n".join(lines)


def write_report(
    rows: list[BenchRow],
    out: str | Path,
    device: str,
    *,
    command: str | None = None,
    config_hash: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Writes `rows` as JSON in the one result layout (:func:`provenance`'s keys, then `extra`,
    then ``rows``) beside a Markdown table."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = provenance(command, device=device, config_hash=config_hash)
    result = {**meta, **(extra or {}), "rows": [r.as_dict() for r in rows]}
    out.write_text(json.dumps(result, indent=2) + "\n")
    config = f", config sha256 {meta['config_hash']}" if meta["config_hash"] else ""
    out.with_suffix(".md").write_text(
        f"{meta['date']}, {meta['machine']}, commit {meta['commit']}{config}\n\n"
        f"`{meta['command']}`\n\n{markdown_table(rows)}\n"
    )
    return out


def runs_table(paths: list[str | Path], labels: list[str] | None = None) -> str:
    """Several saved runs of one benchmark (their JSON files, as :func:`write_report` writes
    them) side by side: per row, the milliseconds and the ratio against the row's baseline in
    each run, and the median ratio. Rows are matched by (group, name, input); a row missing
    from a run shows as blank. The header names each run's file, date and machine."""
    labels = labels or [chr(ord("A") + i) for i in range(len(paths))]
    if len(labels) != len(paths):
        raise ValueError(f"{len(paths)} runs but {len(labels)} labels")
    runs = []
    for path in paths:
        try:
            runs.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the benchmark run ({exc})") from exc
        if "rows" not in runs[-1]:
            raise ValueError(f"{path}: no 'rows' (not a tools/benchmark.py report)")
    keys: list[tuple[str, str, str]] = []
    by_run = []
    for run in runs:
        table = {}
        for row in run["rows"]:
            key = (row["group"], row["name"], row["shape"])
            table[key] = row
            if key not in keys:
                keys.append(key)
        by_run.append(table)
    lines = [
        f"- {label}: `{path}`, {run.get('date', '?')}, {run.get('machine', '?')}"
        for label, path, run in zip(labels, paths, runs)
    ]
    lines += ["", "| group | what | " + " | ".join(f"{lb} ms" for lb in labels) + " | vs | "
              + " | ".join(f"{lb} ratio" for lb in labels) + " | median ratio |"]  # fmt: skip
    lines.append("|---|---|" + "---:|" * len(labels) + "---|" + "---:|" * (len(labels) + 1))
    for key in keys:
        rows = [table.get(key) for table in by_run]
        ms = [f"{r['ms']:.1f}" if r else "" for r in rows]
        ratios = [r["ratio"] for r in rows if r and r.get("ratio") is not None]
        base = next((r["baseline"] for r in rows if r and r.get("baseline")), "")
        cells = [f"{r['ratio']:.2f}x" if r and r.get("ratio") is not None else "" for r in rows]
        median = f"{sorted(ratios)[len(ratios) // 2]:.2f}x" if len(ratios) % 2 else (
            f"{(sorted(ratios)[len(ratios) // 2 - 1] + sorted(ratios)[len(ratios) // 2]) / 2:.2f}x"
            if ratios else ""
        )  # fmt: skip
        lines.append(
            f"| {key[0]} | {key[1]} | " + " | ".join(ms) + f" | {base} | " + " | ".join(cells)
            + f" | {median} |"
        )  # fmt: skip
    return "\n".join(lines)
