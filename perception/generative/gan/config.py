"""The typed config of the DiffAugment GAN (`configs/generative/gan_*.yaml`, issue #26).

Validated like every generator config (`perception.generative.config`): unknown keys are
errors naming their path, `kind` names the generator (a HART checkpoint fails on it)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ...config.schema import StrictModel
from ..config import (
    AMP_DESCRIPTION,
    DEVICE_DESCRIPTION,
    GENERATOR_CONFIG_FORMAT_VERSION,
    GeneratorDataConfig,
    TrainDevice,
)
from .diffaugment import COLOR_OPS, parse_policy

__all__ = ["GANAugmentConfig", "GANConfig", "GANLossConfig", "GANModelConfig", "GANTrainConfig"]

PositiveInt = Annotated[int, Field(gt=0)]


class GANModelConfig(StrictModel):
    """The ResNet generator and the projection discriminator (`gan.model.build_gan`)."""

    z_dim: PositiveInt = Field(64, description="the generator's noise dimension")
    g_width: PositiveInt = Field(
        36, description="generator channels at full resolution (x2 per halving, at most x4)"
    )
    d_width: PositiveInt = Field(
        40, description="discriminator channels of its first block (x2 per halving, at most x4)"
    )
    cond_dim: PositiveInt = Field(64, description="ConditionEmbedding width (G and D each own one)")


class GANAugmentConfig(StrictModel):
    """DiffAugment (`gan.diffaugment`) and where it applies."""

    policy: str | None = Field(
        None,
        description=(
            "ops, comma-separated (color, translation, cutout, or brightness/saturation/"
            "contrast); '' none; default: color,translation,cutout for camera crops, "
            "translation,cutout for LiDAR grids (they have no colour)"
        ),
    )
    mode: Literal["both", "none", "reals_only"] = Field(
        "both",
        description=(
            "both: reals and fakes in the D step and fakes in the G step (DiffAugment); none; "
            "reals_only: the known-bad control (the generator learns the augmentations)"
        ),
    )
    translation_ratio: float = Field(0.125, ge=0, le=1, description="largest shift / side")
    cutout_ratio: float = Field(0.5, ge=0, le=1, description="cutout side / image side")
    ada_target: float | None = Field(
        None,
        gt=0,
        lt=1,
        description=(
            "ADA-style: adapt each op's probability p so that r_t = E[sign(D(real))] tends to "
            "this (0.6 in StyleGAN2-ADA); None: p = 1 (DiffAugment)"
        ),
    )
    ada_interval: PositiveInt = Field(4, description="steps between p updates")
    ada_images: PositiveInt = Field(
        50_000, description="real images seen for p to move by 1 (ADA's speed)"
    )

    @field_validator("policy")
    @classmethod
    def _known_ops(cls, value: str | None) -> str | None:
        if value is not None:
            parse_policy(value)
        return value


class GANLossConfig(StrictModel):
    """The adversarial loss and the R1 penalty on reals."""

    kind: Literal["hinge", "non_saturating"] = "hinge"
    r1_gamma: float = Field(0.1, ge=0, description="R1 weight gamma (gamma/2 E|grad D(real)|^2)")
    r1_every: PositiveInt = Field(
        4, description="lazy R1: every N D steps, weighted by N (StyleGAN2)"
    )


class GANTrainConfig(StrictModel):
    """The training loop (`gan.train.train_gan`): Adam on G and D, EMA of G, logs, KID."""

    seed: int = 0
    batch_size: PositiveInt = 64
    steps: PositiveInt = 5000
    g_lr: float = Field(2e-4, gt=0)
    d_lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.0, 0.99)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_start: int = Field(
        0, ge=0, description="steps before which the EMA copy just follows G (decay 0)"
    )
    num_real: int | None = Field(
        None,
        gt=0,
        description="train on this many real signals drawn once from the bank (None: all)",
    )
    subset_seed: int = Field(0, description="seed of the num_real draw (fixed across seeds)")
    log_every: PositiveInt = 50
    checkpoint_every: PositiveInt = 500
    kid_every: int = Field(500, ge=0, description="0: no KID during training")
    kid_subset: PositiveInt = Field(
        500, description="real signals (fixed) and as many EMA-G samples for the logged KID"
    )
    classifier: str | None = Field(
        None,
        description="a crop classifier (metrics.save_crop_classifier) for KID's features; "
        "None: train one on the training signals (classifier_steps)",
    )
    classifier_steps: int = Field(500, ge=0, description="0 and no classifier: no KID")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch and numba threads, set by tools/train_generator.py at start-up (default: torch's)",
    )
    device: TrainDevice = Field("cpu", description=DEVICE_DESCRIPTION)
    amp: bool = Field(False, description=AMP_DESCRIPTION)

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError(f"betas must be in [0, 1), got {list(value)}")
        return value


class GANSamplingConfig(StrictModel):
    """Defaults of `gan.model.sample_gan` (each can be given at the call)."""

    truncation: float = Field(
        1.0, gt=0, description="z ~ N(0, truncation^2); < 1 trades variety for fidelity"
    )


class GANConfig(StrictModel):
    """A class-conditional data-efficient GAN with DiffAugment (issue #26)."""

    kind: Literal["gan"] = "gan"
    format_version: Literal[1] = GENERATOR_CONFIG_FORMAT_VERSION
    name: str = "gan"
    data: GeneratorDataConfig
    model: GANModelConfig = GANModelConfig()
    augment: GANAugmentConfig = GANAugmentConfig()
    loss: GANLossConfig = GANLossConfig()
    train: GANTrainConfig = GANTrainConfig()
    sampling: GANSamplingConfig = GANSamplingConfig()

    @model_validator(mode="after")
    def _fits(self) -> GANConfig:
        size = self.data.signal_size
        if size < 8 or size & (size - 1):
            raise ValueError(f"data: the signal side {size} must be a power of two >= 8")
        if self.data.modality == "lidar":
            if self.data.lidar_grid[0] != self.data.lidar_grid[1]:
                raise ValueError(
                    f"data.lidar_grid: X and Y must be equal, got {self.data.lidar_grid}"
                )
            if any(op in COLOR_OPS for op in parse_policy(self.policy)):
                raise ValueError(
                    f"augment.policy: {self.policy!r} has colour ops, LiDAR grids have no "
                    "colour (use 'translation,cutout')"
                )
        if self.augment.ada_target is not None and self.augment.mode != "both":
            raise ValueError(
                f"augment.ada_target: adapts DiffAugment's probability, needs mode 'both', "
                f"got {self.augment.mode!r}"
            )
        return self

    @property
    def policy(self) -> str:
        """The DiffAugment policy: the configured one, else the modality's default."""
        if self.augment.policy is not None:
            return self.augment.policy
        return (
            "color,translation,cutout" if self.data.modality == "camera" else "translation,cutout"
        )

    @property
    def color_channels(self) -> int | None:
        """The channels the colour ops change: RGB of the RGB + alpha crops."""
        return 3 if self.data.modality == "camera" else None
