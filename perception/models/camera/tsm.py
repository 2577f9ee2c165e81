"""Temporal Shift Module (TSM, Lin, Gan and Han, ICCV 2019) for clip and streaming inference.

A temporal shift replaces a fixed slice of a feature map's channels with the same channels of a
neighbouring frame, so the following (purely spatial) convolutions mix information across
time at zero extra parameters and zero FLOPs. Here it sits at the input of a residual
branch ("residual shift"): the shortcut keeps the frame's own, unshifted features.

Channel layout at every shift location with `C` channels and `fold = C // fold_div`:

- channels `[0, fold)` come from the previous frame (both directions);
- channels `[fold, 2 * fold)` come from the next frame (bidirectional only);
- the remaining channels are the frame's own.

A missing neighbour (before the first or after the last frame of a clip) contributes zeros.
Because the "previous" slice is the same in both directions, the uni-directional shift is
exactly the causal half of the bidirectional one.

Two ways to run a model with shifts:

- **clip**: the batch holds whole clips, `[N * T, C, H, W]`, the `T` frames of one clip
  contiguous and oldest first. Every frame is computed in one pass.
- **streaming** (uni-directional only): one frame per stream, `[N, C, H, W]`, plus a
  `TemporalShiftState` that holds, for every shift location, the previous frame's
  `[N, fold, H_l, W_l]` slice. The call returns the new state; each new frame costs one pass.
  Nothing is kept on the modules, so two streams (or two models) never interfere.

Everything is written with `torch.cat` and static slices (no in-place writes), so it traces
and exports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

ShiftDirection = Literal["off", "bidirectional", "unidirectional"]
ShiftBlockKind = Literal["conv", "attention", "ffn"]

SHIFT_BLOCK_KINDS: tuple[str, ...] = ("conv", "attention", "ffn")


@dataclass(frozen=True)
class TemporalShiftConfig:
    """Where and how the backbone shifts channels in time.

    Attributes:
        mode: "off" (no shift: a per-image backbone), "bidirectional" (offline clips: from the
            previous and the next frame) or "unidirectional" (causal: from the previous frame
            only; the only mode that can stream). Default "unidirectional", so a model trained
            on clips runs frame by frame on the vehicle with the same output.
        frames: clip length `T` a clip-mode call assumes when it is not told.
        fold_div: `1 / fold_div` of a location's channels is shifted in each direction (TSM: 8).
        stages: indices of the backbone's stages (0 = stride 4 ... 3 = stride 32) that shift.
        blocks: which residual branches shift: "conv" (the MBConv blocks of the convolutional
            stages), "attention" (the multi-scale linear attention branch of an EfficientViT
            block), "ffn" (the MBConv branch of an EfficientViT block). Blocks without an
            identity shortcut (the stride-2 downsampling blocks) never shift.
    """

    mode: ShiftDirection = "unidirectional"
    frames: int = 1
    fold_div: int = 8
    stages: tuple[int, ...] = (0, 1, 2, 3)
    blocks: tuple[ShiftBlockKind, ...] = ("conv", "ffn")

    def __post_init__(self) -> None:
        if self.mode not in ("off", "bidirectional", "unidirectional"):
            raise ValueError(f"tsm.mode: unknown mode {self.mode!r}")
        if self.frames < 1:
            raise ValueError(f"tsm.frames: must be >= 1, got {self.frames}")
        if self.fold_div < 2 or (self.mode == "bidirectional" and self.fold_div < 3):
            raise ValueError(f"tsm.fold_div: too small for mode {self.mode!r}: {self.fold_div}")
        object.__setattr__(self, "stages", tuple(int(s) for s in self.stages))
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if any(s not in (0, 1, 2, 3) for s in self.stages):
            raise ValueError(f"tsm.stages: indices must be in 0..3, got {self.stages}")
        unknown = [b for b in self.blocks if b not in SHIFT_BLOCK_KINDS]
        if unknown:
            raise ValueError(f"tsm.blocks: unknown kinds {unknown}; known {SHIFT_BLOCK_KINDS}")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def shifts(self, stage: int, kind: str) -> bool:
        """Whether a residual branch of `kind` in stage `stage` gets a shift."""
        return self.enabled and stage in self.stages and kind in self.blocks


def temporal_shift_clip(
    x: torch.Tensor, *, frames: int, fold: int, bidirectional: bool
) -> torch.Tensor:
    """Shifts channels between the frames of whole clips.

    Args:
        x: `[N * T, C, H, W]` any float dtype; the `T = frames` frames of one clip contiguous,
            oldest first.
        frames: `T`.
        fold: channels taken from each neighbour, `0 <= fold` and `(1 or 2) * fold <= C`.
        bidirectional: also take channels `[fold, 2 * fold)` from the next frame.

    Returns:
        `[N * T, C, H, W]`, same dtype: channels `[0, fold)` of frame `t` are those of frame
        `t - 1` (zeros for `t = 0`); if bidirectional, channels `[fold, 2 * fold)` are those of
        frame `t + 1` (zeros for the last frame); the rest unchanged.
    """
    NT, C, H, W = x.shape
    if NT % frames != 0:
        raise ValueError(f"batch {NT} is not a whole number of clips of {frames} frames")
    if fold == 0:
        return x
    N, T = NT // frames, frames
    clips = x.reshape(N, T, C, H, W)
    pad = clips.new_zeros(N, 1, fold, H, W)  # [N, 1, fold, H, W]: before the first frame
    from_prev = torch.cat([pad, clips[:, : T - 1, :fold]], dim=1)  # [N, T, fold, H, W]
    if bidirectional:
        from_next = torch.cat([clips[:, 1:, fold : 2 * fold], pad], dim=1)  # [N, T, fold, H, W]
        own = clips[:, :, 2 * fold :]  # [N, T, C - 2 fold, H, W]
        out = torch.cat([from_prev, from_next, own], dim=2)  # [N, T, C, H, W]
    else:
        out = torch.cat([from_prev, clips[:, :, fold:]], dim=2)  # [N, T, C, H, W]
    return out.reshape(NT, C, H, W)


def temporal_shift_stream(
    x: torch.Tensor, cache: torch.Tensor | None, *, fold: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uni-directional shift of one frame per stream against the cached previous frame.

    Args:
        x: `[N, C, H, W]` float, the current frame of `N` streams.
        cache: `[N, fold, H, W]` same dtype, channels `[0, fold)` of the previous frame at this
            location; None at the start of a stream (zeros, as at a clip's first frame).
        fold: channels taken from the previous frame.

    Returns:
        `(shifted [N, C, H, W], new_cache [N, fold, H, W])`, where `new_cache` is this frame's
        `[0, fold)` channels, to be passed with the next frame.
    """
    N, C, H, W = x.shape
    new_cache = x[:, :fold]  # [N, fold, H, W]
    if cache is None:
        cache = x.new_zeros(N, fold, H, W)
    elif cache.shape != (N, fold, H, W):
        raise ValueError(
            f"stream cache has shape {tuple(cache.shape)}, expected {(N, fold, H, W)}: was the "
            "state made for another batch of streams or another image size?"
        )
    shifted = torch.cat([cache, x[:, fold:]], dim=1)  # [N, C, H, W]
    return shifted, new_cache


@dataclass(frozen=True)
class TemporalShiftState:
    """Per-stream memory of a streaming backbone: the previous frame's shifted channels.

    Attributes:
        caches: one tensor per shift location of the model, in the model's location order,
            `[N, fold_l, H_l, W_l]` float (N = number of streams, e.g. B * Ncam); empty for a
            fresh state (zeros everywhere, as at the first frame of a clip).
        frames_seen: frames each stream has been fed since the last reset.
    """

    caches: tuple[torch.Tensor, ...] = ()
    frames_seen: int = 0

    @property
    def is_fresh(self) -> bool:
        return not self.caches

    def detach(self) -> TemporalShiftState:
        """The same state cut from the autograd graph (for truncated back-propagation)."""
        return TemporalShiftState(tuple(c.detach() for c in self.caches), self.frames_seen)

    def to(self, device: torch.device | str) -> TemporalShiftState:
        return TemporalShiftState(tuple(c.to(device) for c in self.caches), self.frames_seen)


@dataclass
class ShiftContext:
    """What one backbone call tells its shift locations. Made per call, never kept on a module.

    In clip mode only `frames` is used. In streaming mode each location reads its slot of
    `caches_in` (None = zeros) and writes its new cache into `caches_out`.
    """

    mode: Literal["clip", "stream"]
    frames: int = 1
    caches_in: Sequence[torch.Tensor | None] = ()
    caches_out: list[torch.Tensor | None] = field(default_factory=list)

    @classmethod
    def clip(cls, frames: int) -> ShiftContext:
        return cls(mode="clip", frames=frames)

    @classmethod
    def stream(cls, state: TemporalShiftState, num_locations: int) -> ShiftContext:
        if state.is_fresh:
            caches_in: Sequence[torch.Tensor | None] = (None,) * num_locations
        elif len(state.caches) != num_locations:
            raise ValueError(
                f"state holds {len(state.caches)} caches, the model has {num_locations} shift "
                "locations: was it made by another model?"
            )
        else:
            caches_in = state.caches
        return cls(mode="stream", caches_in=caches_in, caches_out=[None] * num_locations)


class TemporalShift(nn.Module):
    """One shift location: no parameters, no buffers, no state.

    Args:
        channels: `C` of the feature map it shifts.
        index: its position among the model's shift locations (its slot in a stream state).
        fold_div: shifts `C // fold_div` channels per direction.
        bidirectional: also shift from the next frame (clip mode only).
    """

    def __init__(self, *, channels: int, index: int, fold_div: int, bidirectional: bool):
        super().__init__()
        self.channels = channels
        self.index = index
        self.fold = channels // fold_div
        self.bidirectional = bidirectional

    def extra_repr(self) -> str:
        direction = "bidirectional" if self.bidirectional else "unidirectional"
        return f"index={self.index}, channels={self.channels}, fold={self.fold}, {direction}"

    def forward(self, x: torch.Tensor, ctx: ShiftContext) -> torch.Tensor:
        """`x`: `[N * T, C, H, W]` (clip) or `[N, C, H, W]` (stream) float -> same shape."""
        if ctx.mode == "clip":
            return temporal_shift_clip(
                x, frames=ctx.frames, fold=self.fold, bidirectional=self.bidirectional
            )
        if self.bidirectional:
            raise RuntimeError("a bidirectional shift cannot stream: it needs the next frame")
        shifted, new_cache = temporal_shift_stream(x, ctx.caches_in[self.index], fold=self.fold)
        ctx.caches_out[self.index] = new_cache
        return shifted
