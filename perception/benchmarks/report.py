"""Formatting benchmark rows with the machine they ran on."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch

from .common import BenchRow


def machine_description(device: str = "cpu") -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


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


def write_report(rows: list[BenchRow], out: str | Path, device: str) -> Path:
    """Writes `rows` as JSON (with date, machine and command) beside a Markdown table."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(device),
        "command": "python " + " ".join(sys.argv),
    }
    out.write_text(json.dumps({**meta, "rows": [r.as_dict() for r in rows]}, indent=2))
    out.with_suffix(".md").write_text(
        f"{meta['date']}, {meta['machine']}\n\n`{meta['command']}`\n\n{markdown_table(rows)}\n"
    )
    return out
