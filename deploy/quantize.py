"""Post-training INT8 quantization of the exported dense graphs (`deploy/export.py`), through
onnxruntime's static quantization: per-channel INT8 weights, activations calibrated on real
inputs, QDQ format (the form TensorRT and onnxruntime's CPU kernels both read).

Why onnxruntime and not PyTorch's PT2E: the node's dense parts are already exported and
parity-checked as ONNX, onnxruntime quantizes those very files and runs them on CPU without a
compiler, and its quantizer is maintained with the runtime that executes the result. (PT2E's
x86 inductor path needs `torch.compile` at run time; measured against this one: not yet.)

    feeds = decoder_head_calibration(model, batches)          # real inputs of the graph
    quantize_graph(fp32, int8, feeds)                          # all of it INT8
    ranking = sensitivity(fp32, feeds, eval_feeds, work_dir)   # which layers hurt most
    quantize_graph(fp32, mixed, feeds, exclude=most_sensitive(ranking, 3))   # mixed precision

Every error names the graph, the input and what was expected: a calibration set that is empty
or made for another config (other input names or shapes) is refused, never quantized into a
model that is INT8 in name only.

The node and the test tool run a quantized graph in place of the model's decoder and head
(`--precision int8|mixed`): `load_decoder_head_graph` checks that the graph was quantized from
the very weights the model holds (``quantize.json``'s ``model_sha256``) and fits the model's
fused map, and `BEVFusion.decode_backend` then calls it (`DecoderHeadGraph`). `--precision bf16`
needs no graph: the model's own decoder and head under bfloat16 autocast (`Bfloat16DecoderHead`),
refused where the device has no bfloat16 kernels (`bfloat16_unsupported`), never a float model
labelled bf16.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perception.structures import Batch

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")  # what static quantization turns into INT8 kernels

GRAPH_FILES = {"int8": "bev_decoder_head_int8.onnx", "mixed": "bev_decoder_head_mixed.onnx"}
# the decoder + head: the model itself, the model under bfloat16 autocast, or a graph
PRECISIONS = ("float32", "bf16", *GRAPH_FILES)
REPORT_FILE = "quantize.json"  # tools/quantize.py's report beside the graphs

Feeds = Mapping[str, np.ndarray]


class QuantizationError(ValueError):
    """A calibration set or graph the quantizer cannot use; the message says which and why."""


def _require_onnxruntime() -> Any:
    try:
        import onnx  # noqa: F401
        from onnxruntime import quantization
    except ImportError as exc:
        raise QuantizationError(
            "INT8 quantization needs onnx and onnxruntime: pip install -e '.[export]'"
        ) from exc
    return quantization


def decoder_head_calibration(model: torch.nn.Module, batches: Iterable[Batch]) -> list[Feeds]:
    """The decoder-head graph's real inputs: each batch's fused BEV (`BEVFusion.fused_features`
    in eval mode, the map `deploy/export.py`'s `bev_decoder_head.onnx` reads as `fused_bev`)."""
    model.eval()
    feeds = []
    with torch.no_grad():
        for batch in batches:
            fused, _ = model.fused_features(batch)  # [B, C_fused, X, Y]
            feeds.append({"fused_bev": fused.float().numpy()})
    return feeds


def graph_inputs(path: str | Path) -> dict[str, list[int | str]]:
    """Input name -> shape (ints; names for dynamic axes) of an ONNX graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inputs = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        inputs[value.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    return inputs


def check_feeds(path: str | Path, feeds: Sequence[Feeds]) -> None:
    """Raises `QuantizationError` when `feeds` is empty or a feed does not fit the graph's
    inputs (names, rank, static sizes), naming the graph, the input and both shapes."""
    path = Path(path)
    if len(feeds) == 0:
        raise QuantizationError(f"{path.name}: the calibration set is empty (give it samples)")
    expected = graph_inputs(path)
    for i, feed in enumerate(feeds):
        if set(feed) != set(expected):
            raise QuantizationError(
                f"{path.name}: calibration feed {i} has inputs {sorted(feed)}, the graph takes "
                f"{sorted(expected)} (a calibration set of another graph or config?)"
            )
        for name, shape in expected.items():
            got = tuple(np.shape(feed[name]))
            fits = len(got) == len(shape) and all(
                not isinstance(d, int) or d in (0, g) for d, g in zip(shape, got)
            )
            if not fits:
                raise QuantizationError(
                    f"{path.name}: calibration feed {i}, input {name!r} is {list(got)}, the "
                    f"graph expects {shape} (a calibration set of another config?)"
                )


def quantizable_nodes(path: str | Path) -> list[str]:
    """Names of the graph's nodes static quantization turns into INT8 (`QUANTIZED_OPS`)."""
    import onnx

    model = onnx.load(str(path))
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS]


class _Reader:
    """onnxruntime's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: Sequence[Feeds]):
        self._feeds = iter([{k: np.asarray(v) for k, v in f.items()} for f in feeds])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_graph(
    fp32: str | Path,
    out: str | Path,
    feeds: Sequence[Feeds],
    *,
    exclude: Sequence[str] = (),
    only: Sequence[str] | None = None,
    per_channel: bool = True,
) -> Path:
    """Static INT8 quantization of the graph `fp32` into `out`: per-channel INT8 weights
    (`per_channel`), UINT8 activations calibrated (min/max) on `feeds`, QDQ format. `exclude`
    keeps those nodes in float (mixed precision); `only` quantizes just those nodes."""
    quantization = _require_onnxruntime()
    fp32, out = Path(fp32), Path(out)
    check_feeds(fp32, feeds)
    names = set(quantizable_nodes(fp32))
    unknown = [n for n in (*exclude, *(only or ())) if n not in names]
    if unknown:
        raise QuantizationError(f"{fp32.name}: no quantizable nodes named {unknown}")
    out.parent.mkdir(parents=True, exist_ok=True)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp, _quiet_preprocess_hint():
        # shape inference and constant folding first (onnxruntime's advice): folded biases
        # become initializers the quantizer can fold into the INT8 convolutions
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        quantization.quantize_static(
            str(prepared),
            str(out),
            _Reader(feeds),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=per_channel,
            weight_type=quantization.QuantType.QInt8,
            activation_type=quantization.QuantType.QUInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax,
            nodes_to_exclude=list(exclude),
            nodes_to_quantize=list(only) if only is not None else None,
        )
    return out


class _PreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


@contextmanager
def _quiet_preprocess_hint() -> Iterator[None]:
    """onnxruntime advises pre-processing on the root logger once per call even after it was
    done: that one line is dropped while the quantizer runs (every other warning stays)."""
    hint = _PreprocessHint()
    root = logging.getLogger()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def run_graph(path: str | Path, feeds: Sequence[Feeds]) -> list[dict[str, np.ndarray]]:
    """The graph's outputs (name -> array) for each feed, on onnxruntime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(names, dict(f)))) for f in feeds]


def output_error(fp32: str | Path, other: str | Path, feeds: Sequence[Feeds]) -> dict[str, float]:
    """Per output, over `feeds`: `max|other - fp32| / max|fp32|` (relative to the float
    output's scale, as the export's parity check measures it)."""
    a, b = run_graph(fp32, feeds), run_graph(other, feeds)
    errors: dict[str, float] = {}
    for name in a[0]:
        diff = max(float(np.abs(x[name] - y[name]).max()) for x, y in zip(a, b))
        scale = max(float(np.abs(x[name]).max()) for x in a)
        errors[name] = diff / scale if scale > 0 else diff
    return errors


def sensitivity(
    fp32: str | Path,
    feeds: Sequence[Feeds],
    eval_feeds: Sequence[Feeds],
    *,
    nodes: Sequence[str] | None = None,
    work_dir: str | Path | None = None,
) -> list[tuple[str, float]]:
    """Each quantizable node's sensitivity (or those of `nodes`): the worst relative output
    error (`output_error`) on `eval_feeds` when that node alone is INT8. Most sensitive first.
    One quantization per node: ~1.5 s each for the tiny decoder head on one core."""
    nodes = quantizable_nodes(fp32) if nodes is None else list(nodes)
    ranking = []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for i, node in enumerate(nodes):
            one = quantize_graph(fp32, Path(tmp) / f"only_{i}.onnx", feeds, only=[node])
            ranking.append((node, max(output_error(fp32, one, eval_feeds).values())))
    return sorted(ranking, key=lambda item: -item[1])


def most_sensitive(ranking: Sequence[tuple[str, float]], keep_float: int) -> list[str]:
    """The `keep_float` most sensitive nodes of `sensitivity`'s ranking: the ones a mixed
    precision graph keeps in float."""
    if keep_float < 0:
        raise ValueError(f"keep_float must be >= 0, got {keep_float}")
    return [name for name, _ in ranking[:keep_float]]


class DecoderHeadGraph:
    """A decoder-head graph (`deploy/export.py`'s `DecoderHead`, float or quantized) as
    `BEVFusion.decode`: `fused [B, C, X, Y] -> list[TaskOutput]`, on onnxruntime's CPU
    provider with `threads` intra-op threads. `precision` names it ("int8", "mixed")."""

    def __init__(self, path: str | Path, num_tasks: int, precision: str, threads: int = 1):
        import onnxruntime as ort

        self.path = Path(path)
        self.num_tasks = num_tasks
        self.precision = precision
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, fused: torch.Tensor) -> list:
        from perception.deploy.export import head_outputs_from_arrays

        array = fused.detach().to("cpu", torch.float32).numpy()
        outputs = self.session.run(self.output_names, {self.input_name: array})
        named = {name: torch.from_numpy(out) for name, out in zip(self.output_names, outputs)}
        return head_outputs_from_arrays(named, self.num_tasks)


def bfloat16_unsupported(device: torch.device) -> str | None:
    """Why `device` cannot run the bfloat16 decoder + head, or None when it can: on the CPU
    PyTorch's own rule for oneDNN's bfloat16 kernels (AVX-512 BW/VL/DQ on x86, or an Arm CPU
    with bf16), on CUDA `torch.cuda.is_bf16_supported`."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return None
        return f"{torch.cuda.get_device_name(device)} has no bfloat16 support"
    if device.type != "cpu":
        return f"bfloat16 autocast is run on the CPU or CUDA, not on {device.type}"
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn), which runs bfloat16 on the CPU"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "this CPU has no bfloat16 kernels in oneDNN (they need AVX-512 BW/VL/DQ or Arm bf16)"
    return None


class Bfloat16DecoderHead:
    """`--precision bf16`: the model's own BEV decoder and head (the same modules, not a copy)
    under bfloat16 autocast, as `BEVFusion.decode`: `fused [B, C, X, Y] -> list[TaskOutput]`,
    the maps returned in float32 (box decoding and NMS run as for every precision)."""

    precision = "bf16"

    def __init__(self, decoder: torch.nn.Module, head: torch.nn.Module):
        self.decoder = decoder
        self.head = head

    def __call__(self, fused: torch.Tensor) -> list:
        with torch.autocast(fused.device.type, dtype=torch.bfloat16):
            outputs = self.head(self.decoder(fused))
        return [
            dataclasses.replace(
                output,
                **{
                    field.name: value.float()
                    for field in dataclasses.fields(output)
                    if isinstance(value := getattr(output, field.name), torch.Tensor)
                },
            )
            for output in outputs
        ]


def load_decoder_head_graph(
    onnx_dir: str | Path,
    precision: str,
    *,
    checkpoint: str | Path,
    model: torch.nn.Module,
    config: Any,
    threads: int = 1,
) -> DecoderHeadGraph:
    """The `precision` ("int8" or "mixed") decoder-head graph in `onnx_dir` (`tools/export.py`
    then `tools/quantize.py` wrote it) for `model` (of `config`), loaded from `checkpoint`.

    Refused with `QuantizationError`, naming the file and the field: an unknown precision; no
    onnxruntime; a missing graph or ``quantize.json``; a graph quantized from other weights
    (``model_sha256`` against the checkpoint's); a graph whose input is not the model's fused
    map (channels, BEV grid) or whose outputs are not the model's head maps. Never a float
    model labelled INT8."""
    from perception.checkpoint import weights_sha256
    from perception.deploy.export import ExportShapes, head_output_names

    if precision not in GRAPH_FILES:
        raise QuantizationError(
            f"precision {precision!r}: a decoder-head graph exists for {sorted(GRAPH_FILES)}"
        )
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise QuantizationError(
            f"--precision {precision} runs the graph on onnxruntime, which is not installed: "
            "pip install -e '.[export]'"
        ) from exc
    onnx_dir = Path(onnx_dir)
    path = onnx_dir / GRAPH_FILES[precision]
    make = (
        f"python tools/export.py --checkpoint {checkpoint} --out {onnx_dir} && python "
        f"tools/quantize.py {onnx_dir} --checkpoint {checkpoint}"
        + (" --keep-float 3" if precision == "mixed" else "")
    )
    if not path.is_file():
        raise QuantizationError(f"{path}: not found (make it: {make})")
    report_path = onnx_dir / REPORT_FILE
    try:
        report = json.loads(report_path.read_text())
    except FileNotFoundError:
        raise QuantizationError(f"{report_path}: not found (make it: {make})") from None
    except (OSError, ValueError) as exc:
        raise QuantizationError(f"{report_path}: unreadable: {exc}") from None
    recorded = report.get("model_sha256") if isinstance(report, dict) else None
    if not isinstance(recorded, str):
        raise QuantizationError(
            f"{report_path}: no 'model_sha256' (written before it was recorded?): re-run {make}"
        )
    expected = weights_sha256(checkpoint)
    if recorded != expected:
        raise QuantizationError(
            f"{path}: quantized from other weights ({report_path.name} model_sha256 "
            f"{recorded[:12]}..., the checkpoint {checkpoint} holds {expected[:12]}...): "
            f"re-run {make}"
        )
    shapes = ExportShapes.from_config(config, model)
    fused = [shapes.fused_channels, *shapes.bev_shape]
    (name, shape), *rest = graph_inputs(path).items()
    if rest or len(shape) != 4 or list(shape[1:]) != fused:
        raise QuantizationError(
            f"{path}: input {name!r} is {shape}, the model's fused map is [B, "
            f"{', '.join(map(str, fused))}] (a graph of another config?)"
        )
    graph = DecoderHeadGraph(path, len(model.head.task_heads), precision, threads)
    expected_names = head_output_names(model)
    if graph.output_names != expected_names:
        raise QuantizationError(
            f"{path}: outputs {graph.output_names}, the model's head gives {expected_names}"
        )
    return graph


def use_precision(
    model: torch.nn.Module,
    config: Any,
    precision: str,
    *,
    checkpoint: str | Path | None,
    onnx_dir: str | Path | None = None,
    threads: int = 1,
    fold_bn: bool = False,
) -> DecoderHeadGraph | Bfloat16DecoderHead | None:
    """Sets `model.decode_backend` to what runs its decoder and head at `precision`
    (`--precision` of the node, the test tool and the node benchmark: one rule): float32
    leaves the model as it is (None); bf16 is the model's decoder and head under bfloat16
    autocast (refused, naming why, where the model's device has no bfloat16 kernels); int8 and
    mixed are the quantized decoder-head graphs. `onnx_dir` defaults to CHECKPOINT/onnx. A
    quantized precision without a checkpoint (a randomly initialized model) is refused: a graph
    belongs to one set of weights. `fold_bn` (`--fold-bn`) first folds every BatchNorm into the
    layer before it (`perception.deploy.fold`; in place and for good: an inference-only model;
    `model.folded_batchnorms` counts them)."""
    if fold_bn:
        from .fold import fold_batchnorm

        model.folded_batchnorms = fold_batchnorm(model)
    if precision == "float32":
        model.decode_backend = None
        return None
    if precision == "bf16":
        device = next(model.parameters()).device
        reason = bfloat16_unsupported(device)
        if reason is not None:
            raise QuantizationError(f"--precision bf16: {reason}; run --precision float32")
        backend = Bfloat16DecoderHead(model.decoder, model.head)
        model.decode_backend = backend
        return backend
    if checkpoint is None:
        raise QuantizationError(
            f"--precision {precision} needs the checkpoint its graph was made from"
        )
    from perception.checkpoint import resolve_checkpoint

    resolved = resolve_checkpoint(checkpoint)
    graph = load_decoder_head_graph(
        Path(onnx_dir) if onnx_dir is not None else Path(checkpoint) / "onnx",
        precision,
        checkpoint=resolved,
        model=model,
        config=config,
        threads=threads,
    )
    model.decode_backend = graph
    return graph
