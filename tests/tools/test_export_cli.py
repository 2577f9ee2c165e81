"""tools/export.py: checkpoint in, ONNX graphs and export.json out, parity checked."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from perception.checkpoint import save_checkpoint
from perception.config import save_config
from perception.deploy.export import CLIP_FILE, DECODER_HEAD_FILE, REPORT_FILE, STREAM_FILE
from perception.models.builder import build_model
from tests.perception.models.helpers import micro_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "export.py"


@pytest.fixture(scope="module")
def export_main():
    return runpy.run_path(str(SCRIPT), run_name="export_cli")["main"]


def _trained(config, seed: int):
    """A model whose weights (BatchNorm statistics included) differ from a fresh build."""
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(0.05 * torch.randn_like(t))
                if "running_var" in name:
                    t.abs_()
    return model.eval()


@pytest.fixture(scope="module")
def lidar_work_dir(tmp_path_factory):
    config = micro_config("model.camera=null")
    model = _trained(config, seed=1)
    work_dir = tmp_path_factory.mktemp("work")
    save_checkpoint(work_dir, step=3, model=model, config=config)
    return work_dir, model


def test_exports_from_a_work_dir_with_its_saved_config(
    export_main, lidar_work_dir, tmp_path, capsys
):
    work_dir, model = lidar_work_dir
    out = tmp_path / "onnx"
    assert export_main(["--checkpoint", str(work_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    step_dir = work_dir / "checkpoints" / "step_3"
    assert f"loaded {step_dir}" in printed
    assert "no camera branch" in printed
    assert "bev_decoder_head" in printed and "batch=2" in printed
    assert str((out / REPORT_FILE).resolve()) in printed
    content = json.loads((out / REPORT_FILE).read_text())
    assert content["passed"] and content["checkpoint"] == str(step_dir.resolve())
    assert list(content["graphs"]) == ["bev_decoder_head"]
    assert not (out / CLIP_FILE).exists()

    # The graph holds the checkpoint's weights, not a fresh model's.
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / DECODER_HEAD_FILE), providers=["CPUExecutionProvider"])
    fused = torch.rand(1, 16, 16, 16, generator=torch.Generator().manual_seed(5))
    heatmap = session.run(["task0_heatmap"], {"fused_bev": fused.numpy()})[0]
    with torch.no_grad():
        saved = model.head(model.decoder(fused))[0].heatmap.numpy()
        fresh_model = build_model(micro_config("model.camera=null")).eval()
        fresh = fresh_model.head(fresh_model.decoder(fused))[0].heatmap.numpy()
    np.testing.assert_allclose(heatmap, saved, atol=1e-4 * np.abs(saved).max())
    assert np.abs(heatmap - fresh).max() > 1e-2


def test_missing_checkpoint_names_the_path(export_main, tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    assert export_main(["--checkpoint", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert f"error: checkpoint not found: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_empty_work_dir_is_a_clear_error(export_main, tmp_path, capsys):
    assert export_main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path}: no checkpoint here" in err


def test_config_that_does_not_fit_the_checkpoint(export_main, lidar_work_dir, tmp_path, capsys):
    work_dir, _ = lidar_work_dir
    other = tmp_path / "other.yaml"
    save_config(micro_config("model.camera=null", "model.fuser_channels=8"), other)
    argv = ["--config", str(other), "--checkpoint", str(work_dir), "--out", str(tmp_path / "o")]
    assert export_main(argv) == 2
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "model.safetensors" in err


@pytest.mark.slow
def test_fused_model_from_a_checkpoint_dir(export_main, tmp_path, capsys):
    config = micro_config()
    model = _trained(config, seed=2)
    step_dir = save_checkpoint(tmp_path / "work", step=1, model=model, config=config)
    config_file = tmp_path / "config.yaml"
    save_config(config, config_file)
    out = tmp_path / "onnx"
    argv = ["--config", str(config_file), "--checkpoint", str(step_dir), "--out", str(out)]
    assert export_main(argv) == 0
    printed = capsys.readouterr().out
    assert "note:" not in printed  # the same config as the checkpoint's
    content = json.loads((out / REPORT_FILE).read_text())
    assert content["passed"]
    assert list(content["graphs"]) == [
        "camera_encoder_clip",
        "camera_encoder_stream",
        "bev_decoder_head",
    ]
    for name in (CLIP_FILE, STREAM_FILE, DECODER_HEAD_FILE):
        assert (out / name).stat().st_size > 0
    stream = content["graphs"]["camera_encoder_stream"]["parity"]
    assert stream["stream step 2 vs eager clip"]["features"]["rel_diff"] < 1e-4


def test_parity_failure_exits_1(export_main, lidar_work_dir, tmp_path, capsys, monkeypatch):
    """An exported graph 0.1% off the model fails the check (the graph is traced from the
    wrapper; the reference is the model's own decoder and head)."""
    from perception.deploy import export

    forward = export.DecoderHead.forward
    monkeypatch.setattr(
        export.DecoderHead, "forward", lambda self, x: tuple(t * 1.001 for t in forward(self, x))
    )
    work_dir, _ = lidar_work_dir
    out = tmp_path / "onnx"
    assert export_main(["--checkpoint", str(work_dir), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "ONNX outputs differ from PyTorch beyond 0.0001" in captured.err
    assert " NO" in captured.out
    assert json.loads((out / REPORT_FILE).read_text())["passed"] is False
