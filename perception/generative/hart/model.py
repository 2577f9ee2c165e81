"""The HART-style generator composed from its parts, and the one `sample` function that tools,
paste and benchmarks call.

    tokenizer:   signal [B,C,S,S] -> latent z [B,D,G,G] -> per-scale indices + residual z - f_hat
    condition:   ObjectConditions -> cond [B,cond_dim]   (a learned null row for CFG)
    transformer: cond + next-scale inputs -> logits [B,L,V], hidden [B,L,W]
    head:        hidden of the last scale (+ the last scale's code vectors) -> residual tokens

Training (`transformer_loss`) runs on a frozen tokenizer (HART trains the tokenizer first):
cross-entropy over every scale's tokens plus, with the head, the diffusion loss of the residual
tokens of the last scale. Sampling (`sample`) steps the transformer one scale at a time with its
KV cache, conditional and null rows in one batch, guidance ramped linearly over the scales from
0 at the first to `guidance` at the last (VAR/HART), then the head adds the residual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..conditions import ConditionEmbedding, ObjectConditions, guided
from ..config import HARTConfig
from .diffusion import ResidualDiffusionHead
from .tokenizer import HybridTokenizer
from .transformer import ScaleTransformer

__all__ = [
    "GeneratedSignal",
    "HARTGenerator",
    "build_hart",
    "generator_on",
    "sample",
    "sample_logits",
]


class HARTGenerator(nn.Module):
    """Tokenizer + condition embedding + scale-wise transformer (+ residual diffusion head)."""

    def __init__(
        self,
        *,
        tokenizer: HybridTokenizer,
        condition: ConditionEmbedding,
        transformer: ScaleTransformer,
        residual_head: ResidualDiffusionHead | None,
        cond_dropout: float = 0.1,
        head_repeats: int = 1,
    ) -> None:
        super().__init__()
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"cond_dropout={cond_dropout}: must be in [0, 1)")
        self.tokenizer = tokenizer
        self.condition = condition
        self.transformer = transformer
        self.residual_head = residual_head
        self.cond_dropout = cond_dropout
        self.head_repeats = head_repeats  # noise draws per residual token per step (MAR/HART)
        dim = tokenizer.quantizer.dim
        if residual_head is not None:
            # the head reads the last scale's hidden state and that token's code vector
            self.head_code = nn.Linear(dim, transformer.width)
        # the residual's std over the training set: the head learns a unit-scale target
        self.register_buffer("residual_scale", torch.ones(()))

    @property
    def quantizer(self):
        return self.tokenizer.quantizer

    def head_condition(self, hidden_last: torch.Tensor, idx_last: torch.Tensor) -> torch.Tensor:
        """hidden_last [B, G*G, W], idx_last [B, G*G] long -> the head's cond [B*G*G, W]."""
        codes = self.quantizer_codes(idx_last)  # [B, G*G, D]
        cond = hidden_last + self.head_code(codes)
        return cond.reshape(-1, cond.shape[-1])

    def quantizer_codes(self, idx: torch.Tensor) -> torch.Tensor:
        """idx [B, n] long -> the codebook vectors [B, n, D]."""
        return self.quantizer.codebook(idx)

    @torch.no_grad()
    def fit_residual_scale(self, signals: torch.Tensor, *, batch_size: int = 256) -> float:
        """Sets `residual_scale` to the residual tokens' std over `signals` [N,C,S,S]."""
        total = count = 0.0
        for start in range(0, len(signals), batch_size):
            _, residual = self.tokenizer.tokenize(signals[start : start + batch_size])
            total += float(residual.double().pow(2).sum())
            count += residual.numel()
        scale = max((total / max(count, 1.0)) ** 0.5, 1e-6)
        self.residual_scale.fill_(scale)
        return scale

    def transformer_loss(
        self, signals: torch.Tensor, conds: ObjectConditions, *, generator=None
    ) -> dict[str, torch.Tensor]:
        """signals [B,C,S,S] in [-1,1] -> {"ce", "diffusion", "total", "accuracy"} (the tokenizer
        is frozen: its tokens are the targets)."""
        B = signals.shape[0]
        with torch.no_grad():
            indices, residual = self.tokenizer.tokenize(signals)  # list [B, s*s]; [B,D,G,G]
            inputs = self.quantizer.teacher_forcing_inputs(indices)  # [B, L - s0^2, D]
        drop = torch.rand(B, generator=generator, device=signals.device) < self.cond_dropout
        cond = self.condition(conds, drop)  # [B, cond_dim]
        logits, hidden = self.transformer(cond, inputs)  # [B, L, V], [B, L, W]
        targets = torch.cat(indices, dim=1)  # [B, L]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        accuracy = (logits.argmax(-1) == targets).float().mean().detach()
        out = {"ce": ce, "accuracy": accuracy}
        total = ce
        if self.residual_head is not None:
            last = indices[-1].shape[1]  # G*G tokens of the last scale
            head_cond = self.head_condition(hidden[:, -last:], indices[-1])  # [B*G*G, W]
            D = residual.shape[1]
            target = residual.flatten(2).transpose(1, 2).reshape(-1, D) / self.residual_scale
            diffusion = self.residual_head.loss(
                target, head_cond, repeats=self.head_repeats, generator=generator
            )
            out["diffusion"] = diffusion
            total = total + diffusion
        out["total"] = total
        return out


def build_hart(config: HARTConfig) -> HARTGenerator:
    """The generator a config describes (untrained)."""
    tok, tr, head = config.tokenizer, config.transformer, config.residual_head
    tokenizer = HybridTokenizer(
        in_channels=config.data.in_channels,
        image_size=config.data.signal_size,
        latent_dim=tok.latent_dim,
        vocab_size=tok.vocab_size,
        scales=tok.scales,
        hidden=tok.hidden,
        hybrid=tok.hybrid,
        beta=tok.beta,
        feature_weight=tok.feature_weight,
    )
    transformer = ScaleTransformer(
        token_dim=tok.latent_dim,
        vocab_size=tok.vocab_size,
        scales=tok.scales,
        cond_dim=tr.cond_dim,
        width=tr.width,
        depth=tr.depth,
        heads=tr.heads,
        mlp_ratio=tr.mlp_ratio,
    )
    residual_head = None
    if head.enabled:
        residual_head = ResidualDiffusionHead(
            token_dim=tok.latent_dim, cond_dim=tr.width, width=head.width, depth=head.depth
        )
    return HARTGenerator(
        tokenizer=tokenizer,
        condition=ConditionEmbedding(dim=tr.cond_dim),
        transformer=transformer,
        residual_head=residual_head,
        cond_dropout=tr.cond_dropout,
        head_repeats=head.repeats,
    )


def sample_logits(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits [B, n, V] -> sampled indices [B, n] long (top-k, then nucleus, then a draw)."""
    B, n, V = logits.shape
    logits = logits.float() / temperature
    if 0 < top_k < V:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative - sorted_logits.softmax(-1) > top_p  # keep the first over top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1).reshape(B * n, V)
    return torch.multinomial(probs, 1, generator=generator).reshape(B, n)


@dataclass(frozen=True)
class GeneratedSignal:
    """What `sample` returns: the decoded signal and how it was made."""

    signals: torch.Tensor  # [B, C, S, S] float, in the training signal's range ([-1, 1])
    indices: list[torch.Tensor]  # per scale [B, s*s] long
    residual: torch.Tensor | None  # [B, D, G, G] the head's residual, None without the head


def generator_on(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """A generator that draws on `device`: `generator` itself when it is on that device (or
    None), else a new generator on `device` seeded by one draw from `generator` (so a CPU seed
    still fixes a CUDA model's samples, though not to the CPU model's values)."""
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def sample(
    model: HARTGenerator,
    conditions: ObjectConditions,
    *,
    guidance: float = 2.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    residual_steps: int = 8,
    residual_temperature: float = 1.0,
    use_residual: bool = True,
    generator: torch.Generator | None = None,
) -> GeneratedSignal:
    """Samples one signal per row of `conditions` (scale by scale, KV-cached, classifier-free
    guidance ramped over the scales), then the residual head's continuous tokens.

    Runs on the model's device (`conditions` move there; the result stays there). A
    `generator` on another device seeds one on the model's device (`generator_on`)."""
    if guidance < 0:
        raise ValueError(f"guidance={guidance}: must be >= 0")
    model.eval()
    quantizer = model.quantizer
    scales = quantizer.scales
    B = len(conditions)
    device = model.residual_scale.device
    generator = generator_on(generator, device)
    # the head draws its noise from a stream of its own, seeded by one draw made whether or
    # not the head runs: sampling with and without the head (or at two head settings) from one
    # seed gives the same tokens, so their comparison is paired (common random numbers)
    head_seed = int(torch.randint(0, 2**62, (), generator=generator, device=device))
    conditions = conditions.to(device)
    both = model.condition.with_null(conditions)  # [2B, cond_dim]: conditional, then null rows
    cache = model.transformer.new_cache()
    G, D = quantizer.grid, quantizer.dim
    f_hat = torch.zeros(B, D, G, G, device=device)
    indices: list[torch.Tensor] = []
    hidden = None
    last = len(scales) - 1
    for k in range(len(scales)):
        inputs = None if k == 0 else quantizer.next_scale_input(f_hat, k - 1).repeat(2, 1, 1)
        logits, hidden = model.transformer.step(k, both, inputs, cache)  # [2B, s*s, V]
        weight = guidance * k / last if last else guidance
        idx = sample_logits(
            guided(logits[:B], logits[B:], weight),
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
        )
        indices.append(idx)
        f_hat = f_hat + quantizer.embed_scale(k, idx)
    residual = None
    latent = f_hat
    if use_residual and model.residual_head is not None:
        head_cond = model.head_condition(hidden[:B], indices[-1])  # [B*G*G, W]
        tokens = model.residual_head.sample(
            head_cond,
            steps=residual_steps,
            temperature=residual_temperature,
            generator=torch.Generator(device=device).manual_seed(head_seed),
        )
        residual = tokens.reshape(B, G * G, D).transpose(1, 2).reshape(B, D, G, G)
        residual = residual * model.residual_scale
        latent = f_hat + residual
    return GeneratedSignal(model.tokenizer.decode(latent), indices, residual)
