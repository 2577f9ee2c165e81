"""Ground truth turned into predictions, straight from the devkit (not from our reader), so the
evaluation tests have an oracle whose every metric is known."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from nuscenes import NuScenes
from nuscenes.eval.detection.utils import category_to_detection_name
from pyquaternion import Quaternion

from perception.evaluation import SubmissionWriter, split_sample_tokens
from perception.structures import ATTRIBUTE_NAMES, CLASS_NAMES, Boxes3D, Detections

# Edits the oracle's boxes `[K, 9]` float64 (LiDAR frame) before they are submitted.
Perturb = Callable[[torch.Tensor], torch.Tensor]


def _matrix(record: dict) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Quaternion(record["rotation"]).rotation_matrix
    m[:3, 3] = record["translation"]
    return m


def lidar_poses(nusc: NuScenes, sample_token: str) -> tuple[np.ndarray, np.ndarray]:
    """(lidar_to_ego, ego_to_global), 4x4 float64, of the sample's keyframe LIDAR_TOP."""
    sd = nusc.get("sample_data", nusc.get("sample", sample_token)["data"]["LIDAR_TOP"])
    lidar_to_ego = _matrix(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]))
    ego_to_global = _matrix(nusc.get("ego_pose", sd["ego_pose_token"]))
    return lidar_to_ego, ego_to_global


def gt_detections(nusc: NuScenes, sample_token: str) -> Detections:
    """The sample's annotations of the ten classes as `Detections` in its keyframe LiDAR frame.

    Annotations without LiDAR and radar points are left out: the devkit drops such GT but would
    keep a prediction on them (as a false positive). Scores fall from 1 in annotation order so
    no two are equal.
    """
    sample = nusc.get("sample", sample_token)
    _, boxes = nusc.get_sample_data(sample["data"]["LIDAR_TOP"])[:2]
    lidar_to_ego, ego_to_global = lidar_poses(nusc, sample_token)
    global_to_lidar_rotation = (ego_to_global @ lidar_to_ego)[:3, :3].T
    rows, labels, attributes = [], [], []
    for box in boxes:
        ann = nusc.get("sample_annotation", box.token)
        name = category_to_detection_name(ann["category_name"])
        if name is None or ann["num_lidar_pts"] + ann["num_radar_pts"] == 0:
            continue
        heading = box.orientation.rotation_matrix[:, 0]  # the box's +x (length) axis
        velocity = nusc.box_velocity(box.token)
        velocity = np.nan_to_num(np.array([velocity[0], velocity[1], 0.0]))  # NaN: unknown
        velocity = global_to_lidar_rotation @ velocity
        yaw = np.arctan2(heading[1], heading[0])
        rows.append([*box.center, *box.wlh, yaw, velocity[0], velocity[1]])
        labels.append(CLASS_NAMES.index(name))
        attr = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
        attributes.append(ATTRIBUTE_NAMES.index(attr[0]) if attr else -1)
    K = len(rows)
    return Detections(
        sample_token=sample_token,
        boxes=Boxes3D(torch.tensor(rows, dtype=torch.float64).reshape(K, 9)),
        scores=torch.linspace(1.0, 0.5, K, dtype=torch.float64) if K else torch.zeros(0),
        labels=torch.tensor(labels, dtype=torch.int64),
        attributes=torch.tensor(attributes, dtype=torch.int64),
    )


def write_gt_submission(
    nusc: NuScenes, split: str, path: Path, perturb: Perturb | None = None
) -> Path:
    """Writes the oracle's submission for every sample of `split`, boxes edited by `perturb`."""
    root = Path(nusc.dataroot)
    tokens = split_sample_tokens(root, nusc.version, split)
    writer = SubmissionWriter(use_camera=False, use_lidar=True)
    for token in tokens:
        dets = gt_detections(nusc, token)
        if perturb is not None:
            dets = Detections(
                dets.sample_token,
                Boxes3D(perturb(dets.boxes.tensor.clone())),
                dets.scores,
                dets.labels,
                dets.attributes,
            )
        writer.add(dets, *lidar_poses(nusc, token))
    return writer.write(path, sample_tokens=tokens)
