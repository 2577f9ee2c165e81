"""The typed shape of an experiment config. Unknown keys are errors (`extra="forbid"`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..structures.classes import CAMERA_NAMES

CONFIG_FORMAT_VERSION = 1

PositiveInt = Annotated[int, Field(gt=0)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataConfig(StrictModel):
    """Where the data is and what one sample holds."""

    root: str = "data/synth-mini"
    version: str = "v1.0-mini"
    train_split: str = "mini_train"
    val_split: str = "mini_val"
    sweeps: PositiveInt = Field(
        10, description="LiDAR sweeps merged into a keyframe (1 = key only)"
    )
    clip_frames: PositiveInt = Field(
        1, description="camera frames per clip (T) for temporal models"
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
    """BEVFusion-style image augmentation: resize by a factor, crop to `final_size`, flip, rotate."""

    final_size: tuple[PositiveInt, PositiveInt] = (704, 256)  # (W, H) the model sees
    resize_lim: tuple[float, float] = (0.38, 0.55)
    bottom_crop_lim: tuple[float, float] = (0.0, 0.0)  # fraction of rows cut at the bottom
    rotate_lim_deg: tuple[float, float] = (-5.4, 5.4)
    flip: bool = True


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
    # At test time the image is resized by the middle of `resize_lim` and centre-cropped.
    test_resize: float | None = None


class EvalConfig(StrictModel):
    """Official nuScenes detection evaluation settings."""

    devkit_config: str = "detection_cvpr_2019"
    max_boxes_per_sample: Annotated[int, Field(gt=0, le=500)] = 500


class ExperimentConfig(StrictModel):
    """A whole experiment. Later sections (model, train) join as they are built."""

    format_version: int = CONFIG_FORMAT_VERSION
    name: str = "experiment"
    seed: int = 0
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _check_version(self) -> ExperimentConfig:
        if self.format_version != CONFIG_FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is not {CONFIG_FORMAT_VERSION}, "
                "the version this code reads"
            )
        return self
