"""The BEV decoder: a SECOND-style 2-D backbone and its SECONDFPN neck (mmdet3d's `SECOND` and
`SECONDFPN`, as BEVFusion uses them after the fuser).

All maps are `[B, C, X, Y]` (x along dim 2, y along dim 3; see `bev_grid.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# mmdet3d's SECOND / SECONDFPN normalization settings.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch, eps=_BN_EPS, momentum=_BN_MOMENTUM),
        nn.ReLU(inplace=True),
    ]


class SECOND(nn.Module):
    """Stages of 3x3 conv-BN-ReLU. Stage k opens with a conv of stride `strides[k]` to
    `out_channels[k]`, then `layer_nums[k]` stride-1 convs.

    BEVFusion nuScenes: `in_channels=256, out_channels=(128, 256), layer_nums=(5, 5),
    strides=(1, 2)`.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: Sequence[int],
        layer_nums: Sequence[int],
        strides: Sequence[int],
    ):
        super().__init__()
        if not (len(out_channels) == len(layer_nums) == len(strides)) or not out_channels:
            raise ValueError("out_channels, layer_nums and strides need one equal, non-zero length")
        self.in_channels = in_channels
        self.out_channels = tuple(out_channels)
        self.strides = tuple(strides)
        stages = []
        prev = in_channels
        for ch, n, s in zip(out_channels, layer_nums, strides):
            layers = _conv_bn_relu(prev, ch, s)
            for _ in range(n):
                layers += _conv_bn_relu(ch, ch)
            stages.append(nn.Sequential(*layers))
            prev = ch
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`[B, in_channels, X, Y]` -> per stage `[B, out_channels[k], X / S_k, Y / S_k]`,
        `S_k` the product of `strides[: k + 1]`."""
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return tuple(outs)


class SECONDFPN(nn.Module):
    """Brings every backbone stage to one stride and concatenates them.

    Stage k goes through a deconv (`upsample_strides[k] >= 1`, kernel = stride) or a strided
    conv (`upsample_strides[k] < 1`, stride `1 / upsample_strides[k]`) to `out_channels[k]`,
    then BN-ReLU. BEVFusion nuScenes: `in_channels=(128, 256), out_channels=(256, 256),
    upsample_strides=(1, 2)`.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        out_channels: Sequence[int],
        upsample_strides: Sequence[float],
    ):
        super().__init__()
        if not (len(in_channels) == len(out_channels) == len(upsample_strides)) or not in_channels:
            raise ValueError("in_channels, out_channels and upsample_strides need one length")
        self.out_channels = sum(out_channels)
        blocks = []
        for cin, cout, s in zip(in_channels, out_channels, upsample_strides):
            if s >= 1:
                k = round(s)
                if abs(k - s) > 1e-6:
                    raise ValueError(f"upsample stride {s} >= 1 must be a whole number")
                up: nn.Module = nn.ConvTranspose2d(cin, cout, k, stride=k, bias=False)
            else:
                k = round(1 / s)
                if abs(k * s - 1) > 1e-6:
                    raise ValueError(f"upsample stride {s} < 1 must be 1 / a whole number")
                up = nn.Conv2d(cin, cout, k, stride=k, bias=False)
            blocks.append(
                nn.Sequential(
                    up, nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM), nn.ReLU(True)
                )
            )
        self.blocks = nn.ModuleList(blocks)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per stage `[B, in_channels[k], X_k, Y_k]` -> `[B, sum(out_channels), X', Y']`."""
        if len(features) != len(self.blocks):
            raise ValueError(f"expected {len(self.blocks)} stages, got {len(features)}")
        outs = [block(f) for block, f in zip(self.blocks, features)]
        # Under the ONNX tracer shapes are tensors and the set never dedups: checked eagerly.
        shapes = {tuple(o.shape[2:]) for o in outs}
        if len(shapes) != 1 and not torch.jit.is_tracing():
            raise ValueError(f"stages do not meet at one resolution: {sorted(shapes)}")
        return torch.cat(outs, dim=1)


class BEVDecoder(nn.Module):
    """`backbone` then `neck`: the fused BEV map -> the map the detection heads read."""

    def __init__(self, *, backbone: SECOND, neck: SECONDFPN):
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    @property
    def out_channels(self) -> int:
        return self.neck.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C_in, X, Y]` -> `[B, out_channels, X', Y']` (X' = X for BEVFusion's strides)."""
        return self.neck(self.backbone(x))
