"""EfficientViT B0-B3 (Cai et al., ICCV 2023; MIT Han lab) as a multi-scale camera backbone,
with Temporal Shift Modules in its residual branches.

The module tree and therefore the state-dict keys and shapes are exactly those of timm's
`efficientvit_b0..b3` without the classification `head.*`, so an ImageNet checkpoint in timm's
format loads with `load_timm_state_dict` (strict). timm is not needed at run time.

Layout (strides after each part): stem (conv3x3/2 + DSConv residual blocks, stride 2) ->
stage 0 (MBConv, 4) -> stage 1 (MBConv, 8) -> stage 2 (EfficientViT blocks, 16) -> stage 3
(EfficientViT blocks, 32). An EfficientViT block is a residual multi-scale ReLU linear
attention (LiteMLA) followed by a residual MBConv. Activations are Hardswish, norms BatchNorm.

Temporal shifts (see `tsm.py`) add no parameters and no buffers, so they leave the keys alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from perception.models.camera.tsm import (
    ShiftContext,
    TemporalShift,
    TemporalShiftConfig,
    TemporalShiftState,
)

EfficientViTVariantName = Literal["b0", "b1", "b2", "b3"]


@dataclass(frozen=True)
class EfficientViTVariant:
    """Widths and depths of (stem, stage 0, 1, 2, 3) and the attention head dimension."""

    widths: tuple[int, int, int, int, int]
    depths: tuple[int, int, int, int, int]
    head_dim: int


EFFICIENTVIT_VARIANTS: dict[str, EfficientViTVariant] = {
    "b0": EfficientViTVariant((8, 16, 32, 64, 128), (1, 2, 2, 2, 2), 16),
    "b1": EfficientViTVariant((16, 32, 64, 128, 256), (1, 2, 3, 3, 4), 16),
    "b2": EfficientViTVariant((24, 48, 96, 192, 384), (1, 3, 4, 4, 6), 32),
    "b3": EfficientViTVariant((32, 64, 128, 256, 512), (1, 4, 6, 6, 9), 32),
}

STAGE_STRIDES: tuple[int, ...] = (4, 8, 16, 32)


@dataclass(frozen=True)
class EfficientViTConfig:
    """Camera backbone configuration.

    Attributes:
        variant: "b0" | "b1" | "b2" | "b3".
        tsm: temporal shift placement, direction and default clip length.
        out_strides: strides of the returned feature maps, ascending, from (4, 8, 16, 32).
    """

    variant: EfficientViTVariantName = "b0"
    tsm: TemporalShiftConfig = field(default_factory=TemporalShiftConfig)
    out_strides: tuple[int, ...] = (8, 16, 32)

    def __post_init__(self) -> None:
        if self.variant not in EFFICIENTVIT_VARIANTS:
            raise ValueError(
                f"variant: unknown {self.variant!r}; known {sorted(EFFICIENTVIT_VARIANTS)}"
            )
        object.__setattr__(self, "out_strides", tuple(int(s) for s in self.out_strides))
        _check_out_strides(self.out_strides)


def _check_out_strides(out_strides: Sequence[int]) -> None:
    if not out_strides or any(s not in STAGE_STRIDES for s in out_strides):
        raise ValueError(f"out_strides: each must be one of {STAGE_STRIDES}, got {out_strides}")
    if list(out_strides) != sorted(set(out_strides)):
        raise ValueError(f"out_strides: must be ascending and distinct, got {out_strides}")


# ---------------------------------------------------------------------------------------------
# Layers (names of attributes follow timm's efficientvit_mit.py, for the state-dict keys)
# ---------------------------------------------------------------------------------------------


class ConvNormAct(nn.Module):
    """conv (symmetric "same" padding) -> optional BatchNorm -> optional activation.

    `[N, in_channels, H, W]` -> `[N, out_channels, ceil(H / stride), ceil(W / stride)]`.
    """

    bn_pairs = (("conv", "norm"),)  # forward applies norm right after conv (deploy/fold.py)

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm: bool = True,
        act: type[nn.Module] | None = nn.Hardswish,
    ):
        super().__init__()
        # timm's get_padding: ((stride - 1) + (kernel_size - 1)) // 2
        padding = ((stride - 1) + (kernel_size - 1)) // 2
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias
        )
        self.norm = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.act = act(inplace=True) if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class DSConv(nn.Module):
    """Depthwise 3x3 (BN, act) -> pointwise 1x1 (BN).

    `[N, C_in, H, W]` -> `[N, C_out, ceil(H / stride), ceil(W / stride)]`.
    """

    def __init__(self, *, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.depth_conv = ConvNormAct(
            in_channels=in_channels,
            out_channels=in_channels,
            kernel_size=3,
            stride=stride,
            groups=in_channels,
        )
        self.point_conv = ConvNormAct(
            in_channels=in_channels, out_channels=out_channels, kernel_size=1, act=None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand (act) -> depthwise 3x3 (act) -> 1x1 project (BN).

    With `fewer_norm` (the EfficientViT stages) the first two convs carry a bias and no BN.
    `[N, C_in, H, W]` -> `[N, C_out, ceil(H / stride), ceil(W / stride)]`.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        expand_ratio: float,
        stride: int = 1,
        fewer_norm: bool = False,
    ):
        super().__init__()
        mid_channels = round(in_channels * expand_ratio)
        self.inverted_conv = ConvNormAct(
            in_channels=in_channels,
            out_channels=mid_channels,
            kernel_size=1,
            bias=fewer_norm,
            norm=not fewer_norm,
        )
        self.depth_conv = ConvNormAct(
            in_channels=mid_channels,
            out_channels=mid_channels,
            kernel_size=3,
            stride=stride,
            groups=mid_channels,
            bias=fewer_norm,
            norm=not fewer_norm,
        )
        self.point_conv = ConvNormAct(
            in_channels=mid_channels, out_channels=out_channels, kernel_size=1, act=None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class LiteMLA(nn.Module):
    """Lightweight multi-scale ReLU linear attention.

    q, k, v come from one 1x1 conv; a depthwise 5x5 + grouped 1x1 aggregation adds a second,
    local-context scale of each; per head, `out = relu(q) (relu(k)^T [v, 1])`, normalized by
    its last column. The attention product runs in float32 whatever the input dtype (the
    normalizing sums overflow float16).

    `[N, C, H, W]` float -> `[N, C, H, W]` same dtype.
    """

    def __init__(
        self, *, channels: int, head_dim: int, scales: tuple[int, ...] = (5,), eps: float = 1e-5
    ):
        super().__init__()
        self.eps = eps
        self.dim = head_dim
        heads = channels // head_dim
        total_dim = heads * head_dim
        self.qkv = ConvNormAct(
            in_channels=channels, out_channels=3 * total_dim, kernel_size=1, norm=False, act=None
        )
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    3 * total_dim,
                    3 * total_dim,
                    scale,
                    padding=scale // 2,
                    groups=3 * total_dim,
                    bias=False,
                ),
                nn.Conv2d(3 * total_dim, 3 * total_dim, 1, groups=3 * heads, bias=False),
            )
            for scale in scales
        )
        self.kernel_func = nn.ReLU(inplace=False)
        self.proj = ConvNormAct(
            in_channels=total_dim * (1 + len(scales)),
            out_channels=channels,
            kernel_size=1,
            act=None,
        )

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k: `[N, h, HW, d]`, v: `[N, h, HW, d + 1]` -> `[N, h, HW, d]`, v's dtype."""
        dtype = v.dtype
        q, k, v = q.float(), k.float(), v.float()
        kv = k.transpose(-1, -2) @ v  # [N, h, d, d + 1]
        out = q @ kv  # [N, h, HW, d + 1]
        out = out[..., :-1] / (out[..., -1:] + self.eps)  # [N, h, HW, d]
        return out.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, _, H, W = x.shape
        qkv = self.qkv(x)  # [N, 3 h d, H, W]
        multi_scale = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)  # [N, S 3hd, H, W]
        # heads of every scale side by side; each head's q, k, v consecutive
        multi_scale = multi_scale.reshape(N, -1, 3 * self.dim, H * W).transpose(-1, -2)
        q, k, v = multi_scale.chunk(3, dim=-1)  # each [N, S h, HW, d]
        q = self.kernel_func(q)
        k = self.kernel_func(k)
        v = F.pad(v, (0, 1), mode="constant", value=1.0)  # [N, S h, HW, d + 1]
        if v.device.type != "meta":
            with torch.autocast(device_type=v.device.type, enabled=False):
                out = self._attention(q, k, v)
        else:
            out = self._attention(q, k, v)
        out = out.transpose(-1, -2).reshape(N, -1, H, W)  # [N, S h d, H, W]
        return self.proj(out)  # [N, C, H, W]


class ResidualBlock(nn.Module):
    """`main(shift(x)) + x` (or `main(x)` without shortcut), the shift only where configured.

    The shift sits on the residual branch only: the shortcut carries the frame's own features.
    `[N, C, H, W]` -> `main`'s output shape.
    """

    def __init__(self, *, main: nn.Module, shortcut: bool, shift: TemporalShift | None = None):
        super().__init__()
        if shift is not None and not shortcut:
            raise ValueError("a temporal shift needs an identity shortcut")
        self.main = main
        self.has_shortcut = shortcut
        self.shift = shift

    def forward(self, x: torch.Tensor, ctx: ShiftContext) -> torch.Tensor:
        branch = self.shift(x, ctx) if self.shift is not None else x
        out = self.main(branch)
        return out + x if self.has_shortcut else out


class EfficientViTBlock(nn.Module):
    """Residual LiteMLA (context) then residual MBConv (local). `[N, C, H, W]` -> same."""

    def __init__(
        self,
        *,
        channels: int,
        head_dim: int,
        expand_ratio: float,
        attention_shift: TemporalShift | None = None,
        ffn_shift: TemporalShift | None = None,
    ):
        super().__init__()
        self.context_module = ResidualBlock(
            main=LiteMLA(channels=channels, head_dim=head_dim),
            shortcut=True,
            shift=attention_shift,
        )
        self.local_module = ResidualBlock(
            main=MBConv(
                in_channels=channels,
                out_channels=channels,
                expand_ratio=expand_ratio,
                fewer_norm=True,
            ),
            shortcut=True,
            shift=ffn_shift,
        )

    def forward(self, x: torch.Tensor, ctx: ShiftContext) -> torch.Tensor:
        return self.local_module(self.context_module(x, ctx), ctx)


class Stem(nn.Module):
    """conv3x3/2 (`in_conv`) then `depth` residual DSConv blocks (`res0`, `res1`, ...).

    `[N, 3, H, W]` -> `[N, width, ceil(H / 2), ceil(W / 2)]`.
    """

    def __init__(self, *, in_channels: int, width: int, depth: int):
        super().__init__()
        self.in_conv = ConvNormAct(in_channels=in_channels, out_channels=width, stride=2)
        self.depth = depth
        for i in range(depth):
            block = ResidualBlock(main=DSConv(in_channels=width, out_channels=width), shortcut=True)
            self.add_module(f"res{i}", block)

    def forward(self, x: torch.Tensor, ctx: ShiftContext) -> torch.Tensor:
        x = self.in_conv(x)
        for i in range(self.depth):
            x = getattr(self, f"res{i}")(x, ctx)
        return x


class EfficientViTStage(nn.Module):
    """A stride-2 MBConv (no shortcut) then residual blocks, all in `self.blocks`.

    `[N, C_in, H, W]` -> `[N, C_out, ceil(H / 2), ceil(W / 2)]`.
    """

    def __init__(self, *, blocks: Sequence[nn.Module]):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)  # Sequential only for timm's key names

    def forward(self, x: torch.Tensor, ctx: ShiftContext) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, ctx)
        return x


# ---------------------------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------------------------


class EfficientViT(nn.Module):
    """EfficientViT B-series backbone with optional temporal shifts, multi-scale output.

    Args:
        widths: channels of (stem, stage 0, 1, 2, 3).
        depths: blocks of (stem, stage 0, 1, 2, 3), as timm counts them.
        head_dim: attention head dimension (16 for B0/B1, 32 for B2/B3).
        expand_ratio: MBConv expansion.
        in_channels: image channels.
        out_strides: strides of the returned maps, ascending, from (4, 8, 16, 32).
        tsm: temporal shift configuration ("off" for a per-image backbone).

    Attributes:
        out_channels: channels of each returned map, in `out_strides` order.
        num_shift_locations: how many temporal shifts the model has (slots in a stream state).
    """

    def __init__(
        self,
        *,
        widths: Sequence[int],
        depths: Sequence[int],
        head_dim: int,
        expand_ratio: float = 4.0,
        in_channels: int = 3,
        out_strides: Sequence[int] = (8, 16, 32),
        tsm: TemporalShiftConfig | None = None,
    ):
        super().__init__()
        if len(widths) != 5 or len(depths) != 5:
            raise ValueError("widths and depths need 5 entries: stem and 4 stages")
        _check_out_strides(out_strides)
        self.widths = tuple(int(w) for w in widths)
        self.depths = tuple(int(d) for d in depths)
        self.out_strides = tuple(int(s) for s in out_strides)
        self.tsm = tsm if tsm is not None else TemporalShiftConfig(mode="off")
        self.out_channels = tuple(self.widths[1 + STAGE_STRIDES.index(s)] for s in out_strides)
        # the stages after the coarsest requested stride are built (checkpoint keys) but not run
        self.num_run_stages = STAGE_STRIDES.index(self.out_strides[-1]) + 1

        self._shift_shapes: list[tuple[int, int]] = []  # per location: (fold, stride)
        self.stem = Stem(in_channels=in_channels, width=self.widths[0], depth=self.depths[0])
        self.stages = nn.Sequential()
        for i in range(4):
            c_in, c_out, depth = self.widths[i], self.widths[i + 1], self.depths[i + 1]
            stride = STAGE_STRIDES[i]
            vit_stage = i >= 2
            blocks: list[nn.Module] = [
                ResidualBlock(
                    main=MBConv(
                        in_channels=c_in,
                        out_channels=c_out,
                        expand_ratio=expand_ratio,
                        stride=2,
                        fewer_norm=vit_stage,
                    ),
                    shortcut=False,
                )
            ]
            if vit_stage:
                for _ in range(depth):
                    blocks.append(
                        EfficientViTBlock(
                            channels=c_out,
                            head_dim=head_dim,
                            expand_ratio=expand_ratio,
                            attention_shift=self._make_shift(c_out, i, "attention", stride),
                            ffn_shift=self._make_shift(c_out, i, "ffn", stride),
                        )
                    )
            else:
                for _ in range(1, depth):
                    blocks.append(
                        ResidualBlock(
                            main=MBConv(
                                in_channels=c_out, out_channels=c_out, expand_ratio=expand_ratio
                            ),
                            shortcut=True,
                            shift=self._make_shift(c_out, i, "conv", stride),
                        )
                    )
            self.stages.append(EfficientViTStage(blocks=blocks))

    @classmethod
    def from_config(cls, config: EfficientViTConfig) -> EfficientViT:
        variant = EFFICIENTVIT_VARIANTS[config.variant]
        return cls(
            widths=variant.widths,
            depths=variant.depths,
            head_dim=variant.head_dim,
            out_strides=config.out_strides,
            tsm=config.tsm,
        )

    def _make_shift(
        self, channels: int, stage: int, kind: str, stride: int
    ) -> TemporalShift | None:
        if not self.tsm.shifts(stage, kind) or stage >= self.num_run_stages:
            return None
        shift = TemporalShift(
            channels=channels,
            index=len(self._shift_shapes),
            fold_div=self.tsm.fold_div,
            bidirectional=self.tsm.mode == "bidirectional",
        )
        self._shift_shapes.append((shift.fold, stride))
        return shift

    @property
    def num_shift_locations(self) -> int:
        return len(self._shift_shapes)

    @property
    def can_stream(self) -> bool:
        return self.tsm.mode != "bidirectional"

    def _forward(self, x: torch.Tensor, ctx: ShiftContext) -> tuple[torch.Tensor, ...]:
        x = self.stem(x, ctx)  # [N, w0, H/2, W/2]
        features = []
        for i in range(self.num_run_stages):
            x = self.stages[i](x, ctx)  # [N, w_{i+1}, H/2^(i+2), W/2^(i+2)]
            if STAGE_STRIDES[i] in self.out_strides:
                features.append(x)
        return tuple(features)

    def forward(self, images: torch.Tensor, frames: int | None = None) -> tuple[torch.Tensor, ...]:
        """Clip mode (or per-image mode when the shifts are off).

        Args:
            images: `[N * T, in_channels, H, W]` float, normalized; the `T` frames of one clip
                contiguous and oldest first.
            frames: `T`; default `tsm.frames`. Ignored when the shifts are off.

        Returns:
            one map per `out_strides` entry `s`: `[N * T, C_s, ceil(H / s), ceil(W / s)]`,
            images' dtype, for every frame.
        """
        T = self.tsm.frames if frames is None else int(frames)
        if T < 1 or images.shape[0] % T != 0:
            raise ValueError(f"batch {images.shape[0]} is not a whole number of {T}-frame clips")
        return self._forward(images, ShiftContext.clip(T))

    def forward_stream(
        self, images: torch.Tensor, state: TemporalShiftState | None = None
    ) -> tuple[tuple[torch.Tensor, ...], TemporalShiftState]:
        """Streaming mode: one new frame per stream; needs a uni-directional (or no) shift.

        Args:
            images: `[N, in_channels, H, W]` float, normalized, the newest frame of each of `N`
                streams (the same streams, in the same order, at every call).
            state: what the previous call returned; None or `TemporalShiftState()` to start
                (or restart) every stream.

        Returns:
            `(features, new_state)`: features as `forward` gives for the last frame of the
            clip of every frame fed since the reset; `new_state` to pass with the next frame.
        """
        if not self.can_stream:
            raise RuntimeError(
                "this backbone shifts bidirectionally (needs future frames) and cannot stream; "
                "build it with tsm.mode='unidirectional'"
            )
        state = TemporalShiftState() if state is None else state
        ctx = ShiftContext.stream(state, self.num_shift_locations)
        features = self._forward(images, ctx)
        caches = tuple(c for c in ctx.caches_out if c is not None)
        if len(caches) != self.num_shift_locations:
            raise RuntimeError("some shift locations were not run (out_strides cut them off?)")
        return features, TemporalShiftState(caches, state.frames_seen + 1)

    def initial_state(
        self,
        num_streams: int,
        image_size: tuple[int, int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> TemporalShiftState:
        """An explicit all-zeros state (same output as a fresh one; fixed shapes for export).

        Args:
            num_streams: `N`, e.g. B * Ncam.
            image_size: `(H, W)` of the frames that will be fed.
        """
        H, W = image_size
        caches = []
        for fold, stride in self._shift_shapes:
            h, w = H, W
            for _ in range(stride.bit_length() - 1):  # every stride-2 conv: ceil(size / 2)
                h, w = (h + 1) // 2, (w + 1) // 2
            caches.append(torch.zeros(num_streams, fold, h, w, device=device, dtype=dtype))
        return TemporalShiftState(tuple(caches), 0)


def build_efficientvit(config: EfficientViTConfig) -> EfficientViT:
    """The backbone described by `config`."""
    return EfficientViT.from_config(config)


# ---------------------------------------------------------------------------------------------
# timm checkpoints
# ---------------------------------------------------------------------------------------------

TIMM_HEAD_PREFIX = "head."


@dataclass(frozen=True)
class TimmLoadReport:
    """What `load_timm_state_dict` did: keys dropped as timm's classifier head, and keys that
    did not match (all empty after a successful strict load)."""

    dropped_head_keys: tuple[str, ...]
    missing_keys: tuple[str, ...]
    unexpected_keys: tuple[str, ...]
    shape_mismatches: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not (self.missing_keys or self.unexpected_keys or self.shape_mismatches)

    def describe(self) -> str:
        lines = [f"dropped {len(self.dropped_head_keys)} timm head keys"]
        for name, keys in (
            ("missing from the checkpoint", self.missing_keys),
            ("unexpected in the checkpoint", self.unexpected_keys),
            ("with mismatched shapes", self.shape_mismatches),
        ):
            if keys:
                shown = ", ".join(keys[:10]) + (" ..." if len(keys) > 10 else "")
                lines.append(f"{len(keys)} keys {name}: {shown}")
        return "; ".join(lines)


def load_timm_state_dict(
    model: EfficientViT, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True
) -> TimmLoadReport:
    """Loads a timm `efficientvit_b*` state dict (e.g. ImageNet weights) into `model`.

    The classifier `head.*` keys are dropped. With `strict`, any other missing, unexpected or
    mis-shaped key raises a ValueError that lists them (nothing is loaded then); without it,
    the matching keys load and the report says what did not.
    """
    head = tuple(k for k in state_dict if k.startswith(TIMM_HEAD_PREFIX))
    body = {k: v for k, v in state_dict.items() if not k.startswith(TIMM_HEAD_PREFIX)}
    own = model.state_dict()
    mismatched = tuple(
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in body.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    )
    report = TimmLoadReport(
        dropped_head_keys=head,
        missing_keys=tuple(k for k in own if k not in body),
        unexpected_keys=tuple(k for k in body if k not in own),
        shape_mismatches=mismatched,
    )
    if strict and not report.ok:
        raise ValueError(f"timm checkpoint does not fit this EfficientViT: {report.describe()}")
    bad = {m.split(":")[0] for m in mismatched}
    loadable = {k: v for k, v in body.items() if k in own and k not in bad}
    model.load_state_dict(loadable, strict=False)
    return report


def load_timm_checkpoint(
    model: EfficientViT, path: str | Path, *, strict: bool = True
) -> TimmLoadReport:
    """`load_timm_state_dict` from a `.safetensors` file (timm's hub format)."""
    from safetensors.torch import load_file

    return load_timm_state_dict(model, load_file(str(path)), strict=strict)
