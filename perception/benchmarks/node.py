"""The real-time node under replay: a bag looped at 1x, 2x, 5x real time into the node over the
in-process transport, pipelined and sequential.

Per run: clouds offered and processed per second, drop rate (clouds not processed / clouds
received, by reason), receive-to-publish latency p50/p99 and per-stage p50, degraded frames,
TSM gaps, and resident memory growth between the end of the warm-up and the end of the run.

    from perception.benchmarks import node
    result = node.run(bag, "configs/bevfusion_tiny.yaml", checkpoint, rates=(1, 2, 5),
                      duration_s=60)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

LIDAR_TOPIC = "/lidar/top"


def rss_mb() -> float:
    """Resident set size of this process (MB), from /proc (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def replay_run(
    bag: str | Path,
    model: torch.nn.Module,
    config: Any,
    *,
    rate: float,
    duration_s: float,
    pipelined: bool,
    temporal: str = "stream",
    warmup_s: float = 5.0,
    max_warmup_s: float = 60.0,
    reduced_decode: bool = False,
    foxglove: bool = False,
    process_every: int = 1,
) -> dict[str, Any]:
    """One run: the bag looped at `rate`; a warm-up, then figures over `duration_s` (the
    statistics restart after the warm-up)."""
    from perception.deploy.bag import replay_bag
    from perception.deploy.node import NodeOptions, NodeStats, PerceptionNode
    from perception.deploy.transport import InProcessTransport

    transport = InProcessTransport()
    options = NodeOptions(
        pipelined=pipelined,
        temporal=temporal,
        diagnostics_period_s=1e9,
        reduced_decode=reduced_decode,
        process_every=process_every,
    )
    view = None
    if foxglove:  # the live view serving every message (no client: the server's own cost)
        from perception.deploy.foxglove import FoxgloveView

        view = FoxgloveView(port=0)
    node = PerceptionNode(model, config, transport, options, recorder=view)
    stop = threading.Event()
    replay = threading.Thread(
        target=replay_bag,
        args=(bag, transport),
        kwargs={"rate": rate, "loop": True, "should_stop": stop.is_set},
        daemon=True,
    )
    with node:
        replay.start()
        # warm-up: `warmup_s` and at least two published clouds (first-call allocations)
        warm_start = time.monotonic()
        while time.monotonic() - warm_start < max_warmup_s and (
            time.monotonic() - warm_start < warmup_s or node.stats.processed < 2
        ):
            time.sleep(0.1)
        node.stats = NodeStats(window=100_000)
        rss_start = rss_mb()
        start = time.monotonic()
        time.sleep(duration_s)
        stats = node.stats.summary()
        elapsed = time.monotonic() - start
        rss_end = rss_mb()
        stop.set()
        replay.join(timeout=10)
    transport.close()
    if view is not None:
        view.close()
    received = stats["received"].get(LIDAR_TOPIC, 0)
    dropped = sum(stats["dropped"].values())
    latency = stats["latency_ms"]
    e2e = latency.get("receive_to_publish", {})
    mode = "pipelined" if pipelined else "sequential"
    mode += " + foxglove view" if foxglove else ""
    mode += ", reduced decode" if reduced_decode else ""
    return {
        "rate": rate,
        "mode": mode,
        "temporal": temporal,
        "seconds": round(elapsed, 2),
        "clouds_received_hz": round(received / elapsed, 2),
        "processed_hz": round(stats["processed"] / elapsed, 3),
        "processed": stats["processed"],
        "dropped": stats["dropped"],
        "drop_rate": round(dropped / received, 4) if received else None,
        # the clouds dropped other than by the `process_every` policy (the model fell behind)
        "unplanned_drop_rate": (
            round((dropped - stats["dropped"].get("policy", 0)) / received, 4) if received else None
        ),
        "process_every": process_every,
        "precision": getattr(model, "precision", "float32"),
        "rejected": stats["rejected"],
        "degraded": stats["degraded"],
        "tsm_gaps": stats["tsm_gaps"],
        "latency_p50_ms": round(e2e.get("p50", float("nan")), 1),
        "latency_p99_ms": round(e2e.get("p99", float("nan")), 1),
        "stage_p50_ms": {k: round(v["p50"], 1) for k, v in latency.items()},
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_pct": round(100.0 * (rss_end - rss_start) / rss_start, 2),
    }


def run(
    bag: str | Path,
    config_path: str | Path,
    checkpoint: str | Path | None,
    *,
    rates: Sequence[float] = (1.0, 2.0, 5.0),
    duration_s: float = 60.0,
    sequential_rate: float | None = 5.0,
    warmup_s: float = 5.0,
    reduced_decode: bool = False,
    foxglove_rate: float | None = None,
    process_every: int = 1,
    precision: str = "float32",
    onnx_dir: str | Path | None = None,
    fold_bn: bool = False,
) -> dict[str, Any]:
    """Pipelined runs at each of `rates`, then a sequential run at `sequential_rate` (a
    saturated input, so processed/s is the throughput) for the speedup, and with
    `foxglove_rate` a pipelined run at that rate serving the live view (its cost: compare
    with the same rate's run without it). `process_every` N runs the model on one cloud in N
    (the node's policy); `precision` runs the decoder + head as the checkpoint's quantized
    graph (`perception.deploy.quantize.use_precision`; `fold_bn`: BatchNorms folded). Torch's threads are the caller's
    (`perception.runtime.set_cpu_threads`)."""
    from perception.config import load_config
    from perception.deploy.node import load_node_model
    from perception.deploy.quantize import use_precision

    from .report import machine_description

    threads = torch.get_num_threads()
    config = load_config(config_path)
    model = load_node_model(config, checkpoint)
    use_precision(
        model, config, precision, checkpoint=checkpoint, onnx_dir=onnx_dir, threads=threads,
        fold_bn=fold_bn,
    )  # fmt: skip
    runs = []
    for rate in rates:
        runs.append(
            replay_run(
                bag,
                model,
                config,
                rate=rate,
                duration_s=duration_s,
                pipelined=True,
                warmup_s=warmup_s,
                reduced_decode=reduced_decode,
                process_every=process_every,
            )  # fmt: skip
        )
        print(runs[-1], flush=True)
    if foxglove_rate is not None:
        runs.append(
            replay_run(
                bag,
                model,
                config,
                rate=foxglove_rate,
                duration_s=duration_s,
                pipelined=True,
                warmup_s=warmup_s,
                reduced_decode=reduced_decode,
                process_every=process_every,
                foxglove=True,
            )  # fmt: skip
        )
        print(runs[-1], flush=True)
    result: dict[str, Any] = {
        "kind": "perception.node-benchmark",
        "format_version": 1,
        "machine": machine_description("cpu"),
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "bag": str(bag),
        "config": str(config_path),
        "checkpoint": str(checkpoint) if checkpoint else "random init",
        "precision": model.precision,
        "folded_batchnorms": getattr(model, "folded_batchnorms", 0),
        "process_every": process_every,
        "duration_s": duration_s,
        "runs": runs,
    }
    if sequential_rate is not None:
        sequential = replay_run(
            bag, model, config, rate=sequential_rate, duration_s=duration_s, pipelined=False,
            warmup_s=warmup_s, reduced_decode=reduced_decode, process_every=process_every,
        )  # fmt: skip
        print(sequential, flush=True)
        runs.append(sequential)
        pipelined = next((r for r in runs if r["mode"].startswith("pipelined") and
                          "foxglove" not in r["mode"] and
                          r["rate"] == sequential_rate), None)  # fmt: skip
        if pipelined and sequential["processed_hz"]:
            result["pipelined_speedup"] = round(
                pipelined["processed_hz"] / sequential["processed_hz"], 3
            )
    return result


def markdown(result: dict[str, Any]) -> str:
    """The runs as a markdown table, the precision and the policy."""
    lines = [
        "| rate | mode | clouds in /s | processed /s | drop rate | unplanned drops | p50 ms "
        "| p99 ms | degraded | RSS growth % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['rate']}x | {r['mode']} | {r['clouds_received_hz']} | {r['processed_hz']} | "
            f"{r['drop_rate']} | {r.get('unplanned_drop_rate', '')} | {r['latency_p50_ms']} | "
            f"{r['latency_p99_ms']} | {r['degraded']} | {r['rss_growth_pct']} |"
        )
    lines.append(
        f"\ndecoder + head: {result.get('precision', 'float32')}; model run on one cloud in "
        f"{result.get('process_every', 1)}"
        + (f"; {result['folded_batchnorms']} BatchNorms folded"
           if result.get("folded_batchnorms") else "")
    )  # fmt: skip
    if "pipelined_speedup" in result:
        lines.append(f"\npipelined / sequential throughput: {result['pipelined_speedup']}x")
    return "\n".join(lines)
