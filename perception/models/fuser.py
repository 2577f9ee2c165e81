"""Fusion of per-modality BEV maps (BEVFusion's ConvFuser) with explicit missing modalities.

Every map is `[B, C_i, X, Y]` on the same `BEVGrid` (x along dim 2, y along dim 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ConvFuser(nn.Module):
    """Concatenates the modalities' BEV maps plus one presence channel per modality, then
    conv3x3-BN-ReLU to `out_channels`.

    A missing modality enters as zeros and its presence channel as 0 (1 where present), so the
    model can tell "absent" from "present but empty".

    `zero_init[k]` starts the conv weights reading modality k (its map and presence channel) at
    zero: the fused map then starts as a function of the other modalities alone, and modality
    k's weights grow from the gradient (which is not zero: its map is). A fused detector with a
    slow-to-learn camera branch starts as its LiDAR-only part this way instead of reading the
    untrained camera map as noise.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        out_channels: int,
        kernel_size: int = 3,
        zero_init: Sequence[bool] | None = None,
    ):
        super().__init__()
        if not in_channels:
            raise ValueError("ConvFuser needs at least one modality")
        self.in_channels = tuple(int(c) for c in in_channels)
        self.out_channels = out_channels
        total = sum(self.in_channels) + len(self.in_channels)  # + presence channels
        self.fuse = nn.Sequential(
            nn.Conv2d(total, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        zero_init = tuple(bool(z) for z in (zero_init or [False] * len(self.in_channels)))
        if len(zero_init) != len(self.in_channels):
            raise ValueError(
                f"zero_init has {len(zero_init)} entries for {len(self.in_channels)} modalities"
            )
        if all(zero_init):
            raise ValueError("zero_init: at least one modality must keep its random weights")
        self.zero_init = zero_init
        weight = self.fuse[0].weight  # [out, total, k, k]: maps in order, then presence flags
        starts = [0, *torch.tensor(self.in_channels).cumsum(0).tolist()]
        with torch.no_grad():
            for k, zero in enumerate(zero_init):
                if zero:
                    weight[:, starts[k] : starts[k + 1]] = 0
                    weight[:, starts[-1] + k] = 0

    def forward(
        self,
        features: Sequence[torch.Tensor | None],
        present: Sequence[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """Fuses the maps.

        Args:
            features: per modality, in `in_channels` order, `[B, C_i, X, Y]` float, or None for
                a modality missing from the whole batch (then at least one must be a tensor).
            present: per modality `[B]` bool, False where the sample lacks it (its map is
                zeroed whatever it holds); None (or a None entry) means present wherever the map
                is given.

        Returns:
            `[B, out_channels, X, Y]`.
        """
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} modalities, got {len(features)}")
        if present is not None and len(present) != len(features):
            raise ValueError(f"expected {len(features)} presence masks, got {len(present)}")
        ref = next((f for f in features if f is not None), None)
        if ref is None:
            raise ValueError("ConvFuser: every modality is missing")
        B, _, X, Y = ref.shape
        maps, flags = [], []
        for k, (feat, channels) in enumerate(zip(features, self.in_channels)):
            mask = None if present is None else present[k]
            if feat is None:
                feat = ref.new_zeros(B, channels, X, Y)
                mask = torch.zeros(B, dtype=torch.bool, device=ref.device)
            elif feat.shape != (B, channels, X, Y):
                raise ValueError(
                    f"modality {k}: expected {(B, channels, X, Y)}, got {tuple(feat.shape)}"
                )
            if mask is None:
                mask = torch.ones(B, dtype=torch.bool, device=ref.device)
            weight = mask.to(ref.dtype)[:, None, None, None]  # [B, 1, 1, 1]
            maps.append(feat * weight)  # [B, C_k, X, Y], zero where absent
            flags.append(weight.expand(B, 1, X, Y))  # [B, 1, X, Y]
        return self.fuse(torch.cat(maps + flags, dim=1))  # [B, out, X, Y]


def drop_modalities(
    present: Sequence[torch.Tensor],
    drop_probs: Sequence[float],
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Drops at most one modality per sample at random, never the last one present.

    Per sample one draw picks modality k with probability `drop_probs[k]` (events exclusive,
    so `sum(drop_probs) <= 1`) or none; the pick is dropped only if another modality of that
    sample stays present.

    Args:
        present: per modality `[B]` bool presence masks.
        drop_probs: per modality, the probability of dropping it in a sample.
        generator: random source (default: torch's global one).

    Returns:
        New `[B]` bool masks, each a subset of the input one.
    """
    if len(present) != len(drop_probs):
        raise ValueError(f"{len(present)} masks but {len(drop_probs)} drop probabilities")
    if any(p < 0 for p in drop_probs) or sum(drop_probs) > 1 + 1e-9:
        raise ValueError(f"drop_probs must be >= 0 and sum to <= 1, got {tuple(drop_probs)}")
    masks = torch.stack([m.bool() for m in present])  # [M, B]
    u = torch.rand(masks.shape[1], generator=generator).to(masks.device)  # [B]
    bounds = torch.tensor(drop_probs, dtype=torch.float64).cumsum(0).to(masks.device)  # [M]
    pick = torch.searchsorted(bounds, u.double(), right=True)  # [B], M means none
    others = masks.sum(0, keepdim=True) - masks.long()  # [M, B] modalities present besides k
    ids = torch.arange(masks.shape[0], device=masks.device)[:, None]  # [M, 1]
    drop = (ids == pick[None]) & (others > 0)  # [M, B]
    return list((masks & ~drop).unbind(0))


class ModalityDropout(nn.Module):
    """Training-time `drop_modalities`; the identity in eval mode.

    BEVFusion-style robustness training: the detector sees samples with only one sensor so it
    degrades gracefully when one is missing at run time.
    """

    def __init__(self, *, drop_probs: Sequence[float]):
        super().__init__()
        if any(p < 0 for p in drop_probs) or sum(drop_probs) > 1 + 1e-9:
            raise ValueError(f"drop_probs must be >= 0 and sum to <= 1, got {tuple(drop_probs)}")
        self.drop_probs = tuple(float(p) for p in drop_probs)

    def forward(
        self, present: Sequence[torch.Tensor], generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """`present`: per modality `[B]` bool -> the masks after dropping (training only)."""
        if not self.training:
            return [m.bool() for m in present]
        return drop_modalities(present, self.drop_probs, generator)
