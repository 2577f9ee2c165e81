"""Timing and result rows shared by every benchmark."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class BenchRow:
    """One measured figure.

    `ratio` is `baseline_ms / ms` (above 1: faster than the baseline), None for the baseline
    itself or where no baseline applies.
    """

    group: str  # e.g. "sparse_conv", "bev_pool"
    name: str  # what was timed, e.g. "ours forward"
    shape: str  # the input, in words, e.g. "120k voxels, 6-layer stack"
    ms: float  # median wall time in milliseconds
    baseline: str | None = None  # the name of the row it is compared with
    ratio: float | None = None
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(
    fn: Callable[[], object],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 1,
    repeat: int = 5,
) -> float:
    """Median wall time of `fn()` in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    device: torch.device | str = "cpu",
    rounds: int = 5,
    repeat: int = 5,
) -> dict[str, float]:
    """Median wall time in ms of each of `fns`, timed in `rounds` rounds of `repeat` calls each,
    the functions taking turns within every round (one warm-up call each first): a drift in the
    machine's speed during the measurement hits every function alike."""
    for fn in fns.values():
        fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(repeat):
                start = time.perf_counter()
                fn()
                _sync(device)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def compare(group: str, shape: str, baseline: str, timings: dict[str, float], notes=None):
    """Rows for `timings` (name -> ms), each with its ratio against `timings[baseline]`."""
    notes = notes or {}
    base_ms = timings[baseline]
    rows = []
    for name, ms in timings.items():
        is_base = name == baseline
        rows.append(
            BenchRow(
                group=group,
                name=name,
                shape=shape,
                ms=ms,
                baseline=None if is_base else baseline,
                ratio=None if is_base else base_ms / ms,
                note=notes.get(name, ""),
            )
        )
    return rows
