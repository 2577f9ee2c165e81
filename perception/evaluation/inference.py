"""Runs a detector over a split: per-sample detections, per-stage latency, sensor dropping, and
sharding over `torchrun` processes.

    result = run_inference(model, dataset, device=device, drop_sensors=("CAM_FRONT",))
    writer = result.submission(use_camera=True, use_lidar=True)

Stage timing. Forward hooks on the detector's parts time, per batch, the camera branch
(`model.camera`), the LiDAR branch (`model.lidar`, voxelization included), fuser + BEV decoder
(from entering `model.fuser` to leaving `model.decoder`) and head + decode (from entering
`model.head` until the model returns its `Detections`, so heatmap decoding and BEV NMS count).
`total` is the whole model call; `data` is the time spent waiting for the loader (not part of
`total`). On CUDA the hooks synchronize the device, so each stage is its own kernels' time. A
batch's times are divided by its size to give per-sample times; use `batch_size=1` (the
default) for true per-sample latency.

Sensor dropping (`drop_sensors`, `apply_drop_sensors`) edits each `Batch` before the model sees it:

- `lidar`: `lidar_mask` False and the point cloud emptied.
- `cameras`: every `camera_mask` entry False and the images zeroed.
- a camera channel (`CAM_FRONT`, ...): that camera's mask entry False, its images zeroed.
- `lidar_half_beams`: every other LiDAR beam removed (beams 1, 3, ..., 31 of 32). `Batch.points`
  carry no ring index (the dataset keeps x, y, z, intensity, time lag), so each point's beam is
  recovered from its elevation angle seen from the sensor, `atan2(z, hypot(x, y))` in the
  keyframe LiDAR frame (after undoing `lidar_aug`), as the nearest of the 32 elevations of the
  HDL-32E (`perception.datasets.synth.lidar.ELEVATIONS_DEG`, -30.67 to +10.67 deg, 1.33 deg
  apart; nuScenes' LIDAR_TOP is an HDL-32E too). Exact for keyframe points (the sensor is the
  frame's origin); for earlier sweeps (merged into the keyframe frame) the sensor origin has
  moved by the ego motion, so near points may be binned to a neighbouring beam: still about
  half the points are kept, spread over every other elevation.

Under `torchrun` (an initialized process group), rank r infers samples r, r + W, r + 2W, ...
and every rank receives all per-sample records (`perception.distributed.all_gather_objects`
of JSON-able dicts), in the dataset's order: the same result as one process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .. import distributed
from ..datasets.collate import collate_samples
from ..datasets.synth.lidar import ELEVATIONS_DEG
from ..structures import CAMERA_NAMES, Batch, Boxes3D, Detections
from .submission import MAX_BOXES_PER_SAMPLE, SubmissionWriter

# Per-sample stages, in the order a report lists them.
STAGES: tuple[str, ...] = (
    "camera",
    "lidar",
    "fuse_decoder",
    "head_decode",
    "fuse_decoder_head",
    "total",
    "data",
)
STAGE_TITLES: dict[str, str] = {
    "camera": "camera branch",
    "lidar": "LiDAR branch (incl. voxelization)",
    "fuse_decoder": "fuser + BEV decoder",
    "head_decode": "head + decode + NMS",
    "fuse_decoder_head": "fuser + decoder-head graph + decode + NMS (decode backend)",
    "total": "model total",
    "data": "data loading (not in total)",
}

DROP_LIDAR, DROP_CAMERAS, DROP_HALF_BEAMS = "lidar", "cameras", "lidar_half_beams"
DROPPABLE: tuple[str, ...] = (DROP_LIDAR, DROP_CAMERAS, DROP_HALF_BEAMS, *CAMERA_NAMES)


def check_drop_sensors(names: Sequence[str]) -> tuple[str, ...]:
    """`names` without repeats, in the given order; `ValueError` naming the valid choices for
    an unknown one."""
    unknown = [n for n in names if n not in DROPPABLE]
    if unknown:
        raise ValueError(f"unknown sensors to drop {unknown}; choose from {list(DROPPABLE)}")
    return tuple(dict.fromkeys(names))


# --------------------------------------------------------------------------------------
# Sensor dropping


def beam_index(points: torch.Tensor, lidar_aug: torch.Tensor | None = None) -> torch.Tensor:
    """The HDL-32E beam (0 = lowest) each point most likely came from, by elevation angle.

    Args:
        points: `[P, 6]` float `Batch.points` (batch index, x, y, z, intensity, time lag).
        lidar_aug: `[B, 4, 4]` `Batch.lidar_aug`, undone first; None for the identity.

    Returns:
        `[P]` int64 in 0..31.
    """
    xyz = points[:, 1:4].double()  # [P, 3] (augmented) keyframe LiDAR frame
    if lidar_aug is not None and len(points):
        inverse = torch.linalg.inv(lidar_aug.double())  # [B, 4, 4]
        m = inverse[points[:, 0].long()]  # [P, 4, 4]
        xyz = (m[:, :3, :3] @ xyz[:, :, None])[:, :, 0] + m[:, :3, 3]
    elevation = torch.rad2deg(torch.atan2(xyz[:, 2], torch.hypot(xyz[:, 0], xyz[:, 1])))  # [P]
    beams = torch.as_tensor(ELEVATIONS_DEG, dtype=torch.float64)  # [32]
    return (elevation[:, None] - beams[None, :]).abs().argmin(dim=1)


def apply_drop_sensors(batch: Batch, names: Sequence[str]) -> Batch:
    """The batch as if the named sensors had failed (see the module docstring); `names` from
    `DROPPABLE`. A camera the batch does not hold is an error."""
    names = check_drop_sensors(names)
    if not names:
        return batch
    changes: dict[str, Any] = {}
    camera_mask, images = batch.camera_mask.clone(), batch.images
    cameras = list(batch.camera_names) if DROP_CAMERAS in names else []
    for name in names:
        if name in CAMERA_NAMES:
            if name not in batch.camera_names:
                raise ValueError(
                    f"cannot drop {name}: the batch holds the cameras {list(batch.camera_names)}"
                )
            cameras.append(name)
    if cameras:
        images = images.clone()
        for name in cameras:
            c = batch.camera_names.index(name)
            camera_mask[:, c] = False
            images[:, c] = 0
        changes.update(camera_mask=camera_mask, images=images)
    points = batch.points
    if DROP_HALF_BEAMS in names:
        keep = beam_index(points, batch.lidar_aug) % 2 == 0  # [P]
        points = points[keep]
    if DROP_LIDAR in names:
        points = points[:0]
        changes["lidar_mask"] = torch.zeros_like(batch.lidar_mask)
    if points is not batch.points:
        changes["points"] = points
    return replace(batch, **changes)


# --------------------------------------------------------------------------------------
# Stage timing


class StageTimer:
    """Forward hooks on a `BEVFusion`'s parts recording per-stage times of each model call
    (seconds); see the module docstring for what each stage spans."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.model = model
        self.sync = device.type == "cuda"
        self._marks: dict[str, float] = {}

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _mark(self, name: str):
        def hook(*_args, **_kwargs) -> None:
            self._marks[name] = self._now()

        return hook

    @contextmanager
    def installed(self) -> Iterator[StageTimer]:
        handles = []
        for part in ("camera", "lidar", "fuser", "decoder", "head"):
            module = getattr(self.model, part, None)
            if module is None:
                continue
            handles.append(module.register_forward_pre_hook(self._mark(f"{part}_start")))
            handles.append(module.register_forward_hook(self._mark(f"{part}_end")))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def call(self, batch: Batch) -> tuple[list[Detections], dict[str, float]]:
        """Runs the model on `batch`; returns its detections and the stage times (s)."""
        self._marks = {}
        start = self._now()
        detections = self.model(batch)
        end = self._now()
        m = self._marks

        # a stage whose marks did not fire is left out (n/a), not timed as 0: a model without
        # a camera has no camera stage, and with a decode backend (an INT8 graph of the
        # decoder and head) the decoder and head are one call, timed as fuse_decoder_head
        ends = {
            "camera": ("camera_start", "camera_end"),
            "lidar": ("lidar_start", "lidar_end"),
            "fuse_decoder": ("fuser_start", "decoder_end"),
        }
        times = {stage: m[b] - m[a] for stage, (a, b) in ends.items() if a in m and b in m}
        if "head_start" in m:
            times["head_decode"] = end - m["head_start"]
        elif "fuser_start" in m:
            times["fuse_decoder_head"] = end - m["fuser_start"]
        times["total"] = end - start
        return detections, times


def latency_summary(timings_ms: dict[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """Per stage: `{"mean", "p50", "p90", "n"}` of its per-sample times (ms)."""
    out = {}
    for stage in STAGES:
        values = np.asarray(timings_ms.get(stage, ()), dtype=np.float64)
        if not len(values):
            continue
        out[stage] = {
            "mean": float(values.mean()),
            "p50": float(np.percentile(values, 50)),
            "p90": float(np.percentile(values, 90)),
            "n": int(len(values)),
        }
    return out


# --------------------------------------------------------------------------------------
# Per-sample records (JSON-able, so ranks can exchange them)


def detections_record(
    detections: Detections,
    lidar_to_ego: torch.Tensor,
    ego_to_global: torch.Tensor,
    timing_ms: dict[str, float],
) -> dict[str, Any]:
    """One sample's output as plain lists (float32 values survive the round trip exactly)."""
    return {
        "token": detections.sample_token,
        "boxes": detections.boxes.tensor.detach().cpu().double().tolist(),  # [K, 9] LiDAR
        "scores": detections.scores.detach().cpu().double().tolist(),
        "labels": detections.labels.detach().cpu().tolist(),
        "attributes": detections.attributes.detach().cpu().tolist(),
        "lidar_to_ego": lidar_to_ego.detach().cpu().double().tolist(),
        "ego_to_global": ego_to_global.detach().cpu().double().tolist(),
        "timing_ms": dict(timing_ms),
    }


def record_detections(record: dict[str, Any]) -> Detections:
    k = len(record["boxes"])
    return Detections(
        sample_token=record["token"],
        boxes=Boxes3D(torch.tensor(record["boxes"], dtype=torch.float64).reshape(k, 9)),
        scores=torch.tensor(record["scores"], dtype=torch.float64).reshape(k),
        labels=torch.tensor(record["labels"], dtype=torch.int64).reshape(k),
        attributes=torch.tensor(record["attributes"], dtype=torch.int64).reshape(k),
    )


@dataclass(frozen=True)
class InferenceResult:
    """Every sample's detections (in the dataset's order) and per-stage latency."""

    records: tuple[dict[str, Any], ...]
    drop_sensors: tuple[str, ...]
    world_size: int

    @property
    def tokens(self) -> list[str]:
        return [r["token"] for r in self.records]

    def detections(self) -> dict[str, Detections]:
        """Sample token -> its `Detections` (keyframe LiDAR frame)."""
        return {r["token"]: record_detections(r) for r in self.records}

    def timings_ms(self) -> dict[str, list[float]]:
        """Stage -> per-sample times (ms)."""
        out: dict[str, list[float]] = {}
        for r in self.records:
            for stage, ms in r["timing_ms"].items():
                out.setdefault(stage, []).append(ms)
        return out

    def latency(self) -> dict[str, dict[str, float]]:
        return latency_summary(self.timings_ms())

    def submission(
        self,
        *,
        use_camera: bool,
        use_lidar: bool,
        max_boxes_per_sample: int = MAX_BOXES_PER_SAMPLE,
    ) -> SubmissionWriter:
        writer = SubmissionWriter(
            use_camera=use_camera, use_lidar=use_lidar, max_boxes_per_sample=max_boxes_per_sample
        )
        for r in self.records:
            writer.add(
                record_detections(r),
                torch.tensor(r["lidar_to_ego"], dtype=torch.float64),
                torch.tensor(r["ego_to_global"], dtype=torch.float64),
            )
        return writer


def run_inference(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    workers: int = 0,
    drop_sensors: Sequence[str] = (),
    progress: bool = True,
    description: str = "inference",
) -> InferenceResult:
    """Runs `model` (a `BEVFusion`, put in eval mode) over `dataset` (`Sample`s, e.g.
    `build_dataset(config, split, train=False)`) under `torch.inference_mode()`.

    With an initialized process group each rank infers its shard (every W-th sample) and all
    ranks return every sample's record. The progress bar (tqdm) shows on rank 0 only.
    """
    from tqdm import tqdm

    device = torch.device(device)
    drop = check_drop_sensors(drop_sensors)
    rank, world_size = distributed.rank(), distributed.world_size()
    indices = list(range(rank, len(dataset), world_size))
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_samples,
    )
    model.eval()
    timer = StageTimer(model, device)
    records: list[dict[str, Any]] = []
    bar = tqdm(
        total=len(indices),
        desc=description,
        unit="sample",
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )
    with torch.inference_mode(), timer.installed(), bar:
        waited = time.perf_counter()
        for batch in loader:
            data_s = time.perf_counter() - waited
            batch = apply_drop_sensors(batch.to(device), drop)
            detections, times = timer.call(batch)
            B = batch.batch_size
            timing_ms = {k: 1e3 * v / B for k, v in times.items()}
            timing_ms["data"] = 1e3 * data_s / B
            for b, dets in enumerate(detections):
                records.append(
                    detections_record(
                        dets, batch.lidar_to_ego[b], batch.ego_to_global[b], timing_ms
                    )
                )
            bar.update(B)
            waited = time.perf_counter()
    if world_size > 1:
        gathered = distributed.all_gather_objects(records)
        by_token = {r["token"]: r for part in gathered for r in part or ()}
        records = [by_token[t] for t in _dataset_tokens(dataset)]
    return InferenceResult(records=tuple(records), drop_sensors=drop, world_size=world_size)


def _dataset_tokens(dataset: Dataset) -> list[str]:
    tokens = getattr(dataset, "tokens", None)
    if tokens is None:
        raise TypeError("run_inference under torchrun needs a dataset with a `tokens` list")
    return list(tokens)
