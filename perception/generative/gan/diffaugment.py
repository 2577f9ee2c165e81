"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) of images in [-1, 1].

The discriminator of a GAN trained on a few hundred images memorizes them; DiffAugment shows
it augmented reals *and* augmented fakes (in the D step and in the G step), with gradients
flowing through the augmentation to the generator, so the generator is not taught to produce
augmented images. The paper's ops, each a function of the images and explicit parameters
(`brightness`, `saturation`, `contrast`, `translate`, `cutout`) plus one random draw
(`draw_parameters`):

    brightness   x + b,                b ~ U(-0.5, 0.5) per image (the same offset everywhere)
    saturation   (x - m) s + m,        s ~ U(0, 2), m the per-pixel mean over the colour channels
    contrast     (x - m) c + m,        c ~ U(0.5, 1.5), m the per-image mean (colour channels)
    translation  shift by (dy, dx),    each uniform in [-r S, r S] pixels (r = 1/8), zero padded
    cutout       zero an (r H) x (r W) rectangle (r = 1/2; a square on square images)

Policies name op groups, comma-separated: `color` (brightness, saturation, contrast),
`translation`, `cutout`, or single ops. The colour ops change only the first `color_channels`
channels (3: RGB; our camera crops' 4th channel is the object mask as alpha, which keeps its
values); translation and cutout move or blank every channel alike, so the alpha stays in step
with the RGB. LiDAR occupancy grids have no colour: use `translation,cutout` for them.

Deviation from the paper's code, on purpose: the cutout rectangle lies wholly inside the image
(the paper centres it anywhere, so it is sometimes clipped at a border), so every cutout
blanks exactly `(r H) x (r W)` pixels.

ADA-style adaptive augmentation (Karras et al. 2020) is the `probability` argument: each op is
applied to each image independently with that probability (1: always, as DiffAugment).
Randomness comes only from the `generator` argument, so a seeded call repeats exactly; reals
and fakes take independent draws (as in the paper) unless a caller passes the same parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "OPS",
    "POLICY_GROUPS",
    "AugmentParameters",
    "DiffAugment",
    "apply_parameters",
    "brightness",
    "contrast",
    "cutout",
    "diff_augment",
    "draw_parameters",
    "parse_policy",
    "saturation",
    "translate",
]

OPS = ("brightness", "saturation", "contrast", "translation", "cutout")
POLICY_GROUPS: dict[str, tuple[str, ...]] = {
    "color": ("brightness", "saturation", "contrast"),
    "translation": ("translation",),
    "cutout": ("cutout",),
    "brightness": ("brightness",),
    "saturation": ("saturation",),
    "contrast": ("contrast",),
}
COLOR_OPS = POLICY_GROUPS["color"]


def parse_policy(policy: str) -> tuple[str, ...]:
    """`"color,translation,cutout"` -> the ops in application order (the order named, groups
    expanded, repeats dropped); `""` -> `()` (no augmentation). An unknown name raises
    ValueError naming it."""
    if not isinstance(policy, str):
        raise ValueError(f"policy: expected a comma-separated str, got {policy!r}")
    ops: list[str] = []
    for name in (part.strip() for part in policy.split(",")):
        if not name:
            continue
        if name not in POLICY_GROUPS:
            raise ValueError(
                f"policy: unknown op {name!r} in {policy!r} (known: {sorted(POLICY_GROUPS)})"
            )
        ops += [op for op in POLICY_GROUPS[name] if op not in ops]
    return tuple(ops)


# ---------------------------------------------------------------------------------------------
# The ops, with explicit parameters
# ---------------------------------------------------------------------------------------------
def _color_split(x: Tensor, color_channels: int | None) -> tuple[Tensor, Tensor | None]:
    if color_channels is None or color_channels >= x.shape[1]:
        return x, None
    return x[:, :color_channels], x[:, color_channels:]


def _color_join(color: Tensor, rest: Tensor | None) -> Tensor:
    return color if rest is None else torch.cat([color, rest], dim=1)


def brightness(x: Tensor, offset: Tensor, *, color_channels: int | None = 3) -> Tensor:
    """x [B,C,H,W] float, offset [B] float -> x with `offset[b]` added to every pixel of image b's
    first `color_channels` channels (None: all); the other channels unchanged."""
    color, rest = _color_split(x, color_channels)
    return _color_join(color + offset.to(x)[:, None, None, None], rest)


def saturation(x: Tensor, factor: Tensor, *, color_channels: int | None = 3) -> Tensor:
    """x [B,C,H,W], factor [B] -> `(x - m) factor + m` on the colour channels, `m` [B,1,H,W] the
    per-pixel mean over them (0: grey, 1: unchanged)."""
    color, rest = _color_split(x, color_channels)
    mean = color.mean(dim=1, keepdim=True)  # [B, 1, H, W]
    return _color_join((color - mean) * factor.to(x)[:, None, None, None] + mean, rest)


def contrast(x: Tensor, factor: Tensor, *, color_channels: int | None = 3) -> Tensor:
    """x [B,C,H,W], factor [B] -> `(x - m) factor + m` on the colour channels, `m` [B,1,1,1] the
    per-image mean over them (1: unchanged)."""
    color, rest = _color_split(x, color_channels)
    mean = color.mean(dim=(1, 2, 3), keepdim=True)  # [B, 1, 1, 1]
    return _color_join((color - mean) * factor.to(x)[:, None, None, None] + mean, rest)


def translate(x: Tensor, shift: Tensor) -> Tensor:
    """x [B,C,H,W], shift [B,2] long (dy, dx) -> every channel moved down by dy and right by dx
    pixels (negative: up / left); the uncovered pixels are 0. |dy| < H, |dx| < W."""
    B, C, H, W = x.shape
    shift = shift.to(device=x.device, dtype=torch.long)
    pad = int(shift.abs().max()) if B else 0
    padded = F.pad(x, (pad, pad, pad, pad))  # [B, C, H + 2p, W + 2p], zeros around
    rows = torch.arange(H, device=x.device)[None, :] - shift[:, :1] + pad  # [B, H]
    cols = torch.arange(W, device=x.device)[None, :] - shift[:, 1:] + pad  # [B, W]
    batch = torch.arange(B, device=x.device)[:, None, None]  # [B, 1, 1]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2)  # [B, C, H, W]


def cutout(x: Tensor, offset: Tensor, size: tuple[int, int]) -> Tensor:
    """x [B,C,H,W], offset [B,2] long (top, left), size (h, w) -> x with the pixels
    `[top, top + h) x [left, left + w)` of every channel set to 0."""
    B, C, H, W = x.shape
    offset = offset.to(device=x.device, dtype=torch.long)
    rows = torch.arange(H, device=x.device)[None, :] - offset[:, :1]  # [B, H]
    cols = torch.arange(W, device=x.device)[None, :] - offset[:, 1:]  # [B, W]
    inside_rows = (rows >= 0) & (rows < size[0])  # [B, H]
    inside_cols = (cols >= 0) & (cols < size[1])  # [B, W]
    keep = ~(inside_rows[:, :, None] & inside_cols[:, None, :])  # [B, H, W]
    return x * keep[:, None].to(x)  # [B, C, H, W]


# ---------------------------------------------------------------------------------------------
# Random parameters
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentParameters:
    """One draw of every op of a policy for a batch (an op not in the policy is None; rows an
    op skips under `probability` < 1 hold its identity value)."""

    brightness: Tensor | None = None  # [B] float offset
    saturation: Tensor | None = None  # [B] float factor
    contrast: Tensor | None = None  # [B] float factor
    translation: Tensor | None = None  # [B, 2] long (dy, dx)
    cutout: Tensor | None = None  # [B, 2] long (top, left)
    cutout_size: tuple[int, int] = (0, 0)  # (h, w)


def _cutout_size(H: int, W: int, ratio: float) -> tuple[int, int]:
    return int(H * ratio + 0.5), int(W * ratio + 0.5)


def draw_parameters(
    ops: tuple[str, ...],
    batch: int,
    size: tuple[int, int],
    *,
    translation_ratio: float = 0.125,
    cutout_ratio: float = 0.5,
    probability: float = 1.0,
    same_for_batch: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> AugmentParameters:
    """Draws the parameters of `ops` (see `parse_policy`) for `batch` images of `size` (H, W).

    Draws happen on the generator's device (CPU when None) in a fixed order (each op: its
    values, then its apply-mask), then move to `device`. `same_for_batch`: one draw shared by
    every image. `probability`: each image gets each op with this probability (ADA-style).
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability: must be in [0, 1], got {probability}")
    H, W = size
    n = 1 if same_for_batch else batch
    draw_device = generator.device if generator is not None else torch.device("cpu")

    def uniform(low: float, high: float) -> Tensor:
        u = torch.rand(n, generator=generator, device=draw_device)  # [n]
        return low + (high - low) * u

    def applied() -> Tensor:
        return torch.rand(n, generator=generator, device=draw_device) < probability  # [n] bool

    def expand(t: Tensor) -> Tensor:
        return t.expand(batch, *t.shape[1:]).to(device)

    values: dict[str, Tensor] = {}
    identity = {"brightness": 0.0, "saturation": 1.0, "contrast": 1.0}
    ranges = {"brightness": (-0.5, 0.5), "saturation": (0.0, 2.0), "contrast": (0.5, 1.5)}
    cut = _cutout_size(H, W, cutout_ratio)
    for op in ops:
        if op in ranges:
            value = uniform(*ranges[op])
            value = torch.where(applied(), value, torch.full_like(value, identity[op]))
        elif op == "translation":
            limit = (int(H * translation_ratio + 0.5), int(W * translation_ratio + 0.5))
            value = torch.stack(
                [
                    torch.randint(-m, m + 1, (n,), generator=generator, device=draw_device)
                    for m in limit
                ],
                dim=1,
            )  # [n, 2]
            value = value * applied()[:, None]
        elif op == "cutout":
            value = torch.stack(
                [
                    torch.randint(0, full - c + 1, (n,), generator=generator, device=draw_device)
                    for full, c in zip((H, W), cut, strict=True)
                ],
                dim=1,
            )  # [n, 2] top-left inside the image
            # a skipped row's rectangle is moved wholly outside the image
            value = torch.where(applied()[:, None], value, torch.full_like(value, max(H, W)))
        else:
            raise ValueError(f"policy: unknown op {op!r} (known: {list(OPS)})")
        values[op] = expand(value)
    return AugmentParameters(**values, cutout_size=cut)


def apply_parameters(x: Tensor, params: AugmentParameters, *, color_channels: int | None = 3):
    """x [B,C,H,W] -> the ops of `params` applied in the paper's order (colour, translation,
    cutout). Differentiable with respect to `x`."""
    if params.brightness is not None:
        x = brightness(x, params.brightness, color_channels=color_channels)
    if params.saturation is not None:
        x = saturation(x, params.saturation, color_channels=color_channels)
    if params.contrast is not None:
        x = contrast(x, params.contrast, color_channels=color_channels)
    if params.translation is not None:
        x = translate(x, params.translation)
    if params.cutout is not None:
        x = cutout(x, params.cutout, params.cutout_size)
    return x


def diff_augment(
    x: Tensor,
    policy: str = "color,translation,cutout",
    *,
    translation_ratio: float = 0.125,
    cutout_ratio: float = 0.5,
    color_channels: int | None = 3,
    probability: float = 1.0,
    same_for_batch: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DiffAugment of `x` [B,C,H,W] float in [-1, 1] -> [B,C,H,W], differentiable w.r.t. `x`.

    Args:
        policy: ops / groups, comma-separated (`parse_policy`); "" is the identity.
        translation_ratio: the largest shift, as a share of the side (1/8 in the paper).
        cutout_ratio: the rectangle's side as a share of the image's (1/2 in the paper).
        color_channels: the leading channels the colour ops change (3: RGB of RGB+alpha crops;
            None: all). A colour op needs at least that many channels.
        probability: each op's chance per image (1: always).
        same_for_batch: one draw for the whole batch.
        generator: the only source of randomness (None: torch's global one).
    """
    ops = parse_policy(policy)
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x: expected float [B, C, H, W], got {x.dtype} {tuple(x.shape)}")
    B, C, H, W = x.shape
    if color_channels is not None and C < color_channels and any(op in COLOR_OPS for op in ops):
        raise ValueError(
            f"policy {policy!r}: colour ops change the first {color_channels} channels, the "
            f"images have {C} (LiDAR grids: use 'translation,cutout')"
        )
    for name, ratio in (("translation_ratio", translation_ratio), ("cutout_ratio", cutout_ratio)):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{name}: must be in [0, 1], got {ratio}")
    if not ops:
        return x
    params = draw_parameters(
        ops,
        B,
        (H, W),
        translation_ratio=translation_ratio,
        cutout_ratio=cutout_ratio,
        probability=probability,
        same_for_batch=same_for_batch,
        generator=generator,
        device=x.device,
    )
    return apply_parameters(x, params, color_channels=color_channels)


class DiffAugment(nn.Module):
    """`diff_augment` with its policy and ratios fixed (no parameters, no state).

    `forward(x [B,C,H,W], *, probability=1.0, generator=None) -> [B,C,H,W]`.
    """

    def __init__(
        self,
        policy: str = "color,translation,cutout",
        *,
        translation_ratio: float = 0.125,
        cutout_ratio: float = 0.5,
        color_channels: int | None = 3,
        same_for_batch: bool = False,
    ) -> None:
        super().__init__()
        self.ops = parse_policy(policy)
        self.policy = policy
        self.translation_ratio = translation_ratio
        self.cutout_ratio = cutout_ratio
        self.color_channels = color_channels
        self.same_for_batch = same_for_batch

    def forward(
        self, x: Tensor, *, probability: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        return diff_augment(
            x,
            self.policy,
            translation_ratio=self.translation_ratio,
            cutout_ratio=self.cutout_ratio,
            color_channels=self.color_channels,
            probability=probability,
            same_for_batch=self.same_for_batch,
            generator=generator,
        )

    def extra_repr(self) -> str:
        return (
            f"policy={self.policy!r}, translation_ratio={self.translation_ratio}, "
            f"cutout_ratio={self.cutout_ratio}, color_channels={self.color_channels}"
        )
