"""The class-conditional GAN: a small ResNet generator with condition-modulated normalisation, a
ResNet discriminator with spectral norm and a projection head, an EMA copy of the generator,
the losses, and the one `sample_gan` function that tools, paste and benchmarks call.

    condition:      ObjectConditions -> cond [B, cond_dim]   (G and D each own an embedding)
    generator:      z [B, z_dim], cond -> 4x4 -> up-blocks (x2 each) -> [B, C, S, S] tanh;
                    every norm is GroupNorm modulated by (z, cond) (AdaIN-style: per-sample
                    scale and shift, no batch statistics, so a row's sample is independent
                    of the rest of the batch and the EMA copy needs no running statistics)
    discriminator:  x [B, C, S, S] -> down-blocks to 4x4 -> ReLU, sum pool -> h [B, F];
                    D(x, c) = w.h + <P cond, h> (projection discriminator, Miyato & Koyama
                    2018), every conv and linear spectrally normalised
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from ..conditions import ConditionEmbedding, ObjectConditions
from ..hart.model import GeneratedSignal
from .config import GANConfig

__all__ = [
    "GAN",
    "GANDiscriminator",
    "GANGenerator",
    "build_gan",
    "discriminator_adversarial_loss",
    "ema_update",
    "generator_adversarial_loss",
    "r1_penalty",
    "sample_gan",
]


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 where they divide the channels (2+ channels each), else fewer."""
    for groups in (8, 4, 2, 1):
        if channels % groups == 0 and channels // groups >= 2:
            return groups
    return 1


class ModulatedNorm(nn.Module):
    """GroupNorm without affine, then a per-sample scale and shift from a style vector:
    `x [B,C,H,W], style [B,style_dim] -> norm(x) (1 + gamma(style)) + beta(style)`."""

    def __init__(self, *, channels: int, style_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels, affine=False)
        self.affine = nn.Linear(style_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)  # starts as plain GroupNorm
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        gamma, beta = self.affine(style)[:, :, None, None].chunk(2, dim=1)  # [B, C, 1, 1] each
        return self.norm(x) * (1 + gamma) + beta


class GeneratorBlock(nn.Module):
    """Up-block: norm-ReLU-upsample-conv3-norm-ReLU-conv3, plus upsample-conv1 shortcut."""

    def __init__(self, *, c_in: int, c_out: int, style_dim: int) -> None:
        super().__init__()
        self.norm1 = ModulatedNorm(channels=c_in, style_dim=style_dim)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = ModulatedNorm(channels=c_out, style_dim=style_dim)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        """x [B, c_in, H, W], style [B, style_dim] -> [B, c_out, 2H, 2W]."""
        h = F.interpolate(F.relu(self.norm1(x, style)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), style)))  # [B, c_out, 2H, 2W]
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class GANGenerator(nn.Module):
    """(z, conditions) -> signals in [-1, 1].

    Channels `width * min(2^(n - i), 4)` at the i-th of n = log2(S / 4) up-blocks' inputs,
    `width` at full resolution. The style of every norm is `[z, cond]`.
    """

    def __init__(
        self,
        *,
        condition: ConditionEmbedding,
        out_channels: int,
        image_size: int = 32,
        z_dim: int = 64,
        width: int = 36,
    ) -> None:
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"image_size: must be a power of two >= 8, got {image_size}")
        self.condition = condition
        self.z_dim = z_dim
        self.out_channels = out_channels
        self.image_size = image_size
        n = int(math.log2(image_size // 4))
        channels = [width * min(2 ** (n - i), 4) for i in range(n + 1)]  # 4x4 ... SxS
        style_dim = z_dim + condition.dim
        self.channels = channels
        self.stem = nn.Linear(style_dim, channels[0] * 16)
        self.blocks = nn.ModuleList(
            GeneratorBlock(c_in=a, c_out=b, style_dim=style_dim)
            for a, b in zip(channels[:-1], channels[1:], strict=True)
        )
        self.out_norm = nn.GroupNorm(_groups(channels[-1]), channels[-1])
        self.out_conv = nn.Conv2d(channels[-1], out_channels, 3, padding=1)

    def forward(self, z: Tensor, conds: ObjectConditions) -> Tensor:
        """z [B, z_dim] float -> signals [B, out_channels, S, S] float in [-1, 1]."""
        B = z.shape[0]
        if z.shape != (B, self.z_dim) or len(conds) != B:
            raise ValueError(
                f"z: expected [{len(conds)}, {self.z_dim}] (one row per condition), "
                f"got {list(z.shape)}"
            )
        style = torch.cat([z, self.condition(conds)], dim=1)  # [B, z_dim + cond_dim]
        h = self.stem(style).view(B, self.channels[0], 4, 4)  # [B, C0, 4, 4]
        for block in self.blocks:
            h = block(h, style)  # [B, C_i+1, 2H, 2W]
        return torch.tanh(self.out_conv(F.relu(self.out_norm(h))))  # [B, C, S, S]


class DiscriminatorBlock(nn.Module):
    """Down-block (spectral norm): [ReLU]-conv3-ReLU-conv3-[avgpool] plus conv1-[avgpool]
    shortcut; the first block skips the leading ReLU (its input is the image)."""

    def __init__(self, *, c_in: int, c_out: int, down: bool, first: bool = False) -> None:
        super().__init__()
        self.conv1 = spectral_norm(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.shortcut = spectral_norm(nn.Conv2d(c_in, c_out, 1))
        self.down = down
        self.first = first

    def forward(self, x: Tensor) -> Tensor:
        """x [B, c_in, H, W] -> [B, c_out, H/2, W/2] (H, W without `down`)."""
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        skip = x
        if self.first and self.down:  # pool first: the cheaper order on the image
            skip = self.shortcut(F.avg_pool2d(skip, 2))
        else:
            skip = self.shortcut(skip)
            skip = F.avg_pool2d(skip, 2) if self.down else skip
        h = F.avg_pool2d(h, 2) if self.down else h
        return h + skip


class GANDiscriminator(nn.Module):
    """(signals, conditions) -> one logit each, with a projection head.

    Down-blocks halve the size until 4x4 (channels `width * min(2^i, 4)`), one more block at
    4x4, ReLU, sum over space -> h [B, F]; output `linear(h) + sum(project(cond) * h)`.
    """

    def __init__(
        self,
        *,
        condition: ConditionEmbedding,
        in_channels: int,
        image_size: int = 32,
        width: int = 40,
    ) -> None:
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"image_size: must be a power of two >= 8, got {image_size}")
        self.condition = condition
        self.in_channels = in_channels
        self.image_size = image_size
        n = int(math.log2(image_size // 4))
        channels = [width * min(2**i, 4) for i in range(n)]
        blocks = []
        c_in = in_channels
        for i, c in enumerate(channels):
            blocks.append(DiscriminatorBlock(c_in=c_in, c_out=c, down=True, first=i == 0))
            c_in = c
        blocks.append(DiscriminatorBlock(c_in=c_in, c_out=c_in, down=False))
        self.blocks = nn.Sequential(*blocks)
        self.num_features = c_in
        self.linear = spectral_norm(nn.Linear(c_in, 1))
        self.projection = spectral_norm(nn.Linear(condition.dim, c_in, bias=False))

    def features(self, x: Tensor) -> Tensor:
        """x [B, C, S, S] -> pooled features h [B, F]."""
        return F.relu(self.blocks(x)).sum(dim=(2, 3))  # [B, F]

    def forward(self, x: Tensor, conds: ObjectConditions) -> Tensor:
        """x [B, C, S, S] float, B conditions -> logits [B] float."""
        if x.dim() != 4 or x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(
                f"x: expected [B, {self.in_channels}, {self.image_size}, {self.image_size}], "
                f"got {list(x.shape)}"
            )
        h = self.features(x)  # [B, F]
        projected = self.projection(self.condition(conds))  # [B, F]
        return self.linear(h)[:, 0] + (projected * h).sum(dim=1)  # [B]


class GAN(nn.Module):
    """The trained pieces in one module (one checkpoint): `generator`, `discriminator` and
    `generator_ema` (the exponential moving average of the generator's weights, what samples).
    """

    def __init__(self, *, generator: GANGenerator, discriminator: GANDiscriminator) -> None:
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.generator_ema = copy.deepcopy(generator).eval().requires_grad_(False)


def build_gan(config: GANConfig) -> GAN:
    """The GAN a config describes (untrained; initial weights from torch's global RNG)."""
    m, data = config.model, config.data
    generator = GANGenerator(
        condition=ConditionEmbedding(dim=m.cond_dim),
        out_channels=data.in_channels,
        image_size=data.signal_size,
        z_dim=m.z_dim,
        width=m.g_width,
    )
    discriminator = GANDiscriminator(
        condition=ConditionEmbedding(dim=m.cond_dim),
        in_channels=data.in_channels,
        image_size=data.signal_size,
        width=m.d_width,
    )
    return GAN(generator=generator, discriminator=discriminator)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """`ema <- decay ema + (1 - decay) model` for every parameter (buffers copied); the two
    modules must have the same structure."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay: must be in [0, 1], got {decay}")
    for (name, e), (_, p) in zip(ema.named_parameters(), model.named_parameters(), strict=True):
        if e.shape != p.shape:
            raise ValueError(f"ema_update: {name} has shape {list(e.shape)} vs {list(p.shape)}")
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def discriminator_adversarial_loss(d_real: Tensor, d_fake: Tensor, kind: str = "hinge") -> Tensor:
    """d_real [B], d_fake [B] logits -> the D loss (scalar).

    hinge: `mean(relu(1 - d_real)) + mean(relu(1 + d_fake))`;
    non_saturating: `mean(softplus(-d_real)) + mean(softplus(d_fake))`.
    """
    if kind == "hinge":
        return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    if kind == "non_saturating":
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    raise ValueError(f"loss.kind: unknown {kind!r} (hinge, non_saturating)")


def generator_adversarial_loss(d_fake: Tensor, kind: str = "hinge") -> Tensor:
    """d_fake [B] logits of the generator's samples -> the G loss (scalar).

    hinge: `-mean(d_fake)`; non_saturating: `mean(softplus(-d_fake))`.
    """
    if kind == "hinge":
        return -d_fake.mean()
    if kind == "non_saturating":
        return F.softplus(-d_fake).mean()
    raise ValueError(f"loss.kind: unknown {kind!r} (hinge, non_saturating)")


def r1_penalty(d_real: Tensor, reals: Tensor) -> Tensor:
    """`E_b |d d_real[b] / d reals[b]|^2` (scalar, differentiable: create_graph), the R1
    penalty without its gamma / 2. `reals` [B, ...] must require grad and `d_real` [B] depend
    on it (through any augmentation: the gradient is w.r.t. the un-augmented reals, as
    StyleGAN2-ADA)."""
    (grad,) = torch.autograd.grad(d_real.sum(), reals, create_graph=True)  # [B, C, S, S]
    return grad.pow(2).flatten(1).sum(dim=1).mean()


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_gan(
    model: GAN,
    conditions: ObjectConditions,
    *,
    generator: torch.Generator | None = None,
    truncation: float = 1.0,
) -> GeneratedSignal:
    """One signal per row of `conditions` from the EMA generator.

    z ~ N(0, truncation^2 I) (drawn on the generator's device, CPU when None: 1.0 is the
    training distribution, smaller trades variety for typical samples). Returns
    `GeneratedSignal(signals [B, C, S, S] in [-1, 1], indices=[], residual=None)`.
    """
    if not truncation > 0:
        raise ValueError(f"truncation: must be > 0, got {truncation}")
    net = model.generator_ema.eval()
    device = net.stem.weight.device
    B = len(conditions)
    draw_device = generator.device if generator is not None else torch.device("cpu")
    z = torch.randn(B, net.z_dim, generator=generator, device=draw_device).to(device)
    signals = net(z * truncation, conditions.to(device))  # [B, C, S, S]
    return GeneratedSignal(signals, [], None)
