"""Typed configs of the object generators (`configs/generative/*.yaml`), validated like the
detector's (`perception.config`): YAML read with `safe_load`, unknown keys are errors that name
their path, typed `--set key.path=value` overrides, the resolved config saved beside every
checkpoint. `kind` names the generator, so a checkpoint of another kind fails on that field."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ..config.schema import StrictModel
from ..structures.classes import CLASS_NAMES

GENERATOR_CONFIG_FORMAT_VERSION = 1

PositiveInt = Annotated[int, Field(gt=0)]

# Where a generator trains: "auto" is CUDA when torch sees a GPU, else the CPU; "cuda" on a machine
# without one is an error naming `train.device` (`hart.train.resolve_device`). The default is the
# CPU, so a config trains the same (bit for bit) on every machine unless it asks for a GPU.
TrainDevice = Literal["auto", "cpu", "cuda"]
DEVICE_DESCRIPTION = (
    "cpu (default), cuda, or auto (cuda when available, else cpu). CPU runs are bit-identical "
    "for a seed and thread count; CUDA runs are not bit-exact (cuDNN/cuBLAS kernels, and the "
    "loss noise comes from a CUDA generator seeded like the CPU one)"
)
AMP_DESCRIPTION = "bfloat16 autocast of the forward passes; CUDA only, ignored on CPU (logged)"


class GeneratorDataConfig(StrictModel):
    """Which objects of which bank the generator learns, and as what signal."""

    bank: str = Field(..., description="the object bank folder (tools/create_data.py objects)")
    version: str | None = Field(
        None, description="the bank's dataset version (checked when given, e.g. v1.0-trainval)"
    )
    modality: Literal["camera", "lidar"] = Field(
        "camera",
        description=(
            "camera: RGB + mask crops of the camera views; lidar: the points as a box-frame "
            "occupancy grid (height bins as channels, plus intensity)"
        ),
    )
    classes: list[str] | None = Field(None, description="the classes to learn (default all)")
    image_size: PositiveInt = Field(32, description="camera crops are resized to this square")
    lidar_grid: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (32, 32, 8), description="(X, Y, Z) cells of the box-frame occupancy grid"
    )
    min_visibility: float = Field(0.3, ge=0, le=1, description="camera views at least this visible")
    min_points: int = Field(1, ge=0, description="LiDAR: objects with at least this many points")
    flip: bool = Field(
        True, description="mirror half of each batch left-right (and the view angle's sign)"
    )

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            unknown = [c for c in value if c not in CLASS_NAMES]
            if unknown or not value:
                raise ValueError(f"unknown classes {unknown} (known: {list(CLASS_NAMES)})")
        return value

    @property
    def in_channels(self) -> int:
        """Channels of the generated signal: RGB + alpha, or Z occupancy bins + intensity."""
        return 4 if self.modality == "camera" else self.lidar_grid[2] + 1

    @property
    def signal_size(self) -> int:
        """The side of the square signal the tokenizer reads."""
        if self.modality == "camera":
            return self.image_size
        return self.lidar_grid[0]


class TokenizerConfig(StrictModel):
    """The hybrid tokenizer (`hart.tokenizer.HybridTokenizer`)."""

    latent_dim: PositiveInt = 16
    vocab_size: PositiveInt = 512
    scales: tuple[PositiveInt, ...] = (1, 2, 3, 4, 6, 8)
    hidden: PositiveInt = 64
    hybrid: bool = Field(
        True, description="false: discrete tokens only (the VAR tokenizer: the ablation)"
    )
    beta: float = Field(0.25, ge=0, description="commitment loss weight")
    feature_weight: float = Field(
        0.1, ge=0, description="weight of the crop-classifier feature loss (0: off)"
    )

    @field_validator("scales")
    @classmethod
    def _increasing(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError(f"scales must be strictly increasing, got {list(value)}")
        return value


class TransformerConfig(StrictModel):
    """The scale-wise autoregressive transformer (`hart.transformer.ScaleTransformer`)."""

    width: PositiveInt = 192
    depth: PositiveInt = 4
    heads: PositiveInt = 4
    mlp_ratio: float = Field(4.0, gt=0)
    cond_dim: PositiveInt = 192
    cond_dropout: float = Field(
        0.1, ge=0, lt=1, description="share of training rows with the null condition (for CFG)"
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        return self


class ResidualHeadConfig(StrictModel):
    """The residual diffusion head (`hart.diffusion.ResidualDiffusionHead`)."""

    enabled: bool = Field(True, description="false: discrete tokens only at sampling (ablation)")
    width: PositiveInt = Field(
        128,
        description="MLP width (128: about 10% of the generator's parameters, near HART's "
        "ratio; 192 spent 28% of sampling time in the head)",
    )
    depth: PositiveInt = 3
    repeats: PositiveInt = Field(2, description="noise draws per token per training step")


class SamplingConfig(StrictModel):
    """Defaults of `hart.sample` (each can be given at the call)."""

    guidance: float = Field(
        2.0, ge=0, description="classifier-free guidance at the last scale (ramped from 0)"
    )
    top_k: int = Field(0, ge=0, description="0: no top-k truncation")
    top_p: float = Field(0.0, ge=0, le=1, description="0: no nucleus truncation")
    temperature: float = Field(1.0, gt=0)
    residual_steps: PositiveInt = Field(8, description="DDIM steps of the residual head")
    residual_temperature: float = Field(
        1.0,
        ge=0,
        le=1,
        description="std of the residual head's starting noise (1: the trained distribution; "
        "< 1 trades variety for fidelity, 0: one deterministic residual per code map)",
    )


class GeneratorTrainConfig(StrictModel):
    """The three stages of `tools/train_generator.py`: the crop classifier (features for the
    tokenizer's feature loss and the metrics), the tokenizer, then the transformer and the
    residual head on the frozen tokenizer (as HART trains them)."""

    seed: int = 0
    batch_size: PositiveInt = 32
    classifier_steps: int = Field(600, ge=0, description="0: no feature loss")
    tokenizer_steps: int = Field(1500, ge=0)
    transformer_steps: int = Field(1500, ge=0)
    lr: float = Field(1e-3, gt=0, description="tokenizer learning rate (AdamW)")
    transformer_lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup: float = Field(0.05, ge=0, lt=1, description="share of each stage's steps warming up")
    log_every: PositiveInt = 50
    checkpoint_every: PositiveInt = 500
    threads: int | None = Field(
        None,
        ge=1,
        description="torch and numba threads, set by tools/train_generator.py at start-up (default: torch's)",
    )
    device: TrainDevice = Field("cpu", description=DEVICE_DESCRIPTION)
    amp: bool = Field(False, description=AMP_DESCRIPTION)


class HARTConfig(StrictModel):
    """A HART-style hybrid autoregressive generator of one modality (issue #25)."""

    format_version: Literal[1] = GENERATOR_CONFIG_FORMAT_VERSION
    kind: Literal["hart"] = "hart"
    name: str = "hart"
    data: GeneratorDataConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    transformer: TransformerConfig = TransformerConfig()
    residual_head: ResidualHeadConfig = ResidualHeadConfig()
    sampling: SamplingConfig = SamplingConfig()
    train: GeneratorTrainConfig = GeneratorTrainConfig()

    @model_validator(mode="after")
    def _grid_fits(self) -> HARTConfig:
        grid = self.tokenizer.scales[-1]
        size = self.data.signal_size
        factor = size // grid
        if size % grid or factor & (factor - 1):
            raise ValueError(
                f"data: the signal side {size} must be the latent grid {grid} (tokenizer.scales' "
                "last) times a power of two"
            )
        if self.data.modality == "lidar" and self.data.lidar_grid[0] != self.data.lidar_grid[1]:
            raise ValueError(f"data.lidar_grid: X and Y must be equal, got {self.data.lidar_grid}")
        return self
