"""The whole detector built from configs: losses, gradients, detections, missing sensors,
a golden output on fixed inputs and a one-batch overfit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from perception.config import load_config
from perception.datasets.random_batch import random_batch
from perception.models.builder import build_model
from perception.structures import Batch, Detections
from tests.perception.models.helpers import micro_config, synthetic_batch

REPO = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).parent / "golden" / "bevfusion_micro.safetensors"


def test_every_config_builds():
    for path in sorted((REPO / "configs").glob("bevfusion_*.yaml")):
        model = build_model(load_config(path))
        assert sum(p.numel() for p in model.parameters()) > 0, path


@pytest.mark.parametrize("modalities", ["fused", "camera", "lidar"])
def test_train_losses_and_gradients(modalities):
    overrides = {"fused": [], "camera": ["model.lidar=null"], "lidar": ["model.camera=null"]}
    torch.manual_seed(0)
    config = micro_config(*overrides[modalities])
    model = build_model(config).train()
    losses = model(synthetic_batch(config))
    assert losses and all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    assert any(k.startswith("heatmap/") for k in losses) and any(
        k.startswith("bbox/") for k in losses
    )
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def train_losses_and_depth_input(config):
    """The training losses of a fresh model and the last `num_depth` channels its depth net
    read (`[B*Ncam, D, fH, fW]`: the one-hot depth input that comes last)."""
    model = build_model(config).train()
    vt = model.camera.view_transform
    inputs = []
    vt.depth_net.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    losses = model(synthetic_batch(config))
    assert all(torch.isfinite(v) for v in losses.values())
    return model, losses, inputs[0][:, -vt.num_depth :]


@pytest.mark.parametrize("lidar_dropped", [False, True])
def test_lidar_depth_input_follows_modality_dropout(lidar_dropped):
    """A camera branch reading LiDAR depths gets none for a sample whose LiDAR was dropped."""
    torch.manual_seed(0)
    drop = "[0.0, 1.0]" if lidar_dropped else "[0.0, 0.0]"
    config = micro_config(
        "model.camera.lidar_depth_input=true",
        "model.camera.depth_loss_weight=1.0",
        f"model.modality_dropout={drop}",
    )
    _, losses, depth_in = train_losses_and_depth_input(config)  # one-hot LiDAR depths
    assert (depth_in.abs().max() == 0) == lidar_dropped
    # no LiDAR depths, no depth supervision either: the loss is there, at zero
    assert (float(losses["camera/depth"].detach()) == 0) == lidar_dropped
    sum(losses.values()).backward()


def test_camera_only_model_with_the_ground_prior_trains():
    """`ground_depth_input` feeds a camera-only model's depth net from calibration alone."""
    torch.manual_seed(0)
    config = micro_config("model.lidar=null", "model.camera.ground_depth_input=-1.84")
    model, losses, prior = train_losses_and_depth_input(config)  # one-hot ground depths
    assert prior.sum() > 0 and prior.sum(1).max() == 1
    sum(losses.values()).backward()
    depth_conv = model.camera.view_transform.depth_net[0][0]
    assert depth_conv.weight.grad[:, -prior.shape[1] :].abs().sum() > 0


def test_camera_disabled_is_the_lidar_part_of_a_zero_init_fusion():
    """`camera_enabled` False skips the camera branch; with the fuser's camera weights at zero
    the losses are those of the camera-enabled model (whose camera then changes nothing)."""
    torch.manual_seed(0)
    config = micro_config(
        "model.fuser_zero_init=[camera]",
        "model.camera.depth_loss_weight=1.0",
        "model.modality_dropout=[0.5, 0.5]",  # ignored while the camera is off
    )
    model = build_model(config).train()
    batch = synthetic_batch(config)
    torch.manual_seed(1)
    with_camera = model(batch)
    assert "camera/depth" in with_camera
    model.camera_enabled = False
    calls = []
    model.camera.register_forward_pre_hook(lambda module, args: calls.append(1))
    torch.manual_seed(1)
    without = model(batch)
    assert not calls and not any(k.startswith("camera/") for k in without)
    model.modality_dropout = None  # the camera-enabled run had dropout: compare without it
    model.camera_enabled = True
    torch.manual_seed(1)
    reference = {k: v for k, v in model(batch).items() if not k.startswith("camera/")}
    assert reference.keys() == without.keys()
    for name in reference:
        torch.testing.assert_close(without[name], reference[name], msg=name)
    model.zero_grad()
    sum(without.values()).backward()
    assert all(p.grad is None for p in model.camera.parameters())
    assert all(p.grad is not None for p in model.lidar.parameters())


def test_eval_returns_detections_per_sample():
    torch.manual_seed(0)
    config = micro_config()
    model = build_model(config).eval()
    batch = synthetic_batch(config)
    with torch.no_grad():
        detections = model(batch)
    assert len(detections) == 2
    assert all(
        isinstance(d, Detections) and d.sample_token == t for d, t in zip(detections, batch.tokens)
    )


@pytest.mark.parametrize("drop", ["one_camera", "all_cameras", "lidar"])
def test_runs_with_a_missing_sensor(drop):
    torch.manual_seed(0)
    config = micro_config()
    model = build_model(config).eval()
    batch = synthetic_batch(config)
    camera_mask, lidar_mask = batch.camera_mask.clone(), batch.lidar_mask.clone()
    points = batch.points
    if drop == "one_camera":
        camera_mask[:, 0] = False
    elif drop == "all_cameras":
        camera_mask[:] = False
    else:
        lidar_mask[:] = False
        points = points[:0]
    degraded = Batch(
        **{**batch.__dict__, "camera_mask": camera_mask, "lidar_mask": lidar_mask, "points": points}
    )
    with torch.no_grad():
        full, _ = model.bev_features(batch)
        partial, _ = model.bev_features(degraded)
        detections = model(degraded)
    assert torch.isfinite(partial).all() and len(detections) == 2
    assert not torch.allclose(full, partial)


def test_golden_output():
    """Fixed seed, fixed inputs -> the same head outputs as recorded (UPDATE_GOLDEN=1 rewrites)."""
    torch.manual_seed(1234)
    config = micro_config()
    model = build_model(config).eval()
    with torch.no_grad():
        features, _ = model.bev_features(synthetic_batch(config, seed=7))
        outputs = model.head(features)
    got = {"bev": features[:, :4].contiguous()}
    for t, out in enumerate(outputs):
        got[f"heatmap{t}"] = out.heatmap.contiguous()
        got[f"regression{t}"] = out.regression().contiguous()
        got[f"direction{t}"] = out.direction.contiguous()
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        save_file(got, str(GOLDEN))
    expected = load_file(str(GOLDEN))
    assert set(expected) == set(got)
    for name, value in expected.items():
        torch.testing.assert_close(
            got[name], value, atol=2e-4, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.slow
def test_one_batch_overfit():
    torch.manual_seed(0)
    config = micro_config("model.modality_dropout=[0.0, 0.0]")
    model = build_model(config).train()
    batch = synthetic_batch(config, batch_size=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = sum(model(batch).values())
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    last = float(loss.detach())
    assert last < first / 10, (first, last)


@pytest.mark.parametrize(
    "name", ["bevfusion_tiny.yaml", "bevfusion_tiny_camera.yaml", "bevfusion_tiny_lidar.yaml"]
)
def test_tiny_configs_train_forward_backward(name):
    torch.manual_seed(0)
    config = load_config(REPO / "configs" / name)
    model = build_model(config).train()
    losses = model(random_batch(config, batch_size=1, points_per_sample=4000))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_camera_branch_streaming_matches_clip():
    """Streaming one frame at a time gives the camera BEV of the uni-directional clip model."""
    torch.manual_seed(0)
    config = micro_config("model.camera.tsm_mode=unidirectional")
    camera = build_model(config).camera.eval()
    batch = synthetic_batch(config, batch_size=1)
    with torch.no_grad():
        clip_bev, _ = camera(batch)
        state = None
        for t in range(config.data.clip_frames):
            frame = Batch(**{**batch.__dict__, "images": batch.images[:, :, t : t + 1]})
            stream_bev, state = camera.forward_stream(frame, state)
    torch.testing.assert_close(stream_bev, clip_bev, atol=1e-4, rtol=1e-4)


def test_one_call_from_a_config_file():
    model = build_model(REPO / "configs" / "bevfusion_tiny_lidar.yaml", ["model.fuser_channels=16"])
    assert model.modalities == ("lidar",) and model.fuser.out_channels == 16


def test_bfloat16_autocast_forward_backward():
    """Mixed precision (`train.amp` on CUDA) on CPU's autocast: the ops take the mixed dtypes
    an autocast region makes (float32 softmax beside bfloat16 convolutions) and run in float32
    (ops/_autocast.py); losses finite, every parameter gets a float32 gradient."""
    torch.manual_seed(0)
    config = micro_config()
    model = build_model(config).train()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        losses = model(synthetic_batch(config))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
