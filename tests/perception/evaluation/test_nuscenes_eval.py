"""The official devkit evaluation on the tiny generated world, with an oracle whose metrics are
known: ground truth as predictions (perfect), then one known error at a time."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from nuscenes import NuScenes

from perception.evaluation import (
    EvaluationError,
    SplitError,
    SubmissionError,
    evaluate,
    load_metrics,
    split_sample_tokens,
)
from perception.structures import CLASS_NAMES

from .gt_oracle import gt_detections, write_gt_submission

VERSION, SPLIT = "v1.0-mini", "mini_val"
# The devkit defines no such error for the class (evaluate.py): NaN in its summary.
UNDEFINED = {("barrier", "attr_err"), ("barrier", "vel_err")} | {
    ("traffic_cone", k) for k in ("attr_err", "vel_err", "orient_err")
}
TP_KEYS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")
# What the oracle misses by: LiDAR boxes drop the tiny vertical velocity and roll/pitch of the
# annotations when they go back to global.
ATOL = 1e-3


@pytest.fixture(scope="module")
def nusc(tiny_world) -> NuScenes:
    return NuScenes(VERSION, str(tiny_world), verbose=False)


def test_ground_truth_scores_perfectly(nusc, tiny_world, tmp_path):
    results = write_gt_submission(nusc, SPLIT, tmp_path / "results.json")
    out = tmp_path / "eval"
    metrics = evaluate(tiny_world, VERSION, SPLIT, results, out, nusc=nusc)

    present = [c for c in CLASS_NAMES if metrics.class_num_gt[c] > 0]
    assert present == list(CLASS_NAMES), "the tiny world's mini_val should hold all ten classes"
    for c in present:
        assert metrics.class_ap[c] == pytest.approx(1.0, abs=1e-9), c
        assert metrics.class_num_pred[c] == metrics.class_num_gt[c]
        for k in TP_KEYS:
            value = metrics.class_tp_errors[c][k]
            if (c, k) in UNDEFINED:
                assert math.isnan(value), (c, k)
            else:
                assert value == pytest.approx(0.0, abs=ATOL), (c, k)
    assert metrics.map == pytest.approx(1.0, abs=1e-9)
    assert metrics.nds >= 0.99
    for name, value in metrics.tp_errors.items():
        assert value == pytest.approx(0.0, abs=ATOL), name

    # The files: the devkit's summary unchanged inside metrics.json, and a readable table.
    summary = json.loads((out / "metrics_summary.json").read_text())
    content = json.loads((out / "metrics.json").read_text())
    assert content["summary"] == summary == metrics.summary
    assert content["evaluated"]["split"] == SPLIT
    assert content["evaluated"]["version"] == VERSION
    assert content["evaluated"]["num_samples"] == len(
        split_sample_tokens(tiny_world, VERSION, SPLIT)
    )
    assert content["evaluated"]["devkit_version"]
    table = (out / "metrics.md").read_text()
    assert f"| mAP | {summary['mean_ap']:.4f} |" in table
    assert f"| NDS | {summary['nd_score']:.4f} |" in table
    for c in CLASS_NAMES:
        assert f"| {c} | {metrics.class_num_gt[c]} |" in table
    assert not (out / "plots").exists()

    again = load_metrics(out / "metrics.json")
    assert again.map == metrics.map and again.nds == metrics.nds
    assert again.class_num_gt == metrics.class_num_gt


def _offset(b):
    b[:, 0] += 0.3  # m along LiDAR x
    return b


def _scale(b):
    b[:, 3:6] *= 1.2
    return b


def _turn(b):
    b[:, 6] += 0.2  # rad
    return b


def _push(b):
    b[:, 7] += 0.5  # m/s along LiDAR x
    return b


# noise, the mean TP error it must raise, and by how much (the devkit's definitions).
NOISE = {
    "position": (_offset, "mATE", 0.3),
    "size": (_scale, "mASE", 1 - 1 / 1.2**3),  # 1 - IoU of aligned boxes
    "yaw": (_turn, "mAOE", 0.2),
    "velocity": (_push, "mAVE", 0.5),
}


@pytest.mark.parametrize("kind", list(NOISE))
def test_known_noise_raises_only_its_error(kind, nusc, tiny_world, tmp_path):
    perturb, raised, expected = NOISE[kind]
    results = write_gt_submission(nusc, SPLIT, tmp_path / "results.json", perturb)
    metrics = evaluate(tiny_world, VERSION, SPLIT, results, tmp_path / "eval", nusc=nusc)
    for name, value in metrics.tp_errors.items():
        target = expected if name == raised else 0.0
        assert value == pytest.approx(target, abs=2 * ATOL), name
    # Every error stays below the smallest match distance (0.5 m): every box still matches. A
    # moved centre may cross a class's range limit (the devkit then drops the prediction but
    # keeps the GT, or the reverse), which costs a few boxes; nothing else moves a centre.
    if kind == "position":
        assert metrics.map > 0.95
    else:
        assert metrics.map == pytest.approx(1.0, abs=1e-9)
    assert metrics.nds < 1.0


def test_offset_beyond_a_match_distance_loses_that_ap(nusc, tiny_world, tmp_path):
    def offset(b):
        b[:, 1] += 0.7  # m: beyond the 0.5 m match distance, within 1, 2 and 4 m
        return b

    results = write_gt_submission(nusc, SPLIT, tmp_path / "results.json", offset)
    metrics = evaluate(tiny_world, VERSION, SPLIT, results, tmp_path / "eval", nusc=nusc)
    # Matching is greedy on centre distance, so a shifted box can take a neighbour's GT, and a
    # moved centre can cross a class's range limit: "almost all", not "all".
    for c in CLASS_NAMES:
        per_distance = metrics.class_ap_by_distance[c]
        assert per_distance[0.5] < 0.05, c
        assert min(per_distance[d] for d in (1.0, 2.0, 4.0)) > 0.8, c
    mean_ap_at = {
        d: np.mean([ap[d] for ap in metrics.class_ap_by_distance.values()])
        for d in (0.5, 1.0, 2.0, 4.0)
    }
    assert metrics.map == pytest.approx(np.mean(list(mean_ap_at.values())))
    assert metrics.mate == pytest.approx(0.7, abs=0.02)


def test_missing_results_file(tiny_world, tmp_path):
    with pytest.raises(FileNotFoundError, match="results file not found"):
        evaluate(tiny_world, VERSION, SPLIT, tmp_path / "nope.json", tmp_path / "eval")


def test_split_of_another_version(nusc, tiny_world, tmp_path):
    results = write_gt_submission(nusc, SPLIT, tmp_path / "results.json")
    with pytest.raises(SplitError, match=r"split 'val' belongs to the \*-trainval database"):
        evaluate(tiny_world, VERSION, "val", results, tmp_path / "eval", nusc=nusc)
    with pytest.raises(EvaluationError, match="v1.0-trainval not found"):
        evaluate(tiny_world, "v1.0-trainval", "val", results, tmp_path / "eval")


def test_results_missing_samples(nusc, tiny_world, tmp_path):
    results = write_gt_submission(nusc, SPLIT, tmp_path / "results.json")
    content = json.loads(results.read_text())
    dropped = sorted(content["results"])[:3]
    for token in dropped:
        del content["results"][token]
    results.write_text(json.dumps(content))
    with pytest.raises(SubmissionError, match=rf"results miss 3 of .*{dropped[0]}"):
        evaluate(tiny_world, VERSION, SPLIT, results, tmp_path / "eval", nusc=nusc)


def test_results_of_another_split(nusc, tiny_world, tmp_path):
    results = write_gt_submission(nusc, SPLIT, tmp_path / "results.json")
    with pytest.raises(SubmissionError, match="results miss"):
        evaluate(tiny_world, VERSION, "mini_train", results, tmp_path / "eval", nusc=nusc)


def test_empty_submission_and_unknown_config(nusc, tiny_world, tmp_path):
    tokens = split_sample_tokens(tiny_world, VERSION, SPLIT)
    results = tmp_path / "results.json"
    meta = {
        k: k == "use_lidar"
        for k in ("use_camera", "use_lidar", "use_radar", "use_map", "use_external")
    }
    results.write_text(json.dumps({"meta": meta, "results": {t: [] for t in tokens}}))
    with pytest.raises(EvaluationError, match="holds no box"):
        evaluate(tiny_world, VERSION, SPLIT, results, tmp_path / "eval", nusc=nusc)
    with pytest.raises(EvaluationError, match="unknown devkit config 'detection_nope'"):
        evaluate(
            tiny_world, VERSION, SPLIT, results, tmp_path / "eval", devkit_config="detection_nope"
        )


def test_oracle_is_in_the_lidar_frame(nusc):
    """The oracle's boxes sit where the sample's LiDAR points are: near the sensor."""
    token = split_sample_tokens(nusc.dataroot, VERSION, SPLIT)[0]
    dets = gt_detections(nusc, token)
    assert len(dets) > 0 and dets.boxes.frame == "lidar"
    assert np.linalg.norm(dets.boxes.center[:, :2].numpy(), axis=1).max() < 100.0
