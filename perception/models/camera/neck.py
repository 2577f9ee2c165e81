"""FPN-style neck that fuses a backbone's multi-scale maps into one map (BEVFusion's
GeneralizedLSSFPN): top-down, each level is the concat of its own map and the upsampled fused
coarser level, then conv1x1-BN-ReLU and conv3x3-BN-ReLU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """conv (no bias, "same" padding) -> BN -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class GeneralizedLSSFPN(nn.Module):
    """Fuses maps at increasing strides (e.g. 8, 16, 32) into one map at the finest stride.

    For levels `0..L-1` (finest first), from the coarsest down:
    `fused_i = conv3x3(conv1x1(cat[x_i, up(fused_{i+1})]))`, with `fused_{L-1} = x_{L-1}`
    (so the 1x1 conv of level L-2 sees `C_{L-2} + C_{L-1}` channels, the others
    `C_i + out_channels`). With a single level it is conv1x1 then conv3x3.

    Args:
        in_channels: channels of each input level, finest first.
        out_channels: channels of the output map.
        upsample_mode: "bilinear" (BEVFusion) or "nearest".
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        out_channels: int,
        upsample_mode: str = "bilinear",
    ):
        super().__init__()
        if not in_channels:
            raise ValueError("GeneralizedLSSFPN needs at least one input level")
        if upsample_mode not in ("bilinear", "nearest"):
            raise ValueError(f"upsample_mode: 'bilinear' or 'nearest', got {upsample_mode!r}")
        self.in_channels = tuple(int(c) for c in in_channels)
        self.out_channels = out_channels
        self.upsample_mode = upsample_mode
        L = len(self.in_channels)
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(max(L - 1, 1)):
            if L == 1:
                c_in = self.in_channels[0]
            elif i == L - 2:
                c_in = self.in_channels[i] + self.in_channels[i + 1]
            else:
                c_in = self.in_channels[i] + out_channels
            self.lateral_convs.append(conv_bn_relu(c_in, out_channels, 1))
            self.fpn_convs.append(conv_bn_relu(out_channels, out_channels, 3))

    def _upsample(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.upsample_mode == "bilinear":
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=size, mode="nearest")

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fuses the levels.

        Args:
            features: `[N, C_i, H_i, W_i]` float per level, finest first (`H_i >= H_{i+1}`).

        Returns:
            `[N, out_channels, H_0, W_0]`, the inputs' dtype.
        """
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} levels, got {len(features)}")
        for i, (f, c) in enumerate(zip(features, self.in_channels)):
            if f.shape[1] != c:
                raise ValueError(f"level {i}: expected {c} channels, got {f.shape[1]}")
        if len(features) == 1:
            return self.fpn_convs[0](self.lateral_convs[0](features[0]))
        fused = features[-1]  # [N, C_{L-1}, H_{L-1}, W_{L-1}]
        for i in range(len(features) - 2, -1, -1):
            x = features[i]  # [N, C_i, H_i, W_i]
            up = self._upsample(fused, (x.shape[2], x.shape[3]))  # [N, C', H_i, W_i]
            fused = self.lateral_convs[i](torch.cat([x, up], dim=1))  # [N, out, H_i, W_i]
            fused = self.fpn_convs[i](fused)  # [N, out, H_i, W_i]
        return fused
