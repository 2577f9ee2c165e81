"""Detections (LiDAR frame) -> nuScenes submission boxes (global frame), and the checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from nuscenes.eval.common.data_classes import EvalBoxes
from nuscenes.eval.common.utils import quaternion_yaw
from nuscenes.eval.detection.data_classes import DetectionBox
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion

from perception.evaluation import (
    SplitError,
    SubmissionError,
    SubmissionWriter,
    check_submission,
    detections_to_nuscenes,
    split_sample_tokens,
)
from perception.structures import (
    ATTRIBUTE_NAMES,
    CLASS_NAMES,
    DEFAULT_ATTRIBUTE,
    VALID_ATTRIBUTES,
    Boxes3D,
    Detections,
)


def _pose(yaw: float, translation, tilt: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """4x4: rotation about z by `yaw` after a small roll/pitch `tilt` (rad), then translation."""
    q = (
        Quaternion(axis=[0, 0, 1], angle=yaw)
        * Quaternion(axis=[0, 1, 0], angle=tilt[1])
        * Quaternion(axis=[1, 0, 0], angle=tilt[0])
    )
    m = np.eye(4)
    m[:3, :3] = q.rotation_matrix
    m[:3, 3] = translation
    return m


def _detections(
    token: str = "s0",
    boxes: list[list[float]] | None = None,
    scores: list[float] | None = None,
    labels: list[int] | None = None,
    attributes: list[int] | None = None,
) -> Detections:
    boxes = boxes if boxes is not None else [[10.0, -4.0, -0.5, 1.9, 4.5, 1.6, 0.7, 3.0, -1.0]]
    K = len(boxes)
    return Detections(
        sample_token=token,
        boxes=Boxes3D(torch.tensor(boxes, dtype=torch.float32).reshape(K, 9)),
        scores=torch.tensor(scores if scores is not None else [0.9] * K, dtype=torch.float32),
        labels=torch.tensor(labels if labels is not None else [0] * K, dtype=torch.int64),
        attributes=torch.tensor(attributes if attributes is not None else [-1] * K),
    )


LIDAR_TO_EGO = _pose(math.pi / 2, [0.9, 0.0, 1.8])  # nuScenes mounts LIDAR_TOP turned 90 deg
EGO_TO_GLOBAL = _pose(math.radians(30), [400.0, 1100.0, 0.0])


def test_known_pose_gives_expected_global_box():
    x, y, z, w, l, h, yaw, vx, vy = 10.0, -4.0, -0.5, 1.9, 4.5, 1.6, 0.7, 3.0, -1.0
    (box,) = detections_to_nuscenes(
        _detections(boxes=[[x, y, z, w, l, h, yaw, vx, vy]]), LIDAR_TO_EGO, EGO_TO_GLOBAL
    )
    # By hand: both rotations are about z, so angles add and vectors turn by their sum.
    turn = math.pi / 2 + math.radians(30)
    ego = np.array([0.9 - y, x, z + 1.8])  # 90 deg about z: (x, y) -> (-y, x)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    expected_center = [400 + c * ego[0] - s * ego[1], 1100 + s * ego[0] + c * ego[1], ego[2]]
    expected_velocity = [
        math.cos(turn) * vx - math.sin(turn) * vy,
        math.sin(turn) * vx + math.cos(turn) * vy,
    ]
    np.testing.assert_allclose(box["translation"], expected_center, atol=1e-5)
    np.testing.assert_allclose(box["velocity"], expected_velocity, atol=1e-5)
    np.testing.assert_allclose(box["size"], [w, l, h], atol=1e-6)
    assert -math.pi < yaw + turn < math.pi
    assert quaternion_yaw(Quaternion(box["rotation"])) == pytest.approx(yaw + turn)
    np.testing.assert_allclose(Quaternion(box["rotation"]).norm, 1.0)
    assert box["detection_name"] == "car" and box["sample_token"] == "s0"
    assert box["detection_score"] == pytest.approx(0.9)


@pytest.mark.parametrize("tilt", [(0.0, 0.0), (0.01, -0.02)], ids=["flat", "tilted"])
def test_round_trip_matches_devkit_box_transform(tilt):
    """The same box taken to global by the devkit's `Box` (the way mmdet3d writes its
    submissions) and back to LiDAR with the inverse pose."""
    lidar_to_ego = _pose(math.pi / 2 + 0.01, [0.94, 0.0, 1.84], tilt)
    ego_to_global = _pose(-2.1, [1600.0, 900.0, 0.3], (tilt[1], tilt[0]))
    values = [12.0, 7.5, -0.8, 0.6, 0.7, 1.75, -2.5, -0.8, 1.3]
    (box,) = detections_to_nuscenes(_detections(boxes=[values]), lidar_to_ego, ego_to_global)

    ref = Box(values[0:3], values[3:6], Quaternion(axis=[0, 0, 1], angle=values[6]))
    ref.velocity = np.array([values[7], values[8], 0.0])
    for m in (lidar_to_ego, ego_to_global):
        ref.rotate(Quaternion(matrix=m[:3, :3]))
        ref.translate(m[:3, 3])
    np.testing.assert_allclose(box["translation"], ref.center, atol=1e-4)
    np.testing.assert_allclose(box["velocity"], ref.velocity[:2], atol=1e-5)
    assert quaternion_yaw(Quaternion(box["rotation"])) == pytest.approx(
        quaternion_yaw(ref.orientation), abs=1e-5
    )

    # Back to LiDAR: centre and velocity exactly; yaw up to the tilt's second-order effect.
    global_to_lidar = np.linalg.inv(ego_to_global @ lidar_to_ego)
    center = global_to_lidar[:3, :3] @ box["translation"] + global_to_lidar[:3, 3]
    np.testing.assert_allclose(center, values[0:3], atol=1e-4)
    heading = global_to_lidar[:3, :3] @ Quaternion(box["rotation"]).rotation_matrix[:, 0]
    assert math.atan2(heading[1], heading[0]) == pytest.approx(values[6], abs=1e-3)


def test_agrees_with_boxes3d_transform():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(20, 9)) * 10
    values[:, 3:6] = np.abs(values[:, 3:6]) + 0.1
    dets = _detections(boxes=values.tolist(), scores=np.linspace(1, 0.1, 20).tolist())
    lidar_to_global = torch.from_numpy(EGO_TO_GLOBAL @ LIDAR_TO_EGO)
    expected = Boxes3D(torch.from_numpy(values)).transform(lidar_to_global, "global").tensor
    boxes = detections_to_nuscenes(dets, LIDAR_TO_EGO, EGO_TO_GLOBAL)
    got = np.array([[*b["translation"], *b["velocity"]] for b in boxes])
    np.testing.assert_allclose(got, expected[:, [0, 1, 2, 7, 8]].numpy(), atol=1e-3)
    yaw = [quaternion_yaw(Quaternion(b["rotation"])) for b in boxes]
    np.testing.assert_allclose(yaw, expected[:, 6].numpy(), atol=1e-5)


def test_keeps_the_highest_scoring_boxes():
    rng = np.random.default_rng(1)
    scores = rng.permutation(np.linspace(0.05, 0.95, 12))
    boxes = [[float(i), 0, 0, 1, 1, 1, 0, 0, 0] for i in range(12)]  # x marks the input order
    dets = _detections(boxes=boxes, scores=scores.tolist())
    kept = detections_to_nuscenes(dets, np.eye(4), np.eye(4), max_boxes_per_sample=5)
    top = np.argsort(-scores)[:5]
    np.testing.assert_allclose([b["detection_score"] for b in kept], scores[top], atol=1e-6)
    np.testing.assert_allclose([b["translation"][0] for b in kept], top)

    writer = SubmissionWriter(use_camera=True, use_lidar=False, max_boxes_per_sample=5)
    writer.add(dets, np.eye(4), np.eye(4))
    assert len(writer.to_dict(["s0"])["results"]["s0"]) == 5


@pytest.mark.parametrize(
    ("class_name", "attribute", "expected"),
    [
        ("car", "vehicle.moving", "vehicle.moving"),
        ("car", "pedestrian.moving", DEFAULT_ATTRIBUTE["car"]),
        ("car", None, DEFAULT_ATTRIBUTE["car"]),
        ("pedestrian", "cycle.with_rider", DEFAULT_ATTRIBUTE["pedestrian"]),
        ("bicycle", "cycle.with_rider", "cycle.with_rider"),
        ("barrier", "vehicle.parked", ""),
        ("traffic_cone", None, ""),
    ],
)
def test_attribute_valid_for_class_or_default(class_name, attribute, expected):
    index = ATTRIBUTE_NAMES.index(attribute) if attribute else -1
    dets = _detections(labels=[CLASS_NAMES.index(class_name)], attributes=[index])
    (box,) = detections_to_nuscenes(dets, np.eye(4), np.eye(4))
    assert box["attribute_name"] == expected
    assert expected == "" or expected in VALID_ATTRIBUTES[class_name]


def test_out_of_range_attribute_index_gets_default():
    dets = _detections(labels=[3], attributes=[len(ATTRIBUTE_NAMES)])
    (box,) = detections_to_nuscenes(dets, np.eye(4), np.eye(4))
    assert box["attribute_name"] == DEFAULT_ATTRIBUTE["bus"]


def test_written_file_is_what_the_devkit_reads(tmp_path):
    writer = SubmissionWriter(use_camera=True, use_lidar=True)
    writer.add(_detections("a"), LIDAR_TO_EGO, EGO_TO_GLOBAL)
    writer.add_batch(
        [_detections("b", labels=[8], attributes=[4]), _detections("c", boxes=[])],
        torch.from_numpy(np.stack([LIDAR_TO_EGO] * 2)),
        torch.from_numpy(np.stack([EGO_TO_GLOBAL] * 2)),
    )
    path = writer.write(tmp_path / "sub" / "results.json", sample_tokens=["a", "b", "c"])
    content = json.loads(path.read_text())
    assert content["meta"] == {
        "use_camera": True,
        "use_lidar": True,
        "use_radar": False,
        "use_map": False,
        "use_external": False,
    }
    boxes = EvalBoxes.deserialize(content["results"], DetectionBox)
    assert sorted(boxes.sample_tokens) == ["a", "b", "c"]
    assert boxes["b"][0].detection_name == "pedestrian"
    assert boxes["b"][0].attribute_name == "pedestrian.standing"
    assert boxes["c"] == []


def test_missing_samples_are_named(tmp_path):
    writer = SubmissionWriter(use_camera=True, use_lidar=True)
    writer.add(_detections("a"), np.eye(4), np.eye(4))
    split = ["a"] + [f"tok{i}" for i in range(8)]
    with pytest.raises(SubmissionError, match=r"miss 8 of the split's 9 samples.*tok0, tok1"):
        writer.write(tmp_path / "r.json", sample_tokens=split)
    assert not (tmp_path / "r.json").exists()


def test_samples_outside_the_split_are_named():
    writer = SubmissionWriter(use_camera=True, use_lidar=True)
    writer.add(_detections("a"), np.eye(4), np.eye(4))
    writer.add(_detections("stray"), np.eye(4), np.eye(4))
    with pytest.raises(SubmissionError, match=r"1 samples that are not in the evaluated.*stray"):
        writer.to_dict(["a"])


@pytest.mark.parametrize(
    ("column", "field"),
    [(0, "translation"), (4, "size"), (6, "rotation"), (8, "velocity"), (None, "score")],
)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_values_name_sample_and_field(column, field, value):
    box = [10.0, -4.0, -0.5, 1.9, 4.5, 1.6, 0.7, 3.0, -1.0]
    score = 0.5
    if column is None:
        score = value
    else:
        box[column] = value
    dets = _detections("sample-7", boxes=[[1, 1, 0, 1, 1, 1, 0, 0, 0], box], scores=[0.9, score])
    with pytest.raises(SubmissionError, match=rf"sample sample-7: box 1 .*{field}"):
        detections_to_nuscenes(dets, np.eye(4), np.eye(4))


def test_non_finite_pose_is_an_error():
    pose = np.eye(4)
    pose[0, 3] = math.nan
    with pytest.raises(SubmissionError, match="sample s0: ego_to_global holds NaN"):
        detections_to_nuscenes(_detections(), np.eye(4), pose)


def test_other_mistakes_are_errors():
    with pytest.raises(SubmissionError, match="non-positive size"):
        detections_to_nuscenes(
            _detections(boxes=[[0, 0, 0, 0, 1, 1, 0, 0, 0]]), np.eye(4), np.eye(4)
        )
    with pytest.raises(SubmissionError, match="label 10"):
        detections_to_nuscenes(_detections(labels=[10]), np.eye(4), np.eye(4))
    dets = _detections()
    global_dets = Detections(
        "s0", Boxes3D(dets.boxes.tensor, "global"), dets.scores, dets.labels, dets.attributes
    )
    with pytest.raises(SubmissionError, match="keyframe LiDAR frame"):
        detections_to_nuscenes(global_dets, np.eye(4), np.eye(4))
    writer = SubmissionWriter(use_camera=True, use_lidar=True)
    writer.add(dets, np.eye(4), np.eye(4))
    with pytest.raises(SubmissionError, match="added twice"):
        writer.add(dets, np.eye(4), np.eye(4))


def test_check_submission_reads_files_from_elsewhere():
    (box,) = detections_to_nuscenes(_detections("a"), np.eye(4), np.eye(4))
    meta = SubmissionWriter(use_camera=False, use_lidar=True).meta
    check_submission({"meta": meta, "results": {"a": [box]}}, ["a"])
    with pytest.raises(SubmissionError, match="sample a, box 0: velocity is not finite"):
        check_submission(
            {"meta": meta, "results": {"a": [{**box, "velocity": [0, math.nan]}]}}, ["a"]
        )
    with pytest.raises(SubmissionError, match="not valid for car"):
        bad = {**box, "attribute_name": "pedestrian.moving"}
        check_submission({"meta": meta, "results": {"a": [bad]}}, ["a"])
    with pytest.raises(SubmissionError, match="at most 1 a sample"):
        check_submission(
            {"meta": meta, "results": {"a": [box, box]}}, ["a"], max_boxes_per_sample=1
        )
    with pytest.raises(SubmissionError, match='"meta" and "results"'):
        check_submission({"results": {"a": []}}, ["a"])


def test_split_sample_tokens(tiny_world):
    val = split_sample_tokens(tiny_world, "v1.0-mini", "mini_val")
    train = split_sample_tokens(tiny_world, "v1.0-mini", "mini_train")
    samples = json.loads((tiny_world / "v1.0-mini" / "sample.json").read_text())
    assert val and train and not set(val) & set(train)
    assert sorted(val + train) == sorted(s["token"] for s in samples)
    with pytest.raises(SplitError, match=r"split 'val' belongs to the \*-trainval database"):
        split_sample_tokens(tiny_world, "v1.0-mini", "val")
    with pytest.raises(SplitError, match="unknown split 'nope'"):
        split_sample_tokens(tiny_world, "v1.0-mini", "nope")
