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
    """

    def __init__(self, *, in_channels: Sequence[int], out_channels: int, kernel_size: int = 3):
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
