"""The node's counters and how they are reported: `NodeStats` (counts and latency windows,
updated by the node's threads under its lock), the DiagnosticArray messages built from them
and the JSON summary `tools/node.py --summary` writes."""

from __future__ import annotations

import json
import math
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .messages import header, msg_class
from .transport import LOSS_COUNTERS

DIAGNOSTIC_ARRAY = "diagnostic_msgs/msg/DiagnosticArray"


@dataclass
class NodeStats:
    """Counts and latencies, updated by the node's threads under `lock`."""

    window: int = 2000
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    received: Counter = field(default_factory=Counter)  # per topic
    rejected: Counter = field(default_factory=Counter)  # per reason
    dropped: Counter = field(default_factory=Counter)  # clouds not processed, per reason
    processed: int = 0
    degraded: int = 0
    masked: Counter = field(default_factory=Counter)  # per camera
    nonfinite_points: int = 0
    resets: Counter = field(default_factory=Counter)  # per cause
    camera_errors: Counter = field(default_factory=Counter)  # per camera: masked by a failure
    tsm_gaps: int = 0
    backbone_passes: int = 0
    precision: str = "float32"  # what runs the decoder + head (`BEVFusion.precision`)
    stale_sweeps: int = 0  # earlier sweeps not merged: older than data.max_sweep_age
    stale_clip_frames: int = 0  # clip frames older than data.max_clip_frame_age (padded)
    crop_below_horizon: Counter = field(default_factory=Counter)  # per camera, once each
    latency_ms: dict[str, deque] = field(default_factory=dict)
    # the transport's loss counters (`DdsTransport.stats`), read at each summary
    transport: Callable[[], dict[str, int]] | None = field(default=None, repr=False)

    def add_latency(self, stage: str, ms: float) -> None:
        with self.lock:
            self.latency_ms.setdefault(stage, deque(maxlen=self.window)).append(ms)

    def percentiles(self) -> dict[str, dict[str, float]]:
        with self.lock:
            items = {k: np.asarray(v, np.float64) for k, v in self.latency_ms.items() if v}
        return {
            k: {
                "p50": float(np.percentile(v, 50)),
                "p99": float(np.percentile(v, 99)),
                "mean": float(v.mean()),
                "n": int(len(v)),
            }
            for k, v in items.items()
        }

    def summary(self) -> dict[str, Any]:
        with self.lock:
            out = {
                "received": dict(self.received),
                "processed": self.processed,
                "precision": self.precision,
                "degraded": self.degraded,
                "dropped": dict(self.dropped),
                "rejected": dict(self.rejected),
                "masked_cameras": dict(self.masked),
                "nonfinite_points": self.nonfinite_points,
                "resets": dict(self.resets),
                "camera_errors": dict(self.camera_errors),
                "tsm_gaps": self.tsm_gaps,
                "backbone_passes": self.backbone_passes,
                "stale_sweeps": self.stale_sweeps,
                "stale_clip_frames": self.stale_clip_frames,
                "crop_below_horizon": dict(self.crop_below_horizon),
            }
        out["latency_ms"] = self.percentiles()
        if self.transport is not None:
            out["transport"] = self.transport()
        return out


def diagnostic_array(
    stamp_ns: int, statuses: Sequence[tuple[str, int, str, dict[str, Any]]], frame_id: str = ""
) -> Any:
    """diagnostic_msgs/DiagnosticArray of `(name, level, message, values)` statuses."""
    status = msg_class("diagnostic_msgs/msg/DiagnosticStatus")
    key_value = msg_class("diagnostic_msgs/msg/KeyValue")
    return msg_class(DIAGNOSTIC_ARRAY)(
        header=header(frame_id, stamp_ns),
        status=[
            status(
                level=level,
                name=name,
                message=message,
                hardware_id="perception_node",
                values=[key_value(key=str(k), value=str(v)) for k, v in values.items()],
            )
            for name, level, message, values in statuses
        ],
    )


def diagnostic_values(message: Any) -> dict[str, str]:
    """The key/values of the first status of a DiagnosticArray."""
    return {kv.key: kv.value for kv in message.status[0].values}


def summary_json(stats: NodeStats) -> str:
    return json.dumps(stats.summary(), indent=1, sort_keys=True)


def frame_status(job: Any) -> Any:
    """The per-cloud status DiagnosticArray (`/perception/status`) of a finished node job:
    WARN ("degraded: cameras masked ...") when cameras were masked, else OK; the job's counts
    and stage times as values."""
    values = {
        "stamp_ns": job.stamp_ns,
        "objects": len(job.detections),
        "points": int(len(job.batch.points)),
        "masked_cameras": ",".join(job.masked),
        "tsm_gaps": job.tsm_gaps,
        "stale_sweeps": job.stale_sweeps,
        "stale_clip_frames": job.stale_clip_frames,
        **{f"{k}_ms": round(v, 3) for k, v in job.times_ms.items()},
    }
    text = "degraded: cameras masked " + ",".join(job.masked) if job.degraded else "ok"
    status = ("bevfusion/frame", 1 if job.degraded else 0, text, values)
    return diagnostic_array(job.stamp_ns, [status], job.frame_id)


def node_status(summary: dict[str, Any], lidar_topic: str, stamp_ns: int) -> Any:
    """The aggregate DiagnosticArray (`/perception/diagnostics`) of a `NodeStats.summary()`:
    counts, drops, rejections, resets, latency p50/p99 per stage and the transport's losses;
    WARN ("degraded") when anything was dropped, rejected, degraded or lost."""
    values: dict[str, Any] = {
        "processed": summary["processed"],
        "precision": summary.get("precision", "float32"),
        "degraded": summary["degraded"],
        "clouds_received": summary["received"].get(lidar_topic, 0),
        "nonfinite_points": summary["nonfinite_points"],
        "tsm_gaps": summary["tsm_gaps"],
        "stale_sweeps": summary["stale_sweeps"],
        "stale_clip_frames": summary["stale_clip_frames"],
    }
    for group in ("dropped", "rejected", "resets", "camera_errors", "crop_below_horizon"):
        values.update({f"{group}/{k}": v for k, v in summary[group].items()})
    for stage, p in summary["latency_ms"].items():
        values[f"latency/{stage}/p50_ms"] = round(p["p50"], 2)
        values[f"latency/{stage}/p99_ms"] = round(p["p99"], 2)
    bad = bool(
        summary["dropped"]
        or summary["rejected"]
        or summary["degraded"]
        or summary["camera_errors"]
        or summary["crop_below_horizon"]
    )
    transport = summary.get("transport", {})
    values.update({f"transport/{k}": v for k, v in transport.items()})
    bad = bad or any(transport.get(k) for k in LOSS_COUNTERS)
    status = ("bevfusion/node", 1 if bad else 0, "degraded" if bad else "ok", values)
    return diagnostic_array(stamp_ns, [status])


def summary_line(summary: dict[str, Any]) -> str:
    """The one line `print_diagnostics` prints."""
    e2e = summary["latency_ms"].get("receive_to_publish", {})
    return (
        f"[node] processed {summary['processed']} degraded {summary['degraded']} "
        f"dropped {summary['dropped']} rejected {summary['rejected']} "
        f"latency p50 {e2e.get('p50', math.nan):.1f} ms p99 {e2e.get('p99', math.nan):.1f} ms"
    )
