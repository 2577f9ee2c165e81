"""The hybrid tokenizer of HART (Tang et al. 2024): a convolutional autoencoder whose latent is
split into discrete tokens of a VAR-style multi-scale residual quantizer (Tian et al. 2024) and a
continuous residual token (the latent minus the sum of its discrete parts).

Latent grid: `G x G` cells of `D` channels, `G = scales[-1]`. Scale `k` has `s_k * s_k` tokens in
row-major order (token `i * s_k + j` is row `i`, column `j`); the whole sequence has
`L = sum(s * s)` tokens (130 for the default scales (1, 2, 3, 4, 6, 8)).

Quantization, scale by scale, with one shared codebook `[V, D]`:

    f_hat = 0
    for k, s in enumerate(scales):
        r = area_resize(z - f_hat, s)             # what is left, at scale k        [B, D, s, s]
        idx_k = nearest code of each cell of r    # euclidean                        [B, s*s]
        f_hat = f_hat + embed_scale(k, idx_k)     # codes -> bicubic to G -> phi     [B, D, G, G]
    residual = z - f_hat                          # HART's continuous token          [B, D, G, G]

`phi` is VAR's shared 3x3 convolution with a partial residual, `h + alpha * (conv(h) - h)`.
`indices_to_latent` and `teacher_forcing_inputs` repeat exactly these float operations in this
order, so the latent rebuilt from indices, and what the transformer reads in training, are
bit-equal to what quantization and sampling produce.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_SCALES: tuple[int, ...] = (1, 2, 3, 4, 6, 8)


def check_scales(scales: Sequence[int]) -> tuple[int, ...]:
    """Validate a scale schedule: a non-empty tuple of positive, strictly increasing ints."""
    scales = tuple(scales)
    if not scales:
        raise ValueError("scales: must not be empty")
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"scales: every scale must be a positive int, got {scales}")
    if any(b <= a for a, b in zip(scales, scales[1:])):
        raise ValueError(f"scales: must be strictly increasing, got {scales}")
    return scales


@dataclass(frozen=True)
class QuantizerOutput:
    """What `MultiScaleResidualQuantizer.quantize` returns.

    f_hat: [B, D, G, G] float, the sum of every scale's contribution. Its values are exactly
        `indices_to_latent(indices)`; its gradient is the straight-through estimator (the
        identity to `z`), so the decoder's loss reaches the encoder.
    indices: per scale k, [B, s_k * s_k] long, row-major.
    residual: [B, D, G, G] float, `z - f_hat` (the continuous token; gradient to `z` only).
    commit_loss: scalar, VQ-VAE's codebook term plus `beta` times the commitment term, averaged
        over the scales' running sums (VAR's form); the codebook and `phi` learn from it alone.
    usage: scalar float (detached), the fraction of the codebook used in this call.
    perplexity: scalar float (detached), exp of the entropy of this call's code frequencies.
    """

    f_hat: Tensor
    indices: list[Tensor]
    residual: Tensor
    commit_loss: Tensor
    usage: Tensor
    perplexity: Tensor


class MultiScaleResidualQuantizer(nn.Module):
    """VAR-style multi-scale residual vector quantizer with one shared codebook.

    Code lookup is plain euclidean (not on l2-normalized vectors): the residual left for later
    scales is much smaller than the latent the first scale sees, and euclidean lookup lets a
    small code answer a small residual, whereas a cosine lookup matches only directions and
    would add a code of the wrong magnitude (VAR's default, `using_znorm=False`, is the same).

    Dead codes: in training, a code not chosen for `dead_code_steps` consecutive `quantize` calls
    is re-initialised to one of this call's vectors that its nearest code fits worst (largest
    distance first, no randomness), after this call's outputs are computed. The codebook's
    embedding backward does not read the codebook's values, so the call's gradient stays valid.
    `dead_code_steps=0` switches this off.

    Args:
        dim: D, channels of a latent cell and of a code.
        vocab_size: V, codes in the codebook.
        scales: side lengths of the scales, strictly increasing; the last is the grid G.
        beta: weight of the commitment term.
        phi_alpha: how much of `phi`'s convolution enters each contribution (VAR uses 0.5).
        dead_code_steps: calls without use after which a code is re-initialised.
    """

    def __init__(
        self,
        *,
        dim: int,
        vocab_size: int,
        scales: Sequence[int] = DEFAULT_SCALES,
        beta: float = 0.25,
        phi_alpha: float = 0.5,
        dead_code_steps: int = 50,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim: must be >= 1, got {dim}")
        if vocab_size < 2:
            raise ValueError(f"vocab_size: must be >= 2, got {vocab_size}")
        if not beta >= 0.0:
            raise ValueError(f"beta: must be >= 0, got {beta}")
        if not 0.0 <= phi_alpha <= 1.0:
            raise ValueError(f"phi_alpha: must lie in [0, 1], got {phi_alpha}")
        if dead_code_steps < 0:
            raise ValueError(f"dead_code_steps: must be >= 0, got {dead_code_steps}")
        self.scales = check_scales(scales)
        self.dim = dim
        self.vocab_size = vocab_size
        self.grid = self.scales[-1]
        self.seq_len = sum(s * s for s in self.scales)
        self.beta = beta
        self.phi_alpha = phi_alpha
        self.dead_code_steps = dead_code_steps
        self.codebook = nn.Embedding(vocab_size, dim)
        # VAR's init: small uniform codes, so the first scales do not overshoot a fresh latent.
        nn.init.uniform_(self.codebook.weight, -1.0 / vocab_size, 1.0 / vocab_size)
        self.phi = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        # Training calls since each code was last chosen (saved with the model, for resume).
        self.register_buffer("steps_since_used", torch.zeros(vocab_size, dtype=torch.long))

    @property
    def codebook_usage(self) -> float:
        """Fraction of codes chosen within the last `dead_code_steps` training calls (1.0 before
        any training call)."""
        window = max(self.dead_code_steps, 1)
        return (self.steps_since_used < window).float().mean().item()

    def _check_latent(self, z: Tensor) -> None:
        if z.ndim != 4 or tuple(z.shape[1:]) != (self.dim, self.grid, self.grid):
            raise ValueError(
                f"z: expected [B, {self.dim}, {self.grid}, {self.grid}] (dim, grid), "
                f"got {list(z.shape)}"
            )

    def _check_indices(self, indices: Sequence[Tensor]) -> int:
        if len(indices) != len(self.scales):
            raise ValueError(
                f"indices: expected {len(self.scales)} scales {self.scales}, got {len(indices)}"
            )
        batch = indices[0].shape[0] if indices[0].ndim == 2 else -1
        for k, (idx, s) in enumerate(zip(indices, self.scales)):
            if idx.dtype != torch.long or tuple(idx.shape) != (batch, s * s):
                raise ValueError(
                    f"indices[{k}]: expected long [B, {s * s}] (scale {s}), "
                    f"got {idx.dtype} {list(idx.shape)}"
                )
        return batch

    def _check_scale_index(self, k: int, last: int) -> None:
        if not 0 <= k <= last:
            raise ValueError(f"k: scale index must lie in [0, {last}], got {k}")

    def embed_scale(self, k: int, idx: Tensor) -> Tensor:
        """Scale k's contribution to the latent.

        Args:
            k: scale index in [0, K).
            idx: [B, s_k * s_k] long, row-major code indices of scale k.
        Returns:
            [B, D, G, G] float: the codes, bicubic-upsampled to the grid, refined by `phi`.
        """
        self._check_scale_index(k, len(self.scales) - 1)
        s, G = self.scales[k], self.grid
        if idx.ndim != 2 or idx.shape[1] != s * s or idx.dtype != torch.long:
            raise ValueError(
                f"idx: expected long [B, {s * s}] for scale {k} (side {s}), "
                f"got {idx.dtype} {list(idx.shape)}"
            )
        B = idx.shape[0]
        h = self.codebook(idx).transpose(1, 2).reshape(B, self.dim, s, s).contiguous()  # [B,D,s,s]
        if s != G:
            h = F.interpolate(h, size=(G, G), mode="bicubic", align_corners=False)  # [B,D,G,G]
        return h + self.phi_alpha * (self.phi(h) - h)  # [B, D, G, G]

    def _nearest(self, r: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest codes of r [N, D]: (indices [N] long, squared distances [N])."""
        w = self.codebook.weight.detach()  # [V, D]
        d = (r * r).sum(1, keepdim=True) - 2.0 * r @ w.T + (w * w).sum(1)[None]  # [N, V]
        dist, idx = d.min(dim=1)  # [N], [N]
        return idx, dist

    def _encode(self, z: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """The scale loop. Returns per scale: indices [B, s*s], the running sum after the scale
        [B, D, G, G] (with gradient to the codebook and phi where grad mode is on), and the
        residual vectors looked up [B*s*s, D] with their squared distances [B*s*s]."""
        self._check_latent(z)
        B, D, G, _ = z.shape
        z_ng = z.detach()
        f_hat = torch.zeros_like(z_ng)  # [B, D, G, G]
        indices, sums, vectors, dists = [], [], [], []
        for k, s in enumerate(self.scales):
            with torch.no_grad():
                rest = z_ng - f_hat.detach()  # [B, D, G, G]
                if s != G:
                    rest = F.interpolate(rest, size=(s, s), mode="area")  # [B, D, s, s]
                r = rest.permute(0, 2, 3, 1).reshape(B * s * s, D)  # [B*s*s, D] row-major
                idx, dist = self._nearest(r)
            idx = idx.view(B, s * s)  # [B, s*s]
            f_hat = f_hat + self.embed_scale(k, idx)  # [B, D, G, G]
            indices.append(idx)
            sums.append(f_hat)
            vectors.append(r)
            dists.append(dist)
        return indices, sums, vectors, dists

    @torch.no_grad()
    def encode_indices(self, z: Tensor) -> list[Tensor]:
        """Latent to code indices.

        Args:
            z: [B, D, G, G] float latent.
        Returns:
            per scale k, [B, s_k * s_k] long, row-major.
        """
        return self._encode(z)[0]

    def indices_to_latent(self, indices: Sequence[Tensor]) -> Tensor:
        """Code indices to the discrete latent: the sum of every scale's contribution, added in
        scale order from zero (bit-equal to `quantize(z).f_hat` for `indices` of `z`).

        Args:
            indices: per scale k, [B, s_k * s_k] long.
        Returns:
            f_hat: [B, D, G, G] float.
        """
        B = self._check_indices(indices)
        w = self.codebook.weight
        f_hat = torch.zeros(B, self.dim, self.grid, self.grid, dtype=w.dtype, device=w.device)
        for k, idx in enumerate(indices):
            f_hat = f_hat + self.embed_scale(k, idx)  # [B, D, G, G]
        return f_hat

    def next_scale_input(self, f_hat: Tensor, k: int) -> Tensor:
        """What the transformer reads to predict scale k + 1.

        Args:
            f_hat: [B, D, G, G] float, the running sum after scale k.
            k: scale index in [0, K - 2].
        Returns:
            [B, s_{k+1} * s_{k+1}, D] float: f_hat area-resized to scale k + 1, row-major tokens.
        """
        self._check_scale_index(k, len(self.scales) - 2)
        self._check_latent(f_hat)
        s = self.scales[k + 1]
        x = f_hat if s == self.grid else F.interpolate(f_hat, size=(s, s), mode="area")
        return x.flatten(2).transpose(1, 2).contiguous()  # [B, s*s, D]

    def teacher_forcing_inputs(self, indices: Sequence[Tensor]) -> Tensor:
        """The transformer's inputs for all scales but the first, computed exactly as sampling
        computes them (the running sum grown one scale at a time, then `next_scale_input`).

        Args:
            indices: per scale k, [B, s_k * s_k] long.
        Returns:
            [B, L - s_0 * s_0, D] float, scales 1..K-1 concatenated in order.
        """
        B = self._check_indices(indices)
        w = self.codebook.weight
        f_hat = torch.zeros(B, self.dim, self.grid, self.grid, dtype=w.dtype, device=w.device)
        inputs = []
        for k in range(len(self.scales) - 1):
            f_hat = f_hat + self.embed_scale(k, indices[k])  # [B, D, G, G]
            inputs.append(self.next_scale_input(f_hat, k))  # [B, s_{k+1}^2, D]
        if not inputs:  # one scale only: the transformer reads nothing but the condition
            return torch.zeros(B, 0, self.dim, dtype=w.dtype, device=w.device)
        return torch.cat(inputs, dim=1)  # [B, L - s0^2, D]

    def quantize(self, z: Tensor) -> QuantizerOutput:
        """Quantize a latent (see `QuantizerOutput`). In training mode also counts code use and
        re-initialises dead codes (after the outputs are computed).

        Args:
            z: [B, D, G, G] float latent (from the encoder).
        """
        indices, sums, vectors, dists = self._encode(z)
        f_hat = sums[-1]  # [B, D, G, G]
        z_ng = z.detach()
        # VAR's loss on every running sum: codebook term + beta * commitment term.
        commit = sum(
            F.mse_loss(s, z_ng) + self.beta * F.mse_loss(s.detach(), z) for s in sums
        ) / len(sums)
        # Straight-through: the values of f_hat exactly (f + 0 == f), the gradient of z.
        f_st = f_hat.detach() + (z - z_ng)  # [B, D, G, G]
        residual = z - f_hat.detach()  # [B, D, G, G]
        with torch.no_grad():
            flat = torch.cat([i.reshape(-1) for i in indices])  # [B*L]
            counts = torch.bincount(flat, minlength=self.vocab_size).float()  # [V]
            p = counts / counts.sum()
            usage = (counts > 0).float().mean()
            perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
            if self.training:
                self._update_dead_codes(counts > 0, torch.cat(vectors), torch.cat(dists))
        return QuantizerOutput(
            f_hat=f_st,
            indices=indices,
            residual=residual,
            commit_loss=commit,
            usage=usage,
            perplexity=perplexity,
        )

    @torch.no_grad()
    def _update_dead_codes(self, used: Tensor, vectors: Tensor, dists: Tensor) -> None:
        """used [V] bool; vectors [N, D] looked up this call with their squared distances [N]."""
        self.steps_since_used.add_(1).masked_fill_(used, 0)
        if self.dead_code_steps == 0:
            return
        dead = (self.steps_since_used >= self.dead_code_steps).nonzero().flatten()  # [n]
        n = min(dead.numel(), vectors.shape[0])
        if n == 0:
            return
        worst = torch.topk(dists, n).indices  # [n] the vectors fitted worst
        self.codebook.weight[dead[:n]] = vectors[worst].to(self.codebook.weight.dtype)
        self.steps_since_used[dead[:n]] = 0


def _groups(channels: int) -> int:
    return math.gcd(channels, 32)


class ResidualBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 twice plus the input. [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class HybridTokenizer(nn.Module):
    """HART's hybrid tokenizer: conv encoder -> multi-scale residual VQ + continuous residual ->
    conv decoder. Images `[B, C, S, S]` in [-1, 1]; latent `[B, D, G, G]`, `G = scales[-1]`,
    `S / G` a power of two (one stride-2 stage per factor of two).

    `hybrid=True` (HART): in training the decoder decodes, per batch with probability 0.5 each
    (drawn from `generator`), either the discrete latent f_hat (straight-through to the encoder)
    or the full latent z = f_hat + residual, so one decoder serves both. `hybrid=False` (the VAR
    ablation): always f_hat.

    Args:
        in_channels: C, image channels (4 for RGB + mask crops).
        image_size: S, image side in pixels.
        latent_dim: D, latent channels (the code and token dimension).
        vocab_size: V, codebook size.
        scales: the quantizer's scales; the last is the latent grid G.
        hidden: width of the encoder and decoder.
        hybrid: decode the continuous residual too (see above).
        num_res_blocks: residual blocks per resolution.
        beta: the quantizer's commitment weight.
        feature_weight: weight of the feature loss in "total".
        dead_code_steps: see `MultiScaleResidualQuantizer`.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        image_size: int = 32,
        latent_dim: int,
        vocab_size: int,
        scales: Sequence[int] = DEFAULT_SCALES,
        hidden: int = 64,
        hybrid: bool = True,
        num_res_blocks: int = 1,
        beta: float = 0.25,
        feature_weight: float = 1.0,
        dead_code_steps: int = 50,
    ) -> None:
        super().__init__()
        scales = check_scales(scales)
        grid = scales[-1]
        if in_channels < 1:
            raise ValueError(f"in_channels: must be >= 1, got {in_channels}")
        if latent_dim < 1:
            raise ValueError(f"latent_dim: must be >= 1, got {latent_dim}")
        if hidden < 1:
            raise ValueError(f"hidden: must be >= 1, got {hidden}")
        if num_res_blocks < 0:
            raise ValueError(f"num_res_blocks: must be >= 0, got {num_res_blocks}")
        if not feature_weight >= 0.0:
            raise ValueError(f"feature_weight: must be >= 0, got {feature_weight}")
        factor = image_size // grid
        if image_size < grid or image_size % grid or factor & (factor - 1):
            raise ValueError(
                f"image_size: must be the latent grid {grid} (scales[-1]) times a power of two, "
                f"got {image_size}"
            )
        self.in_channels = in_channels
        self.image_size = image_size
        self.latent_dim = latent_dim
        self.scales = scales
        self.grid = grid
        self.hybrid = hybrid
        self.feature_weight = feature_weight
        stages = factor.bit_length() - 1

        def blocks() -> list[nn.Module]:
            return [ResidualBlock(channels=hidden) for _ in range(num_res_blocks)]

        enc: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1)]
        for _ in range(stages):
            enc += [*blocks(), nn.Conv2d(hidden, hidden, 3, stride=2, padding=1)]
        enc += [*blocks(), nn.GroupNorm(_groups(hidden), hidden), nn.SiLU()]
        enc += [nn.Conv2d(hidden, latent_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent_dim, hidden, 1), *blocks()]
        for _ in range(stages):
            dec += [nn.Upsample(scale_factor=2, mode="nearest")]
            dec += [nn.Conv2d(hidden, hidden, 3, padding=1), *blocks()]
        dec += [nn.GroupNorm(_groups(hidden), hidden), nn.SiLU()]
        dec += [nn.Conv2d(hidden, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.quantizer = MultiScaleResidualQuantizer(
            dim=latent_dim,
            vocab_size=vocab_size,
            scales=scales,
            beta=beta,
            dead_code_steps=dead_code_steps,
        )

    def encode(self, x: Tensor) -> Tensor:
        """x [B, C, S, S] float in [-1, 1] -> z [B, D, G, G] float."""
        C, S = self.in_channels, self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (C, S, S):
            raise ValueError(
                f"x: expected [B, {C}, {S}, {S}] (in_channels, image_size), got {list(x.shape)}"
            )
        return self.encoder(x)  # [B, D, G, G]

    def decode(self, latent: Tensor) -> Tensor:
        """latent [B, D, G, G] float -> x [B, C, S, S] float (unclamped)."""
        D, G = self.latent_dim, self.grid
        if latent.ndim != 4 or tuple(latent.shape[1:]) != (D, G, G):
            raise ValueError(
                f"latent: expected [B, {D}, {G}, {G}] (latent_dim, grid), got {list(latent.shape)}"
            )
        return self.decoder(latent)  # [B, C, S, S]

    def tokenize(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """x [B, C, S, S] -> (indices: per scale k [B, s_k * s_k] long, residual [B, D, G, G]),
        with `indices_to_latent(indices) + residual == encode(x)` up to float rounding."""
        z = self.encode(x)  # [B, D, G, G]
        indices = self.quantizer.encode_indices(z)
        residual = z - self.quantizer.indices_to_latent(indices)  # [B, D, G, G]
        return indices, residual

    def detokenize(self, indices: Sequence[Tensor], residual: Tensor | None = None) -> Tensor:
        """indices (per scale k [B, s_k * s_k] long) and optional residual [B, D, G, G] ->
        x [B, C, S, S]. `residual=None` decodes the discrete latent alone."""
        latent = self.quantizer.indices_to_latent(indices)  # [B, D, G, G]
        if residual is not None:
            latent = latent + residual
        return self.decode(latent)

    def loss(
        self,
        x: Tensor,
        *,
        feature_fn: Callable[[Tensor], Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Training losses of one batch.

        Args:
            x: [B, C, S, S] float in [-1, 1].
            feature_fn: images [B, C, S, S] -> features [B, ...] (e.g. the project's crop
                classifier); its MSE between reconstruction and input is the "feature" term.
            generator: draws the hybrid decoder's branch (global RNG when None).
        Returns:
            scalars: "total" (recon + commit + feature_weight * feature), "recon" (MSE),
            "commit", "feature" (0 without feature_fn), and detached "usage" (codebook fraction
            used in this batch), "perplexity", "discrete" (1.0 when f_hat alone was decoded).
        """
        z = self.encode(x)  # [B, D, G, G]
        q = self.quantizer.quantize(z)
        discrete = True
        if self.hybrid:
            draw = torch.rand(
                (), generator=generator, device=generator.device if generator else None
            )
            discrete = bool(draw < 0.5)
        latent = q.f_hat if discrete else z  # z == f_hat + residual, gradient to the encoder
        x_hat = self.decode(latent)  # [B, C, S, S]
        recon = F.mse_loss(x_hat, x)
        if feature_fn is None:
            feature = recon.new_zeros(())
        else:
            with torch.no_grad():
                target = feature_fn(x)
            feature = F.mse_loss(feature_fn(x_hat), target)
        return {
            "total": recon + q.commit_loss + self.feature_weight * feature,
            "recon": recon,
            "commit": q.commit_loss,
            "feature": feature,
            "usage": q.usage,
            "perplexity": q.perplexity,
            "discrete": recon.new_tensor(float(discrete)).detach(),
        }
