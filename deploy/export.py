"""ONNX export of the detector's dense parts, with a parity check against eager PyTorch.

Three graphs, each with a fixed input shape from the config (image size, cameras, clip length,
BEV grid) and a dynamic batch axis:

- ``camera_encoder_clip.onnx``: EfficientViT(+TSM) + FPN neck, clip mode
  (`CameraEncoder.forward`). ``images`` `[B, Ncam, T, 3, H, W]` float, normalized (see
  below), frames oldest first -> ``features`` `[B, Ncam, C, H / 8, W / 8]`, newest frame.
- ``camera_encoder_stream.onnx``: the same, streaming (`CameraEncoder.forward_stream`;
  uni-directional TSM only). ``image`` `[B, Ncam, 3, H, W]` (the newest frame) and
  ``tsm_state_in_<i>`` `[B * Ncam, fold_i, h_i, w_i]` (one per shift location; zeros start a
  stream) -> ``features`` and ``tsm_state_out_<i>``, to feed with the next frame.
- ``bev_decoder_head.onnx``: SECOND + SECONDFPN decoder and the CenterPoint head.
  ``fused_bev`` `[B, C_fused, X, Y]` (the `ConvFuser`'s output) -> ``task<t>_<field>`` per
  task, the fields of `TaskOutput` (`head_outputs_from_arrays` turns them back into
  `TaskOutput`s for `CenterPointHead.predict`).

Images enter the camera graphs normalized: ``(uint8 / 255 - mean) / std`` per channel, the
`CameraBEVBranch`'s mean and std (written to ``export.json``).

Not exported, staying in PyTorch with their custom ops: the LiDAR branch (voxelization and the
SPVConv sparse convolutions: data-dependent shapes), the LSS view transform (its depth net is
dense, but the frustum geometry and `bev_pool` scatter are not), the `ConvFuser` with its
per-sample presence masks, and decoding + BEV NMS.

The exporter is PyTorch's TorchScript-based `torch.onnx.export(..., dynamo=False)`: it needs no
package beyond `onnx` (the dynamo exporter, torch's default since 2.9, needs `onnxscript`). Every
graph is checked with `onnx.checker`, then run in onnxruntime (CPUExecutionProvider) on seeded
random inputs and compared with eager PyTorch: an output passes when its max abs difference is
at most `tolerance * max|eager output|`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from perception.config.schema import ExperimentConfig
from perception.models.builder import camera_bev_grid
from perception.models.camera import CameraEncoder, TemporalShiftState
from perception.models.detector import BEVFusion
from perception.models.heads.centerpoint import TaskOutput

EXPORT_FORMAT_VERSION = 1
EXPORT_KIND = "perception.onnx_export"
REPORT_FILE = "export.json"
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4

CLIP_FILE = "camera_encoder_clip.onnx"
STREAM_FILE = "camera_encoder_stream.onnx"
DECODER_HEAD_FILE = "bev_decoder_head.onnx"

DYNAMIC_DIMS = ("batch", "streams")

EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript-based)"

# TaskOutput's fields, in the order the decoder+head graph returns them per task.
HEAD_FIELDS: tuple[str, ...] = (
    "heatmap",
    "offset",
    "height",
    "size",
    "rotation",
    "velocity",
    "attribute",
    "direction",
)

NOT_EXPORTED: dict[str, str] = {
    "lidar_branch": "voxelization and SPVConv sparse convolutions have data-dependent shapes; "
    "they stay in PyTorch with perception.ops",
    "view_transform": "the LSS lift and bev_pool scatter (geometry-dependent pooling plan) stay "
    "in PyTorch with perception.ops.bev_pool",
    "fuser": "ConvFuser with its per-sample presence masks stays in PyTorch; the decoder graph "
    "takes its output",
    "decode_nms": "heatmap peak decoding and BEV NMS (CenterPointHead.predict) stay in PyTorch",
}


class ExportError(RuntimeError):
    """The export cannot run (missing package, a model part that cannot be exported)."""


# ---------------------------------------------------------------------------------------------
# Exportable wrappers: tensors in, tensors out (ONNX has no dataclasses)
# ---------------------------------------------------------------------------------------------


class StreamingCameraEncoder(nn.Module):
    """`CameraEncoder.forward_stream` with the TSM state as loose tensors.

    `(image [B, Ncam, 3, H, W], *caches [B * Ncam, fold_i, h_i, w_i])` ->
    `(features [B, Ncam, C, h, w], *new_caches)`; all-zero caches start a stream.
    """

    def __init__(self, encoder: CameraEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features, state = self.encoder.forward_stream(image, TemporalShiftState(tuple(caches)))
        return (features, *state.caches)


class DecoderHead(nn.Module):
    """`BEVFusion.decode` (BEV decoder then detection head), outputs flattened: per task, the
    `HEAD_FIELDS` that are not None (see `head_output_names`)."""

    def __init__(self, model: BEVFusion):
        super().__init__()
        self.decoder = model.decoder  # only these two: the graph holds no branch weights
        self.head = model.head

    def forward(self, fused_bev: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`[B, C_fused, X, Y]` -> the head's maps, each `[B, ., X', Y']`."""
        return _flatten_head(self.head(self.decoder(fused_bev)))  # = BEVFusion.decode


def _flatten_head(outputs: Sequence[TaskOutput]) -> tuple[torch.Tensor, ...]:
    flat = []
    for out in outputs:
        flat += [getattr(out, f) for f in HEAD_FIELDS if getattr(out, f) is not None]
    return tuple(flat)


def head_output_names(model: BEVFusion) -> list[str]:
    """`task<t>_<field>` for every map `DecoderHead` returns, in its order."""
    names = []
    for t, task_head in enumerate(model.head.task_heads):
        names += [f"task{t}_{f}" for f in HEAD_FIELDS if getattr(task_head, f) is not None]
    return names


def head_outputs_from_arrays(
    outputs: Mapping[str, np.ndarray | torch.Tensor], num_tasks: int
) -> list[TaskOutput]:
    """The decoder+head graph's named outputs -> one `TaskOutput` per task (for `predict`)."""
    tasks = []
    for t in range(num_tasks):

        def get(f: str, t: int = t) -> torch.Tensor | None:
            value = outputs.get(f"task{t}_{f}")
            return None if value is None else torch.as_tensor(value)

        missing = [f for f in HEAD_FIELDS if f != "attribute" and get(f) is None]
        if missing:
            raise KeyError(f"task {t}: outputs lack {[f'task{t}_{f}' for f in missing]}")
        tasks.append(TaskOutput(**{f: get(f) for f in HEAD_FIELDS}))
    return tasks


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputDiff:
    """One output of one parity case: `max|onnx - eager|` and the scale `max|eager|`."""

    shape: tuple[int, ...]
    max_abs_diff: float
    scale: float

    @property
    def rel_diff(self) -> float:
        if self.scale > 0:
            return self.max_abs_diff / self.scale
        return 0.0 if self.max_abs_diff == 0 else float("inf")

    def passes(self, tolerance: float) -> bool:
        return self.max_abs_diff <= tolerance * self.scale

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "max_abs_diff": self.max_abs_diff,
            "scale": self.scale,
            "rel_diff": self.rel_diff,
        }


@dataclass(frozen=True)
class ParityCase:
    """The diffs of every output for one set of inputs (e.g. "batch=1", "stream step 2")."""

    name: str
    outputs: dict[str, OutputDiff]

    def passes(self, tolerance: float) -> bool:
        return all(d.passes(tolerance) for d in self.outputs.values())

    def worst(self) -> tuple[str, OutputDiff]:
        return max(self.outputs.items(), key=lambda kv: kv[1].rel_diff)


@dataclass(frozen=True)
class GraphReport:
    """One exported graph: file, signature, opset and parity."""

    name: str
    file: Path
    size_bytes: int
    opset: int
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    parity: tuple[ParityCase, ...]
    tolerance: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passes(self.tolerance) for c in self.parity)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file.name,
            "size_bytes": self.size_bytes,
            "opset": self.opset,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "passed": self.passed,
            "parity": {c.name: {k: d.to_json() for k, d in c.outputs.items()} for c in self.parity},
            **self.extra,
        }


@dataclass(frozen=True)
class ExportReport:
    """Everything `export_onnx` wrote; `to_json` is the content of ``export.json``."""

    out_dir: Path
    graphs: tuple[GraphReport, ...]
    opset: int
    tolerance: float
    notes: tuple[str, ...]
    meta: dict[str, Any]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.graphs)

    def to_json(self) -> dict[str, Any]:
        import onnx
        import onnxruntime

        return {
            "kind": EXPORT_KIND,
            "format_version": EXPORT_FORMAT_VERSION,
            "exporter": EXPORTER,
            "versions": {
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
            "opset": self.opset,
            "tolerance": self.tolerance,
            "parity_rule": "max_abs_diff <= tolerance * scale, scale = max |eager output|; "
            "onnxruntime CPUExecutionProvider vs eager PyTorch, float32",
            "passed": self.passed,
            **self.meta,
            "graphs": {g.name: g.to_json() for g in self.graphs},
            "not_exported": dict(NOT_EXPORTED),
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------
# Export and parity
# ---------------------------------------------------------------------------------------------


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs onnx and onnxruntime ({exc}); install the 'export' extra: "
            "pip install -e '.[export]'"
        ) from None


def _torch_export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None,
    opset: int,
) -> None:
    # The exporter traces in eval mode, then restores the module's own mode: a wrapper made in
    # train mode would switch the model's BatchNorms to batch statistics afterwards.
    module.eval()
    with warnings.catch_warnings():
        # Shape checks in the model turn into constants under tracing (the shapes are fixed
        # by design), and the TorchScript exporter announces its deprecation: both harmless.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*Constant folding.*")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dict(dynamic_axes) if dynamic_axes else None,
            do_constant_folding=True,
        )


def _pin_output_dims(path: Path, shapes: Mapping[str, Sequence[int]]) -> None:
    """Writes the concrete sizes of the outputs' static dims into the file (the exporter names
    the dims it computed by reshapes, e.g. "Reshapefeatures_dim_3"); the dynamic axes keep
    their names."""
    import onnx

    model = onnx.load(str(path))
    for value in model.graph.output:
        for d, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
            if d.dim_param not in DYNAMIC_DIMS:
                d.dim_value = int(size)
    onnx.save(model, str(path))


def _signature(path: Path) -> tuple[int, dict[str, list[int | str]], dict[str, list[int | str]]]:
    """Checks the file with onnx.checker; returns (opset, inputs, outputs) with their dims."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))

    def dims(values) -> dict[str, list[int | str]]:
        return {
            v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in values
        }

    return opset, dims(model.graph.input), dims(model.graph.output)


def _export_graph(
    module: nn.Module,
    feeds: Mapping[str, torch.Tensor],
    eager: Mapping[str, torch.Tensor],
    path: Path,
    *,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None,
    opset: int,
) -> tuple[int, dict[str, list[int | str]], dict[str, list[int | str]], OrtSession]:
    """Exports `module` traced on `feeds` (its positional inputs, named), outputs named as in
    `eager` (its outputs on `feeds`); returns (opset, inputs, outputs, onnxruntime session)."""
    _torch_export(
        module,
        tuple(feeds.values()),
        path,
        input_names=list(feeds),
        output_names=list(eager),
        dynamic_axes=dynamic_axes,
        opset=opset,
    )
    _pin_output_dims(path, {k: v.shape for k, v in eager.items()})
    return (*_signature(path), OrtSession(path))


class OrtSession:
    """An onnxruntime CPU session returning named numpy outputs."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, min(torch.get_num_threads(), os.cpu_count() or 1))
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        arrays = {k: v.detach().cpu().numpy() for k, v in feeds.items()}
        return dict(zip(self.output_names, self.session.run(None, arrays)))


def _diffs(
    onnx_out: Mapping[str, np.ndarray], eager_out: Mapping[str, torch.Tensor]
) -> dict[str, OutputDiff]:
    result = {}
    for name, ref in eager_out.items():
        ref_np = ref.detach().cpu().float().numpy()
        got = onnx_out[name]
        if got.shape != ref_np.shape:
            raise ExportError(f"{name}: onnxruntime gives shape {got.shape}, eager {ref_np.shape}")
        result[name] = OutputDiff(
            shape=tuple(ref_np.shape),
            max_abs_diff=float(np.abs(got.astype(np.float64) - ref_np).max(initial=0.0)),
            scale=float(np.abs(ref_np).max(initial=0.0)),
        )
    return result


@dataclass(frozen=True)
class ExportShapes:
    """The fixed input shapes of the export (from the config) and the traced batch size."""

    batch_size: int
    num_cameras: int
    frames: int
    image_size: tuple[int, int]  # (H, W)
    fused_channels: int
    bev_shape: tuple[int, int]  # (X, Y) of the fused map

    @classmethod
    def from_config(cls, config: ExperimentConfig, model: BEVFusion, batch_size: int = 1):
        W, H = config.augment.image.final_size
        grid = model.lidar.grid if model.lidar is not None else camera_bev_grid(config)
        return cls(
            batch_size=batch_size,
            num_cameras=len(config.data.cameras),
            frames=config.data.clip_frames,
            image_size=(H, W),
            fused_channels=model.fuser.out_channels,
            bev_shape=grid.shape,
        )


def _export_clip(
    encoder: CameraEncoder,
    shapes: ExportShapes,
    out_dir: Path,
    *,
    opset: int,
    tolerance: float,
    dynamic_batch: bool,
    generator: torch.Generator,
) -> tuple[GraphReport, torch.Tensor, torch.Tensor]:
    """Returns the report, the clip used for parity and its eager features (for the stream)."""
    B, N, T, (H, W) = shapes.batch_size, shapes.num_cameras, shapes.frames, shapes.image_size
    path = out_dir / CLIP_FILE
    images = torch.randn(B, N, T, 3, H, W, generator=generator)
    features = encoder(images)  # [B, N, C, h, w]
    axes = {"images": {0: "batch"}, "features": {0: "batch"}} if dynamic_batch else None
    opset_found, inputs, outputs, session = _export_graph(
        encoder,
        {"images": images},
        {"features": features},
        path,
        dynamic_axes=axes,
        opset=opset,
    )
    got = session({"images": images})
    cases = [ParityCase(f"batch={B}", _diffs(got, {"features": features}))]
    if dynamic_batch:
        x = torch.randn(B + 1, N, T, 3, H, W, generator=generator)
        got = session({"images": x})
        cases.append(ParityCase(f"batch={B + 1}", _diffs(got, {"features": encoder(x)})))
    report = GraphReport(
        name="camera_encoder_clip",
        file=path,
        size_bytes=path.stat().st_size,
        opset=opset_found,
        inputs=inputs,
        outputs=outputs,
        parity=tuple(cases),
        tolerance=tolerance,
        extra={"frames": T, "tsm_mode": encoder.backbone.tsm.mode},
    )
    return report, images, features


def _export_stream(
    encoder: CameraEncoder,
    shapes: ExportShapes,
    out_dir: Path,
    clip: torch.Tensor,
    clip_features: torch.Tensor,
    *,
    opset: int,
    tolerance: float,
    dynamic_batch: bool,
    generator: torch.Generator,
) -> GraphReport:
    """Parity: every frame of `clip` fed in turn (ONNX state from ONNX, eager from eager), and
    the last frame's ONNX features against eager clip mode."""
    B, N, T, (H, W) = shapes.batch_size, shapes.num_cameras, shapes.frames, shapes.image_size
    path = out_dir / STREAM_FILE
    module = StreamingCameraEncoder(encoder).eval()
    L = encoder.backbone.num_shift_locations
    state_in = [f"tsm_state_in_{i}" for i in range(L)]
    state_out = [f"tsm_state_out_{i}" for i in range(L)]
    zeros = encoder.initial_state(B, N, (H, W)).caches  # each [B N, fold_i, h_i, w_i]

    def eager_step(frame: torch.Tensor, caches: Sequence[torch.Tensor]):
        features, state = encoder.forward_stream(frame, TemporalShiftState(tuple(caches)))
        return {"features": features, **dict(zip(state_out, state.caches))}

    axes = None
    if dynamic_batch:
        axes = {"image": {0: "batch"}, "features": {0: "batch"}}
        axes.update({name: {0: "streams"} for name in state_in + state_out})
    first = clip[:, :, 0]  # [B, N, 3, H, W]
    opset_found, inputs, outputs, session = _export_graph(
        module,
        {"image": first, **dict(zip(state_in, zeros))},
        eager_step(first, zeros),
        path,
        dynamic_axes=axes,
        opset=opset,
    )
    cases = []
    onnx_caches = eager_caches = list(zeros)
    got: dict[str, np.ndarray] = {}
    for t in range(T):
        frame = clip[:, :, t]  # [B, N, 3, H, W]
        eager = eager_step(frame, eager_caches)
        got = session({"image": frame, **dict(zip(state_in, onnx_caches))})
        cases.append(ParityCase(f"stream step {t + 1}", _diffs(got, eager)))
        eager_caches = [eager[o] for o in state_out]
        onnx_caches = [torch.from_numpy(got[o]) for o in state_out]  # ONNX feeds itself
    cases.append(
        ParityCase(
            f"stream step {T} vs eager clip",
            _diffs({"features": got["features"]}, {"features": clip_features}),
        )
    )
    if dynamic_batch:
        frame = torch.randn(B + 1, N, 3, H, W, generator=generator)
        caches = encoder.initial_state(B + 1, N, (H, W)).caches
        got = session({"image": frame, **dict(zip(state_in, caches))})
        cases.append(ParityCase(f"batch={B + 1}", _diffs(got, eager_step(frame, caches))))
    return GraphReport(
        name="camera_encoder_stream",
        file=path,
        size_bytes=path.stat().st_size,
        opset=opset_found,
        inputs=inputs,
        outputs=outputs,
        parity=tuple(cases),
        tolerance=tolerance,
        extra={"num_tsm_states": L, "state_start": "all zeros"},
    )


def _export_decoder_head(
    model: BEVFusion,
    shapes: ExportShapes,
    out_dir: Path,
    *,
    opset: int,
    tolerance: float,
    dynamic_batch: bool,
    generator: torch.Generator,
) -> GraphReport:
    B, C, (X, Y) = shapes.batch_size, shapes.fused_channels, shapes.bev_shape
    path = out_dir / DECODER_HEAD_FILE
    module = DecoderHead(model).eval()
    names = head_output_names(model)

    def eager_run(x: torch.Tensor) -> dict[str, torch.Tensor]:  # the model's own stage
        return dict(zip(names, _flatten_head(model.decode(x))))

    fused = torch.rand(B, C, X, Y, generator=generator)  # a ReLU output: >= 0
    axes = {n: {0: "batch"} for n in ["fused_bev", *names]} if dynamic_batch else None
    eager = eager_run(fused)
    opset_found, inputs, outputs, session = _export_graph(
        module, {"fused_bev": fused}, eager, path, dynamic_axes=axes, opset=opset
    )
    cases = [ParityCase(f"batch={B}", _diffs(session({"fused_bev": fused}), eager))]
    if dynamic_batch:
        x = torch.rand(B + 1, C, X, Y, generator=generator)
        cases.append(ParityCase(f"batch={B + 1}", _diffs(session({"fused_bev": x}), eager_run(x))))
    return GraphReport(
        name="bev_decoder_head",
        file=path,
        size_bytes=path.stat().st_size,
        opset=opset_found,
        inputs=inputs,
        outputs=outputs,
        parity=tuple(cases),
        tolerance=tolerance,
        extra={"tasks": [list(t.class_names) for t in model.head.tasks]},
    )


def export_onnx(
    model: BEVFusion,
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    batch_size: int = 1,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    stream: bool = True,
    dynamic_batch: bool = True,
    seed: int = 0,
    meta: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> ExportReport:
    """Exports the dense parts of `model` to ONNX in `out_dir`, checks them in onnxruntime and
    writes ``export.json``.

    Args:
        model: the detector (its weights loaded); put in eval mode here and left so.
        config: the config it was built from (input shapes: image size, cameras, clip length).
        out_dir: created if needed; existing files of the same names are replaced.
        batch_size: the traced batch size (also the parity batch).
        opset: ONNX opset.
        tolerance: an output passes when `max|onnx - eager| <= tolerance * max|eager|`.
        stream: also export the streaming camera encoder (skipped, with a note, for a
            bidirectional TSM, which cannot stream).
        dynamic_batch: make axis 0 dynamic and check parity at `batch_size + 1` too.
        seed: seeds the random parity inputs.
        meta: extra entries for ``export.json`` (e.g. the checkpoint path).
        log: progress lines.

    Returns:
        the report; `report.passed` says whether every parity check passed.
    """
    _require_onnx()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    shapes = ExportShapes.from_config(config, model, batch_size)
    generator = torch.Generator().manual_seed(seed)
    common = {"opset": opset, "tolerance": tolerance, "dynamic_batch": dynamic_batch}
    graphs: list[GraphReport] = []
    notes: list[str] = []
    camera_meta: dict[str, Any] = {}
    with torch.no_grad():
        if model.camera is None:
            notes.append("the config has no camera branch: only the BEV decoder + head exported")
            log(f"note: {notes[-1]}")
        else:
            encoder = model.camera.encoder
            camera_meta = {
                "image_normalization": {
                    "formula": "(uint8 / 255 - mean) / std, per RGB channel",
                    "mean": model.camera.mean.flatten().tolist(),
                    "std": model.camera.std.flatten().tolist(),
                },
            }
            log(f"exporting the camera encoder (clip, T={shapes.frames}) ...")
            clip_report, clip, clip_features = _export_clip(
                encoder, shapes, out, generator=generator, **common
            )
            graphs.append(clip_report)
            if not stream:
                notes.append("streaming camera encoder not requested")
            elif not encoder.backbone.can_stream:
                notes.append(
                    "the camera backbone shifts bidirectionally (needs future frames): no "
                    "streaming graph"
                )
                log(f"note: {notes[-1]}")
            else:
                log("exporting the camera encoder (streaming, TSM state in/out) ...")
                graphs.append(
                    _export_stream(
                        encoder, shapes, out, clip, clip_features, generator=generator, **common
                    )
                )
        log("exporting the BEV decoder + head ...")
        graphs.append(_export_decoder_head(model, shapes, out, generator=generator, **common))
    report = ExportReport(
        out_dir=out,
        graphs=tuple(graphs),
        opset=opset,
        tolerance=tolerance,
        notes=tuple(notes),
        meta={
            **dict(meta or {}),
            "config_name": config.name,
            "shapes": {
                "batch_size": shapes.batch_size,
                "dynamic_batch": dynamic_batch,
                "num_cameras": shapes.num_cameras,
                "frames": shapes.frames,
                "image_size_hw": list(shapes.image_size),
                "fused_channels": shapes.fused_channels,
                "bev_shape_xy": list(shapes.bev_shape),
            },
            **camera_meta,
        },
    )
    (out / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report


def format_report(report: ExportReport) -> str:
    """A table of every graph's parity cases: worst output, its max abs and relative diff."""
    lines = [
        f"{'graph':<24} {'case':<30} {'worst output':<20} {'max abs diff':>12} "
        f"{'rel diff':>10}  ok"
    ]
    for g in report.graphs:
        for case in g.parity:
            name, d = case.worst()
            ok = "yes" if case.passes(g.tolerance) else "NO"
            lines.append(
                f"{g.name:<24} {case.name:<30} {name:<20} {d.max_abs_diff:>12.3e} "
                f"{d.rel_diff:>10.3e}  {ok}"
            )
    for g in report.graphs:
        lines.append(f"{g.file} ({g.size_bytes / 1e6:.2f} MB, opset {g.opset})")
    return "\n".join(lines)
