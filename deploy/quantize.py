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
"""

from __future__ import annotations

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
