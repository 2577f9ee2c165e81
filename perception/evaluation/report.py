"""A self-contained HTML report of one evaluation run (`report.html`).

One file, no external assets: the plots (matplotlib, Agg backend) and pictures are PNGs
embedded as `data:image/png;base64,...`, the styling is inline. Sections, each an `<h2>` with an
`id`: `summary` (mAP, NDS, the five mean TP errors), `per-class` (AP and TP errors per class),
`pr-curves` (the devkit's precision-recall curves per class and match distance, from its
`metrics_details.json`), `distance` (AP by distance from the ego), `bev` (LiDAR points in grey,
GT boxes in class colours, predictions in green, seen from above), `cameras` (the six images
with GT and predicted boxes projected through the sample's calibration), `latency` (per-stage
mean / p50 / p90 ms), `robustness` (mAP / NDS with sensors dropped, when run), `run` (checkpoint,
step, data, command) and `config` (the resolved YAML).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..structures import CLASS_NAMES, Detections, Sample
from .inference import STAGE_TITLES, STAGES
from .nuscenes_eval import TP_ERROR_NAMES, DetectionMetrics

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
    config_yaml: str = ""
    run_info: dict[str, str] = field(default_factory=dict)  # shown as a key/value table
    score_threshold: float = 0.3  # predictions drawn in the pictures score at least this
    note: str | None = None  # shown under the headline metrics: what a reader must know


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
    for ax, c in zip(axes.flat, classes):
        keys = sorted(
            (k for k in metrics_details if k.split(":")[0] == c),
            key=lambda k: float(k.split(":")[1]),
        )
        for k in keys:
            data = metrics_details[k]
            ax.plot(data["recall"], data["precision"], label=f"{float(k.split(':')[1]):g} m")
        ax.set_title(c, fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(classes) :]:
        ax.axis("off")
    fig.tight_layout()
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
        ax.bar(x + i * width, np.nan_to_num(values, nan=0.0), width, label=band.name)
    ax.set_xticks(x + width * (len(bands) - 1) / 2)
    ax.set_xticklabels(classes, rotation=20, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AP")
    ax.legend(fontsize=8)
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
        "LiDAR points grey (brighter: newer sweeps), range rings every 10 m. Ground truth solid, "
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
        _latency_section(data),
        _robustness_section(data),
        '<h2 id="run">Run</h2>',
        _table(["", ""], [[k, v] for k, v in data.run_info.items()], numeric_from=99),
        '<h2 id="config">Config</h2>',
        f"<pre>{html.escape(data.config_yaml)}</pre>",
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
