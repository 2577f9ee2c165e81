"""Tests a trained detector on a split: inference, the official metrics, robustness to missing
sensors, and the HTML report (what `tools/test.py` runs).

    outcome = evaluate_checkpoint(config, "work_dirs/tiny", split="mini_val", out_dir="out")

Writes into `out_dir`:

- `results_nusc.json`: the nuScenes detection submission.
- `metrics.json`, `metrics.md` (with AP by distance band) and the devkit's own
  `metrics_summary.json` / `metrics_details.json` (see `nuscenes_eval.evaluate`).
- `latency.json`: per-stage mean / p50 / p90 ms and the run's settings.
- `config.yaml`: the resolved config the model was built from.
- `robustness/<setting>/...` (with `robustness=True`): the same files for each sensor setting.
- `report.html`: everything above in one self-contained page (`report.py`).

Under `torchrun` every process infers its shard; process 0 evaluates and writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from .. import distributed
from ..checkpoint import CheckpointError, read_config
from ..config import ExperimentConfig
from ..models.loading import load_model
from .inference import DROP_CAMERAS, DROP_HALF_BEAMS, DROP_LIDAR, InferenceResult, run_inference
from .nuscenes_eval import (
    DEFAULT_RANGE_BANDS,
    METRICS_FORMAT_VERSION,
    DetectionMetrics,
    EvaluationError,
    devkit_version,
    evaluate,
    format_metrics,
    load_devkit_config,
    range_band_metrics,
)
from .report import (
    ReportData,
    RobustnessRow,
    SamplePicture,
    draw_sample_pictures,
    load_training_summary,
    write_report,
)
from .splits import split_sample_tokens

RESULTS_FILE = "results_nusc.json"
REPORT_FILE = "report.html"

# The robustness study: setting name -> sensors dropped (`inference.DROPPABLE` names).
ROBUSTNESS_SETTINGS: dict[str, tuple[str, ...]] = {
    "all sensors": (),
    "LiDAR only": (DROP_CAMERAS,),
    "cameras only": (DROP_LIDAR,),
    "CAM_FRONT dropped": ("CAM_FRONT",),
    "LiDAR beams halved": (DROP_HALF_BEAMS,),
}


@dataclass(frozen=True)
class EvalOutcome:
    """What a test run produced (on process 0; other processes get `None` fields)."""

    metrics: DetectionMetrics | None
    eval_error: str | None
    results_path: Path | None
    report_path: Path | None
    out_dir: Path
    note: str | None = None  # what a reader of the metrics must know (e.g. why all are 0)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _sensors_used(model: nn.Module, drop: Sequence[str]) -> tuple[bool, bool]:
    use_camera = getattr(model, "camera", None) is not None and DROP_CAMERAS not in drop
    use_lidar = getattr(model, "lidar", None) is not None and DROP_LIDAR not in drop
    return use_camera, use_lidar


def no_box_note(config: ExperimentConfig, split: str, num_samples: int) -> str:
    """Why every metric of a run whose model kept no box is 0 (shown with its metrics)."""
    threshold = config.model.head.score_threshold
    return (
        f"no metric to read: the model kept no box above its score threshold "
        f"(model.head.score_threshold = {threshold:g}) in any of the {num_samples} samples of "
        f"split {split!r}, so every AP is 0 and every TP error 1 (the devkit's values for a "
        "class without predictions): mAP 0, NDS 0. Usual for an early checkpoint; train longer, "
        "or see what it ranks with a lower threshold (--set model.head.score_threshold=0.01)"
    )


def evaluate_no_boxes(
    config: ExperimentConfig,
    split: str,
    results_path: Path,
    out_dir: Path,
    *,
    tokens: Sequence[str],
    nusc: Any,
    range_bands: Sequence[tuple[float, float]] | None,
) -> DetectionMetrics:
    """The devkit's metrics of a submission with no box, written as `evaluate` writes them
    (`metrics.json`, `metrics.md`, `metrics_summary.json`, `metrics_details.json`).

    `DetectionEval` cannot load an empty submission (its box filter reads the box type from
    the first box), so this runs its steps on the GT alone: the devkit's GT loading and
    filters, then its own metric computation (`DetectionEval.evaluate`) against no
    prediction, which gives every class its no-prediction data: AP 0, TP errors 1 (NaN where
    the devkit defines none), mAP 0, NDS 0.
    """
    from types import SimpleNamespace

    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.common.loaders import (
        add_center_dist,
        filter_eval_boxes,
        load_gt_of_sample_tokens,
    )
    from nuscenes.eval.detection.data_classes import DetectionBox
    from nuscenes.eval.detection.evaluate import DetectionEval

    from .. import __version__ as perception_version
    from ..structures import CLASS_NAMES

    devkit = load_devkit_config(config.eval.devkit_config)
    gt = add_center_dist(nusc, load_gt_of_sample_tokens(nusc, list(tokens), DetectionBox))
    if gt.all:  # the filter fails on an empty set as well
        gt = filter_eval_boxes(nusc, gt, devkit.class_range)
    pred = EvalBoxes()
    for token in tokens:
        pred.add_boxes(token, [])
    steps = SimpleNamespace(cfg=devkit, gt_boxes=gt, pred_boxes=pred, verbose=False)
    devkit_metrics, metric_data = DetectionEval.evaluate(steps)
    summary = devkit_metrics.serialize()
    summary["meta"] = json.loads(results_path.read_text())["meta"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics_summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "metrics_details.json").write_text(json.dumps(metric_data.serialize(), indent=2))

    num_gt = {c: 0 for c in CLASS_NAMES}
    for box in gt.all:
        num_gt[box.detection_name] += 1
    root = Path(config.data.root)
    evaluated = {
        "root": str(root.resolve()),
        "version": config.data.version,
        "split": split,
        "results": str(results_path.resolve()),
        "num_samples": len(tokens),
        "devkit_version": devkit_version(),
        "devkit_config": str(config.eval.devkit_config),
        "perception_version": perception_version,
        "num_gt": num_gt,
        "num_pred": {c: 0 for c in CLASS_NAMES},
        "note": no_box_note(config, split, len(tokens)),
    }
    bands = range_band_metrics(gt, pred, devkit, range_bands) if range_bands else ()
    metrics = DetectionMetrics.from_summary(summary, num_gt, evaluated["num_pred"], bands)
    content = {"format_version": METRICS_FORMAT_VERSION, "evaluated": evaluated, "summary": summary}
    if bands:
        content["range_bands"] = [b.to_json() for b in bands]
    (out_dir / "metrics.json").write_text(json.dumps(content, indent=2))
    markdown = format_metrics(metrics, evaluated)
    (out_dir / "metrics.md").write_text(f"{markdown.rstrip()}\n\nNote: {evaluated['note']}\n")
    return metrics


def _write_and_evaluate(
    result: InferenceResult,
    model: nn.Module,
    config: ExperimentConfig,
    *,
    split: str,
    out_dir: Path,
    tokens: Sequence[str],
    nusc: Any,
    range_bands: Sequence[tuple[float, float]] | None,
) -> tuple[Path, DetectionMetrics | None, str | None, str | None]:
    """Writes the submission and evaluates it: (results, metrics, error, note). A model that
    kept no box gets the devkit's all-zero metrics and a note saying why; an evaluation the
    devkit cannot run comes back as an error message instead of metrics."""
    use_camera, use_lidar = _sensors_used(model, result.drop_sensors)
    writer = result.submission(
        use_camera=use_camera,
        use_lidar=use_lidar,
        max_boxes_per_sample=config.eval.max_boxes_per_sample,
    )
    results_path = writer.write(out_dir / RESULTS_FILE, sample_tokens=tokens)
    try:
        if not any(len(r["boxes"]) for r in result.records):
            metrics = evaluate_no_boxes(
                config,
                split,
                results_path,
                out_dir,
                tokens=tokens,
                nusc=nusc,
                range_bands=range_bands,
            )
            return results_path, metrics, None, no_box_note(config, split, len(tokens))
        metrics = evaluate(
            config.data.root,
            config.data.version,
            split,
            results_path,
            out_dir,
            devkit_config=config.eval.devkit_config,
            nusc=nusc,
            range_bands=range_bands,
        )
    except EvaluationError as exc:
        return results_path, None, str(exc), None
    return results_path, metrics, None, None


def _pictures(
    config: ExperimentConfig,
    split: str,
    detections: dict[str, Any],
    count: int,
    score_threshold: float,
) -> list[SamplePicture]:
    """Pictures of `count` samples spread evenly over the split, drawn from the raw data
    (keyframe images at their stored size, all sweeps the config uses)."""
    from ..datasets.io import DataError
    from ..datasets.nuscenes import NuScenesDataset

    if count <= 0:
        return []

    def dataset(load_images: bool) -> NuScenesDataset:
        return NuScenesDataset(
            config.data.root,
            config.data.version,
            split,
            sweeps=config.data.sweeps,
            sweep_stride=config.data.sweep_stride,
            clip_frames=1,
            max_sweep_age=config.data.max_sweep_age,
            max_clip_frame_age=config.data.max_clip_frame_age,
            cameras=config.data.cameras,
            load_images=load_images,
        )

    data = dataset(True)
    n = len(data)
    picks = sorted({round(i * (n - 1) / max(1, count - 1)) for i in range(min(count, n))})
    out = []
    for i in picks:
        try:
            sample = data[i]
        except DataError:  # no images on disk: BEV only
            sample = dataset(False)[i]
        out.append(
            draw_sample_pictures(sample, detections[sample.token], score_threshold=score_threshold)
        )
    return out


def _distill_picture(
    model: nn.Module, config: ExperimentConfig, dataset, checkpoint: Path
) -> tuple[bytes | None, str | None]:
    """A distilled camera student's BEV maps beside its teacher's (`train.teacher` of the test
    config, else of the config the checkpoint was trained with) for the split's first sample:
    (PNG, None), (None, why not drawn), or (None, None) for a model that is not a distilled
    student. Never fatal: the report says what went wrong."""
    if getattr(model, "distiller", None) is None or len(dataset) == 0:
        return None, None
    teacher = config.train.teacher
    if not teacher:
        try:
            teacher = read_config(checkpoint).train.teacher
        except CheckpointError:
            teacher = None
    if not teacher:
        return None, None
    from ..datasets.collate import collate_samples
    from ..models.distill import load_teacher
    from ..visualization.distill import distill_figure_png

    try:
        load_teacher(model, teacher)
        device = next(model.parameters()).device
        batch = collate_samples([dataset[0]]).to(device)
        return distill_figure_png(model, batch), None
    except Exception as exc:  # the picture is an extra: the metrics stand without it
        return None, f"not drawn: {exc}"


def evaluate_checkpoint(
    config: ExperimentConfig,
    checkpoint: str | Path,
    *,
    split: str | None = None,
    out_dir: str | Path,
    drop_sensors: Sequence[str] = (),
    robustness: bool = False,
    progress: bool = True,
    device: torch.device | str | None = None,
    batch_size: int = 1,
    workers: int = 0,
    num_pictures: int = 4,
    picture_score_threshold: float = 0.3,
    range_bands: Sequence[tuple[float, float]] | None = DEFAULT_RANGE_BANDS,
    command: str = "",
    prepare: Callable[[torch.nn.Module], None] | None = None,
) -> EvalOutcome:
    """Runs the whole test (module docstring). `split` defaults to `data.val_split`.
    `prepare` is called on the loaded model before inference (tools/test.py's `--precision`
    sets its decode backend there); the report names the model's `precision`.

    Raises `CheckpointNotFoundError` (a `FileNotFoundError` too) for a missing checkpoint,
    `CheckpointError` for one that does not fit the config's model, `SplitError` for an unknown split, `ValueError` for an unknown
    sensor to drop. A model that kept no box in any sample gets the devkit's all-zero
    metrics (`evaluate_no_boxes`) and `EvalOutcome.note` says why. An evaluation the devkit
    cannot run does not raise: `EvalOutcome.metrics` is None and `eval_error` says why;
    everything else is still written.
    """
    from ..config import save_config
    from ..datasets.pipeline import build_dataset

    split = split or config.data.val_split
    out_dir = Path(out_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokens = split_sample_tokens(config.data.root, config.data.version, split)  # SplitError
    model, info = load_model(checkpoint, config, device=device)
    if prepare is not None:
        prepare(model)
    dataset = build_dataset(config, split, train=False)
    main = distributed.is_main_process()

    nusc = None
    if main:
        from nuscenes import NuScenes

        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
        nusc = NuScenes(config.data.version, str(config.data.root), verbose=False)

    def infer(drop: Sequence[str], description: str) -> InferenceResult:
        return run_inference(
            model,
            dataset,
            device=device,
            batch_size=batch_size,
            workers=workers,
            drop_sensors=drop,
            progress=progress,
            description=description,
        )

    result = infer(drop_sensors, "test")
    rows: list[RobustnessRow] = []
    if robustness:
        for name, drop in ROBUSTNESS_SETTINGS.items():
            setting = result if tuple(drop) == result.drop_sensors else infer(drop, name)
            if not main:
                continue
            _, metrics, error, _ = _write_and_evaluate(
                setting,
                model,
                config,
                split=split,
                out_dir=out_dir / "robustness" / _slug(name),
                tokens=tokens,
                nusc=nusc,
                range_bands=None,
            )
            rows.append(
                RobustnessRow(
                    name=name,
                    drop_sensors=tuple(drop),
                    map=metrics.map if metrics else None,
                    nds=metrics.nds if metrics else None,
                    error=error,
                )
            )
    if not main:
        return EvalOutcome(None, None, None, None, out_dir)

    results_path, metrics, error, note = _write_and_evaluate(
        result,
        model,
        config,
        split=split,
        out_dir=out_dir,
        tokens=tokens,
        nusc=nusc,
        range_bands=range_bands,
    )
    latency = result.latency()
    run_info = {
        "checkpoint": str(info.path),
        "step": "unknown" if info.step is None else str(info.step),
        "decoder + head": getattr(model, "precision", "float32"),
        "data": f"{config.data.root} ({config.data.version}, split {split}, {len(tokens)} samples)",
        "sensors dropped": ", ".join(result.drop_sensors) or "none",
        "device": f"{device} x {result.world_size} process(es)",
        "results": str(results_path.resolve()),
        "command": command,
    }
    (out_dir / "latency.json").write_text(
        json.dumps({"latency_ms": latency, "run": run_info}, indent=2)
    )
    details = None
    if metrics is not None and (out_dir / "metrics_details.json").is_file():
        details = json.loads((out_dir / "metrics_details.json").read_text())
    pictures = _pictures(config, split, result.detections(), num_pictures, picture_score_threshold)
    distill_png, distill_note = _distill_picture(model, config, dataset, info.path)
    report = ReportData(
        title=f"{config.name}: {split}",
        metrics=metrics,
        eval_error=error,
        metrics_details=details,
        latency=latency,
        robustness=rows,
        pictures=pictures,
        config_yaml=yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False),
        training=load_training_summary(info.path),
        run_info=run_info,
        score_threshold=picture_score_threshold,
        note=note,
        distill_picture=distill_png,
        distill_note=distill_note,
    )
    report_path = write_report(out_dir / REPORT_FILE, report)
    return EvalOutcome(metrics, error, results_path, report_path, out_dir, note)
