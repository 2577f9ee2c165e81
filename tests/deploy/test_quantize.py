"""perception.deploy.quantize: static INT8 of the exported decoder-head graph, against the
float graph on held-out inputs; per-layer sensitivity and mixed precision; refusals of
calibration sets that do not fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from perception.deploy.export import DECODER_HEAD_FILE, export_onnx  # noqa: E402
from perception.deploy.quantize import (  # noqa: E402
    QuantizationError,
    decoder_head_calibration,
    most_sensitive,
    output_error,
    quantizable_nodes,
    quantize_graph,
    sensitivity,
)
from perception.models.builder import build_model  # noqa: E402
from tests.perception.models.helpers import micro_config, synthetic_batch  # noqa: E402


@pytest.fixture(scope="module")
def decoder_head(tmp_path_factory):
    """The micro LiDAR-only detector's decoder-head graph, 8 calibration and 3 held-out
    inputs (each a fused BEV of a synthetic batch, as the node would feed it)."""
    torch.manual_seed(0)
    config = micro_config("model.camera=null")
    model = build_model(config)
    out = tmp_path_factory.mktemp("quant")
    export_onnx(model, config, out, log=lambda _: None)
    calibration = decoder_head_calibration(
        model, [synthetic_batch(config, seed=s) for s in range(8)]
    )
    held_out = decoder_head_calibration(
        model, [synthetic_batch(config, seed=100 + s) for s in range(3)]
    )
    return out, out / DECODER_HEAD_FILE, calibration, held_out


def _op_types(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_graph_is_close_to_float(decoder_head):
    """Measured on this micro model: heatmaps within 0.1% of their scale, the regressions
    within ~4%, the worst output (an attribute head) 12.5%; bound with a margin."""
    out, fp32, calibration, held_out = decoder_head
    int8 = quantize_graph(fp32, out / "int8.onnx", calibration)
    assert {"QuantizeLinear", "DequantizeLinear"} <= _op_types(int8)
    assert int8.stat().st_size < 0.7 * fp32.stat().st_size  # INT8 weights
    errors = output_error(fp32, int8, held_out)
    assert max(v for k, v in errors.items() if k.endswith("_heatmap")) < 0.01
    assert max(errors.values()) < 0.25
    assert min(errors.values()) > 0  # it is quantized, not the float graph renamed


def test_sensitivity_ranks_and_mixed_precision_keeps_the_worst_in_float(decoder_head):
    out, fp32, calibration, held_out = decoder_head
    nodes = quantizable_nodes(fp32)
    assert nodes and all("Conv" in n for n in nodes)
    attribute = next(n for n in nodes if "task_heads.0/attribute" in n and n.endswith(".3/Conv"))
    subset = [nodes[0], attribute, nodes[-1]]
    ranking = sensitivity(fp32, calibration, held_out, nodes=subset)
    assert sorted(n for n, _ in ranking) == sorted(subset)
    assert [e for _, e in ranking] == sorted((e for _, e in ranking), reverse=True)
    worst = most_sensitive(ranking, 1)
    mixed = quantize_graph(fp32, out / "mixed.onnx", calibration, exclude=worst)
    int8 = quantize_graph(fp32, out / "int8_again.onnx", calibration)
    assert max(output_error(fp32, mixed, held_out).values()) <= max(
        output_error(fp32, int8, held_out).values()
    )
    assert most_sensitive(ranking, 0) == []


def test_an_empty_calibration_set_is_refused(decoder_head):
    out, fp32, _, _ = decoder_head
    with pytest.raises(QuantizationError, match="calibration set is empty"):
        quantize_graph(fp32, out / "x.onnx", [])


def test_a_calibration_set_of_another_config_is_refused(decoder_head):
    out, fp32, calibration, _ = decoder_head
    wrong_channels = [{"fused_bev": np.zeros((1, 32, 16, 16), np.float32)}]
    with pytest.raises(QuantizationError, match=r"input 'fused_bev' is \[1, 32, 16, 16\]"):
        quantize_graph(fp32, out / "x.onnx", wrong_channels)
    wrong_name = [{"camera_images": calibration[0]["fused_bev"]}]
    with pytest.raises(QuantizationError, match="another graph or config"):
        quantize_graph(fp32, out / "x.onnx", wrong_name)
    with pytest.raises(QuantizationError, match="no quantizable nodes named"):
        quantize_graph(fp32, out / "x.onnx", calibration, exclude=["/no/such/Conv"])
