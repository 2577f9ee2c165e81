"""FPN neck and CameraEncoder: shapes, training backward, configuration checks."""

from __future__ import annotations

import pytest
import torch

from perception.models.camera import (
    CameraEncoder,
    CameraEncoderConfig,
    EfficientViTConfig,
    GeneralizedLSSFPN,
    TemporalShiftConfig,
    build_camera_encoder,
    build_efficientvit,
)


@pytest.mark.parametrize(
    ("in_channels", "sizes", "out_channels"),
    [
        ((32, 64, 128), ((8, 16), (4, 8), (2, 4)), 64),
        ((32, 64, 128), ((9, 13), (5, 7), (3, 4)), 16),  # odd sizes: upsample to the finer size
        ((64, 128), ((4, 8), (2, 4)), 32),
        ((32,), ((8, 16),), 8),
    ],
)
def test_neck_shapes(in_channels, sizes, out_channels):
    neck = GeneralizedLSSFPN(in_channels=in_channels, out_channels=out_channels)
    features = [torch.randn(2, c, h, w) for c, (h, w) in zip(in_channels, sizes)]
    out = neck(features)
    assert tuple(out.shape) == (2, out_channels, *sizes[0])


def test_neck_nearest_upsampling():
    neck = GeneralizedLSSFPN(in_channels=(8, 16), out_channels=8, upsample_mode="nearest")
    assert tuple(neck([torch.randn(1, 8, 4, 4), torch.randn(1, 16, 2, 2)]).shape) == (1, 8, 4, 4)


def test_neck_rejects_wrong_channels():
    neck = GeneralizedLSSFPN(in_channels=(8, 16), out_channels=8)
    with pytest.raises(ValueError, match="channels"):
        neck([torch.randn(1, 8, 4, 4), torch.randn(1, 12, 2, 2)])


def _encoder(frames: int, neck_channels: int = 24) -> CameraEncoder:
    torch.manual_seed(0)
    tsm = TemporalShiftConfig(mode="unidirectional", frames=frames)
    cfg = CameraEncoderConfig(
        backbone=EfficientViTConfig(variant="b0", tsm=tsm), neck_channels=neck_channels
    )
    return build_camera_encoder(cfg)


@pytest.mark.parametrize("frames", [1, 2])
def test_encoder_shapes(frames):
    B, Ncam, H, W = 2, 3, 32, 64
    encoder = _encoder(frames).eval()
    with torch.no_grad():
        out = encoder(torch.randn(B, Ncam, frames, 3, H, W))
    assert encoder.stride == 8 and encoder.out_channels == 24
    assert tuple(out.shape) == (B, Ncam, 24, H // 8, W // 8)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("frames", [1, 2])
def test_encoder_backward_reaches_every_parameter(frames):
    B, Ncam, H, W = 1, 2, 32, 64
    encoder = _encoder(frames).train()
    out = encoder(torch.randn(B, Ncam, frames, 3, H, W))
    (out**2).mean().backward()
    no_grad = [
        n for n, p in encoder.named_parameters() if p.grad is None or p.grad.abs().sum() == 0
    ]
    assert no_grad == []


@pytest.mark.parametrize(("mode", "depends"), [("unidirectional", True), ("off", False)])
def test_encoder_last_frame_depends_on_earlier_frames_only_with_shift(mode, depends):
    torch.manual_seed(0)
    tsm = TemporalShiftConfig(mode=mode, frames=2)
    cfg = CameraEncoderConfig(backbone=EfficientViTConfig(variant="b0", tsm=tsm), neck_channels=8)
    encoder = build_camera_encoder(cfg).eval()  # eval: BatchNorm does not mix frames
    images = torch.randn(1, 1, 2, 3, 32, 32)
    changed = images.clone()
    changed[:, :, 0] = torch.randn(1, 1, 3, 32, 32)  # only the older frame changes
    with torch.no_grad():
        same = torch.equal(encoder(images), encoder(changed))
    assert same != depends


def test_encoder_initial_state_and_stream_shapes():
    B, Ncam, H, W = 1, 2, 32, 64
    encoder = _encoder(2).eval()
    state = encoder.initial_state(B, Ncam, (H, W))
    assert all(c.shape[0] == B * Ncam for c in state.caches)
    with torch.no_grad():
        out, state = encoder.forward_stream(torch.randn(B, Ncam, 3, H, W), state)
    assert tuple(out.shape) == (B, Ncam, 24, H // 8, W // 8)
    assert state.frames_seen == 1


def test_encoder_rejects_mismatched_neck():
    backbone = build_efficientvit(EfficientViTConfig(variant="b0"))
    neck = GeneralizedLSSFPN(in_channels=(64, 128, 256), out_channels=16)
    with pytest.raises(ValueError, match="neck expects"):
        CameraEncoder(backbone=backbone, neck=neck)
