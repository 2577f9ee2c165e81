"""Per-stage latency, parameters and MACs of a detector built from a config, and the per-frame
cost of streaming TSM against clip mode; with `precisions`, the decoder + head and the whole
model at each `--precision` (bf16, int8, mixed: `perception.deploy.quantize.use_precision`)
against the float32 model of the same run; and the branches and the whole model with every
BatchNorm folded into the layer before it (`perception.deploy.fold`) against the same run's.

Inputs: a real sample of the config's dataset when its index exists (LiDAR structure matters
for the sparse branch), else a fixed random batch of the config's shapes (`random_batch`).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import load_config
from ..config.schema import ExperimentConfig
from ..datasets.collate import collate_samples
from ..datasets.index import default_index_path
from ..datasets.pipeline import build_dataset
from ..datasets.random_batch import random_batch
from ..models.builder import build_model
from ..structures import Batch
from .common import BenchRow
from .common import time_ms as _time_ms


def _inputs(config: ExperimentConfig, root: str | None) -> tuple[Batch, str]:
    root = root or config.data.root
    if default_index_path(root, config.data.version).is_file():
        dataset = build_dataset(config, train=False, root=root)
        batch = collate_samples([dataset[len(dataset) // 2]])
        return batch, f"{root} sample, {len(batch.points)} points"
    return random_batch(config, batch_size=1, points_per_sample=30000), "random batch, 30k points"


def _timed_against(
    calls: dict, label: str, note: str, timings, group, shape, time_ms, repeat
) -> list[BenchRow]:
    """One row per `calls` stage -> call, named `stage + label`, against the float32 row of the
    same stage in this run (`ratio` above 1: faster)."""
    rows = []
    with torch.no_grad():
        for stage, call in calls.items():
            ms = time_ms(call, repeat=repeat)
            rows.append(
                BenchRow(
                    group=group, name=f"{stage}{label}", shape=shape, ms=ms, baseline=stage,
                    ratio=timings[stage] / ms, note=note,
                )
            )  # fmt: skip
    return rows


def _precision_rows(
    model, config, fused, batch, timings, precisions, checkpoint, group, shape, time_ms, repeat
) -> list[BenchRow]:
    """The decoder + head and the whole model at each of `precisions` but float32, each against
    the float32 row of this run; the model is left in float32."""
    from ..deploy.quantize import use_precision

    calls = {"decoder + head": lambda: model.decode(fused), "whole model": lambda: model(batch)}
    rows = []
    try:
        for precision in precisions:
            if precision == "float32":
                continue
            use_precision(
                model, config, precision, checkpoint=checkpoint, threads=torch.get_num_threads()
            )
            note = f"decoder + head: {model.precision}"
            args = (timings, group, shape, time_ms, repeat)
            rows += _timed_against(calls, f" ({precision})", note, *args)
    finally:
        use_precision(model, config, "float32", checkpoint=None)
    return rows


def _folded_rows(model, batch, timings, group, shape, time_ms, repeat) -> list[BenchRow]:
    """The branches and the whole model of a copy with its BatchNorms folded into the layers
    before them (`perception.deploy.fold`), each against the same stage of this run."""
    from ..deploy.fold import fold_batchnorm

    folded = copy.deepcopy(model)
    count = fold_batchnorm(folded)
    calls = {"whole model": lambda: folded(batch)}
    if folded.camera is not None:
        calls["camera stage"] = lambda: folded.encode_camera(batch)
    if folded.lidar is not None:
        calls["lidar (voxelize + SPVConv)"] = lambda: folded.encode_lidar(batch)
    note = f"{count} BatchNorms folded into the layer before them"
    return _timed_against(calls, ", BatchNorm folded", note, timings, group, shape, time_ms, repeat)


def _macs(module: torch.nn.Module, *args) -> float:
    """Multiply-accumulates (FLOPs / 2) counted by torch's flop counter (dense aten ops only)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*args)
    return counter.get_total_flops() / 2


def _params(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def run(
    config_path: str,
    *,
    root: str | None = None,
    repeat: int = 3,
    device: str = "cpu",
    checkpoint: str | None = None,
    precisions: tuple[str, ...] = (),
) -> list[BenchRow]:
    """The rows of one config's model: random weights (seeded), or `checkpoint`'s (which the
    quantized precisions need: their graphs belong to its weights)."""
    config = load_config(config_path)
    torch.manual_seed(0)
    if checkpoint is None:
        model = build_model(config).eval().to(device)
    else:
        from ..models.loading import load_model

        model, _ = load_model(checkpoint, config)
        model = model.eval().to(device)
    batch, source = _inputs(config, root)
    batch = batch.to(device)
    name = Path(config_path).stem
    group = f"model:{name}" if device == "cpu" else f"model:{name} ({device})"
    shape = f"B=1, {source}"
    time_ms = functools.partial(_time_ms, device=device)
    timings: dict[str, float] = {}
    notes: dict[str, str] = {}
    # The detector's stages (`BEVFusion.encode_camera`, `encode_lidar`, `fuse`, `decode`,
    # `detect`), each timed as the model runs it; the camera and decoder rows split a stage
    # into its parts (the encoder, the view transform; the fuser, the BEV decoder, the head).
    with torch.no_grad():
        if model.camera is not None:
            images = model.camera.normalize(batch.images)
            timings["camera encoder"] = time_ms(lambda: model.camera.encoder(images), repeat=repeat)
            feats = model.camera.encoder(images)
            timings["view transform"] = time_ms(
                lambda: model.camera.view_transform(feats, batch), repeat=repeat
            )
            notes["view transform"] = "pooling plan cached (fixed calibration)"
            timings["camera stage"] = time_ms(lambda: model.encode_camera(batch), repeat=repeat)
        cam_bev, _ = model.encode_camera(batch)
        if model.lidar is not None:
            if model.paint_points:
                timings["point painting"] = time_ms(
                    lambda: model.lidar_points(batch), repeat=repeat
                )
            timings["lidar (voxelize + SPVConv)"] = time_ms(
                lambda: model.encode_lidar(batch), repeat=repeat
            )
            if model.paint_points:
                notes["lidar (voxelize + SPVConv)"] = "painting included"
        lidar_bev = model.encode_lidar(batch)
        present = model.presence(batch)
        timings["fuser"] = time_ms(
            lambda: model.fuse(batch, cam_bev, lidar_bev, present), repeat=repeat
        )
        fused = model.fuse(batch, cam_bev, lidar_bev, present)
        timings["BEV decoder"] = time_ms(lambda: model.decoder(fused), repeat=repeat)
        decoded = model.decoder(fused)
        timings["head"] = time_ms(lambda: model.head(decoded), repeat=repeat)
        timings["decoder + head"] = time_ms(lambda: model.decode(fused), repeat=repeat)
        outputs = model.decode(fused)
        timings["decode + NMS"] = time_ms(lambda: model.detect(outputs, batch), repeat=repeat)
        timings["whole model"] = time_ms(lambda: model(batch), repeat=repeat)
    total = timings["whole model"]
    rows = [
        BenchRow(
            group=group,
            name=stage,
            shape=shape,
            ms=ms,
            note=f"{100 * ms / total:.0f}% of the whole; {notes.get(stage, '')}".rstrip("; "),
        )
        for stage, ms in timings.items()
    ]
    rows += _precision_rows(
        model, config, fused, batch, timings, precisions, checkpoint, group, shape, time_ms, repeat
    )
    rows += _folded_rows(model, batch, timings, group, shape, time_ms, repeat)
    # parameters and MACs
    parts = {
        "camera": model.camera,
        "lidar": model.lidar,
        "fuser + decoder + head": torch.nn.ModuleList([model.fuser, model.decoder, model.head]),
    }
    params = ", ".join(f"{k} {_params(v) / 1e6:.2f}M" for k, v in parts.items() if v is not None)
    macs = []
    if model.camera is not None:
        macs.append(f"camera encoder {_macs(model.camera.encoder, images) / 1e9:.1f}G")
        macs.append(f"view transform {_macs(model.camera.view_transform, feats, batch) / 1e9:.1f}G")
    macs.append(f"decoder {_macs(model.decoder, fused) / 1e9:.1f}G")
    macs.append(f"head {_macs(model.head, decoded) / 1e9:.1f}G")
    rows.append(
        BenchRow(
            group=group, name="parameters / MACs", shape=shape, ms=0.0,
            note=f"params: {_params(model) / 1e6:.2f}M ({params}); dense MACs: {', '.join(macs)} "
            "(sparse convs and BEV pooling are custom ops the counter does not see)",
        )
    )  # fmt: skip
    # streaming (one new frame a camera) against clip mode (T frames a camera) per keyframe
    if model.camera is not None and config.data.clip_frames > 1:
        encoder = model.camera.encoder
        frames = images[:, :, -1]  # [B, Ncam, 3, H, W]
        state = encoder.initial_state(
            1, frames.shape[1], tuple(frames.shape[-2:]), device=frames.device
        )
        with torch.no_grad():
            clip_ms = time_ms(lambda: encoder(images), repeat=repeat)
            stream_ms = time_ms(lambda: encoder.forward_stream(frames, state), repeat=repeat)
        T = config.data.clip_frames
        rows.append(
            BenchRow(group=group, name=f"camera encoder, clip (T={T})", shape=shape, ms=clip_ms)
        )
        rows.append(
            BenchRow(
                group=group, name="camera encoder, streaming (1 frame)", shape=shape, ms=stream_ms,
                baseline=f"camera encoder, clip (T={T})", ratio=clip_ms / stream_ms,
            )
        )  # fmt: skip
    return rows
