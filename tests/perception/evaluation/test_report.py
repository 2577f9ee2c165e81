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
    TrainingSummary,
    draw_sample_pictures,
    load_training_summary,
    loss_term_title,
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


def report_data(oracle_eval, sample_with_oracle, training=None) -> ReportData:
    """A full report's inputs: oracle metrics, curves, two pictures, latency, robustness (and
    the `training` summary given)."""
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
        training=training,
        run_info={"checkpoint": "/ckpt/step_5", "step": "5"},
    )


def test_report_has_every_section_and_embeds_its_images(oracle_eval, sample_with_oracle, tmp_path):
    path = write_report(
        tmp_path / "r" / "report.html", report_data(oracle_eval, sample_with_oracle)
    )
    page = path.read_text()
    for section in ("summary", "per-class", "pr-curves", "distance", "bev", "cameras",
                    "latency", "robustness", "run", "training", "config"):  # fmt: skip
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


TRAIN_CONFIG = "name: tiny\ntrain:\n  max_steps: 150\n  lr: 0.0002\ndata:\n  root: data/a\n"
TEST_CONFIG = "name: tiny\ntrain:\n  max_steps: null\n  lr: 0.0002\ndata:\n  root: data/b\n"


def fake_training_run(work_dir, step: int = 150) -> TrainingSummary:
    """A work dir as the trainer leaves it: a checkpoint at `step` and a log.jsonl that goes
    on past it, repeats steps after a resume, has a line with a string for a number and ends in
    a line cut short."""
    checkpoint = work_dir / "checkpoints" / f"step_{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.yaml").write_text(TRAIN_CONFIG)
    state = {"step": step, "epoch": 4, "extra": {"planned_steps": 150, "train_seconds": 321.4}}
    (checkpoint / "training_state.json").write_text(json.dumps(state))
    lines = [json.dumps({"step": 0, "frozen": ["camera."], "parameters": 12})]
    for s in [*range(10, 101, 10), *range(60, 171, 10)]:  # killed at 100, resumed from 50
        losses = {f"{k}/task{t}": 2.0 / s * (t + 1) for k in ("heatmap", "bbox") for t in range(6)}
        losses["depth"] = 0.5
        record = {"step": s, "epoch": 0, "loss": sum(losses.values()), "lr": 1e-4 * s / 170,
                  "samples_per_s": 3.5, "losses": losses}  # fmt: skip
        lines.append(json.dumps(record))
    lines.append(json.dumps({"step": 40, "loss": "1.5", "losses": {"heatmap/task0": None}}))
    lines.append('{"step": 180, "loss": 0.')
    (work_dir / "log.jsonl").write_text("\n".join(lines) + "\n")
    return load_training_summary(checkpoint)


def test_training_summary_reads_the_checkpoint_and_its_log(tmp_path):
    t = fake_training_run(tmp_path)
    assert (t.step, t.epoch, t.planned_steps, t.train_seconds) == (150, 4, 150, 321.4)
    assert t.config_yaml == TRAIN_CONFIG
    assert [r["step"] for r in t.records] == list(range(10, 151, 10))  # none past the checkpoint
    assert [e["step"] for e in t.events] == [0] and t.skipped_lines == 2 and not t.problems
    assert loss_term_title("heatmap/task1") == "heatmap/truck+construction_vehicle"
    assert loss_term_title("attr/task5") == "attr/pedestrian+traffic_cone"
    assert loss_term_title("depth") == "depth" and loss_term_title("bbox/task9") == "bbox/task9"


def test_report_shows_the_checkpoints_config_training_summary_and_curves(tmp_path):
    page = render_report(
        ReportData(
            title="t",
            metrics=None,
            eval_error="x",
            config_yaml=TEST_CONFIG,
            training=fake_training_run(tmp_path),
            run_info={"checkpoint": "c", "step": "150"},
        )
    )
    training = page[page.index('<h2 id="training">') : page.index('<h2 id="config">')]
    config = page[page.index('<h2 id="config">') :]
    # The checkpoint's config, with what the test changed, not the test's config alone.
    assert "max_steps: 150" in config and "max_steps: null" not in config
    assert "train.max_steps" in config and "data.root" in config and "train.lr" not in config
    # The training summary: steps, wall time, final losses named by class group, curves.
    assert "150 of 150 planned" in training and "5 min 21 s" in training
    assert "<td>truck+construction_vehicle</td>" in training and "task1" not in training
    assert "<th>heatmap</th><th>bbox</th>" in training and "<td>depth</td>" in training
    assert "0.4000 \u2192 0.0267" in training  # heatmap/task1 from step 10 to 150
    assert "2 (not JSON, or values not numbers)" in training
    assert training.count(PNG_URI) == 1
    (curves,) = _decode_pngs(training)
    assert curves.std() > 5
    # The run table has no empty header row.
    run = page[page.index('<h2 id="run">') : page.index('<h2 id="training">')]
    assert "<thead>" not in run and "<th></th>" not in run
    assert '<th scope="row">checkpoint</th>' in run


def test_training_summary_of_a_bare_checkpoint_says_what_is_missing(tmp_path):
    t = load_training_summary(tmp_path)  # no config, no state, no log: no crash
    assert t.step is None and t.config_yaml is None and not t.records
    assert len(t.problems) == 3 and all(str(tmp_path) in p for p in t.problems)
    page = render_report(ReportData(title="t", metrics=None, config_yaml=TEST_CONFIG, training=t))
    assert "training_state.json" in page and "max_steps: null" in page
    assert "checkpoint's own was not found" in page or "own was not found" in page


def test_training_summary_of_a_checkpoint_the_trainer_saved(tmp_path):
    """The files as `save_checkpoint` writes them, not a hand-made copy."""
    from perception.config import parse_config
    from perception.engine import find_latest, save_checkpoint

    config = parse_config({"train": {"max_steps": 3}})
    save_checkpoint(tmp_path, step=3, model=torch.nn.Linear(2, 2), config=config, epoch=1,
                    extra={"planned_steps": 3, "train_seconds": 75.0})  # fmt: skip
    record = {"step": 3, "epoch": 1, "loss": 1.5, "lr": 1e-4, "losses": {"heatmap/task0": 1.5}}
    (tmp_path / "log.jsonl").write_text(json.dumps(record) + "\n")
    t = load_training_summary(find_latest(tmp_path))
    assert (t.step, t.epoch, t.planned_steps, t.train_seconds) == (3, 1, 3, 75.0)
    assert "max_steps: 3" in t.config_yaml and not t.problems
    assert [r["step"] for r in t.records] == [3]


@pytest.mark.slow
def test_report_of_a_trained_checkpoint_shows_how_it_was_trained(indexed_world_copy, tmp_path):
    """Train 2 steps, test with the test-time config (max_steps unset): the report shows the
    checkpoint's max_steps, the training summary and the curves."""
    from perception.config import parse_config
    from perception.evaluation.runner import evaluate_checkpoint
    from tests.perception.engine.test_trainer import make_trainer
    from tests.perception.models.helpers import MICRO

    root = indexed_world_copy("report_trained", max_sweeps=1, max_clip_frames=2)
    make_trainer(root, tmp_path / "work", "train.max_steps=2").train()
    trained = (tmp_path / "work" / "checkpoints" / "step_2" / "config.yaml").read_text()
    assert "max_steps: 2" in trained
    config = parse_config(MICRO, [f"data.root={root}", "data.train_split=all"])
    assert config.train.max_steps is None
    outcome = evaluate_checkpoint(config, tmp_path / "work", split="mini_val",
                                  out_dir=tmp_path / "out", progress=False, num_pictures=1)  # fmt: skip
    page = outcome.report_path.read_text()
    config_section = page[page.index('<h2 id="config">') :]
    assert "max_steps: 2" in config_section and "train.max_steps" in config_section
    training = page[page.index('<h2 id="training">') : page.index('<h2 id="config">')]
    assert "2 of 2 planned" in training and "<td>car</td>" in training
    assert training.count(PNG_URI) == 1


def test_report_of_a_distilled_student_shows_it_beside_its_teacher(indexed_world_copy, tmp_path):
    """tools/test.py's report of a camera student trained with a teacher (named by the test
    config, else by the checkpoint's) draws the student's BEV maps beside the teacher's; a
    teacher that cannot load leaves a note (the metrics stand)."""
    from perception.checkpoint import save_checkpoint
    from perception.config import parse_config
    from perception.evaluation.runner import evaluate_checkpoint
    from perception.models.builder import build_model
    from tests.perception.evaluation.test_inference import micro_raw
    from tests.perception.models.test_distill import DISTILL

    root = indexed_world_copy("distill_report", max_sweeps=1, max_clip_frames=2)
    torch.manual_seed(0)
    teacher_config = parse_config(micro_raw(root), ["model.camera=null"])
    teacher = save_checkpoint(tmp_path / "teacher", step=1, model=build_model(teacher_config),
                              config=teacher_config)  # fmt: skip
    config = parse_config(micro_raw(root), [*DISTILL, f"train.teacher={teacher}"])
    save_checkpoint(tmp_path / "work", step=1, model=build_model(config), config=config)
    # tested with the experiment's config (no teacher named): the checkpoint's config names it
    test_config = parse_config(micro_raw(root), list(DISTILL))
    assert test_config.train.teacher is None
    outcome = evaluate_checkpoint(test_config, tmp_path / "work", split="mini_val",
                                  out_dir=tmp_path / "out", progress=False, num_pictures=0)  # fmt: skip
    page = outcome.report_path.read_text()
    section = page[page.index('<h2 id="distillation">') : page.index('<h2 id="latency">')]
    assert section.count(PNG_URI) == 1
    missing = config.model_copy(
        update={"train": config.train.model_copy(update={"teacher": str(tmp_path / "none")})}
    )
    outcome = evaluate_checkpoint(missing, tmp_path / "work", split="mini_val",
                                  out_dir=tmp_path / "out2", progress=False, num_pictures=0)  # fmt: skip
    page = outcome.report_path.read_text()
    assert "not drawn: train.teacher: cannot load the teacher" in page
