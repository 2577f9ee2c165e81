"""Official nuScenes detection metrics: runs nuscenes-devkit's own `DetectionEval` on a
submission JSON and writes what it found.

Every number is the devkit's: this module checks the inputs (so a mistake reads as a sentence,
not as a devkit `AssertionError`), runs `DetectionEval.main`, reads back the devkit's
`metrics_summary.json`, and writes beside it:

- `metrics.json`: `{"format_version", "evaluated": {what was evaluated, with which devkit and
  config, and how many GT/predicted boxes per class survived the devkit's filters},
  "summary": <the devkit's metrics summary, unchanged>}`. Like the devkit's own file it holds
  `NaN` where the devkit defines no error (attribute error of barriers and cones, velocity error
  of barriers and cones, orientation error of cones): Python's `json` reads it back.
- `metrics.md`: mAP, NDS and the five mean TP errors, then per-class AP and TP errors.

The devkit also leaves its own `metrics_summary.json` and `metrics_details.json` (PR curves) in
the output folder, and PR/TP plots under `plots/` when `render_curves` is set.

Units of the TP errors (devkit definitions, at the 2 m match threshold): ATE centre distance
on the ground (m), ASE 1 - IoU of the aligned boxes, AOE smallest yaw difference (rad; period
pi for barriers), AVE ground velocity difference (m/s), AAE 1 - attribute accuracy.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__ as perception_version
from ..structures import CLASS_NAMES
from .splits import is_predefined_split, split_sample_tokens
from .submission import check_submission

if TYPE_CHECKING:
    from nuscenes import NuScenes
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.detection.data_classes import DetectionConfig

METRICS_FORMAT_VERSION = 1

# Devkit TP-error keys -> the names nuScenes reports their class means under.
TP_ERROR_NAMES: dict[str, str] = {
    "trans_err": "mATE",
    "scale_err": "mASE",
    "orient_err": "mAOE",
    "vel_err": "mAVE",
    "attr_err": "mAAE",
}


class EvaluationError(ValueError):
    """Inputs the nuScenes evaluation cannot run on, said in words."""


# Distance bands (m from the ego, ground plane) that `evaluate(..., range_bands=...)` is
# usually asked for; the last edge is the devkit's widest class range.
DEFAULT_RANGE_BANDS: tuple[tuple[float, float], ...] = ((0.0, 20.0), (20.0, 30.0), (30.0, 50.0))


@dataclass(frozen=True)
class RangeBandMetrics:
    """AP of the boxes (GT and predictions alike) whose centre lies `lo <= d < hi` metres from
    the ego (after the devkit's own filters), computed with the devkit's `accumulate` and
    `calc_ap` over the config's match distances, exactly as the overall AP.

    `class_ap[c]` is NaN where the band holds no GT of class `c` (AP is undefined there, and
    counting it as 0, as the devkit does for a class absent from a whole split, would punish a
    band for the class ranges: no cone is ever evaluated beyond 30 m). `map` averages the
    classes with GT in the band; NaN if none has any.
    """

    lo: float  # m
    hi: float  # m
    map: float
    class_ap: dict[str, float]
    class_num_gt: dict[str, int]
    class_num_pred: dict[str, int]

    @property
    def name(self) -> str:
        return f"{self.lo:g}-{self.hi:g} m"

    def to_json(self) -> dict[str, Any]:
        """JSON-able; NaN stays NaN (Python's `json` writes and reads it, as the devkit's files)."""
        return {
            "lo": self.lo,
            "hi": self.hi,
            "map": self.map,
            "class_ap": dict(self.class_ap),
            "num_gt": dict(self.class_num_gt),
            "num_pred": dict(self.class_num_pred),
        }

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> RangeBandMetrics:
        return cls(
            lo=float(content["lo"]),
            hi=float(content["hi"]),
            map=float(content["map"]),
            class_ap={c: float(v) for c, v in content["class_ap"].items()},
            class_num_gt={c: int(v) for c, v in content["num_gt"].items()},
            class_num_pred={c: int(v) for c, v in content["num_pred"].items()},
        )


@dataclass(frozen=True)
class DetectionMetrics:
    """The devkit's detection metrics of one evaluation.

    `map` and `class_ap` average AP over the config's match distances (0.5, 1, 2, 4 m);
    `class_ap_by_distance[c][d]` is one of those APs. TP errors are the devkit's, units in the
    module docstring; `NaN` where the devkit defines none for a class. A class without GT in
    the split gets AP 0 and errors 1 from the devkit, and still counts in the means.
    """

    map: float
    nds: float
    mate: float  # m
    mase: float  # 1 - IoU
    maoe: float  # rad
    mave: float  # m/s
    maae: float  # 1 - accuracy
    class_ap: dict[str, float]
    class_ap_by_distance: dict[str, dict[float, float]]
    class_tp_errors: dict[str, dict[str, float]]  # class -> {"trans_err": ..., "attr_err": ...}
    class_num_gt: dict[str, int]  # GT boxes evaluated, after the devkit's filters
    class_num_pred: dict[str, int]  # predictions evaluated, after the devkit's filters
    summary: dict[str, Any]  # the devkit's metrics summary, as it wrote it
    # AP by distance from the ego, when `evaluate` was asked for bands; empty otherwise.
    range_bands: tuple[RangeBandMetrics, ...] = field(default=())

    @classmethod
    def from_summary(
        cls,
        summary: dict[str, Any],
        class_num_gt: dict[str, int] | None = None,
        class_num_pred: dict[str, int] | None = None,
        range_bands: Sequence[RangeBandMetrics] = (),
    ) -> DetectionMetrics:
        """Reads the devkit's metrics summary (`metrics_summary.json` content)."""
        classes = [c for c in CLASS_NAMES if c in summary["mean_dist_aps"]]
        tp = summary["tp_errors"]
        return cls(
            map=float(summary["mean_ap"]),
            nds=float(summary["nd_score"]),
            mate=float(tp["trans_err"]),
            mase=float(tp["scale_err"]),
            maoe=float(tp["orient_err"]),
            mave=float(tp["vel_err"]),
            maae=float(tp["attr_err"]),
            class_ap={c: float(summary["mean_dist_aps"][c]) for c in classes},
            class_ap_by_distance={
                c: {float(d): float(ap) for d, ap in summary["label_aps"][c].items()}
                for c in classes
            },
            class_tp_errors={
                c: {k: float(summary["label_tp_errors"][c][k]) for k in TP_ERROR_NAMES}
                for c in classes
            },
            class_num_gt=dict(class_num_gt or {}),
            class_num_pred=dict(class_num_pred or {}),
            summary=summary,
            range_bands=tuple(range_bands),
        )

    @property
    def tp_errors(self) -> dict[str, float]:
        """`{"mATE": ..., "mASE": ..., "mAOE": ..., "mAVE": ..., "mAAE": ...}`."""
        return {
            "mATE": self.mate,
            "mASE": self.mase,
            "mAOE": self.maoe,
            "mAVE": self.mave,
            "mAAE": self.maae,
        }


def load_devkit_config(devkit_config: str | Path) -> DetectionConfig:
    """A devkit detection config by name (e.g. `detection_cvpr_2019`) or from a JSON file."""
    from nuscenes.eval.detection.data_classes import DetectionConfig

    path = Path(devkit_config)
    if path.suffix == ".json":
        if not path.is_file():
            raise EvaluationError(f"devkit config file {path} not found")
        with open(path) as f:
            content = json.load(f)
        try:
            return DetectionConfig.deserialize(content)
        except (KeyError, AssertionError) as e:
            raise EvaluationError(f"{path} is not a valid devkit detection config: {e!r}") from e
    import nuscenes.eval.detection as detection

    config_dir = Path(detection.__file__).parent / "configs"
    config_path = config_dir / f"{devkit_config}.json"
    if not config_path.is_file():
        known = sorted(p.stem for p in config_dir.glob("*.json"))
        raise EvaluationError(
            f"unknown devkit config {str(devkit_config)!r}; the devkit has {known} "
            "(or pass a path to a .json config)"
        )
    with open(config_path) as f:
        return DetectionConfig.deserialize(json.load(f))


def devkit_version() -> str:
    return metadata.version("nuscenes-devkit")


@contextlib.contextmanager
def _quiet(verbose: bool):
    """Swallows the devkit's prints and tqdm bars (stdout and stderr) unless `verbose`.
    (Redirects the process's sys.stdout/sys.stderr for the duration.)"""
    if verbose:
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _load_results(results_path: Path) -> dict[str, Any]:
    try:
        with open(results_path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise EvaluationError(f"{results_path} is not valid JSON: {e}") from e


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def format_metrics(metrics: DetectionMetrics, evaluated: dict[str, Any] | None = None) -> str:
    """A Markdown report: the headline metrics, then per-class AP and TP errors."""
    lines = ["# nuScenes detection metrics", ""]
    if evaluated:
        lines += [
            f"- data: `{evaluated['root']}` ({evaluated['version']}, split `{evaluated['split']}`, "
            f"{evaluated['num_samples']} samples)",
            f"- results: `{evaluated['results']}`",
            f"- evaluated by nuscenes-devkit {evaluated['devkit_version']}, "
            f"config `{evaluated['devkit_config']}`",
            "",
        ]
    units = {"mATE": "m", "mASE": "1 - IoU", "mAOE": "rad", "mAVE": "m/s", "mAAE": "1 - acc"}
    lines += ["| metric | value |", "|---|---:|"]
    lines += [f"| mAP | {_fmt(metrics.map)} |", f"| NDS | {_fmt(metrics.nds)} |"]
    lines += [f"| {k} ({units[k]}) | {_fmt(v)} |" for k, v in metrics.tp_errors.items()]
    lines += ["", "## Per class", ""]
    header = ["class", "GT", "pred", "AP", "ATE", "ASE", "AOE", "AVE", "AAE"]
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for c, ap in metrics.class_ap.items():
        errors = metrics.class_tp_errors[c]
        row = [
            c,
            str(metrics.class_num_gt.get(c, "")),
            str(metrics.class_num_pred.get(c, "")),
            _fmt(ap, 3),
            *(_fmt(errors[k], 3) for k in TP_ERROR_NAMES),
        ]
        lines.append("| " + " | ".join(row) + " |")
    distances = sorted({d for per in metrics.class_ap_by_distance.values() for d in per})
    lines += ["", "## AP by match distance", ""]
    header = ["class", *(f"{d:g} m" for d in distances)]
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(distances)]
    for c, per in metrics.class_ap_by_distance.items():
        lines.append("| " + " | ".join([c, *(_fmt(per[d], 3) for d in distances)]) + " |")
    if metrics.range_bands:
        bands = metrics.range_bands
        lines += ["", "## AP by distance from the ego", ""]
        header = ["class", *(b.name for b in bands)]
        lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(bands)]
        lines.append("| " + " | ".join(["**mAP**", *(_fmt(b.map, 3) for b in bands)]) + " |")
        for c in metrics.class_ap:
            cells = [_fmt(b.class_ap.get(c, math.nan), 3) for b in bands]
            lines.append("| " + " | ".join([c, *cells]) + " |")
    lines += [
        "",
        "GT and pred count the boxes the devkit kept after its filters (class range, boxes "
        "without LiDAR/radar points, bicycles in racks). n/a: the devkit defines no such error "
        "for the class."
        + (
            " In the distance table n/a: no GT of the class in that band; mAP "
            "averages the classes with GT in the band."
            if metrics.range_bands
            else ""
        ),
        "",
    ]
    return "\n".join(lines)


def load_metrics(path: str | Path) -> DetectionMetrics:
    """Reads a `metrics.json` written by `evaluate`."""
    with open(path) as f:
        content = json.load(f)
    version = content.get("format_version")
    if version != METRICS_FORMAT_VERSION:
        raise EvaluationError(
            f"{path}: metrics format_version {version!r}, this code reads {METRICS_FORMAT_VERSION}"
        )
    evaluated = content["evaluated"]
    bands = [RangeBandMetrics.from_json(b) for b in content.get("range_bands", [])]
    return DetectionMetrics.from_summary(
        content["summary"], evaluated.get("num_gt"), evaluated.get("num_pred"), bands
    )


def _boxes_in_band(boxes: EvalBoxes, lo: float, hi: float) -> EvalBoxes:
    """The boxes whose centre (ego frame, ground plane) lies `lo <= d < hi` m from the ego;
    every sample token kept (possibly with no box)."""
    from nuscenes.eval.common.data_classes import EvalBoxes

    band = EvalBoxes()
    for token in boxes.sample_tokens:
        band.add_boxes(token, [b for b in boxes[token] if lo <= b.ego_dist < hi])
    return band


def range_band_metrics(
    gt_boxes: EvalBoxes,
    pred_boxes: EvalBoxes,
    config: DetectionConfig,
    bands: Sequence[tuple[float, float]] = DEFAULT_RANGE_BANDS,
) -> tuple[RangeBandMetrics, ...]:
    """AP per class and distance band (see `RangeBandMetrics`), from the devkit's filtered
    GT and prediction boxes (`DetectionEval.gt_boxes` / `.pred_boxes`, which carry
    `ego_translation`)."""
    from nuscenes.eval.detection.algo import accumulate, calc_ap

    out = []
    for lo, hi in bands:
        if not 0 <= lo < hi:
            raise ValueError(f"range band ({lo}, {hi}): need 0 <= lo < hi")
        gt, pred = _boxes_in_band(gt_boxes, lo, hi), _boxes_in_band(pred_boxes, lo, hi)
        num_gt = Counter(b.detection_name for b in gt.all)
        num_pred = Counter(b.detection_name for b in pred.all)
        class_ap: dict[str, float] = {}
        for c in config.class_names:
            if num_gt.get(c, 0) == 0:
                class_ap[c] = math.nan
                continue
            aps = [
                calc_ap(
                    accumulate(gt, pred, c, config.dist_fcn_callable, d),
                    config.min_recall,
                    config.min_precision,
                )
                for d in config.dist_ths
            ]
            class_ap[c] = float(sum(aps) / len(aps))
        defined = [ap for ap in class_ap.values() if not math.isnan(ap)]
        out.append(
            RangeBandMetrics(
                lo=float(lo),
                hi=float(hi),
                map=float(sum(defined) / len(defined)) if defined else math.nan,
                class_ap=class_ap,
                class_num_gt={c: num_gt.get(c, 0) for c in config.class_names},
                class_num_pred={c: num_pred.get(c, 0) for c in config.class_names},
            )
        )
    return tuple(out)


def evaluate(
    root: str | Path,
    version: str,
    split: str,
    results_path: str | Path,
    out_dir: str | Path,
    *,
    devkit_config: str | Path = "detection_cvpr_2019",
    render_curves: bool = False,
    verbose: bool = False,
    nusc: NuScenes | None = None,
    range_bands: Sequence[tuple[float, float]] | None = None,
) -> DetectionMetrics:
    """Evaluates a detection submission with nuscenes-devkit's `DetectionEval`.

    Args:
        root: nuScenes dataroot (real or synthetic).
        version: database version, e.g. `v1.0-trainval`, `v1.0-mini`.
        split: the devkit split to evaluate (`val`, `mini_val`, ... or a custom split in
            `<root>/<version>/splits.json`); the submission must hold exactly its samples.
        results_path: the submission JSON (`perception.evaluation.SubmissionWriter`).
        out_dir: where `metrics.json`, `metrics.md` and the devkit's files go (created).
        devkit_config: a devkit detection config name or a path to a config JSON.
        render_curves: let the devkit draw its PR/TP curves into `out_dir/plots`.
        verbose: let the devkit print (it is silenced otherwise).
        nusc: an already loaded `NuScenes(version, root)` to reuse (loading takes a while on
            the full dataset); loaded here when None.
        range_bands: distance bands `(lo, hi)` m from the ego (e.g. `DEFAULT_RANGE_BANDS`) to
            compute AP in as well (`DetectionMetrics.range_bands`, `metrics.json`'s
            `range_bands`, a table in `metrics.md`); None skips them.

    Returns:
        The devkit's metrics. Raises `FileNotFoundError` for a missing results file,
        `SplitError` for an unknown split or one of another version, `SubmissionError` for a
        malformed submission or one that misses samples of the split, `EvaluationError` for
        anything else the devkit cannot run on.
    """
    from nuscenes import NuScenes
    from nuscenes.eval.detection.evaluate import DetectionEval

    root, results_path, out_dir = Path(root), Path(results_path), Path(out_dir)
    if not results_path.is_file():
        raise FileNotFoundError(f"results file not found: {results_path}")
    if not (root / version).is_dir():
        raise EvaluationError(
            f"{root / version} not found: is {str(root)!r} a nuScenes dataroot with version "
            f"{version!r}?"
        )
    config = load_devkit_config(devkit_config)
    sample_tokens = split_sample_tokens(root, version, split)  # SplitError on a mismatch
    submission = _load_results(results_path)
    check_submission(
        submission,
        sample_tokens,
        max_boxes_per_sample=config.max_boxes_per_sample,
        # For a custom split the devkit keeps only the split's samples of the results.
        allow_extra=not is_predefined_split(split),
    )
    if not any(submission["results"][t] for t in sample_tokens):
        # The devkit's box filter cannot tell the box type of an empty set and fails.
        raise EvaluationError(
            f"{results_path} holds no box in any of the {len(sample_tokens)} samples of split "
            f"{split!r}: the devkit cannot evaluate an empty submission (every AP would be 0)"
        )

    if nusc is None:
        with _quiet(verbose):
            nusc = NuScenes(version=version, dataroot=str(root), verbose=verbose)
    elif nusc.version != version or Path(nusc.dataroot).resolve() != root.resolve():
        raise EvaluationError(
            f"the NuScenes passed holds {nusc.version} at {nusc.dataroot}, not {version} at {root}"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet(verbose):
            detection_eval = DetectionEval(
                nusc,
                config=config,
                result_path=str(results_path),
                eval_set=split,
                output_dir=str(out_dir),
                verbose=verbose,
            )
            detection_eval.main(plot_examples=0, render_curves=render_curves)
    except AssertionError as e:
        raise EvaluationError(f"nuscenes-devkit refused the evaluation: {e}") from e
    plot_dir = out_dir / "plots"
    if not render_curves and plot_dir.is_dir() and not any(plot_dir.iterdir()):
        plot_dir.rmdir()  # the devkit makes it even when it draws nothing

    with open(out_dir / "metrics_summary.json") as f:
        summary = json.load(f)
    num_gt = Counter(b.detection_name for b in detection_eval.gt_boxes.all)
    num_pred = Counter(b.detection_name for b in detection_eval.pred_boxes.all)
    evaluated = {
        "root": str(root.resolve()),
        "version": version,
        "split": split,
        "results": str(results_path.resolve()),
        "num_samples": len(sample_tokens),
        "devkit_version": devkit_version(),
        "devkit_config": str(devkit_config),
        "perception_version": perception_version,
        "num_gt": {c: num_gt.get(c, 0) for c in CLASS_NAMES},
        "num_pred": {c: num_pred.get(c, 0) for c in CLASS_NAMES},
    }
    bands = ()
    if range_bands:
        bands = range_band_metrics(
            detection_eval.gt_boxes, detection_eval.pred_boxes, config, range_bands
        )
    metrics = DetectionMetrics.from_summary(
        summary, evaluated["num_gt"], evaluated["num_pred"], bands
    )
    content = {"format_version": METRICS_FORMAT_VERSION, "evaluated": evaluated, "summary": summary}
    if bands:
        content["range_bands"] = [b.to_json() for b in bands]
    with open(out_dir / "metrics.json", "w") as f:
        json.dump(content, f, indent=2)
    (out_dir / "metrics.md").write_text(format_metrics(metrics, evaluated))
    return metrics
