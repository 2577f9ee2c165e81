"""The latent diffusion baseline HART is measured against (issue #25, "Throughput"): a plain
DiT-style latent diffusion transformer on the same latent, of about the same size, trained on
the same data, sampled with DDIM in 8/16/32/50 steps.

    tokenizer (frozen, from a trained HART generator): signal [B,C,S,S] -> z [B,D,G,G] -> signal
    condition: ObjectConditions -> cond [B,cond_dim]   (a learned null row for CFG)
    LatentDiT: (z_t / latent_scale [B,D,G,G], t [B], cond) -> eps [B,D,G,G]

Both generators share the latent: the baseline diffuses the continuous latent
`z = tokenizer.encode(x)` of a trained HART tokenizer (`tokenizer_from`), divided by one scalar
fitted on the training latents (`latent_scale`, as Stable Diffusion's scale factor), and decodes
its samples with `tokenizer.decode` (HART's decoder is trained on that continuous latent too:
hybrid training decodes `f_hat + residual = z` half the time). Only the condition embedding and
the DiT train; the tokenizer is frozen and kept in eval mode.

The defaults (`LatentDiTConfig`: width 192, depth 5, 4 heads, cond_dim 192) give 3,553,168
trainable parameters (DiT 3,511,312 + condition embedding 41,856), against 3,711,120 of the
default HART generator (configs/generative/hart_camera.yaml: transformer 2,905,088 + residual
head 760,912 + head_code 3,264 + condition embedding 41,856; both without the shared
tokenizer's 609,956): 4.3% fewer (`generator_parameter_count`; depth 6 would be 13.7% more).

Guidance uses HART's convention, so one `--guidance` means the same for both generators:
`eps = eps_c + w (eps_c - eps_u)` (w = 0: the conditional model alone; diffusers' scale is
1 + w). The baseline guides every step with the same w (HART ramps w over its scales).

Work dir of `train_latent_diffusion`::

    WORK/config.yaml               the resolved LatentDiffusionConfig (its `tokenizer` section
                                   copied from the source HART config)
    WORK/conditions.json           the training conditions' range (checked at sampling)
    WORK/log.jsonl                 one line per `train.log_every` steps (stage "ldm")
    WORK/ldm/checkpoints/...       the whole generator (frozen tokenizer included, so a
                                   checkpoint needs no other file) + its optimizer
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ...checkpoint import find_latest
from ...config import save_config
from ...config.schema import StrictModel
from ...engine.trainer import seed_everything
from ..conditions import ConditionEmbedding, ConditionRange, ObjectConditions, guided
from ..config import (
    AMP_DESCRIPTION,
    DEVICE_DESCRIPTION,
    GENERATOR_CONFIG_FORMAT_VERSION,
    GeneratorDataConfig,
    TokenizerConfig,
    TrainDevice,
    TransformerConfig,
)
from .diffusion import DDIMSampler, NoiseSchedule, ddim_sample, diffusion_loss, timestep_embedding
from .model import GeneratedSignal, generator_on
from .tokenizer import HybridTokenizer
from .train import (
    CONDITIONS_NAME,
    load_generator,
    load_trained,
    load_training_signals,
    run_stage,
    training_device,
)
from .transformer import AdaLNBlock

__all__ = [
    "LDM_STAGE",
    "LatentDiT",
    "LatentDiTConfig",
    "LatentDiffusionConfig",
    "LatentDiffusionGenerator",
    "LatentDiffusionTrainConfig",
    "LatentSamplingConfig",
    "DiffusionScheduleConfig",
    "build_latent_diffusion",
    "generator_parameter_count",
    "load_latent_diffusion",
    "resolve_hart_checkpoint",
    "sample_latent_diffusion",
    "train_latent_diffusion",
]

LDM_STAGE = "ldm"  # WORK/ldm/checkpoints/...: the stage dir of the baseline

PositiveInt = Annotated[int, Field(gt=0)]


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------
class LatentDiTConfig(TransformerConfig):
    """The denoiser (`LatentDiT`) and its condition embedding: HART's transformer section with
    one more block (the head's parameters go into depth)."""

    depth: PositiveInt = Field(
        5, description="5 blocks at width 192: within 5% of the default HART's parameters"
    )


class DiffusionScheduleConfig(StrictModel):
    """The noise schedule and DDIM's timestep spacing (`hart.diffusion`)."""

    kind: Literal["cosine", "linear"] = "cosine"
    num_train_timesteps: int = Field(1000, ge=2)
    spacing: Literal["leading", "trailing"] = Field(
        "leading",
        description=(
            "DDIM timesteps; 'leading' (diffusion.DDIMSampler: 'trailing' starts at the cosine "
            "schedule's last step, whose tiny signal magnifies a learned eps's error)"
        ),
    )


class LatentSamplingConfig(StrictModel):
    """Defaults of `sample_latent_diffusion` (each can be given at the call)."""

    steps: PositiveInt = Field(50, description="DDIM steps (the benchmark: 8, 16, 32, 50)")
    guidance: float = Field(
        1.0, ge=0, description="classifier-free guidance w: eps_c + w (eps_c - eps_u), every step"
    )
    eta: float = Field(0.0, ge=0, description="0: deterministic DDIM")


class LatentDiffusionTrainConfig(StrictModel):
    """One stage: the condition embedding and the DiT on the frozen tokenizer."""

    seed: int = 0
    batch_size: PositiveInt = Field(32, description="HART's")
    steps: PositiveInt = Field(1500, description="the most optimizer steps (HART's 1500)")
    lr: float = Field(5e-4, gt=0, description="AdamW learning rate (HART's transformer_lr)")
    warmup: float = Field(0.05, ge=0, lt=1, description="share of the schedule warming up")
    weight_decay: float = Field(0.01, ge=0)
    log_every: PositiveInt = 50
    checkpoint_every: PositiveInt = 500
    threads: int | None = Field(None, ge=1, description="torch threads (default: torch's)")
    time_budget_s: float | None = Field(
        None,
        gt=0,
        description=(
            "stop at the first checkpoint once this much training wall time (summed over "
            "resumes) is spent, for same-time comparisons; the cosine LR then runs on "
            "max(step / steps, time / time_budget_s)"
        ),
    )
    device: TrainDevice = Field("cpu", description=DEVICE_DESCRIPTION)
    amp: bool = Field(False, description=AMP_DESCRIPTION)


class LatentDiffusionConfig(StrictModel):
    """A latent diffusion transformer on a trained HART tokenizer's latent (issue #25's
    throughput baseline)."""

    format_version: Literal[1] = GENERATOR_CONFIG_FORMAT_VERSION
    kind: Literal["ldm"] = "ldm"
    name: str = "ldm"
    data: GeneratorDataConfig
    tokenizer_from: str = Field(
        ...,
        description=(
            "a trained HART work dir, stage dir or checkpoint: its frozen tokenizer's latent is "
            "what the baseline diffuses"
        ),
    )
    tokenizer: TokenizerConfig | None = Field(
        None,
        description="the source's tokenizer section (filled in by training; leave it out)",
    )
    model: LatentDiTConfig = LatentDiTConfig()
    schedule: DiffusionScheduleConfig = DiffusionScheduleConfig()
    sampling: LatentSamplingConfig = LatentSamplingConfig()
    train: LatentDiffusionTrainConfig = LatentDiffusionTrainConfig()


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------
class LatentDiT(nn.Module):
    """A DiT (Peebles & Xie 2023) over the latent grid, patch size 1: each of the `G * G` latent
    cells is a token (a linear map of its D channels plus a learned position embedding);
    `depth` AdaLN-zero blocks conditioned on `c = cond + MLP(sinusoid(t))` [B, cond_dim]; a final
    AdaLN LayerNorm + linear back to D channels (zero-initialised: an untrained DiT predicts
    eps = 0).

    Args:
        latent_dim: D, the latent's channels.
        grid: G, the latent's side.
        cond_dim: the condition vector's width (`ConditionEmbedding.dim`).
        width, depth, heads, mlp_ratio: the transformer's.
        frequency_dim: the sinusoidal timestep embedding's width.
    """

    def __init__(
        self,
        *,
        latent_dim: int,
        grid: int,
        cond_dim: int,
        width: int = 192,
        depth: int = 5,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        frequency_dim: int = 256,
    ) -> None:
        super().__init__()
        for name, value in (
            ("latent_dim", latent_dim),
            ("grid", grid),
            ("cond_dim", cond_dim),
            ("width", width),
            ("depth", depth),
            ("heads", heads),
            ("frequency_dim", frequency_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive int, got {value!r}")
        if width % heads:
            raise ValueError(f"width: {width} is not divisible by heads={heads}")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio: must be > 0, got {mlp_ratio}")
        self.latent_dim = latent_dim
        self.grid = grid
        self.cond_dim = cond_dim
        self.width = width
        self.frequency_dim = frequency_dim
        self.input_proj = nn.Linear(latent_dim, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, width))  # [1, G*G, W]
        self.time_embed = nn.Sequential(
            nn.Linear(frequency_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )
        self.blocks = nn.ModuleList(
            AdaLNBlock(width=width, heads=heads, cond_dim=cond_dim, mlp_ratio=mlp_ratio)
            for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * width))
        self.output = nn.Linear(width, latent_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT: xavier linears, N(0, 0.02) timestep MLP, zero AdaLN modulations and output layer
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.time_embed[0].weight, std=0.02)
        nn.init.normal_(self.time_embed[2].weight, std=0.02)
        zeroed = [block.modulation[1] for block in self.blocks]
        for layer in [*zeroed, self.final_modulation[1], self.output]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """x_t: [B, D, G, G] float (the normalised noisy latent); t: [B] long in [0, T-1];
        cond: [B, cond_dim] float. Returns eps [B, D, G, G], x_t's dtype."""
        B = x_t.shape[0]
        D, G = self.latent_dim, self.grid
        if x_t.ndim != 4 or tuple(x_t.shape[1:]) != (D, G, G):
            raise ValueError(f"x_t: expected [B, {D}, {G}, {G}], got {list(x_t.shape)}")
        if t.shape != (B,):
            raise ValueError(f"t: expected [{B}], got {list(t.shape)}")
        if cond.shape != (B, self.cond_dim):
            raise ValueError(f"cond: expected [{B}, {self.cond_dim}], got {list(cond.shape)}")
        t_freq = timestep_embedding(t, self.frequency_dim).to(cond.dtype)  # [B, F]
        c = cond + self.time_embed(t_freq)  # [B, cond_dim]
        h = self.input_proj(x_t.flatten(2).transpose(1, 2)) + self.pos_embed  # [B, G*G, W]
        for block in self.blocks:
            h, _ = block(h, c, attn_mask=None)  # [B, G*G, W]: every token sees all
        shift, scale = self.final_modulation(c)[:, None].chunk(2, dim=-1)  # 2 x [B, 1, W]
        out = self.output(self.final_norm(h) * (1 + scale) + shift)  # [B, G*G, D]
        return out.transpose(1, 2).reshape(B, D, G, G)


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------
class LatentDiffusionGenerator(nn.Module):
    """Frozen tokenizer (encode/decode only) + condition embedding + LatentDiT + noise schedule.

    `latent_scale` (buffer, 0-d) is the training latents' root mean square
    (`fit_latent_scale`): the DiT diffuses `z / latent_scale`, about unit scale.
    """

    def __init__(
        self,
        *,
        tokenizer: HybridTokenizer,
        condition: ConditionEmbedding,
        network: LatentDiT,
        schedule: NoiseSchedule,
        cond_dropout: float = 0.1,
        spacing: str = "leading",
    ) -> None:
        super().__init__()
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"cond_dropout={cond_dropout}: must be in [0, 1)")
        if condition.dim != network.cond_dim:
            raise ValueError(
                f"condition: dim {condition.dim} != the network's cond_dim {network.cond_dim}"
            )
        if (tokenizer.latent_dim, tokenizer.grid) != (network.latent_dim, network.grid):
            raise ValueError(
                f"network: latent [{network.latent_dim}, {network.grid}, {network.grid}] != the "
                f"tokenizer's [{tokenizer.latent_dim}, {tokenizer.grid}, {tokenizer.grid}]"
            )
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.condition = condition
        self.network = network
        self.schedule = schedule
        self.cond_dropout = cond_dropout
        self.spacing = spacing
        self.register_buffer("latent_scale", torch.ones(()))

    def train(self, mode: bool = True) -> LatentDiffusionGenerator:
        """As nn.Module's, but the frozen tokenizer stays in eval mode."""
        super().train(mode)
        self.tokenizer.eval()
        return self

    @torch.no_grad()
    def encode(self, signals: Tensor) -> Tensor:
        """signals [B, C, S, S] in [-1, 1] -> the normalised latent z / latent_scale [B, D, G, G]."""
        return self.tokenizer.encode(signals) / self.latent_scale

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        """The normalised latent [B, D, G, G] -> signals [B, C, S, S] (unclamped)."""
        return self.tokenizer.decode(latent * self.latent_scale)

    @torch.no_grad()
    def fit_latent_scale(self, signals: Tensor, *, batch_size: int = 256) -> float:
        """Sets `latent_scale` to the root mean square of `tokenizer.encode(signals)` over
        signals [N, C, S, S]; returns it."""
        total = count = 0.0
        for start in range(0, len(signals), batch_size):
            z = self.tokenizer.encode(signals[start : start + batch_size])  # [b, D, G, G]
            total += float(z.double().pow(2).sum())
            count += z.numel()
        scale = max((total / max(count, 1.0)) ** 0.5, 1e-6)
        self.latent_scale.fill_(scale)
        return scale

    def loss(
        self, signals: Tensor, conds: ObjectConditions, *, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """signals [B, C, S, S] in [-1, 1] -> {"total", "mse"}: the eps-prediction MSE of the
        normalised latent (t uniform, rows dropped to the null condition with probability
        `cond_dropout`; `generator` draws the drop, then t, then the noise)."""
        B = signals.shape[0]
        x0 = self.encode(signals)  # [B, D, G, G], no gradient
        drop = torch.rand(B, generator=generator, device=signals.device) < self.cond_dropout
        cond = self.condition(conds, drop)  # [B, cond_dim]
        mse = diffusion_loss(
            lambda x_t, t: self.network(x_t, t, cond), x0, self.schedule, generator=generator
        )
        return {"total": mse, "mse": mse.detach()}


def generator_parameter_count(model: nn.Module) -> int:
    """Parameters of a generator outside its `tokenizer` (HART's or the baseline's: the part
    each trains on the shared latent)."""
    return sum(
        p.numel() for name, p in model.named_parameters() if not name.startswith("tokenizer.")
    )


def build_tokenizer(data: GeneratorDataConfig, tok: TokenizerConfig) -> HybridTokenizer:
    """The (untrained) hybrid tokenizer of a data + tokenizer config, as `build_hart` builds it."""
    return HybridTokenizer(
        in_channels=data.in_channels,
        image_size=data.signal_size,
        latent_dim=tok.latent_dim,
        vocab_size=tok.vocab_size,
        scales=tok.scales,
        hidden=tok.hidden,
        hybrid=tok.hybrid,
        beta=tok.beta,
        feature_weight=tok.feature_weight,
    )


def build_latent_diffusion(
    config: LatentDiffusionConfig, tokenizer: HybridTokenizer | None = None
) -> LatentDiffusionGenerator:
    """The generator a config describes, on `tokenizer` (default: an untrained one built from
    `config.tokenizer`, the weights to be loaded from a checkpoint)."""
    if tokenizer is None:
        if config.tokenizer is None:
            raise ValueError(
                "tokenizer: the config has no tokenizer section; give the tokenizer, or train "
                "with train_latent_diffusion (it copies tokenizer_from's section)"
            )
        tokenizer = build_tokenizer(config.data, config.tokenizer)
    m = config.model
    network = LatentDiT(
        latent_dim=tokenizer.latent_dim,
        grid=tokenizer.grid,
        cond_dim=m.cond_dim,
        width=m.width,
        depth=m.depth,
        heads=m.heads,
        mlp_ratio=m.mlp_ratio,
    )
    schedule = NoiseSchedule(
        num_train_timesteps=config.schedule.num_train_timesteps, kind=config.schedule.kind
    )
    return LatentDiffusionGenerator(
        tokenizer=tokenizer,
        condition=ConditionEmbedding(dim=m.cond_dim),
        network=network,
        schedule=schedule,
        cond_dropout=m.cond_dropout,
        spacing=config.schedule.spacing,
    )


@torch.no_grad()
def sample_latent_diffusion(
    model: LatentDiffusionGenerator,
    conditions: ObjectConditions,
    *,
    steps: int = 50,
    guidance: float = 1.0,
    eta: float = 0.0,
    spacing: str | None = None,
    generator: torch.Generator | None = None,
) -> GeneratedSignal:
    """Samples one signal per row of `conditions` with DDIM in `steps` steps (spacing: the
    model's, `schedule.spacing` of its config, unless given) and classifier-free guidance
    `guidance` (w; conditional and null rows in one batch; w = 0 runs the conditional rows
    alone), then decodes the latent with the frozen tokenizer.

    Runs on the model's device. `generator` draws the initial noise (and DDIM's noise when
    eta > 0); one on another device seeds one on the model's device (`hart.model.generator_on`).
    Returns GeneratedSignal(signals [B, C, S, S], indices [], residual None).
    """
    if not (math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"guidance={guidance}: must be a finite number >= 0")
    model.eval()
    net = model.network
    B = len(conditions)
    device = model.latent_scale.device
    generator = generator_on(generator, device)
    conditions = conditions.to(device)
    if guidance == 0:
        cond = model.condition(conditions)  # [B, cond_dim]

        def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
            return net(x_t, t, cond)  # [B, D, G, G]
    else:
        both = model.condition.with_null(conditions)  # [2B, cond_dim]: conditional, then null

        def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
            eps = net(torch.cat([x_t, x_t]), torch.cat([t, t]), both)  # [2B, D, G, G]
            return guided(eps[:B], eps[B:], guidance)

    sampler = DDIMSampler(model.schedule, steps=steps, eta=eta, spacing=spacing or model.spacing)
    shape = (B, net.latent_dim, net.grid, net.grid)
    latent = ddim_sample(model_fn, shape, sampler, generator=generator, device=device)
    return GeneratedSignal(model.decode(latent), [], None)


# ---------------------------------------------------------------------------------------------
# Training and loading
# ---------------------------------------------------------------------------------------------
def resolve_hart_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory `load_generator` reads for a HART work dir (its transformer
    stage's latest), a stage dir (its latest) or a checkpoint directory."""
    path = Path(path)
    if (path / "transformer").is_dir():
        path = path / "transformer"
    latest = path if (path / "model.safetensors").is_file() else find_latest(path)
    if latest is None:
        raise FileNotFoundError(
            f"tokenizer_from: {path} holds no HART generator checkpoint (train one with "
            "tools/train_generator.py)"
        )
    return latest


def _check_same_signal(config: LatentDiffusionConfig, source: GeneratorDataConfig) -> None:
    for field in ("modality", "in_channels", "signal_size"):
        mine, theirs = getattr(config.data, field), getattr(source, field)
        if mine != theirs:
            raise ValueError(
                f"data.{field}: {mine!r} != {theirs!r} of tokenizer_from {config.tokenizer_from}"
            )


def train_latent_diffusion(
    config: LatentDiffusionConfig,
    work_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Trains the baseline `config` describes into `work_dir` on the frozen tokenizer of
    `config.tokenizer_from`; returns the trained generator's checkpoint directory
    (WORK/ldm/checkpoints/step_<N>). `resume=True` continues from the latest checkpoint at the
    same step, learning rate (or time budget position) and batch draws."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    train = config.train
    source_path = resolve_hart_checkpoint(config.tokenizer_from)
    source, source_config, _ = load_generator(source_path)
    _check_same_signal(config, source_config.data)
    if config.tokenizer is not None and config.tokenizer != source_config.tokenizer:
        raise ValueError(
            f"tokenizer: differs from tokenizer_from {source_path}'s tokenizer section "
            "(leave it out: training copies it)"
        )
    config = LatentDiffusionConfig.model_validate(
        {**config.model_dump(), "tokenizer": source_config.tokenizer.model_dump()}
    )
    if config.data.bank != source_config.data.bank:
        log(f"note: data.bank {config.data.bank} != the tokenizer's {source_config.data.bank}")
    device, _ = training_device(train, log)  # run_stage trains there (batches moved per step)
    save_config(config, work_dir / "config.yaml")
    seed_everything(train.seed)
    data = load_training_signals(config.data, progress=progress)
    log(
        f"{config.name}: {len(data)} {config.data.modality} signals "
        f"{tuple(data.signals.shape[1:])} from {config.data.bank}; tokenizer of {source_path}"
    )
    ranges = ConditionRange.fit(data.conditions)
    (work_dir / CONDITIONS_NAME).write_text(json.dumps(ranges.to_dict(), indent=1))
    model = build_latent_diffusion(config, source.tokenizer).to(device)
    resuming = resume and find_latest(work_dir / LDM_STAGE) is not None
    if not resuming:
        scale = model.fit_latent_scale(data.signals.to(device))
        log(f"{LDM_STAGE}: the latent's root mean square is {scale:.4g} (the DiT's unit)")
        log(f"{LDM_STAGE}: {generator_parameter_count(model):,} trainable parameters")
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def loss_fn(signals, conditions, generator):
        return model.loss(signals, conditions, generator=generator)

    run_stage(
        LDM_STAGE,
        model=model,
        params=params,
        loss_fn=loss_fn,
        data=data,
        config=config,
        work_dir=work_dir,
        steps=train.steps,
        lr=train.lr,
        resume=resuming,
        progress=progress,
        log=log,
        extra={"tokenizer_checkpoint": str(source_path.resolve())},
        time_budget_s=train.time_budget_s,
    )
    latest = find_latest(work_dir / LDM_STAGE)
    log(f"trained generator: {latest}")
    return latest


def load_latent_diffusion(
    path: str | Path,
) -> tuple[LatentDiffusionGenerator, LatentDiffusionConfig, ConditionRange]:
    """The trained baseline of a checkpoint directory, a stage dir or a work dir (its ldm
    stage), with its config and the training conditions' range, in eval mode. A checkpoint of
    another generator kind raises ValueError naming `kind`."""
    return load_trained(
        path,
        kind="ldm",
        stage=LDM_STAGE,
        schema=LatentDiffusionConfig,
        build=build_latent_diffusion,
    )
