"""The scale-wise autoregressive transformer of the HART-style generator (VAR's next-scale
prediction, Tian et al. 2024; HART, Tang et al. 2024).

The latent grid is tokenized at `scales` (e.g. 1, 2, 3, 4, 6, 8); scale `k` has `s_k * s_k`
tokens in row-major order and the whole sequence is `L = sum(s_k ** 2)` tokens. The network
predicts every token of scale `k` at once from everything of scales `< k`:

- the `s_0 ** 2` tokens of scale 0 start from the condition (a linear map of `cond`);
- the tokens of scale `k >= 1` read the running sum of the decoded scales `< k` resized to
  scale `k` (`MultiScaleResidualQuantizer.next_scale_input`, concatenated over the scales by
  `teacher_forcing_inputs`), projected to `width`;
- every token gets a learned absolute position embedding and a learned level (scale index)
  embedding;
- blocks of AdaLN (shift, scale, gate from `cond`) + block-causal multi-head self-attention +
  MLP; a token attends every token of its own scale and of earlier scales, none of later ones
  (`block_causal_mask`);
- a final AdaLN and a linear head give the logits over the codebook; the normalized hidden state
  is returned too (the residual diffusion head is conditioned on it).

Sampling runs one scale at a time with a key/value cache (`new_cache`, `step`); stepping
`k = 0, 1, ..., K-1` gives the same logits as one `forward` over the whole sequence. The
sampling procedure itself (classifier-free guidance, top-k, the quantizer round trip) lives
outside this network.

    model = ScaleTransformer(token_dim=16, vocab_size=512, scales=(1, 2, 3, 4, 6, 8), cond_dim=128)
    logits, hidden = model(cond, inputs)          # [B, 130, 512], [B, 130, 256]
    cache = model.new_cache()
    logits0, hidden0 = model.step(0, cond, None, cache)   # [B, 1, 512], [B, 1, 256]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AdaLNBlock",
    "KVCache",
    "ScaleTransformer",
    "block_causal_mask",
    "scale_slices",
]


def _check_scales(scales: Sequence[int]) -> tuple[int, ...]:
    """The scales as a tuple of positive, strictly increasing ints; ValueError otherwise."""
    scales = tuple(scales)
    if len(scales) == 0:
        raise ValueError("scales: must hold at least one scale, got ()")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales):
        raise ValueError(f"scales: every scale must be a positive int, got {scales}")
    if any(b <= a for a, b in zip(scales, scales[1:])):
        raise ValueError(f"scales: must be strictly increasing, got {scales}")
    return scales


def scale_slices(scales: Sequence[int]) -> list[slice]:
    """The token range of each scale in the flattened sequence.

    Args:
        scales: side lengths `(s_0, ..., s_{K-1})`, positive and strictly increasing.

    Returns:
        `K` slices; slice `k` is `[sum_{j<k} s_j^2, sum_{j<=k} s_j^2)`.
    """
    scales = _check_scales(scales)
    slices = []
    start = 0
    for s in scales:
        slices.append(slice(start, start + s * s))
        start += s * s
    return slices


def block_causal_mask(scales: Sequence[int]) -> torch.Tensor:
    """The attention mask of next-scale prediction.

    Args:
        scales: side lengths `(s_0, ..., s_{K-1})`, positive and strictly increasing.

    Returns:
        `[L, L]` bool, `L = sum(s_k^2)`: entry `(i, j)` is True where token `i` may attend token
        `j`, i.e. where `j`'s scale is not later than `i`'s (block lower-triangular; every token
        sees all tokens of its own scale).
    """
    slices = scale_slices(scales)
    level = torch.cat(
        [torch.full((sl.stop - sl.start,), k, dtype=torch.long) for k, sl in enumerate(slices)]
    )  # [L]
    return level[None, :] <= level[:, None]  # [L, L] bool


@dataclass
class KVCache:
    """Per-layer keys and values of the scales run so far (`ScaleTransformer.step`).

    Attributes:
        keys: one tensor per layer, `[B, heads, n, head_dim]` (n = tokens of scales `< next_scale`),
            or empty before the first step.
        values: as `keys`.
        next_scale: the scale index the next `step` must be called with.
        batch: the batch size the cache was started with (None before the first step); the
            batch may be `2B` (conditional and unconditional rows of classifier-free guidance).
    """

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    next_scale: int = 0
    batch: int | None = None


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block with AdaLN modulation from the condition (the scale-wise
    transformer's, with a block-causal mask and a KV cache; the latent-diffusion baseline's DiT
    blocks are the same block with no mask and zero-initialised modulation).

    `x + gate_a * attn(LN(x) * (1 + scale_a) + shift_a)`, then the same with the MLP.
    """

    def __init__(self, *, width: int, heads: int, cond_dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(round(width * mlp_ratio))
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )
        # shift/scale/gate for attention and MLP: [B, 6 * width].
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * width))

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Args:
            x: `[B, N, width]` float, the tokens being run.
            cond: `[B, cond_dim]` float.
            attn_mask: `[N, N + n_past]` bool (True: may attend) or None (attend everything).
            past: cached `(keys, values)`, each `[B, heads, n_past, head_dim]`, or None.

        Returns:
            `x` `[B, N, width]` and this call's `(keys, values)`, each `[B, heads, N, head_dim]`
            (the new tokens only; the caller appends them to its cache).
        """
        B, N, W = x.shape
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(cond)[
            :, None, :
        ].chunk(6, dim=-1)  # 6 x [B, 1, W]
        h = self.norm1(x) * (1 + scale_a) + shift_a  # [B, N, W]
        qkv = self.qkv(h).view(B, N, 3, self.heads, self.head_dim)  # [B, N, 3, H, hd]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, N, hd]
        if past is not None:
            k_all = torch.cat([past[0], k], dim=2)  # [B, H, n_past + N, hd]
            v_all = torch.cat([past[1], v], dim=2)  # [B, H, n_past + N, hd]
        else:
            k_all, v_all = k, v
        a = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=attn_mask)  # [B, H, N, hd]
        a = a.transpose(1, 2).reshape(B, N, W)  # [B, N, W]
        x = x + gate_a * self.proj(a)
        h = self.norm2(x) * (1 + scale_m) + shift_m  # [B, N, W]
        x = x + gate_m * self.mlp(h)
        return x, (k, v)


class ScaleTransformer(nn.Module):
    """Decoder-only transformer over the scales of a multi-scale residual VQ (next-scale
    prediction), conditioned by AdaLN.

    Args:
        token_dim: `D`, the channels of the latent (and of each input token).
        vocab_size: `V`, the codebook size (logits per token).
        scales: side lengths `(s_0, ..., s_{K-1})`, positive and strictly increasing.
        cond_dim: the width of the condition vector `cond`.
        width: the transformer's model width; divisible by `heads`.
        depth: the number of blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of `width`.

    Attributes:
        scales, token_dim, vocab_size, cond_dim, width, depth, heads: as given.
        seq_len: `L = sum(s_k^2)`.
        slices: `scale_slices(scales)`.
        attn_mask: buffer `[L, L]` bool, `block_causal_mask(scales)`.
    """

    def __init__(
        self,
        *,
        token_dim: int,
        vocab_size: int,
        scales: Sequence[int],
        cond_dim: int,
        width: int = 256,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.scales = _check_scales(scales)
        for name, value in (
            ("token_dim", token_dim),
            ("vocab_size", vocab_size),
            ("cond_dim", cond_dim),
            ("width", width),
            ("depth", depth),
            ("heads", heads),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive int, got {value!r}")
        if width % heads != 0:
            raise ValueError(f"width: {width} is not divisible by heads={heads}")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio: must be > 0, got {mlp_ratio}")
        self.token_dim = token_dim
        self.vocab_size = vocab_size
        self.cond_dim = cond_dim
        self.width = width
        self.depth = depth
        self.heads = heads
        self.slices = scale_slices(self.scales)
        self.seq_len = self.slices[-1].stop
        first = self.scales[0] ** 2

        self.start = nn.Linear(cond_dim, width)  # cond -> the start token of scale 0
        self.input_proj = nn.Linear(token_dim, width)  # running latent sum -> token
        self.pos_embed = nn.Parameter(torch.zeros(1, self.seq_len, width))  # [1, L, W]
        self.level_embed = nn.Embedding(len(self.scales), width)
        self.blocks = nn.ModuleList(
            AdaLNBlock(width=width, heads=heads, cond_dim=cond_dim, mlp_ratio=mlp_ratio)
            for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * width))
        self.head = nn.Linear(width, vocab_size)

        level = torch.cat(
            [
                torch.full((sl.stop - sl.start,), k, dtype=torch.long)
                for k, sl in enumerate(self.slices)
            ]
        )  # [L]
        self.register_buffer("level_ids", level, persistent=False)
        self.register_buffer("attn_mask", block_causal_mask(self.scales), persistent=False)
        self._first = first
        self._init_weights()

    def _init_weights(self) -> None:
        # Linear layers: truncated normal std 0.02, zero bias (GPT/VAR). The AdaLN modulations
        # keep that small random init (not exactly zero, as DiT does): every block starts close
        # to the identity (small gates) and still every parameter gets a gradient at step 0.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.level_embed.weight, std=0.02)

    # ---------------------------------------------------------------------------------------
    # Validation
    # ---------------------------------------------------------------------------------------
    def _check_cond(self, cond: torch.Tensor) -> int:
        if not isinstance(cond, torch.Tensor) or cond.ndim != 2 or cond.shape[1] != self.cond_dim:
            shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ValueError(f"cond: expected [B, cond_dim={self.cond_dim}], got {shape}")
        return cond.shape[0]

    def _check_tokens(self, name: str, x: torch.Tensor, batch: int, count: int, what: str) -> None:
        expected = (batch, count, self.token_dim)
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != expected:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{name}: expected [B, {what}, token_dim] = {list(expected)}, got {shape}"
            )

    # ---------------------------------------------------------------------------------------
    # Embedding shared by forward and step
    # ---------------------------------------------------------------------------------------
    def _embed(self, cond: torch.Tensor, inputs: torch.Tensor, first_scale: int) -> torch.Tensor:
        """Tokens of scales `first_scale..` up to the length of `inputs` (plus the start tokens
        when `first_scale == 0`), with positions and levels.

        Args:
            cond: `[B, cond_dim]`.
            inputs: `[B, n, D]` the running latent sums of the scales covered (n may be 0).
            first_scale: index of the first scale covered.

        Returns:
            `[B, n (+ s_0^2 when first_scale == 0), width]`.
        """
        B = cond.shape[0]
        parts = []
        if first_scale == 0:
            start = self.start(cond)[:, None, :].expand(B, self._first, self.width)  # [B, s0^2, W]
            parts.append(start)
        if inputs.shape[1] > 0:
            parts.append(self.input_proj(inputs))  # [B, n, W]
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # [B, N, W]
        lo = self.slices[first_scale].start
        hi = lo + x.shape[1]
        x = x + self.pos_embed[:, lo:hi] + self.level_embed(self.level_ids[lo:hi])[None]
        return x  # [B, N, W]

    def _head(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale = self.final_modulation(cond)[:, None, :].chunk(2, dim=-1)  # 2 x [B, 1, W]
        hidden = self.final_norm(x) * (1 + scale) + shift  # [B, N, W]
        return self.head(hidden), hidden  # [B, N, V], [B, N, W]

    # ---------------------------------------------------------------------------------------
    # Training: the whole sequence at once
    # ---------------------------------------------------------------------------------------
    def forward(
        self, cond: torch.Tensor, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass over all scales.

        Args:
            cond: `[B, cond_dim]` float, the condition embedding (null rows for guidance dropout
                are the caller's).
            inputs: `[B, L - s_0^2, token_dim]` float, the running latent sums resized to each
                scale `1..K-1` (`MultiScaleResidualQuantizer.teacher_forcing_inputs`).

        Returns:
            logits `[B, L, vocab_size]` float (token `t` of scale `k` predicts that token's
            code) and hidden `[B, L, width]` float (after the final AdaLN norm, what the head
            reads; the residual diffusion head's condition).
        """
        B = self._check_cond(cond)
        self._check_tokens("inputs", inputs, B, self.seq_len - self._first, "L - s0^2")
        x = self._embed(cond, inputs, 0)  # [B, L, W]
        for block in self.blocks:
            x, _ = block(x, cond, attn_mask=self.attn_mask)
        return self._head(x, cond)

    # ---------------------------------------------------------------------------------------
    # Sampling: one scale at a time with a key/value cache
    # ---------------------------------------------------------------------------------------
    def new_cache(self) -> KVCache:
        """An empty key/value cache for `step` (one per sampling run)."""
        return KVCache()

    def step(
        self, k: int, cond: torch.Tensor, inputs_k: torch.Tensor | None, cache: KVCache
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the tokens of scale `k` only, attending to the cached scales `< k` and to each
        other, and append their keys/values to `cache`.

        Steps must come in order `k = 0, 1, ..., K-1` on one cache. Stepping through all scales
        with the inputs `forward` would read gives `forward`'s logits and hidden.

        Args:
            k: the scale index, `cache.next_scale`.
            cond: `[B, cond_dim]` float; `B` may be `2B'` (classifier-free guidance: the caller
                stacks conditional and unconditional rows), the same on every step of a cache.
            inputs_k: None for `k == 0` (the start tokens come from `cond`); otherwise
                `[B, s_k^2, token_dim]` float, the running latent sum after scale `k - 1`
                resized to scale `k` (`MultiScaleResidualQuantizer.next_scale_input`).
            cache: from `new_cache()`, advanced by the previous steps.

        Returns:
            logits `[B, s_k^2, vocab_size]` and hidden `[B, s_k^2, width]`, float.
        """
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache: expected a KVCache from new_cache(), got {type(cache)}")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(self.scales):
            raise ValueError(f"k: must be an int scale index in [0, {len(self.scales)}), got {k!r}")
        if k != cache.next_scale:
            raise ValueError(
                f"k: steps must run in order 0, 1, ..., {len(self.scales) - 1} on one cache; "
                f"this cache expects k={cache.next_scale}, got k={k}"
            )
        B = self._check_cond(cond)
        if cache.batch is not None and B != cache.batch:
            raise ValueError(f"cond: batch {B} differs from the cache's batch {cache.batch}")
        n = self.scales[k] ** 2
        if k == 0:
            if inputs_k is not None:
                raise ValueError("inputs_k: must be None for k=0 (scale 0 starts from cond)")
            inputs_k = cond.new_zeros(B, 0, self.token_dim)  # [B, 0, D]
        else:
            if inputs_k is None:
                raise ValueError(f"inputs_k: required for k={k}, got None")
            self._check_tokens("inputs_k", inputs_k, B, n, f"s_{k}^2={n}")
        x = self._embed(cond, inputs_k, k)  # [B, s_k^2, W]
        first = k == 0
        for i, block in enumerate(self.blocks):
            past = None if first else (cache.keys[i], cache.values[i])
            # No mask: a scale-k token sees every cached (earlier) token and all of scale k.
            x, (key, value) = block(x, cond, attn_mask=None, past=past)
            if first:
                cache.keys.append(key)
                cache.values.append(value)
            else:
                cache.keys[i] = torch.cat([cache.keys[i], key], dim=2)  # [B, H, n_past + n, hd]
                cache.values[i] = torch.cat([cache.values[i], value], dim=2)
        cache.next_scale = k + 1
        cache.batch = B
        return self._head(x, cond)
