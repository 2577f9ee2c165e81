"""Temporal shift: the shift ops, and clip vs streaming parity of the whole backbone."""

from __future__ import annotations

import pytest
import torch

from perception.models.camera import (
    CameraEncoder,
    EfficientViTConfig,
    GeneralizedLSSFPN,
    TemporalShiftConfig,
    TemporalShiftState,
    build_efficientvit,
    temporal_shift_clip,
    temporal_shift_stream,
)

H, W = 32, 64


def _backbone(mode: str, frames: int = 1, **tsm_kwargs):
    torch.manual_seed(0)
    tsm = TemporalShiftConfig(mode=mode, frames=frames, **tsm_kwargs)
    return build_efficientvit(EfficientViTConfig(variant="b0", tsm=tsm)).eval()


def _frame_ids(N: int, T: int, C: int) -> torch.Tensor:
    """`[N * T, C, 1, 1]` whose every value is 1 + clip * 100 + frame * 10 + channel / 100."""
    n = torch.arange(N).view(N, 1, 1)
    t = torch.arange(T).view(1, T, 1)
    c = torch.arange(C).view(1, 1, C)
    return (1 + n * 100 + t * 10 + c / 100).reshape(N * T, C, 1, 1).float()


def test_clip_shift_unidirectional_values():
    N, T, C, fold = 2, 3, 8, 2
    x = _frame_ids(N, T, C)
    out = temporal_shift_clip(x, frames=T, fold=fold, bidirectional=False).view(N, T, C)
    ref = x.view(N, T, C)
    assert torch.equal(out[:, 0, :fold], torch.zeros(N, fold))  # zero padding before frame 0
    assert torch.equal(out[:, 1:, :fold], ref[:, :-1, :fold])  # from the previous frame
    assert torch.equal(out[:, :, fold:], ref[:, :, fold:])  # own channels


def test_clip_shift_bidirectional_values():
    N, T, C, fold = 2, 3, 8, 2
    x = _frame_ids(N, T, C)
    out = temporal_shift_clip(x, frames=T, fold=fold, bidirectional=True).view(N, T, C)
    ref = x.view(N, T, C)
    assert torch.equal(out[:, 0, :fold], torch.zeros(N, fold))
    assert torch.equal(out[:, 1:, :fold], ref[:, :-1, :fold])
    assert torch.equal(out[:, :-1, fold : 2 * fold], ref[:, 1:, fold : 2 * fold])  # from next
    assert torch.equal(out[:, -1, fold : 2 * fold], torch.zeros(N, fold))
    assert torch.equal(out[:, :, 2 * fold :], ref[:, :, 2 * fold :])


def test_clip_shift_rejects_partial_clips():
    with pytest.raises(ValueError, match="whole number of clips"):
        temporal_shift_clip(torch.zeros(5, 8, 1, 1), frames=2, fold=1, bidirectional=False)


def test_stream_shift_matches_clip_shift():
    N, T, C, fold = 2, 3, 8, 2
    x = torch.randn(N * T, C, 4, 4)
    clip = temporal_shift_clip(x, frames=T, fold=fold, bidirectional=False).view(N, T, C, 4, 4)
    frames = x.view(N, T, C, 4, 4)
    cache = None
    for t in range(T):
        out, cache = temporal_shift_stream(frames[:, t], cache, fold=fold)
        assert torch.equal(out, clip[:, t])


def test_clip_shift_gradient_flows_to_previous_frame():
    N, T, C, fold = 1, 2, 8, 1
    x = torch.randn(N * T, C, 2, 2, requires_grad=True)
    out = temporal_shift_clip(x, frames=T, fold=fold, bidirectional=False)  # [2, 8, 2, 2]
    out[1, :fold].sum().backward()  # frame 1's shifted channels come from frame 0
    assert torch.equal(x.grad[0, :fold], torch.ones(fold, 2, 2))
    assert x.grad[1].abs().sum() == 0


def test_tsm_adds_no_parameters_or_buffers():
    plain = _backbone("off")
    for mode in ("unidirectional", "bidirectional"):
        shifted = _backbone(mode, frames=2, blocks=("conv", "attention", "ffn"))
        assert shifted.num_shift_locations > 0
        assert sum(p.numel() for p in shifted.parameters()) == sum(
            p.numel() for p in plain.parameters()
        )
        assert list(shifted.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize(
    ("stages", "blocks", "expected"),
    [
        ((0, 1, 2, 3), ("conv", "ffn"), 1 + 1 + 2 + 2),  # B0: depths 2,2 (minus downsample), 2,2
        ((0, 1, 2, 3), ("conv", "attention", "ffn"), 1 + 1 + 4 + 4),
        ((2, 3), ("attention",), 2 + 2),
        ((0,), ("ffn",), 0),  # stage 0 has no EfficientViT blocks
    ],
)
def test_shift_placement_counts(stages, blocks, expected):
    model = _backbone("unidirectional", stages=stages, blocks=blocks)
    assert model.num_shift_locations == expected


@pytest.mark.parametrize("mode", ["unidirectional", "bidirectional"])
def test_clip_output_differs_from_no_shift(mode):
    T = 2
    images = torch.randn(T, 3, H, W)
    plain = _backbone("off")
    shifted = _backbone(mode, frames=T)
    shifted.load_state_dict(plain.state_dict())
    with torch.no_grad():
        a = plain(images)[-1]
        b = shifted(images)[-1]
    assert not torch.allclose(a, b, atol=1e-4)


def test_streaming_matches_unidirectional_clip():
    N, T = 2, 3
    model = _backbone("unidirectional", frames=T, blocks=("conv", "attention", "ffn"))
    frames = torch.randn(N, T, 3, H, W)
    with torch.no_grad():
        clip = model(frames.reshape(N * T, 3, H, W), frames=T)  # each [N T, C, h, w]
        state = TemporalShiftState()
        for t in range(T):
            streamed, state = model.forward_stream(frames[:, t], state)
            for level_clip, level_stream in zip(clip, streamed):
                expected = level_clip.reshape(N, T, *level_clip.shape[1:])[:, t]
                torch.testing.assert_close(level_stream, expected, atol=1e-5, rtol=1e-5)
    assert state.frames_seen == T
    assert len(state.caches) == model.num_shift_locations


def test_streaming_explicit_initial_state_equals_fresh():
    model = _backbone("unidirectional", frames=2)
    frame = torch.randn(2, 3, H, W)
    with torch.no_grad():
        fresh, fresh_state = model.forward_stream(frame, None)
        zeros = model.initial_state(2, (H, W))
        explicit, explicit_state = model.forward_stream(frame, zeros)
    for a, b in zip(fresh, explicit):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert [c.shape for c in zeros.caches] == [c.shape for c in fresh_state.caches]
    assert [c.shape for c in explicit_state.caches] == [c.shape for c in fresh_state.caches]


def test_two_streams_do_not_interfere():
    model = _backbone("unidirectional", frames=2)
    a = torch.randn(3, 1, 3, H, W)  # 3 frames of stream a
    b = torch.randn(3, 1, 3, H, W)
    with torch.no_grad():
        alone = None
        for t in range(3):
            out_alone, alone = model.forward_stream(a[t], alone)
        sa, sb = None, None
        for t in range(3):  # interleaved with another stream on the same model
            out_a, sa = model.forward_stream(a[t], sa)
            _, sb = model.forward_stream(b[t], sb)
    for x, y in zip(out_alone, out_a):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


def test_two_models_do_not_interfere():
    m1 = _backbone("unidirectional", frames=2)
    m2 = _backbone("unidirectional", frames=2)
    frames = torch.randn(2, 1, 3, H, W)
    with torch.no_grad():
        out1, s1 = m1.forward_stream(frames[0], None)
        m2.forward_stream(torch.randn(1, 3, H, W), None)  # another model in between
        out1, s1 = m1.forward_stream(frames[1], s1)
        ref = m1(frames.reshape(2, 3, H, W), frames=2)
    torch.testing.assert_close(out1[-1], ref[-1][1:], atol=1e-5, rtol=1e-5)


def test_reset_restarts_the_stream():
    model = _backbone("unidirectional", frames=2)
    frames = torch.randn(3, 1, 3, H, W)
    with torch.no_grad():
        first, state = model.forward_stream(frames[0], None)
        _, state = model.forward_stream(frames[1], state)
        again, state = model.forward_stream(frames[0], TemporalShiftState())  # reset
        single = model(frames[0], frames=1)  # a 1-frame clip: zero padding
    assert state.frames_seen == 1
    for x, y, z in zip(first, again, single):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
        torch.testing.assert_close(x, z, atol=1e-5, rtol=1e-5)


def test_stream_state_from_other_batch_is_rejected():
    model = _backbone("unidirectional", frames=2)
    with torch.no_grad():
        _, state = model.forward_stream(torch.randn(2, 3, H, W), None)
        with pytest.raises(ValueError, match="stream cache has shape"):
            model.forward_stream(torch.randn(3, 3, H, W), state)


def test_bidirectional_cannot_stream():
    model = _backbone("bidirectional", frames=2)
    with pytest.raises(RuntimeError, match="cannot stream"):
        model.forward_stream(torch.randn(1, 3, H, W), None)


def test_clip_gradient_reaches_earlier_frames_only_through_the_shift():
    T = 2
    frames = torch.randn(T, 3, H, W)
    for mode, reaches in (("unidirectional", True), ("off", False)):
        model = _backbone(mode, frames=T)  # eval: BN does not mix frames
        images = frames.clone().requires_grad_(True)
        model(images, frames=T)[-1][T - 1].sum().backward()  # last frame's stride-32 map
        grad_first = images.grad[0].abs().sum().item()
        assert (grad_first > 0) == reaches, mode


def test_encoder_streaming_matches_clip():
    B, Ncam, T = 1, 2, 2
    backbone = _backbone("unidirectional", frames=T)
    torch.manual_seed(1)
    neck = GeneralizedLSSFPN(in_channels=backbone.out_channels, out_channels=16)
    encoder = CameraEncoder(backbone=backbone, neck=neck).eval()
    images = torch.randn(B, Ncam, T, 3, H, W)
    with torch.no_grad():
        clip = encoder(images)  # [B, Ncam, 16, H/8, W/8]
        state = None
        for t in range(T):
            streamed, state = encoder.forward_stream(images[:, :, t], state)
    torch.testing.assert_close(streamed, clip, atol=1e-5, rtol=1e-5)


def test_streaming_step_exports_with_torch_export():
    """The deployed path (one frame + explicit caches in, features + caches out) exports as
    one graph with fixed shapes, and the exported graph gives the eager result."""

    class StreamStep(torch.nn.Module):
        def __init__(self, encoder: CameraEncoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, images: torch.Tensor, *caches: torch.Tensor):
            features, state = self.encoder.forward_stream(images, TemporalShiftState(caches))
            return (features, *state.caches)

    backbone = _backbone("unidirectional", frames=2)
    neck = GeneralizedLSSFPN(in_channels=backbone.out_channels, out_channels=8)
    step = StreamStep(CameraEncoder(backbone=backbone, neck=neck).eval())
    frames = torch.randn(2, 1, 2, 3, H, W)  # 2 frames of B=1, Ncam=2
    caches = step.encoder.initial_state(1, 2, (H, W)).caches
    exported = torch.export.export(step, (frames[0], *caches)).module()
    eager_caches, exported_caches = caches, caches
    with torch.no_grad():
        for t in range(2):
            eager_features, *eager_caches = step(frames[t], *eager_caches)
            features, *exported_caches = exported(frames[t], *exported_caches)
            torch.testing.assert_close(features, eager_features, atol=1e-5, rtol=1e-5)
