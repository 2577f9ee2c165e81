"""The typed shape of an experiment config. Unknown keys are errors (`extra="forbid"`)."""

from __future__ import annotations

import warnings
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..structures.classes import CAMERA_NAMES, CLASS_NAMES

CONFIG_FORMAT_VERSION = 1

PositiveInt = Annotated[int, Field(gt=0)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class PasteClassConfig(StrictModel):
    """How one class is pasted (mmdet3d's `sample_groups` and `filter_by_min_points`)."""

    count: int = Field(1, ge=0, description="objects of this class added to each sample (0: none)")
    min_points: int = Field(
        5, ge=1, description="only bank objects with at least this many LiDAR points"
    )


class PasteConfig(StrictModel):
    """GT-paste (`perception.generative.paste`): objects of an object bank placed into each
    training sample, LiDAR points with occlusion, boxes added to the targets, and with
    `cameras` their appearance composited into the images. Off by default."""

    enabled: bool = False
    bank: str | None = Field(
        None, description="the object bank folder (tools/create_data.py objects)"
    )
    source: Literal["bank", "generated"] = Field(
        "bank",
        description=(
            "bank: `bank` is a real object bank; generated: a bank of generated objects "
            "(tools/create_data.py generated); a bank of the other source is refused"
        ),
    )
    classes: dict[str, PasteClassConfig] = Field(
        default_factory=dict,
        description="per class: {count, min_points}, e.g. {bicycle: {count: 4}}",
    )
    cameras: bool = Field(
        True,
        description=(
            "true: multimodal paste (the crop composited into the cameras); false: LiDAR only "
            "(the cameras do not show the pasted object: mmdet3d's GT sampling)"
        ),
    )
    min_visibility: float = Field(
        0.3,
        ge=0,
        le=1,
        description=(
            "with cameras: only objects with a camera view at least this visible (and always "
            "one view: an object no camera saw cannot be composited)"
        ),
    )
    placement_tries: int = Field(
        30, ge=1, description="random poses tried per object before it is skipped (counted)"
    )
    occlusion_cell_deg: float = Field(
        0.25,
        gt=0,
        le=5,
        description=(
            "range-image cell (deg) of the LiDAR occlusion test: a point is hidden by a nearer "
            "point of another object in its cell or the 8 around it; below the LiDAR's azimuth "
            "step (0.33 deg at 20 Hz) and beam spacing (1.33 deg)"
        ),
    )

    max_shadow: float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "a pose is not used when, seen from the LiDAR, the pasted box would cover more "
            "than this fraction of the azimuth span of a farther box (existing or pasted), or "
            "a nearer one would cover that much of its own (1: no limit; occlusion still "
            "removes what is hidden)"
        ),
    )

    max_scene_points: int = Field(
        10,
        ge=0,
        description=(
            "a pose is not used when its box already holds more scene points than this above "
            "its lowest 0.3 m (a building, a pole, an unannotated object stands there)"
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> PasteConfig:
        unknown = [c for c in self.classes if c not in CLASS_NAMES]
        if unknown:
            raise ValueError(
                f"classes: unknown class(es) {unknown}; choose from {list(CLASS_NAMES)}"
            )
        if self.enabled:
            if not self.bank:
                raise ValueError("bank: enabled paste needs an object bank folder")
            if not any(c.count > 0 for c in self.classes.values()):
                raise ValueError("classes: enabled paste needs at least one class with count > 0")
        return self


class DataConfig(StrictModel):
    """Where the data is and what one sample holds."""

    root: str = "data/synth-mini"
    version: str = "v1.0-mini"
    train_split: str = "mini_train"
    val_split: str = "mini_val"
    sweeps: PositiveInt = Field(
        10, description="LiDAR sweeps merged into a keyframe (1 = key only)"
    )
    sweep_stride: PositiveInt = Field(
        1,
        description=(
            "merge every k-th earlier sweep: at 20 Hz, sweeps 3 with stride 4 reach 0.4 s back "
            "(motion like 9 sweeps) with the points of 3; needs (sweeps - 1) * k earlier sweeps "
            "in the index"
        ),
    )
    clip_frames: PositiveInt = Field(
        1, description="camera frames per clip (T) for temporal models"
    )
    max_sweep_age: float | None = Field(
        0.55,
        gt=0,
        description=(
            "seconds: earlier LiDAR sweeps older than this are not merged (a recording gap); "
            "0.55 fits 10 sweeps at 20 Hz; raise it with sweep_stride; null: no limit"
        ),
    )
    max_clip_frame_age: float | None = Field(
        0.55,
        gt=0,
        description=(
            "seconds: a camera clip stops at the first earlier frame older than this and is "
            "padded as at a scene's start; null: no limit"
        ),
    )
    cameras: tuple[str, ...] = CAMERA_NAMES
    point_range: tuple[float, float, float, float, float, float] = (
        -54.0,
        -54.0,
        -5.0,
        54.0,
        54.0,
        3.0,
    )
    load_images: bool = True
    workers: int = Field(2, ge=0, description="data-loading worker processes")
    paste: PasteConfig = PasteConfig()

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        unknown = [c for c in self.cameras if c not in CAMERA_NAMES]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; nuScenes has {list(CAMERA_NAMES)}")
        r = self.point_range
        if not (r[0] < r[3] and r[1] < r[4] and r[2] < r[5]):
            raise ValueError(
                f"point_range must be (x_min, y_min, z_min, x_max, y_max, z_max), got {r}"
            )
        return self


class ImageAugConfig(StrictModel):
    """BEVFusion-style image augmentation, relative to each camera's input image: resize by
    `scale` times the fit (the smallest factor at which the image covers `final_size`: 0.44
    for 1600x900 -> 704x256, 0.32 for 800x450 -> 256x96), crop `final_size` anchored at the
    bottom (less `bottom_crop_lim` of the rows) and centred (random in training), flip,
    rotate. The same keys thus crop the same part of the view at any input resolution."""

    final_size: tuple[PositiveInt, PositiveInt] = (704, 256)  # (W, H) the model sees
    scale_lim: tuple[float, float] = Field(
        (0.864, 1.25),
        description=(
            "training resize range, relative to the fit (1.0: the image just covers "
            "final_size); BEVFusion's 0.38-0.55 of 1600x900 images at 704x256"
        ),
    )
    test_scale: float | None = Field(
        None, gt=0, description="test-time resize relative to the fit; null: middle of scale_lim"
    )
    bottom_crop_lim: tuple[float, float] = (0.0, 0.0)  # fraction of rows cut at the bottom
    rotate_lim_deg: tuple[float, float] = (-5.4, 5.4)
    flip: bool = True
    min_horizon_keep: float = Field(
        0.05,
        ge=0,
        le=1,
        description=(
            "the crop must keep at least this fraction of each camera's rows above the "
            "horizon (from its calibration), checked when the dataset is built: an error when "
            "the test (or middle training) crop keeps less, a warning when only the largest "
            "training resize does (BEVFusion's largest, 0.55 of 1600x900, keeps ~10%); "
            "0: no check"
        ),
    )
    resize_lim: tuple[float, float] | None = Field(
        None,
        description=(
            "deprecated: an absolute resize range, right for one input size only; use "
            "scale_lim (resize_lim / fit). When set it replaces scale_lim"
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> ImageAugConfig:
        for key in ("scale_lim", "bottom_crop_lim", "rotate_lim_deg", "resize_lim"):
            lim = getattr(self, key)
            if lim is not None and lim[0] > lim[1]:
                raise ValueError(f"{key} must be (low, high), got {lim}")
        if self.scale_lim[0] <= 0:
            raise ValueError(f"scale_lim must be positive, got {self.scale_lim}")
        if not (0 <= self.bottom_crop_lim[0] and self.bottom_crop_lim[1] < 1):
            raise ValueError(f"bottom_crop_lim must lie in [0, 1), got {self.bottom_crop_lim}")
        if self.resize_lim is not None:
            warnings.warn(
                f"augment.image.resize_lim {list(self.resize_lim)} is deprecated: an absolute "
                "factor fits one input size only. Use augment.image.scale_lim, relative to the "
                "fit (resize_lim / fit; fit = max(final W / image W, final H / image H), e.g. "
                "0.32 for 800x450 -> 256x96); resize_lim replaces scale_lim while it is set",
                FutureWarning,
                stacklevel=2,
            )
        return self


class LidarAugConfig(StrictModel):
    """Global augmentation of points and boxes together (recorded as `lidar_aug`)."""

    rotate_lim_deg: tuple[float, float] = (-22.5, 22.5)
    scale_lim: tuple[float, float] = (0.9, 1.1)
    translation_std: float = Field(0.5, ge=0)
    flip_x_prob: float = Field(0.5, ge=0, le=1)
    flip_y_prob: float = Field(0.5, ge=0, le=1)


class AugmentConfig(StrictModel):
    image: ImageAugConfig = ImageAugConfig()
    lidar: LidarAugConfig = LidarAugConfig()
    test_resize: float | None = Field(
        None,
        gt=0,
        description=(
            "deprecated: an absolute test-time resize, right for one input size only; use "
            "augment.image.test_scale (test_resize / fit). When set it replaces test_scale"
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> AugmentConfig:
        if self.test_resize is not None:
            warnings.warn(
                f"augment.test_resize {self.test_resize} is deprecated: an absolute factor fits "
                "one input size only. Use augment.image.test_scale, relative to the fit "
                "(test_resize / fit; fit = max(final W / image W, final H / image H), e.g. "
                "0.32 for 800x450 -> 256x96); test_resize replaces test_scale while it is set",
                FutureWarning,
                stacklevel=2,
            )
        return self


class EvalConfig(StrictModel):
    """Official nuScenes detection evaluation settings."""

    devkit_config: str = "detection_cvpr_2019"
    max_boxes_per_sample: Annotated[int, Field(gt=0, le=500)] = 500


class CameraModelConfig(StrictModel):
    """EfficientViT(+TSM) encoder, FPN neck and the LSS view transform."""

    variant: Literal["b0", "b1", "b2", "b3"] = "b0"
    tsm_mode: Literal["off", "bidirectional", "unidirectional"] = "unidirectional"
    tsm_stages: tuple[int, ...] = (0, 1, 2, 3)
    neck_channels: PositiveInt = 64
    context_channels: PositiveInt = 32
    out_channels: PositiveInt = 64
    depth_bins: tuple[float, float, float] = (1.0, 60.0, 0.5)  # (min, max, step) m
    bev_cell: float = Field(0.3, gt=0, description="camera BEV cell (m) before downsampling")
    bev_downsample: PositiveInt = 2
    z_range: tuple[float, float] = (-10.0, 10.0)  # one height cell spanning this, m
    depth_loss_weight: float = Field(0.0, ge=0)
    lidar_depth_input: bool = Field(
        False, description="the depth net reads LiDAR depths (BEVFusion's DepthLSS); fused only"
    )
    lidar_depth_prior: float = Field(
        0.0,
        ge=0,
        description=(
            "with lidar_depth_input, > 0 adds a learnable scale (starting here) times the "
            "one-hot LiDAR depth to the depth logits: the lift is sharp at measured depths from "
            "the first step; 0: off"
        ),
    )
    ground_depth_input: float | None = Field(
        None,
        description=(
            "the ground's height in the LiDAR frame (m; -1.84 for nuScenes' LIDAR_TOP): the depth "
            "net also reads where each feature cell's ray meets that flat ground, a prior from "
            "calibration alone (camera-only models too); null: off"
        ),
    )
    perspective_loss_weight: float = Field(
        0.0,
        ge=0,
        description=(
            "> 0: in training, a small head classifies every image feature cell (the class of "
            "the nearest box projecting onto it, or background), supervising the camera "
            "backbone in the image plane; 0: off"
        ),
    )

    @field_validator("tsm_mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        # YAML 1.1 reads a bare `off` as false (`tsm_mode: off`, `--set ...tsm_mode=off`)
        return "off" if value is False else value


class LidarModelConfig(StrictModel):
    """Voxelization and the SPVConv encoder (output stride 2 ** len(stage_channels))."""

    voxel_size: tuple[float, float, float] = (0.075, 0.075, 0.2)
    stem_channels: PositiveInt = 16
    stage_channels: tuple[PositiveInt, ...] = (32, 64, 128)
    stage_blocks: tuple[int, ...] = (1, 1, 1)
    z_strides: tuple[int, ...] = (2, 2, 2)
    out_channels: PositiveInt = 256
    deterministic: bool = False


class DecoderConfig(StrictModel):
    """SECOND backbone + SECONDFPN neck on the fused BEV map."""

    channels: tuple[PositiveInt, ...] = (128, 256)
    layers: tuple[int, ...] = (5, 5)
    strides: tuple[PositiveInt, ...] = (1, 2)
    neck_channels: tuple[PositiveInt, ...] = (256, 256)
    upsample_strides: tuple[float, ...] = (1.0, 2.0)


class HeadConfig(StrictModel):
    """CenterPoint head (nuScenes task grouping) and its decoding."""

    shared_channels: PositiveInt = 64
    head_channels: PositiveInt = 64
    score_threshold: float = Field(0.1, ge=0, le=1)
    pre_max_size: PositiveInt = 1000
    post_max_size: PositiveInt = 83
    min_radius: PositiveInt = 2
    max_objects: PositiveInt = 500
    # Weight of the 8 cells around each object's centre in the box and direction losses, which
    # then also train there (0: the centre cell only, as CenterPoint). A heatmap peak often
    # lands one cell off the centre; its box is only as good as that cell's regressions.
    neighbour_weight: float = Field(0.0, ge=0, le=1)


class DistillConfig(StrictModel):
    """Cross-modal BEV distillation from a frozen LiDAR-only teacher (`train.teacher`):
    the losses a camera student adds in training, each off at weight 0 (docs/distillation.md).

    Foreground weighting (DistillBEV): a cell's weight is `background + foreground * f`, with
    `f` in [0, 1] the larger of "inside or within `margin` m of a GT box" and the teacher's
    heatmap score (its largest class probability).
    """

    feature_points: tuple[Literal["camera_bev", "fused", "decoder"], ...] = Field(
        ("camera_bev",),
        description=(
            "where the student's BEV features imitate the teacher's (a 1x1 adapter on the "
            "student side each): `camera_bev` the camera BEV after the view transform against "
            "the teacher's LiDAR BEV, `fused` the fuser's output against the teacher's, "
            "`decoder` the BEV decoder's output against the teacher's"
        ),
    )
    teacher_channels: dict[Literal["camera_bev", "fused", "decoder"], PositiveInt] = Field(
        default_factory=dict,
        description=(
            "per feature point, the teacher's channels there where they differ from the "
            "student's (the adapter maps the student's to these)"
        ),
    )
    feature_weight: float = Field(1.0, ge=0, description="dense feature imitation (MSE)")
    response_weight: float = Field(
        1.0, ge=0, description="heatmap soft targets (binary KL to the teacher's probabilities)"
    )
    instance_weight: float = Field(
        0.0, ge=0, description="box regressions at the teacher's top-k heatmap peaks (L1)"
    )
    instance_topk: PositiveInt = Field(32, description="peaks per sample for `instance_weight`")
    foreground: float = Field(10.0, ge=0, description="extra weight of a foreground cell")
    background: float = Field(1.0, ge=0, description="weight of every cell")
    margin: float = Field(
        0.0, ge=0, description="m around a GT box whose cells count as foreground"
    )

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.feature_weight > 0 and not self.feature_points:
            raise ValueError("feature_weight > 0 needs at least one of feature_points")
        if len(set(self.feature_points)) != len(self.feature_points):
            raise ValueError(f"feature_points repeats a point: {list(self.feature_points)}")
        if self.foreground + self.background <= 0:
            raise ValueError("foreground and background weights are both 0: no cell counts")
        return self


class ModelConfig(StrictModel):
    """A BEVFusion-style detector; `camera: null` or `lidar: null` for a single-sensor model."""

    camera: CameraModelConfig | None = CameraModelConfig()
    lidar: LidarModelConfig | None = LidarModelConfig()
    fuser_channels: PositiveInt = 256
    decoder: DecoderConfig = DecoderConfig()
    head: HeadConfig = HeadConfig()
    # training: probability of dropping (camera, LiDAR) for a sample, never both
    modality_dropout: tuple[float, float] = (0.0, 0.0)
    # modalities whose fuser weights start at zero: ("camera",) makes a fused model start as
    # its LiDAR-only part and let the camera in as the detection loss finds it useful
    fuser_zero_init: tuple[Literal["camera", "lidar"], ...] = ()
    paint_points: bool = Field(
        False,
        description=(
            "fused only: the LiDAR branch also reads the colour of the keyframe pixel each "
            "point projects to (PointPainting with raw pixels), beside the camera BEV branch"
        ),
    )
    distill: DistillConfig | None = Field(
        None,
        description=(
            "a camera student's distillation losses and their adapters (used in training "
            "when `train.teacher` names a LiDAR-only teacher); needs model.camera"
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.camera is None and self.lidar is None:
            raise ValueError("a model needs camera, lidar or both")
        present = {"camera": self.camera is not None, "lidar": self.lidar is not None}
        if self.camera is not None and self.camera.lidar_depth_input and self.lidar is None:
            raise ValueError(
                "model.camera.lidar_depth_input needs LiDAR at run time, but model.lidar is null"
            )
        if self.camera is not None and self.camera.lidar_depth_prior > 0:
            if not self.camera.lidar_depth_input:
                raise ValueError(
                    "model.camera.lidar_depth_prior is a prior on the LiDAR depth input: it needs "
                    "model.camera.lidar_depth_input: true"
                )
        if self.paint_points and (self.camera is None or self.lidar is None):
            raise ValueError(
                "model.paint_points colours LiDAR points from the cameras: it needs both "
                "model.camera and model.lidar"
            )
        if self.distill is not None and self.camera is None:
            raise ValueError("model.distill trains a camera student: it needs model.camera")
        for name in self.fuser_zero_init:
            if not present[name]:
                raise ValueError(f"fuser_zero_init names {name!r}, but model.{name} is null")
        if len(set(self.fuser_zero_init)) == sum(present.values()):
            raise ValueError(
                f"fuser_zero_init {list(self.fuser_zero_init)} zeroes every modality: "
                "the fused map would start constant"
            )
        return self


class TrainConfig(StrictModel):
    """The training loop: optimizer, LR schedule, checkpoints and logging.

    `batch_size` is per process: under `torchrun` the global batch is `batch_size` times the
    world size. The run lasts `max_steps` optimizer steps if set, else `epochs` epochs, or
    fewer with `time_budget_min` (see `perception.engine.hooks.TimeBudget`).
    """

    batch_size: PositiveInt = 4
    workers: int = Field(2, ge=0, description="data-loading worker processes per process")
    epochs: PositiveInt = 20
    max_steps: PositiveInt | None = Field(None, description="overrides `epochs` when set")
    time_budget_min: float | None = Field(
        None,
        gt=0,
        description=(
            "minutes of training-loop wall time the run may take: the schedule is re-planned "
            "to the steps that fit at the measured pace (never more than `max_steps` / "
            "`epochs` give) and the run stops at the budget in any case; the step count then "
            "depends on the machine's speed (leave unset for reproducible runs)"
        ),
    )
    lr: float = Field(2e-4, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.01, ge=0)
    schedule: Literal["onecycle", "cosine"] = "cosine"
    warmup: float = Field(0.05, ge=0, lt=1, description="fraction of the steps spent warming up")
    grad_clip: float | None = Field(35.0, gt=0, description="max gradient L2 norm; null = off")
    checkpoint_every: PositiveInt = 1000
    keep_checkpoints: PositiveInt | None = 3
    log_every: PositiveInt = 10
    tensorboard: bool = Field(
        False,
        description=(
            "also write the logged scalars (loss, its terms, lr, samples/s) to "
            "WORK_DIR/tensorboard/; needs the `tensorboard` extra "
            "(pip install 'perception-bev[tensorboard]')"
        ),
    )
    deterministic: bool = False
    amp: bool = Field(False, description="bfloat16 autocast; CUDA only, ignored on CPU")
    camera_start: float = Field(
        0.0,
        ge=0,
        lt=1,
        description=(
            "LiDAR first (BEVFusion's recipe, in one schedule): the fraction of the run's steps "
            "trained with the camera branch skipped and no images decoded; the camera joins at "
            "the epoch start nearest it. 0: fused from the first step. Needs a model with both "
            "branches"
        ),
    )
    init_from: str | None = Field(
        None,
        description=(
            "a checkpoint (its directory, or a work dir: the latest one) whose weights start "
            "the model, e.g. a camera encoder pretrained on another world; not a resume (the "
            "step, optimizer and schedule start fresh), and unused when `--resume` finds a "
            "checkpoint of the run itself"
        ),
    )
    init_prefixes: list[str] = Field(
        default_factory=list,
        description=(
            "with `init_from`: load only the weights whose names start with one of these "
            "(e.g. `camera.encoder.`), each of which must match at least one; empty: all"
        ),
    )
    teacher: str | None = Field(
        None,
        description=(
            "a trained LiDAR-only checkpoint (its directory, or a work dir: the latest one) on "
            "the student's BEV grid, run frozen in eval mode on each batch as the teacher of "
            "`model.distill`'s losses (its time is logged, not counted in the time budget)"
        ),
    )

    freeze_prefixes: list[str] = Field(
        default_factory=list,
        description=(
            "parameters whose names start with one of these (e.g. `camera.encoder.`) are not "
            "trained: no gradient, not in the optimizer, and the modules under them keep "
            "BatchNorm statistics and dropout in eval mode (a frozen backbone, usually "
            "pretrained: `init_from`); each must match at least one parameter"
        ),
    )

    @model_validator(mode="after")
    def _check_init(self) -> TrainConfig:
        if self.init_prefixes and self.init_from is None:
            raise ValueError("train.init_prefixes needs train.init_from")
        return self


class ExperimentConfig(StrictModel):
    """A whole experiment."""

    format_version: int = CONFIG_FORMAT_VERSION
    name: str = "experiment"
    seed: int = 0
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    eval: EvalConfig = EvalConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _check_camera_start(self) -> ExperimentConfig:
        if self.train.camera_start > 0 and (self.model.camera is None or self.model.lidar is None):
            raise ValueError(
                "train.camera_start > 0 trains LiDAR first, then adds the camera: it needs both "
                "model.camera and model.lidar (set train.camera_start=0 for a one-sensor model)"
            )
        return self

    @model_validator(mode="after")
    def _check_teacher(self) -> ExperimentConfig:
        if self.train.teacher is not None and self.model.distill is None:
            raise ValueError(
                "train.teacher needs model.distill (the distillation losses and their weights)"
            )
        return self

    @model_validator(mode="after")
    def _check_version(self) -> ExperimentConfig:
        if self.format_version != CONFIG_FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is not {CONFIG_FORMAT_VERSION}, "
                "the version this code reads"
            )
        return self
