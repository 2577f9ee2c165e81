"""tools/quantize.py: an exported micro checkpoint's decoder head quantized to INT8, calibrated
on the tiny world's training samples and checked on its validation samples; errors exit 2."""

from __future__ import annotations

import json

import pytest

from tests.deploy.node_helpers import node_raw, save_micro_checkpoint
from tools.export import main as export_cli
from tools.quantize import main as quantize_cli

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_quantize_writes_int8_graph_and_report(indexed_world_copy, tmp_path):
    raw = node_raw(indexed_world_copy("quantize"))
    raw["model"]["camera"] = None  # the decoder head is what is quantized; no camera needed
    raw["data"]["clip_frames"] = 1
    config, work = save_micro_checkpoint(raw, tmp_path / "ckpt")
    onnx_dir = tmp_path / "onnx"
    assert (
        export_cli(["--checkpoint", str(work), "--config", str(config), "--out", str(onnx_dir)])
        == 0
    )
    argv = [str(onnx_dir), "--checkpoint", str(work), "--config", str(config),
            "--samples", "3", "--held-out", "2"]  # fmt: skip
    assert quantize_cli(argv) == 0
    report = json.loads((onnx_dir / "quantize.json").read_text())
    assert report["calibration_samples"] == 3 and report["held_out_samples"] == 2
    int8 = report["graphs"]["int8"]
    assert (onnx_dir / int8["file"]).is_file() and int8["size_bytes"] < report["float_size_bytes"]
    assert 0 < max(int8["relative_error"].values()) < 0.5
    assert "tools/quantize.py" in report["command"]
    # the weights it was made from: the node refuses the graph beside other weights
    from perception.checkpoint import resolve_checkpoint, weights_sha256

    sha = weights_sha256(resolve_checkpoint(work))
    assert report["model_sha256"] == sha
    assert json.loads((onnx_dir / "export.json").read_text())["model_sha256"] == sha
    exported = json.loads((onnx_dir / "export.json").read_text())
    exported["model_sha256"] = "f" * 64  # an export of other weights in the folder
    (onnx_dir / "export.json").write_text(json.dumps(exported))
    assert quantize_cli(argv) == 2


def test_missing_export_is_a_usage_error(tmp_path, capsys):
    assert quantize_cli([str(tmp_path), "--checkpoint", str(tmp_path)]) == 2
    assert "bev_decoder_head.onnx: not found" in capsys.readouterr().err
