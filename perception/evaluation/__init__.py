"""Official-metric evaluation: `Detections` -> nuScenes submission JSON -> nuscenes-devkit
detection metrics (mAP, NDS, TP errors) -> `metrics.json` / `metrics.md`.

    writer = SubmissionWriter(use_camera=True, use_lidar=True)
    writer.add(detections, sample.lidar_to_ego, sample.ego_to_global)  # once per sample
    writer.write(path, sample_tokens=split_sample_tokens(root, version, split))
    metrics = evaluate(root, version, split, path, out_dir)
"""

from .nuscenes_eval import (
    DEFAULT_RANGE_BANDS,
    METRICS_FORMAT_VERSION,
    TP_ERROR_NAMES,
    DetectionMetrics,
    EvaluationError,
    RangeBandMetrics,
    devkit_version,
    evaluate,
    format_metrics,
    load_devkit_config,
    load_metrics,
    range_band_metrics,
)
from .splits import SplitError, check_version_split, split_sample_tokens
from .submission import (
    MAX_BOXES_PER_SAMPLE,
    SubmissionError,
    SubmissionWriter,
    attribute_name_for,
    check_submission,
    detections_to_nuscenes,
)

__all__ = [
    "DEFAULT_RANGE_BANDS",
    "MAX_BOXES_PER_SAMPLE",
    "METRICS_FORMAT_VERSION",
    "TP_ERROR_NAMES",
    "DetectionMetrics",
    "EvaluationError",
    "RangeBandMetrics",
    "SplitError",
    "SubmissionError",
    "SubmissionWriter",
    "attribute_name_for",
    "check_submission",
    "check_version_split",
    "detections_to_nuscenes",
    "devkit_version",
    "evaluate",
    "format_metrics",
    "load_devkit_config",
    "load_metrics",
    "range_band_metrics",
    "split_sample_tokens",
]
