"""AP by distance band (ground truth as predictions scores 1.0 in every band) and the
self-contained HTML report."""

from __future__ import annotations

import base64
import json
import math
import re

import cv2
import numpy as np
import pytest
import torch
from nuscenes import NuScenes

from perception.datasets.nuscenes import NuScenesDataset
from perception.evaluation import DEFAULT_RANGE_BANDS, evaluate, load_metrics
from perception.evaluation.report import (
    ReportData,
    RobustnessRow,
    draw_sample_pictures,
    render_report,
    write_report,
)
from perception.structures import CLASS_NAMES, Boxes3D, Detections
from perception.visualization.sample import CLASS_COLORS

from .gt_oracle import write_gt_submission

VERSION, SPLIT = "v1.0-mini", "mini_val"
PNG_URI = "data:image/png;base64,"


@pytest.fixture(scope="module")
def nusc(tiny_world) -> NuScenes:
    return NuScenes(VERSION, str(tiny_world), verbose=False)


@pytest.fixture(scope="module")
def oracle_eval(nusc, tiny_world, tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    results = write_gt_submission(nusc, SPLIT, base / "results.json")
    out = base / "eval"
    metrics = evaluate(
        tiny_world, VERSION, SPLIT, results, out, nusc=nusc, range_bands=DEFAULT_RANGE_BANDS
    )
    return metrics, out


def test_ground_truth_scores_one_in_every_distance_band(oracle_eval):
    metrics, out = oracle_eval
    bands = metrics.range_bands
    assert [(b.lo, b.hi) for b in bands] == list(DEFAULT_RANGE_BANDS)
    for band in bands:
        present = [c for c, n in band.class_num_gt.items() if n > 0]
        assert present, band.name
        for c in present:
            assert band.class_ap[c] == pytest.approx(1.0, abs=1e-9), (band.name, c)
            assert band.class_num_pred[c] == band.class_num_gt[c]
        for c in set(band.class_ap) - set(present):
            assert math.isnan(band.class_ap[c]), (band.name, c)
        assert band.map == pytest.approx(1.0, abs=1e-9)
    # The bands partition the evaluated boxes (every class range is <= 50 m).
    for c, n in metrics.class_num_gt.items():
        assert sum(b.class_num_gt[c] for b in bands) == n, c
    # No cone is evaluated beyond 30 m: that band has no AP for cones, rather than 0.
    assert math.isnan(bands[2].class_ap["traffic_cone"])

    again = load_metrics(out / "metrics.json")
    assert [b.class_num_gt for b in again.range_bands] == [b.class_num_gt for b in bands]
    table = (out / "metrics.md").read_text()
    assert "## AP by distance from the ego" in table
    assert "| **mAP** | 1.000 | 1.000 | 1.000 |" in table


def test_missing_predictions_cost_only_their_band(nusc, tiny_world, tmp_path):
    """Predictions of the boxes within 15 m of the sensor moved 1 km away: AP falls in the
    0-20 m band only (the sensor sits within a metre or two of the ego centre)."""

    def move_near(boxes: torch.Tensor) -> torch.Tensor:
        near = boxes[:, :2].norm(dim=1) < 15.0
        boxes[near, 0] += 1000.0
        return boxes

    results = write_gt_submission(nusc, SPLIT, tmp_path / "results.json", perturb=move_near)
    metrics = evaluate(
        tiny_world, VERSION, SPLIT, results, tmp_path / "eval", nusc=nusc, range_bands=[(0, 20), (20, 30), (30, 50)]
    )  # fmt: skip
    near, middle, far = metrics.range_bands
    assert near.map < 0.6
    assert middle.map == pytest.approx(1.0) and far.map == pytest.approx(1.0)
    assert metrics.map < 1.0


def _decode_pngs(page: str) -> list[np.ndarray]:
    images = []
    for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page):
        array = np.frombuffer(base64.b64decode(data), np.uint8)
        image = cv2.imdecode(array, cv2.IMREAD_COLOR)
        assert image is not None
        images.append(image)
    return images


@pytest.fixture(scope="module")
def sample_with_oracle(indexed_world_copy):
    """A raw mini_val sample (keyframe images) and its GT as detections with score 1."""
    root = indexed_world_copy("report", max_sweeps=1, max_clip_frames=1)
    dataset = NuScenesDataset(root, VERSION, SPLIT, sweeps=1, clip_frames=1)
    sample = dataset[0]
    n = len(sample.gt_boxes)
    detections = Detections(
        sample.token, sample.gt_boxes, torch.ones(n), sample.gt_labels, sample.gt_attributes
    )
    return sample, detections


def _png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


def test_pictures_draw_the_confident_predictions(sample_with_oracle):
    sample, detections = sample_with_oracle
    picture = draw_sample_pictures(sample, detections, score_threshold=0.5, bev_size=400)
    assert picture.num_predictions_shown == picture.num_gt == len(sample.gt_boxes) > 0
    bev = _png(picture.bev)
    assert bev.shape == (400, 400, 3)
    cams = _png(picture.cameras)

    # Below the threshold no prediction is drawn: only the GT boxes remain.
    low = Detections(
        detections.sample_token,
        detections.boxes,
        torch.full((len(detections),), 0.2),
        detections.labels,
        detections.attributes,
    )
    none = draw_sample_pictures(sample, low, score_threshold=0.5, bev_size=400)
    assert none.num_predictions_shown == 0
    # The predictions (dashed, in class colours, each with its score) are what differs.
    assert (bev != _png(none.bev)).any(-1).sum() > 100
    assert (cams != _png(none.cameras)).any(-1).sum() > 100
    changed = bev[(bev != _png(none.bev)).any(-1)].astype(int)  # [K, 3]
    for label in set(detections.labels.tolist()):  # each class's own colour, not one for all
        colour = np.array(CLASS_COLORS[CLASS_NAMES[label]])
        assert (np.abs(changed - colour).max(-1) < 30).sum() > 5, CLASS_NAMES[label]


def report_data(oracle_eval, sample_with_oracle) -> ReportData:
    """A full report's inputs: oracle metrics, curves, two pictures, latency, robustness."""
    metrics, out = oracle_eval
    sample, detections = sample_with_oracle
    picture = draw_sample_pictures(sample, detections)
    return ReportData(
        title="oracle <report>",
        metrics=metrics,
        metrics_details=json.loads((out / "metrics_details.json").read_text()),
        latency={
            "camera": {"mean": 12.5, "p50": 12.0, "p90": 14.0, "n": 8},
            "total": {"mean": 30.0, "p50": 29.0, "p90": 33.0, "n": 8},
        },
        robustness=[
            RobustnessRow("all sensors", (), 1.0, 0.99),
            RobustnessRow("cameras only", ("lidar",), None, None, "no box in any sample"),
        ],
        pictures=[picture, picture],
        config_yaml="name: <script>alert(1)</script>\n",
        run_info={"checkpoint": "/ckpt/step_5", "step": "5"},
    )


def test_report_has_every_section_and_embeds_its_images(oracle_eval, sample_with_oracle, tmp_path):
    path = write_report(
        tmp_path / "r" / "report.html", report_data(oracle_eval, sample_with_oracle)
    )
    page = path.read_text()
    for section in ("summary", "per-class", "pr-curves", "distance", "bev", "cameras",
                    "latency", "robustness", "run", "config"):  # fmt: skip
        assert f'<h2 id="{section}">' in page, section
    # PR curves, distance bars, then a BEV and a camera picture per sample.
    assert page.count(PNG_URI) == 2 + 2 * 2
    images = _decode_pngs(page)
    assert len(images) == 6 and all(im.std() > 5 for im in images)
    # Self-contained: nothing fetched from elsewhere.
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "1.0000" in page  # mAP of the oracle
    assert "12.5" in page and "camera branch" in page
    assert "no box in any sample" in page and "/ckpt/step_5" in page
    assert "0-20 m" in page and "20-30 m" in page


def test_report_without_metrics_says_why(tmp_path):
    page = render_report(
        ReportData(title="t", metrics=None, eval_error="no box in any of the 8 samples")
    )
    assert "Not evaluated: no box in any of the 8 samples" in page
    assert 'id="robustness"' in page and "Not run" in page
    assert PNG_URI not in page


def test_empty_boxes_draw(sample_with_oracle):
    sample, _ = sample_with_oracle
    empty = Detections(
        sample.token, Boxes3D.empty(), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, dtype=torch.int64),
    )  # fmt: skip
    assert draw_sample_pictures(sample, empty).num_predictions_shown == 0
