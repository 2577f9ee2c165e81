"""A self-contained HTML report of one evaluation run (`report.html`).

One file, no external assets: the plots (matplotlib, Agg backend) and pictures are PNGs
embedded as `data:image/png;base64,...`, the styling is inline. Sections, each an `<h2>` with an
`id`: `summary` (mAP, NDS, the five mean TP errors), `per-class` (AP and TP errors per class),
`pr-curves` (the devkit's precision-recall curves per class and match distance, from its
`metrics_details.json`), `distance` (AP by distance from the ego), `bev` (LiDAR points in grey,
GT boxes solid and predictions dashed with their score, in class colours, seen from above),
`cameras` (the six images with GT and predicted boxes projected through the sample's
calibration), `latency` (per-stage mean / p50 / p90 ms), `robustness` (mAP / NDS with sensors
dropped, when run), `run` (checkpoint, step, data, command), `training` (the checkpoint's
training summary: steps, wall time, loss terms by class group, loss and LR curves from the
run's log.jsonl) and `config` (the checkpoint's YAML as trained, and what the test changed).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import CONFIG_FILE, CheckpointError, read_training_state, work_dir_of
from ..structures import CLASS_NAMES, Detections, Sample
from .inference import STAGE_TITLES, STAGES
from .nuscenes_eval import TP_ERROR_NAMES, DetectionMetrics

# A colour-blind-safe cycle (Okabe-Ito) for lines on the white plots.
PLOT_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000",
               "#F0E442")  # fmt: skip
_TP_UNITS = {"mATE": "m", "mASE": "1-IoU", "mAOE": "rad", "mAVE": "m/s", "mAAE": "1-acc"}


@dataclass(frozen=True)
class SamplePicture:
    """Pictures of one sample, PNG bytes; `cameras` is None when no image could be drawn."""

    token: str
    bev: bytes
    cameras: bytes | None
    num_predictions_shown: int
    num_gt: int


@dataclass(frozen=True)
class RobustnessRow:
    """One sensor setting of the robustness study."""

    name: str
    drop_sensors: tuple[str, ...]
    map: float | None  # None: not evaluated (see `error`)
    nds: float | None
    error: str | None = None


@dataclass(frozen=True)
class TrainingSummary:
    """Where the tested weights came from: the checkpoint's own config and training state and
    the run's `log.jsonl` (see `load_training_summary`)."""

    checkpoint: str  # the checkpoint directory
    config_yaml: str | None  # the checkpoint's config.yaml as saved at training time
    step: int | None
    epoch: int | None
    planned_steps: int | None  # the schedule's length (a time budget may shorten it)
    train_seconds: float | None  # training-loop wall time up to this checkpoint
    log_path: str | None  # the run's log.jsonl, when found
    records: tuple[dict[str, Any], ...] = ()  # step records up to the checkpoint, by step
    events: tuple[dict[str, Any], ...] = ()  # other log records (plans, camera joining, ...)
    skipped_lines: int = 0  # log lines that were not JSON objects (counted, not fatal)
    problems: tuple[str, ...] = ()  # what could not be read, each naming its file


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows. `metrics` None means the evaluation could not run
    (`eval_error` says why); the rest of the report is still written."""

    title: str
    metrics: DetectionMetrics | None
    eval_error: str | None = None
    metrics_details: dict[str, Any] | None = None  # the devkit's metrics_details.json
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    robustness: Sequence[RobustnessRow] = ()
    pictures: Sequence[SamplePicture] = ()
    config_yaml: str = ""  # the config the test ran with
    training: TrainingSummary | None = None  # the checkpoint's provenance, when known
    run_info: dict[str, str] = field(default_factory=dict)  # shown as a key/value table
    score_threshold: float = 0.3  # predictions drawn in the pictures score at least this
    note: str | None = None  # shown under the headline metrics: what a reader must know
    # a distilled camera student: its BEV maps beside its teacher's (one sample), or why not
    distill_picture: bytes | None = None
    distill_note: str | None = None


# --------------------------------------------------------------------------------------
# Training provenance


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_step_record(record: dict[str, Any]) -> bool:
    """A log.jsonl line of a training step: a number for `loss`, every term of `losses` and
    `lr` (when present)."""
    losses = record.get("losses")
    return (
        _is_number(record.get("loss"))
        and isinstance(losses, dict)
        and all(_is_number(v) for v in losses.values())
        and _is_number(record.get("lr", 0.0))
    )


def load_training_summary(checkpoint: str | Path) -> TrainingSummary:
    """Reads a checkpoint directory's `config.yaml` and `training_state.json` and its run's
    `log.jsonl` (two levels up, ``<work_dir>/checkpoints/step_<N>``, or beside it). Never
    raises on bad files: what cannot be read is listed in `problems` (naming the file), and
    log lines that are not JSON objects are counted in `skipped_lines`. Step records after the
    checkpoint's step are left out (a run may have gone on past it); a step logged twice
    (a resumed run repeats the steps after its last checkpoint) keeps its last record."""
    directory = Path(checkpoint)
    problems: list[str] = []
    config_yaml = None
    config_path = directory / CONFIG_FILE  # as written at training time, not re-serialized
    try:
        config_yaml = config_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{config_path}: {exc.__class__.__name__}: {exc}")
    step = epoch = planned = None
    seconds = None
    try:
        state = read_training_state(directory)
        step, epoch = state["step"], state["epoch"]
        planned, seconds = state["extra"].get("planned_steps"), state["extra"].get("train_seconds")
    except CheckpointError as exc:
        problems.append(str(exc))

    work_dir = work_dir_of(directory)
    log_path = work_dir / "log.jsonl"
    by_step: dict[int, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    skipped = 0
    if log_path.is_file():
        try:
            lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            problems.append(f"{log_path}: {exc.__class__.__name__}: {exc}")
            lines = []
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                skipped += 1  # e.g. the last line of a killed run, cut short
                continue
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                skipped += 1
                continue
            if step is not None and record["step"] > step:
                continue
            if "loss" not in record and "losses" not in record:
                events.append(record)  # a plan, the camera joining, init_from, ...
            elif _is_step_record(record):
                by_step[record["step"]] = record
            else:
                skipped += 1  # a step record with a value that is not a number
    else:
        problems.append(f"{log_path}: not found (no training curves)")
    return TrainingSummary(
        checkpoint=str(directory),
        config_yaml=config_yaml,
        step=step if isinstance(step, int) else None,
        epoch=epoch if isinstance(epoch, int) else None,
        planned_steps=planned if isinstance(planned, int) else None,
        train_seconds=float(seconds) if isinstance(seconds, int | float) else None,
        log_path=str(log_path) if log_path.is_file() else None,
        records=tuple(by_step[k] for k in sorted(by_step)),
        events=tuple(events),
        skipped_lines=skipped,
        problems=tuple(problems),
    )


def loss_term_title(name: str) -> str:
    """A loss term's name with its head task named by its class group:
    `heatmap/task1` -> `heatmap/truck+construction_vehicle` (CenterPoint's nuScenes grouping,
    the only one the heads use); other names as they are."""
    from ..models.heads.tasks import NUSCENES_TASKS

    kind, _, task = name.rpartition("/")
    if kind and task.startswith("task") and task[4:].isdigit():
        t = int(task[4:])
        if t < len(NUSCENES_TASKS):
            return f"{kind}/{'+'.join(NUSCENES_TASKS[t].class_names)}"
    return name


def _split_loss_terms(
    names: Sequence[str],
) -> tuple[dict[str, list[str]], dict[str, dict[str, str]], list[str]]:
    """Loss term names -> (kind -> its names, e.g. heatmap; class group -> kind -> name, in the
    head's task order; the names of no head task, e.g. depth)."""
    kinds: dict[str, list[str]] = {}
    groups: dict[str, dict[str, str]] = {}
    loose: list[str] = []
    # task order: "heatmap/task1" sorts by "task1" (at most 6 tasks: one digit)
    for name in sorted(names, key=lambda n: (n.rpartition("/")[2], n)):
        title = loss_term_title(name)
        kind, _, group = title.rpartition("/")
        kinds.setdefault(kind or title, []).append(name)
        if kind and title != name:
            groups.setdefault(group, {})[kind] = name
        else:
            loose.append(name)
    order = ("heatmap", "bbox", "dir", "attr")  # the head's order; other kinds after
    kinds = dict(sorted(kinds.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9))
    return kinds, groups, loose


def training_curves_png(records: Sequence[dict[str, Any]]) -> bytes:
    """Three panels over the steps of `records` (log.jsonl step records): the total loss and
    its sum per kind of term (heatmap, bbox, ...), the loss per class group (every term of a
    head task), and the learning rate. Losses on a log scale; legends beside the panels."""
    plt = _pyplot()
    steps = np.array([r["step"] for r in records])
    names = sorted({k for r in records for k in r["losses"]})

    def series(keys: Sequence[str]) -> np.ndarray:
        return np.array([sum(float(r["losses"].get(k, 0.0)) for k in keys) for r in records])

    kinds, groups, _ = _split_loss_terms(names)

    fig, axes = plt.subplots(3, 1, figsize=(10, 8.4), sharex=True)
    ax = axes[0]
    ax.plot(steps, [float(r["loss"]) for r in records], color="#000000", lw=2, label="total")
    for i, (kind, keys) in enumerate(kinds.items()):
        ax.plot(steps, series(keys), color=PLOT_COLORS[i % 6], lw=1.2, label=kind)
    ax.set_ylabel("loss")
    ax.set_title("loss by kind of term", fontsize=10, loc="left")
    ax = axes[1]
    for i, (group, terms) in enumerate(groups.items()):
        style = "-" if i < 6 else "--"
        ax.plot(
            steps, series(list(terms.values())), color=PLOT_COLORS[i % 6], ls=style, lw=1.2,
            label=group,
        )  # fmt: skip
    ax.set_ylabel("loss")
    ax.set_title(
        "loss by class group (all terms of the group's head task)", fontsize=10, loc="left"
    )
    for ax in axes[:2]:
        if ax.lines and all((np.asarray(line.get_ydata()) > 0).all() for line in ax.lines):
            ax.set_yscale("log")
    ax = axes[2]
    ax.plot(steps, [float(r.get("lr", math.nan)) for r in records], color=PLOT_COLORS[0])
    ax.set_ylabel("learning rate")
    ax.set_xlabel("step")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3), useMathText=True)
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _figure_png(fig)


# --------------------------------------------------------------------------------------
# Images


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def rgb_to_png(image: np.ndarray) -> bytes:
    """`[H, W, 3]` uint8 RGB -> PNG bytes."""
    import cv2

    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display; the report needs only PNG bytes
    import matplotlib.pyplot as plt

    return plt


def pr_curves_png(metrics_details: dict[str, Any], classes: Sequence[str] = CLASS_NAMES) -> bytes:
    """One panel per class: the devkit's precision-recall curve at each match distance
    (`metrics_details["<class>:<distance>"]` with `recall` and `precision` lists)."""
    plt = _pyplot()
    cols = 5
    rows = math.ceil(len(classes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    legend = None
    for ax, c in zip(axes.flat, classes):
        keys = sorted(
            (k for k in metrics_details if k.split(":")[0] == c),
            key=lambda k: float(k.split(":")[1]),
        )
        for i, k in enumerate(keys):
            data = metrics_details[k]
            ax.plot(
                data["recall"],
                data["precision"],
                color=PLOT_COLORS[i % len(PLOT_COLORS)],
                label=f"{float(k.split(':')[1]):g} m",
            )
        ax.set_title(c, fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if keys and not legend:
            legend = ax.get_legend_handles_labels()
    for ax in list(axes.flat)[len(classes) :]:
        ax.axis("off")
    fig.tight_layout()
    if legend:  # one legend for all panels, above them: never on a curve
        fig.legend(
            *legend,
            title="match distance",
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            ncol=len(legend[0]),
            fontsize=9,
            title_fontsize=9,
            frameon=False,
        )
    return _figure_png(fig)


def range_bands_png(metrics: DetectionMetrics) -> bytes:
    """Grouped bars: AP per class in each distance band (NaN bands left empty)."""
    plt = _pyplot()
    bands = metrics.range_bands
    classes = list(metrics.class_ap)
    fig, ax = plt.subplots(figsize=(11, 3.2))
    width = 0.8 / max(1, len(bands))
    x = np.arange(len(classes))
    for i, band in enumerate(bands):
        values = [band.class_ap.get(c, math.nan) for c in classes]
        ax.bar(
            x + i * width,
            np.nan_to_num(values, nan=0.0),
            width,
            label=band.name,
            color=PLOT_COLORS[i % len(PLOT_COLORS)],
        )
    ax.set_xticks(x + width * (len(bands) - 1) / 2)
    ax.set_xticklabels(classes, rotation=20, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AP")
    ax.legend(
        fontsize=8, title="distance", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _figure_png(fig)


def draw_sample_pictures(
    sample: Sample,
    detections: Detections,
    *,
    score_threshold: float = 0.3,
    extent: float = 54.0,
    bev_size: int = 560,
    camera_width: int = 320,
) -> SamplePicture:
    """BEV and camera pictures of `sample`: GT solid, the predictions scoring at least
    `score_threshold` dashed with their score, both in class colours. `sample` carries its
    keyframe images (and `image_aug`) when the camera picture is wanted; the predictions are in
    its keyframe LiDAR frame, as the sample (not augmented)."""
    from ..visualization.sample import draw_bev, draw_cameras

    keep = detections.scores >= score_threshold
    predictions = (
        detections.boxes[keep].to(sample.gt_boxes.tensor.dtype),
        detections.labels[keep],
        detections.scores[keep],
    )
    bev = draw_bev(sample, predictions, extent=extent, size=bev_size)
    cameras = None
    if sample.images.shape[-1] > 1:  # 1x1 placeholders: images were not loaded
        cameras = rgb_to_png(draw_cameras(sample, predictions, width=camera_width))
    return SamplePicture(
        token=sample.token,
        bev=rgb_to_png(bev),
        cameras=cameras,
        num_predictions_shown=int(keep.sum()),
        num_gt=len(sample.gt_boxes),
    )


# --------------------------------------------------------------------------------------
# HTML


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    """An HTML table; cells are escaped; columns from `numeric_from` align right."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            ('<td class="num">' if i >= numeric_from else "<td>") + f"{html.escape(str(v))}</td>"
            for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(png: bytes, alt: str, width: str = "100%") -> str:
    return f'<img src="{png_data_uri(png)}" alt="{html.escape(alt)}" style="max-width:{width}">'


_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 24px;
       color: #222; max-width: 1400px; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px;
       margin-top: 32px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; } th { background: #f3f3f3; }
table.kv th { text-align: left; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.headline { display: flex; gap: 16px; flex-wrap: wrap; }
.metric { border: 1px solid #ddd; border-radius: 6px; padding: 8px 16px; min-width: 90px; }
.metric .v { font-size: 26px; font-weight: 600; } .metric .k { color: #666; font-size: 13px; }
.error { color: #a00; font-weight: 600; } .note { color: #666; font-size: 13px; }
pre { background: #f7f7f7; padding: 12px; overflow-x: auto; font-size: 12px; }
figure { margin: 12px 0; } figcaption { color: #555; font-size: 13px; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; } .grid figure { width: 560px; }
.swatch { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 10px;
       vertical-align: middle; border: 1px solid #444; }
"""


def _summary_section(data: ReportData) -> str:
    parts = ['<h2 id="summary">Summary</h2>']
    m = data.metrics
    if m is None:
        parts.append(f'<p class="error">Not evaluated: {html.escape(data.eval_error or "")}</p>')
        return "\n".join(parts)
    cards = [("mAP", m.map), ("NDS", m.nds)] + list(m.tp_errors.items())
    cells = []
    for key, value in cards:
        unit = f" ({_TP_UNITS[key]})" if key in _TP_UNITS else ""
        cells.append(
            f'<div class="metric"><div class="v">{_fmt(value, 4)}</div>'
            f'<div class="k">{html.escape(key + unit)}</div></div>'
        )
    parts.append(f'<div class="headline">{"".join(cells)}</div>')
    if data.note:
        parts.append(f'<p class="note">Note: {html.escape(data.note)}</p>')
    return "\n".join(parts)


def _per_class_section(m: DetectionMetrics) -> str:
    header = ["class", "GT", "pred", "AP", "ATE (m)", "ASE", "AOE (rad)", "AVE (m/s)", "AAE"]
    rows = []
    for c, ap in m.class_ap.items():
        errors = m.class_tp_errors[c]
        rows.append(
            [
                c,
                str(m.class_num_gt.get(c, "")),
                str(m.class_num_pred.get(c, "")),
                _fmt(ap),
                *(_fmt(errors[k]) for k in TP_ERROR_NAMES),
            ]
        )
    distances = sorted({d for per in m.class_ap_by_distance.values() for d in per})
    by_distance = [
        [c, *(_fmt(per[d]) for d in distances)] for c, per in m.class_ap_by_distance.items()
    ]
    return "\n".join(
        [
            '<h2 id="per-class">Per class</h2>',
            _table(header, rows),
            '<p class="note">GT and pred: boxes kept by the devkit\'s filters. n/a: the devkit '
            "defines no such error for the class.</p>",
            "<h3>AP by match distance</h3>",
            _table(["class", *(f"{d:g} m" for d in distances)], by_distance),
        ]
    )


def _pr_section(data: ReportData) -> str:
    parts = ['<h2 id="pr-curves">Precision-recall curves</h2>']
    if not data.metrics_details:
        parts.append('<p class="note">No curve data (the evaluation did not run).</p>')
        return "\n".join(parts)
    classes = list(data.metrics.class_ap) if data.metrics else list(CLASS_NAMES)
    parts.append(
        f"<figure>{_img(pr_curves_png(data.metrics_details, classes), 'PR curves')}"
        "<figcaption>The devkit's precision-recall curves (101 recall points), one line per "
        "match distance.</figcaption></figure>"
    )
    return "\n".join(parts)


def _distance_section(data: ReportData) -> str:
    parts = ['<h2 id="distance">AP by distance from the ego</h2>']
    m = data.metrics
    if m is None or not m.range_bands:
        parts.append('<p class="note">Not computed.</p>')
        return "\n".join(parts)
    bands = m.range_bands
    rows = [["mAP", *(_fmt(b.map) for b in bands)]]
    rows += [[c, *(_fmt(b.class_ap.get(c, math.nan)) for b in bands)] for c in m.class_ap]
    rows.append(["GT boxes", *(str(sum(b.class_num_gt.values())) for b in bands)])
    rows.append(["predictions", *(str(sum(b.class_num_pred.values())) for b in bands)])
    parts += [
        _table(["class", *(b.name for b in bands)], rows),
        '<p class="note">GT and predictions whose centre lies in the band (ground-plane distance '
        "from the ego) are matched as in the overall AP (devkit accumulate / calc_ap, mean over "
        "the match distances). n/a: no GT of the class in the band; mAP averages the classes "
        "with GT in it.</p>",
        f"<figure>{_img(range_bands_png(m), 'AP by distance band')}</figure>",
    ]
    return "\n".join(parts)


def _pictures_sections(data: ReportData) -> str:
    bev = ['<h2 id="bev">Bird\'s-eye view: predictions vs ground truth</h2>']
    cams = ['<h2 id="cameras">Cameras with projected predictions</h2>']
    caption = (
        "LiDAR points grey (brighter: newer sweeps), range rings every 10 m. Ground truth (the "
        "boxes the evaluation scores: within their class's range, with LiDAR points) solid, "
        f"predictions scoring >= {data.score_threshold:g} dashed with their score (class and "
        "score on the cameras), both in their class's colour; a tick marks each box's front in "
        "the BEV, a cross its front face on the cameras."
    )
    from ..visualization.sample import CLASS_COLORS

    legend = "".join(
        f'<span class="swatch" style="background:rgb{tuple(rgb)}"></span>{html.escape(name)} '
        for name, rgb in CLASS_COLORS.items()
    )
    bev.append(f'<p class="note">{html.escape(caption)}<br>{legend}</p>')
    if not data.pictures:
        bev.append('<p class="note">No sample drawn.</p>')
    grid = []
    for p in data.pictures:
        what = f"sample {p.token}: {p.num_gt} GT, {p.num_predictions_shown} predictions shown"
        grid.append(
            f"<figure>{_img(p.bev, 'BEV ' + p.token, '560px')}"
            f"<figcaption>{html.escape(what)}</figcaption></figure>"
        )
    bev.append(f'<div class="grid">{"".join(grid)}</div>')
    for p in data.pictures:
        what = f"sample {p.token}: {p.num_gt} GT, {p.num_predictions_shown} predictions shown"
        if p.cameras is not None:
            cams.append(
                f"<figure>{_img(p.cameras, 'cameras ' + p.token)}"
                f"<figcaption>{html.escape(what)}</figcaption></figure>"
            )
    if len(cams) == 1:
        cams.append('<p class="note">No camera images (LiDAR-only data or model).</p>')
    return "\n".join(bev + cams)


def _distill_section(data: ReportData) -> str:
    """The student's BEV maps beside the teacher's; nothing for a model without a teacher."""
    if data.distill_picture is None and data.distill_note is None:
        return ""
    parts = ["<h2 id=\"distillation\">Distillation: the student's BEV beside its teacher's</h2>"]
    if data.distill_picture is not None:
        caption = (
            "One sample. Per distilled map: the student's map through its adapter, the LiDAR "
            "teacher's map (each cell's RMS over channels, one colour scale for both), their "
            "squared difference and the loss's cell weights; then both heatmaps."
        )
        parts.append(f'<p class="note">{html.escape(caption)}</p>')
        parts.append(f"<figure>{_img(data.distill_picture, 'student vs teacher BEV')}</figure>")
    else:
        parts.append(f'<p class="note">{html.escape(data.distill_note or "")}</p>')
    return "\n".join(parts)


def _latency_section(data: ReportData) -> str:
    parts = ['<h2 id="latency">Latency per stage</h2>']
    if not data.latency:
        parts.append('<p class="note">Not measured.</p>')
        return "\n".join(parts)
    rows = [
        [STAGE_TITLES.get(s, s), _fmt(v["mean"], 1), _fmt(v["p50"], 1), _fmt(v["p90"], 1)]
        for s in STAGES
        if (v := data.latency.get(s))
    ]
    parts += [
        _table(["stage", "mean (ms)", "p50 (ms)", "p90 (ms)"], rows),
        '<p class="note">Per sample; stages timed by forward hooks on the detector\'s parts '
        "(device synchronized on CUDA). The first samples include warm-up.</p>",
    ]
    return "\n".join(parts)


def _robustness_section(data: ReportData) -> str:
    parts = ['<h2 id="robustness">Robustness to missing sensors</h2>']
    if not data.robustness:
        parts.append('<p class="note">Not run (pass --robustness).</p>')
        return "\n".join(parts)
    rows = [
        [
            r.name,
            ", ".join(r.drop_sensors) or "-",
            _fmt(r.map, 4),
            _fmt(r.nds, 4),
            r.error or "",
        ]
        for r in data.robustness
    ]
    parts.append(_table(["setting", "dropped", "mAP", "NDS", "note"], rows, numeric_from=2))
    return "\n".join(parts)


def _key_value_table(items) -> str:
    """A two-column table, the keys as row headers (no empty header row)."""
    rows = "".join(
        f'<tr><th scope="row">{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>'
        for k, v in items
    )
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {s:02d} s" if hours else f"{minutes} min {s:02d} s"


def _training_section(data: ReportData) -> str:
    parts = ['<h2 id="training">Training</h2>']
    t = data.training
    if t is None:
        parts.append('<p class="note">Not known: the report was not given a checkpoint.</p>')
        return "\n".join(parts)
    last = t.records[-1] if t.records else None
    step = "unknown" if t.step is None else str(t.step)
    if t.step is not None and t.planned_steps is not None:
        step += f" of {t.planned_steps} planned"
    items = [
        ("checkpoint", t.checkpoint),
        ("step", step),
        ("epoch", "unknown" if t.epoch is None else f"{t.epoch} (counted from 0)"),
        (
            "training wall time",
            "unknown" if t.train_seconds is None else _duration(t.train_seconds),
        ),
    ]
    if last is not None:
        items += [
            ("final loss", f"{last['loss']:.4f} (step {last['step']})"),
            ("final learning rate", f"{float(last.get('lr', math.nan)):.3g}"),
        ]
        if isinstance(last.get("samples_per_s"), int | float):
            items.append(("throughput", f"{last['samples_per_s']:.2f} samples/s (last log)"))
    for event in t.events:
        what = {k: v for k, v in event.items() if k != "step"}
        items.append((f"log, step {event['step']}", json.dumps(what)))
    items.append(("log", t.log_path or "not found"))
    if t.skipped_lines:
        items.append(("log lines skipped", f"{t.skipped_lines} (not JSON, or values not numbers)"))
    parts.append(_key_value_table(items))
    for problem in t.problems:
        parts.append(f'<p class="note">{html.escape(problem)}</p>')
    if t.records:
        first = t.records[0]
        kinds, groups, loose = _split_loss_terms({k for r in t.records for k in r["losses"]})
        task_kinds = [k for k in kinds if any(k in terms for terms in groups.values())]

        def change(name: str | None) -> str:
            if name is None:
                return "-"
            a, b = first["losses"].get(name), last["losses"].get(name)
            return f"{_fmt(a, 4)} \u2192 {_fmt(b, 4)}"

        rows = [
            [group, *(change(terms.get(k)) for k in task_kinds)] for group, terms in groups.items()
        ]
        rows += [[name, change(name), *([""] * (len(task_kinds) - 1))] for name in loose]
        rows.append(["total", f"{_fmt(first['loss'], 4)} \u2192 {_fmt(last['loss'], 4)}",
                     *([""] * (len(task_kinds) - 1))])  # fmt: skip
        header = ["class group / term", *(task_kinds or ["loss"])]
        parts += [
            f"<h3>Loss terms, step {first['step']} \u2192 step {last['step']}</h3>",
            _table(header, rows),
            '<p class="note">The detection head\'s terms per class group (its task); other '
            "terms and the total below them.</p>",
            f"<figure>{_img(training_curves_png(t.records), 'training curves')}"
            f"<figcaption>log.jsonl: {len(t.records)} logged steps up to the checkpoint."
            "</figcaption></figure>",
        ]
    return "\n".join(parts)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def _config_section(data: ReportData) -> str:
    import yaml

    parts = ['<h2 id="config">Config</h2>']
    trained = data.training.config_yaml if data.training else None
    if trained is None:
        parts += [
            '<p class="note">The config the test ran with (the checkpoint\'s own was not '
            "found).</p>",
            f"<pre>{html.escape(data.config_yaml)}</pre>",
        ]
        return "\n".join(parts)
    parts.append('<p class="note">The checkpoint\'s config, as it was trained.</p>')
    try:
        before = _flatten(yaml.safe_load(trained) or {})
        after = _flatten(yaml.safe_load(data.config_yaml) or {}) if data.config_yaml else {}
    except yaml.YAMLError as exc:
        parts.append(
            f'<p class="note">Not compared with the test\'s config: {html.escape(str(exc))}</p>'
        )
        before = after = {}
    absent = object()

    def shown(value: Any) -> str:
        return "(absent)" if value is absent else json.dumps(value)

    changed = [
        [key, shown(before.get(key, absent)), shown(after.get(key, absent))]
        for key in sorted(set(before) | set(after))
        if after and before.get(key, absent) != after.get(key, absent)
    ]
    if changed:
        parts += [
            "<h3>Changed for the test</h3>",
            _table(["key", "checkpoint", "test"], changed, numeric_from=99),
        ]
    elif after:
        parts.append('<p class="note">The test ran with this config unchanged.</p>')
    parts.append(f"<pre>{html.escape(trained)}</pre>")
    return "\n".join(parts)


def render_report(data: ReportData) -> str:
    """The report as one HTML string."""
    m = data.metrics
    created = datetime.datetime.now().isoformat(timespec="seconds")
    body = [
        f"<h1>{html.escape(data.title)}</h1>",
        f'<p class="note">written {created}</p>',
        _summary_section(data),
        _per_class_section(m) if m is not None else '<h2 id="per-class">Per class</h2><p>-</p>',
        _pr_section(data),
        _distance_section(data),
        _pictures_sections(data),
        _distill_section(data),
        _latency_section(data),
        _robustness_section(data),
        '<h2 id="run">Run</h2>',
        _key_value_table(data.run_info.items()),
        _training_section(data),
        _config_section(data),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(data.title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(path: str | Path, data: ReportData) -> Path:
    """Writes `render_report(data)` to `path` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(data), encoding="utf-8")
    return path
