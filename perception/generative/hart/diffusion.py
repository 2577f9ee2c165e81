"""Residual diffusion for the HART-style generator: a noise schedule, a DDIM sampler (the step
rule as its own object, as diffusers' schedulers), two generic functions any epsilon-predicting
denoiser can use (`diffusion_loss`, `ddim_sample`; the latent-diffusion baseline reuses them),
and the small per-token MLP denoiser HART borrows from MAR (`ResidualDiffusionHead`).

Notation (Ho et al. 2020, Song et al. 2021): `T = num_train_timesteps`, integer timesteps
`t in [0, T-1]`, `ab_t = alphas_cumprod[t]`, the forward process
`x_t = sqrt(ab_t) * x0 + sqrt(1 - ab_t) * eps` with `eps ~ N(0, I)`, and a denoiser
`model_fn(x_t, t) -> eps` that predicts the noise. Nothing is clipped: the residual HART
denoises is unbounded. DDIM's timesteps default to diffusers' "leading" spacing, not "trailing"
from T-1, whose cosine-schedule SNR (~2e-9) magnifies a learned eps's error thousands of times
(DDIMSampler says how much, and what "leading" costs instead).

    head = ResidualDiffusionHead(token_dim=16, cond_dim=256)
    loss = head.loss(residual_tokens, hidden, repeats=4)    # [N, 16], [N, 256] -> scalar
    tokens = head.sample(hidden, steps=8)                   # [N, 16]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = [
    "DDIMSampler",
    "NoiseSchedule",
    "ResidualDiffusionHead",
    "ddim_sample",
    "diffusion_loss",
    "timestep_embedding",
]

ModelFn = Callable[[Tensor, Tensor], Tensor]
"""`model_fn(x_t [N, ...] float, t [N] long) -> eps [N, ...]` (same shape and dtype as `x_t`)."""

_SCHEDULE_KINDS = ("cosine", "linear")
_SPACINGS = ("leading", "trailing")
_COSINE_OFFSET = 0.008  # Nichol & Dhariwal's s: keeps beta_0 from being vanishingly small
_MAX_BETA = 0.999  # their clip: the cosine's last beta would otherwise be exactly 1


class NoiseSchedule:
    """The variance schedule of the forward process, computed once in float64.

    - `"cosine"` (Nichol & Dhariwal 2021): `ab(t) = f(t) / f(0)` with
      `f(t) = cos^2(((t / T) + 0.008) / 1.008 * pi / 2)`, discretised as
      `beta_t = min(1 - f(t + 1) / f(t), 0.999)` (so `ab_{T-1}` is about 2e-9 at T = 1000).
    - `"linear"` (Ho et al. 2020): betas evenly spaced from `1e-4` to `0.02` at T = 1000, both
      scaled by `1000 / T` for other T (improved-diffusion's rule), clipped at 0.999 likewise.

    Attributes (CPU tensors, float64): `betas [T]`, `alphas_cumprod [T]` (strictly decreasing,
    in (0, 1)). `num_train_timesteps` and `kind` as given.
    """

    def __init__(self, *, num_train_timesteps: int = 1000, kind: str = "cosine") -> None:
        if kind not in _SCHEDULE_KINDS:
            raise ValueError(f"kind: {kind!r} is not one of {_SCHEDULE_KINDS}")
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int):
            raise ValueError(f"num_train_timesteps: {num_train_timesteps!r} is not an int")
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps: {num_train_timesteps} < 2")
        T = num_train_timesteps
        self.num_train_timesteps = T
        self.kind = kind
        steps = torch.arange(T + 1, dtype=torch.float64)  # [T+1]
        if kind == "cosine":
            f = torch.cos((steps / T + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2
            betas = 1 - f[1:] / f[:-1]  # [T]
        else:
            scale = 1000.0 / T
            betas = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)  # [T]
        self.betas = betas.clamp(max=_MAX_BETA)  # [T] float64
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)  # [T] float64
        self._sqrt_ab = self.alphas_cumprod.sqrt()  # [T]
        self._sqrt_one_minus_ab = (1 - self.alphas_cumprod).sqrt()  # [T]

    def __repr__(self) -> str:
        return f"NoiseSchedule(num_train_timesteps={self.num_train_timesteps}, kind={self.kind!r})"

    def _coefficient(self, table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """`table[t]` as `like`'s dtype and device, shaped `[N, 1, ..., 1]` to broadcast over
        `like [N, ...]`. t: [N] long (or a 0-d long tensor, broadcast over every row)."""
        t = torch.as_tensor(t, dtype=torch.long, device=like.device)
        if bool(((t < 0) | (t >= self.num_train_timesteps)).any()):
            raise ValueError(f"t: values outside [0, {self.num_train_timesteps - 1}]")
        # cast before moving: some devices have no float64
        c = table.to(dtype=like.dtype).to(like.device)[t]  # [N] or []
        return c.reshape(c.shape + (1,) * (like.dim() - c.dim()))

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Draw from the forward process: `x_t = sqrt(ab_t) * x0 + sqrt(1 - ab_t) * noise`.

        x0, noise: [N, ...] float (same shape); t: [N] long in [0, T-1] (or 0-d).
        Returns x_t [N, ...], x0's dtype.
        """
        if noise.shape != x0.shape:
            raise ValueError(f"noise: shape {tuple(noise.shape)} != x0 {tuple(x0.shape)}")
        a = self._coefficient(self._sqrt_ab, t, x0)
        s = self._coefficient(self._sqrt_one_minus_ab, t, x0)
        return a * x0 + s * noise

    def predict_x0(self, x_t: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """Invert the forward process given the noise: `(x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)`.

        x_t, eps: [N, ...] float; t: [N] long (or 0-d). Returns x0 [N, ...], x_t's dtype.
        """
        a = self._coefficient(self._sqrt_ab, t, x_t)
        s = self._coefficient(self._sqrt_one_minus_ab, t, x_t)
        return (x_t - s * eps) / a


class DDIMSampler:
    """The DDIM step rule (Song et al. 2021) on `steps` of the schedule's timesteps.

    Timestep spacing (diffusers' names, `T = num_train_timesteps`, k = 0..steps-1):
    - `"leading"` (default; diffusers' DDIM default with steps_offset 0):
      `t_k = (steps - 1 - k) * (T // steps)`, e.g. 875, 750, ..., 125, 0 for T = 1000, steps = 8.
    - `"trailing"` (Lin et al. 2024): `t_k = round(T - k T / steps) - 1`, e.g. 999, 874, ..., 124:
      starts at T-1, where training put the most noise.
    `steps == T` visits every timestep under both.

    Why "leading" by default: the cosine schedule's last timestep has `ab_{T-1}` ~ 2.4e-9 (its
    beta is clipped at 0.999), so the first DDIM step from T-1 multiplies the denoiser's error in
    eps by `sqrt(ab_prev / ab_{T-1})` (about 3900 for 999 -> 874). An exact eps survives that; a
    trained one does not (a toy head with eps error 0.08 at t = 999 sampled at |x| ~ 500 instead
    of 2 with "trailing", within 0.07 of its targets with "leading"). Starting from pure noise at
    `t_0 < T-1` costs a small mismatch instead (ab = 0.036 at t = 875 for the cosine schedule).

    `eta = 0` is deterministic DDIM; `eta = 1` matches the DDPM posterior's variance.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        *,
        steps: int = 8,
        eta: float = 0.0,
        spacing: str = "leading",
    ) -> None:
        T = schedule.num_train_timesteps
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValueError(f"steps: {steps!r} is not an int")
        if not 1 <= steps <= T:
            raise ValueError(f"steps: {steps} outside [1, num_train_timesteps = {T}]")
        if not (isinstance(eta, int | float) and math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta: {eta!r} is not a finite number >= 0")
        if spacing not in _SPACINGS:
            raise ValueError(f"spacing: {spacing!r} is not one of {_SPACINGS}")
        self.schedule = schedule
        self.steps = steps
        self.eta = float(eta)
        self.spacing = spacing
        k = torch.arange(steps, dtype=torch.float64)  # [steps]
        if spacing == "leading":
            t = (steps - 1 - k) * (T // steps)
        else:
            t = torch.round(T - k * T / steps) - 1  # float64: exact for every T <= 2**52
        self.timesteps = t.to(torch.long)  # [steps] long, strictly descending

    def __repr__(self) -> str:
        return (
            f"DDIMSampler({self.schedule!r}, steps={self.steps}, eta={self.eta}, "
            f"spacing={self.spacing!r})"
        )

    def prev_timestep(self, index: int) -> int:
        """The timestep after `timesteps[index]`: the next one, or -1 (x0) after the last."""
        return int(self.timesteps[index + 1]) if index + 1 < self.steps else -1

    def step(
        self,
        eps: Tensor,
        t: int | Tensor,
        t_prev: int | Tensor,
        x: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One DDIM update from timestep t to t_prev < t (t_prev = -1: to x0, `ab = 1`).

        `x0_hat = (x - sqrt(1 - ab_t) eps) / sqrt(ab_t)`,
        `sigma = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev)`,
        `x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps + sigma z`, z ~ N(0, I)
        drawn from `generator` only when sigma > 0.

        eps, x: [N, ...] float, same shape; t, t_prev: ints (one timestep for the whole batch).
        Returns x_prev [N, ...], x's dtype.
        """
        t, t_prev = int(t), int(t_prev)
        T = self.schedule.num_train_timesteps
        if not 0 <= t < T:
            raise ValueError(f"t: {t} outside [0, {T - 1}]")
        if not -1 <= t_prev < t:
            raise ValueError(f"t_prev: {t_prev} outside [-1, t = {t})")
        if eps.shape != x.shape:
            raise ValueError(f"eps: shape {tuple(eps.shape)} != x {tuple(x.shape)}")
        ab_t = float(self.schedule.alphas_cumprod[t])
        ab_prev = float(self.schedule.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
        sigma = self.eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_prev)
        # the coefficients in float64, then one fused update in x's dtype
        c_x = math.sqrt(ab_prev / ab_t)
        c_eps = math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) - c_x * math.sqrt(1 - ab_t)
        x_prev = c_x * x + c_eps * eps  # [N, ...]
        if sigma > 0:
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x_prev = x_prev + sigma * z
        return x_prev


def diffusion_loss(
    model_fn: ModelFn,
    x0: Tensor,
    schedule: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The simple epsilon-prediction loss: t uniform on [0, T-1] per row, noise ~ N(0, I),
    `mean((model_fn(x_t, t) - noise)^2)` over every element.

    x0: [N, ...] float. `generator` (on x0's device) draws t first, then the noise.
    Returns a 0-d tensor (x0's dtype).
    """
    if x0.dim() < 1 or x0.shape[0] == 0:
        raise ValueError(f"x0: shape {tuple(x0.shape)} has no rows")
    N = x0.shape[0]
    t = torch.randint(
        0, schedule.num_train_timesteps, (N,), generator=generator, device=x0.device
    )  # [N] long
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    x_t = schedule.add_noise(x0, noise, t)  # [N, ...]
    eps = model_fn(x_t, t)  # [N, ...]
    if eps.shape != x0.shape:
        raise ValueError(f"model_fn: returned shape {tuple(eps.shape)} != x0 {tuple(x0.shape)}")
    return (eps - noise).pow(2).mean()


def ddim_sample(
    model_fn: ModelFn,
    shape: tuple[int, ...] | torch.Size,
    sampler: DDIMSampler,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    noise_scale: float = 1.0,
) -> Tensor:
    """Sample x0 of `shape = (N, ...)`: x ~ N(0, noise_scale^2 I) from `generator` (on
    `device`), then one `sampler.step` per timestep, calling `model_fn(x [N, ...], t [N] long)`
    each time. `noise_scale` < 1 is a sampling temperature (MAR's, on the starting noise: with
    eta = 0 the only randomness); 0 starts every row from the origin.

    Gradients flow through `model_fn` unless the caller wraps this in `torch.no_grad()`.
    Returns x0 [N, ...] of `dtype` on `device`.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1:
        raise ValueError(f"shape: {shape} has no batch dimension")
    if not (math.isfinite(noise_scale) and noise_scale >= 0):
        raise ValueError(f"noise_scale: {noise_scale!r} is not a finite number >= 0")
    x = torch.randn(shape, generator=generator, dtype=dtype, device=device)  # [N, ...]
    if noise_scale != 1.0:
        x = x * noise_scale
    for i, t in enumerate(sampler.timesteps.tolist()):
        t_batch = torch.full((shape[0],), t, dtype=torch.long, device=x.device)  # [N]
        eps = model_fn(x, t_batch)  # [N, ...]
        x = sampler.step(eps, t, sampler.prev_timestep(i), x, generator=generator)
    return x


def timestep_embedding(t: Tensor, dim: int, *, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (integer or fractional) timesteps, as in the transformer
    positional encoding: `[cos(t w_0), ..., cos(t w_{h-1}), sin(t w_0), ...]` with
    `w_i = max_period^(-i / h)`, `h = dim // 2` (a zero column pads an odd dim).

    t: [N] any numeric dtype. Returns [N, dim] float32.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # [h]
    angles = t.to(torch.float32)[:, None] * freqs[None]  # [N, h]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # [N, 2h]
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class _AdaLNResBlock(nn.Module):
    """`x + gate * MLP(LN(x) * (1 + scale) + shift)`, (shift, scale, gate) linear in the
    conditioning vector; the modulation starts at zero so the block starts as the identity."""

    def __init__(self, *, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """x, c: [N, width]. Returns [N, width]."""
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)  # 3 x [N, width]
        return x + gate * self.mlp(_modulate(self.norm(x), shift, scale))


class ResidualDiffusionHead(nn.Module):
    """HART's residual diffusion head (MAR's `SimpleMLPAdaLN` design): a small per-token MLP
    that predicts the noise in a continuous token given a conditioning vector (in HART, the
    transformer's last hidden state plus the sampled final discrete token's embedding).

    Conditioning `c = MLP(sinusoid(t)) + Linear(cond)` [N, width]; the noisy token is projected
    to `width`, passes `depth` AdaLN residual blocks (gates zero-initialised: each block starts
    as the identity), and a final AdaLN LayerNorm + linear back to `token_dim` (zero-initialised,
    so an untrained head predicts eps = 0).

    The head owns its noise schedule (`schedule`, a NoiseSchedule, not a parameter).
    """

    def __init__(
        self,
        *,
        token_dim: int,
        cond_dim: int,
        width: int = 256,
        depth: int = 3,
        num_train_timesteps: int = 1000,
        schedule_kind: str = "cosine",
        frequency_dim: int = 256,
    ) -> None:
        super().__init__()
        for name, value in (
            ("token_dim", token_dim),
            ("cond_dim", cond_dim),
            ("width", width),
            ("depth", depth),
            ("frequency_dim", frequency_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {value!r} is not an int >= 1")
        self.token_dim = token_dim
        self.cond_dim = cond_dim
        self.width = width
        self.frequency_dim = frequency_dim
        self.schedule = NoiseSchedule(num_train_timesteps=num_train_timesteps, kind=schedule_kind)
        self.time_embed = nn.Sequential(
            nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList(_AdaLNResBlock(width=width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.output = nn.Linear(width, token_dim)
        nn.init.normal_(self.time_embed[0].weight, std=0.02)
        nn.init.normal_(self.time_embed[2].weight, std=0.02)
        for zero in (self.final_modulation[1], self.output):
            nn.init.zeros_(zero.weight)
            nn.init.zeros_(zero.bias)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Predict the noise. x_t: [N, token_dim] float; t: [N] long in [0, T-1];
        cond: [N, cond_dim] float. Returns eps [N, token_dim] (x_t's dtype under the module's)."""
        N = x_t.shape[0]
        if x_t.shape != (N, self.token_dim):
            raise ValueError(f"x_t: shape {tuple(x_t.shape)} != (N, {self.token_dim})")
        if t.shape != (N,):
            raise ValueError(f"t: shape {tuple(t.shape)} != ({N},)")
        if cond.shape != (N, self.cond_dim):
            raise ValueError(f"cond: shape {tuple(cond.shape)} != ({N}, {self.cond_dim})")
        return self._eps(x_t, t, self.cond_embed(cond))

    def _time_embedding(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        """`time_embed(sinusoid(t))` [N, W], computed once per distinct timestep (a sampling
        step has one for every row) and gathered back to the rows."""
        distinct, rows = torch.unique(t, return_inverse=True)  # [U], [N]
        t_freq = timestep_embedding(distinct, self.frequency_dim).to(dtype)  # [U, F]
        return self.time_embed(t_freq)[rows]  # [N, W]

    def _eps(self, x_t: Tensor, t: Tensor, cond_embedding: Tensor) -> Tensor:
        """forward's body with `cond_embed(cond)` [N, W] given (the sampler computes it once
        for all steps)."""
        c = self._time_embedding(t, cond_embedding.dtype) + cond_embedding  # [N, W]
        h = self.input_proj(x_t)  # [N, W]
        for block in self.blocks:
            h = block(h, c)  # [N, W]
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)  # 2 x [N, W]
        return self.output(_modulate(self.final_norm(h), shift, scale))  # [N, D]

    def loss(
        self,
        x0: Tensor,
        cond: Tensor,
        *,
        repeats: int = 1,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The diffusion loss of the tokens x0 [N, token_dim] given cond [N, cond_dim], each token
        drawn `repeats` times (independent t and noise; MAR/HART use 4) at the cost of one
        pass over `repeats * N` rows. Returns a 0-d tensor."""
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats: {repeats!r} is not an int >= 1")
        if cond.shape[0] != x0.shape[0]:
            raise ValueError(f"cond: {cond.shape[0]} rows != x0's {x0.shape[0]}")
        x0_r = x0.repeat(repeats, 1)  # [R*N, D]
        cond_r = cond.repeat(repeats, 1)  # [R*N, C]
        return diffusion_loss(
            lambda x_t, t: self(x_t, t, cond_r), x0_r, self.schedule, generator=generator
        )

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        *,
        steps: int = 8,
        eta: float = 0.0,
        spacing: str = "leading",
        generator: torch.Generator | None = None,
        uncond: Tensor | None = None,
        guidance: float = 1.0,
        temperature: float = 1.0,
    ) -> Tensor:
        """Sample one token per row of cond [N, cond_dim] with DDIM in `steps` steps (`eta`,
        `spacing` as DDIMSampler), starting from noise of std `temperature` (`ddim_sample`'s
        `noise_scale`).

        Classifier-free guidance when `uncond` [N, cond_dim] (the null condition's vector) is
        given: `eps = eps(uncond) + guidance * (eps(cond) - eps(uncond))`; guidance 1 is the
        conditional model. `generator` lives on cond's device. Returns [N, token_dim], cond's
        dtype; no gradient.
        """
        N = cond.shape[0]
        if cond.dim() != 2 or cond.shape[1] != self.cond_dim:
            raise ValueError(f"cond: shape {tuple(cond.shape)} != (N, {self.cond_dim})")
        sampler = DDIMSampler(self.schedule, steps=steps, eta=eta, spacing=spacing)
        # the condition's embedding does not change over the steps: computed once here
        if uncond is None:
            cond_embedding = self.cond_embed(cond)  # [N, W]

            def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
                return self._eps(x_t, t, cond_embedding)
        else:
            if uncond.shape != cond.shape:
                raise ValueError(f"uncond: shape {tuple(uncond.shape)} != {tuple(cond.shape)}")
            both = self.cond_embed(torch.cat([cond, uncond], dim=0))  # [2N, W]

            def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
                eps = self._eps(torch.cat([x_t, x_t]), torch.cat([t, t]), both)  # [2N, D]
                eps_c, eps_u = eps[:N], eps[N:]
                return eps_u + guidance * (eps_c - eps_u)

        return ddim_sample(
            model_fn,
            (N, self.token_dim),
            sampler,
            generator=generator,
            dtype=cond.dtype,
            device=cond.device,
            noise_scale=temperature,
        )
