"""SECOND backbone + SECONDFPN neck shapes."""

import pytest
import torch

from perception.models.bev_decoder import SECOND, SECONDFPN, BEVDecoder


@pytest.mark.parametrize(
    ("strides", "upsample", "layer_nums", "out_div"),
    [
        ((1, 2), (1, 2), (5, 5), 1),  # BEVFusion nuScenes
        ((2, 2), (1, 2), (1, 1), 2),
        ((1, 2, 2), (0.5, 1, 2), (1, 1, 1), 2),
    ],
    ids=["bevfusion", "stride2", "three_stages_downsample"],
)
def test_decoder_shape(strides, upsample, layer_nums, out_div):
    torch.manual_seed(0)
    channels = (8, 16, 16)[: len(strides)]
    decoder = BEVDecoder(
        backbone=SECOND(
            in_channels=12, out_channels=channels, layer_nums=layer_nums, strides=strides
        ),
        neck=SECONDFPN(
            in_channels=channels, out_channels=(6,) * len(strides), upsample_strides=upsample
        ),
    )
    x = torch.randn(2, 12, 16, 12)
    out = decoder(x)
    assert decoder.out_channels == 6 * len(strides)
    assert out.shape == (2, 6 * len(strides), 16 // out_div, 12 // out_div)
    out.mean().backward()
    assert all(p.grad is not None for p in decoder.parameters())


def test_backbone_stage_shapes():
    backbone = SECOND(in_channels=4, out_channels=(8, 16), layer_nums=(1, 2), strides=(1, 2))
    a, b = backbone(torch.randn(1, 4, 8, 6))
    assert a.shape == (1, 8, 8, 6) and b.shape == (1, 16, 4, 3)
    # 1 strided + layer_nums convs per stage, each conv-BN-ReLU
    assert [len(s) for s in backbone.stages] == [6, 9]


def test_neck_rejects_mismatched_resolutions():
    neck = SECONDFPN(in_channels=(4, 4), out_channels=(2, 2), upsample_strides=(1, 1))
    with pytest.raises(ValueError):
        neck([torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4)])
