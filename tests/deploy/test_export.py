"""perception.deploy.export: ONNX graphs of the dense parts and their parity with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from perception.datasets.random_batch import random_batch
from perception.deploy.export import (
    CLIP_FILE,
    DECODER_HEAD_FILE,
    REPORT_FILE,
    STREAM_FILE,
    OrtSession,
    OutputDiff,
    ParityCase,
    export_onnx,
    head_output_names,
    head_outputs_from_arrays,
)
from perception.models.builder import build_model
from tests.perception.models.helpers import micro_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def test_output_diff_rule():
    assert OutputDiff((2,), max_abs_diff=1e-7, scale=0.01).passes(1e-4)
    assert not OutputDiff((2,), max_abs_diff=2e-6, scale=0.01).passes(1e-4)
    assert OutputDiff((2,), max_abs_diff=0.0, scale=0.0).passes(1e-4)  # all-zero output
    assert not OutputDiff((2,), max_abs_diff=1e-9, scale=0.0).passes(1e-4)
    case = ParityCase("c", {"a": OutputDiff((1,), 1e-9, 1.0), "b": OutputDiff((1,), 1e-3, 1.0)})
    assert case.worst()[0] == "b" and not case.passes(1e-4) and case.passes(1e-2)


@pytest.fixture(scope="module")
def lidar_only_export(tmp_path_factory):
    torch.manual_seed(0)
    config = micro_config("model.camera=null")
    model = build_model(config)
    out = tmp_path_factory.mktemp("onnx")
    lines: list[str] = []
    report = export_onnx(model, config, out, log=lines.append)
    return config, model, out, report, lines


def test_without_camera_exports_only_decoder_head(lidar_only_export):
    _, model, out, report, lines = lidar_only_export
    assert not model.training
    assert [g.name for g in report.graphs] == ["bev_decoder_head"]
    assert report.passed
    assert any("no camera branch" in line for line in lines)
    assert (out / DECODER_HEAD_FILE).is_file()
    assert not (out / CLIP_FILE).exists() and not (out / STREAM_FILE).exists()
    content = json.loads((out / REPORT_FILE).read_text())
    assert content["passed"] and content["opset"] == 17
    assert "no camera branch" in content["notes"][0]
    assert set(content["not_exported"]) >= {"lidar_branch", "view_transform"}
    graph = content["graphs"]["bev_decoder_head"]
    assert graph["size_bytes"] == (out / DECODER_HEAD_FILE).stat().st_size
    assert graph["inputs"] == {"fused_bev": ["batch", 16, 16, 16]}  # 3.2 m cells over +-25.6 m
    for case in ("batch=1", "batch=2"):
        diffs = graph["parity"][case]
        assert set(diffs) == set(head_output_names(model))
        assert all(d["max_abs_diff"] <= 1e-4 * d["scale"] for d in diffs.values())
        assert all(d["scale"] > 0 for d in diffs.values())


def test_onnx_head_outputs_decode_like_eager(lidar_only_export):
    """The graph's outputs, turned back into TaskOutputs, give the eager model's detections."""
    config, model, out, _, _ = lidar_only_export
    fused = torch.rand(2, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    session = OrtSession(out / DECODER_HEAD_FILE)
    got = head_outputs_from_arrays(session({"fused_bev": fused}), len(model.head.tasks))
    batch = random_batch(config, batch_size=2)
    with torch.no_grad():
        expected = model.head(model.decoder(fused))
        dets_onnx = model.head.predict(got, batch)
        dets_eager = model.head.predict(expected, batch)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.regression(), e.regression(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(g.heatmap, e.heatmap, atol=1e-5, rtol=1e-4)
        assert (g.attribute is None) == (e.attribute is None)
    for d_onnx, d_eager in zip(dets_onnx, dets_eager):
        assert len(d_onnx.scores) == len(d_eager.scores) > 0
        np.testing.assert_allclose(d_onnx.scores.numpy(), d_eager.scores.numpy(), atol=1e-5)


def test_head_outputs_from_arrays_names_a_missing_output():
    with pytest.raises(KeyError, match="task0_offset"):
        head_outputs_from_arrays({"task0_heatmap": np.zeros((1, 1, 2, 2))}, 1)


@pytest.mark.slow
def test_camera_clip_and_stream_graphs_match_eager(tmp_path):
    torch.manual_seed(0)
    config = micro_config("model.lidar=null")
    model = build_model(config)
    report = export_onnx(model, config, tmp_path, log=lambda _: None)
    assert [g.name for g in report.graphs] == [
        "camera_encoder_clip",
        "camera_encoder_stream",
        "bev_decoder_head",
    ]
    assert report.passed, [(g.name, c.name, c.worst()) for g in report.graphs for c in g.parity]
    clip, stream, _ = report.graphs
    assert clip.inputs == {"images": ["batch", 6, 2, 3, 64, 176]}
    assert clip.outputs == {"features": ["batch", 6, 16, 8, 22]}
    L = model.camera.encoder.backbone.num_shift_locations
    assert L > 0
    assert list(stream.inputs) == ["image"] + [f"tsm_state_in_{i}" for i in range(L)]
    assert list(stream.outputs) == ["features"] + [f"tsm_state_out_{i}" for i in range(L)]
    names = [c.name for c in stream.parity]
    assert names == ["stream step 1", "stream step 2", "stream step 2 vs eager clip", "batch=2"]
    # The ONNX stream, fed its own state, ends where eager clip mode does.
    assert stream.parity[2].outputs["features"].rel_diff < 1e-4
    content = json.loads((tmp_path / REPORT_FILE).read_text())
    assert content["image_normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert content["graphs"]["camera_encoder_stream"]["num_tsm_states"] == L


@pytest.mark.slow
def test_bidirectional_tsm_exports_clip_only(tmp_path):
    torch.manual_seed(0)
    config = micro_config("model.lidar=null", "model.camera.tsm_mode=bidirectional")
    lines: list[str] = []
    report = export_onnx(
        build_model(config), config, tmp_path, dynamic_batch=False, log=lines.append
    )
    assert [g.name for g in report.graphs] == ["camera_encoder_clip", "bev_decoder_head"]
    assert report.passed
    assert any("bidirectionally" in line for line in lines)
    assert not (tmp_path / STREAM_FILE).exists()
    assert report.graphs[0].inputs == {"images": [1, 6, 2, 3, 64, 176]}
