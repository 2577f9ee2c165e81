"""Camera branch: EfficientViT B0-B3 with Temporal Shift Modules (clip and streaming), an
FPN-style neck, and the `CameraEncoder` that runs them over multi-camera frame clips."""

from perception.models.camera.efficientvit import (
    EFFICIENTVIT_VARIANTS,
    EfficientViT,
    EfficientViTConfig,
    TimmLoadReport,
    build_efficientvit,
    load_timm_checkpoint,
    load_timm_state_dict,
)
from perception.models.camera.encoder import (
    CameraEncoder,
    CameraEncoderConfig,
    build_camera_encoder,
)
from perception.models.camera.neck import GeneralizedLSSFPN
from perception.models.camera.tsm import (
    TemporalShift,
    TemporalShiftConfig,
    TemporalShiftState,
    temporal_shift_clip,
    temporal_shift_stream,
)

__all__ = [
    "EFFICIENTVIT_VARIANTS",
    "CameraEncoder",
    "CameraEncoderConfig",
    "EfficientViT",
    "EfficientViTConfig",
    "GeneralizedLSSFPN",
    "TemporalShift",
    "TemporalShiftConfig",
    "TemporalShiftState",
    "TimmLoadReport",
    "build_camera_encoder",
    "build_efficientvit",
    "load_timm_checkpoint",
    "load_timm_state_dict",
    "temporal_shift_clip",
    "temporal_shift_stream",
]
