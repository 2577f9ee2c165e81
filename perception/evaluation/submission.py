"""`Detections` -> the nuScenes detection-submission JSON.

The format (https://www.nuscenes.org/object-detection, "Results format"):

    {"meta": {"use_camera": bool, "use_lidar": bool, "use_radar": bool, "use_map": bool,
              "use_external": bool},
     "results": {sample_token: [box, ...]}}

with each box, in the **global** (map) frame:

    {"sample_token": str,
     "translation": [x, y, z],            # box centre, m
     "size": [w, l, h],                   # m, nuScenes order (docs/frames.md)
     "rotation": [qw, qx, qy, qz],        # heading as a rotation about +z (yaw only)
     "velocity": [vx, vy],                # m/s over the ground
     "detection_name": str,               # one of CLASS_NAMES
     "detection_score": float,            # in [0, 1]
     "attribute_name": str}               # valid for the class, '' for barrier/traffic_cone

Detections arrive in their sample's keyframe LiDAR frame; `lidar_to_ego` and `ego_to_global`
(the sample's `Sample.lidar_to_ego` / `Sample.ego_to_global`, 4x4 float64, the ego pose at the
keyframe LiDAR timestamp) take them to global. Centres map as points, velocities as directions
(the full 3-D rotation, then x/y kept), the heading vector `(cos yaw, sin yaw, 0)` through the
same rotation and its x/y angle becomes the global yaw. The global box is written upright (a
yaw-only quaternion): the evaluation reads only the yaw of a rotation (`quaternion_yaw` projects
the box's x axis to the ground), and annotations are upright boxes on the map.

Typical use (`writer.add` once per sample, e.g. from an evaluation loop over `Batch`es):

    writer = SubmissionWriter(use_camera=True, use_lidar=True)
    for batch in loader:
        writer.add_batch(model(batch), batch.lidar_to_ego, batch.ego_to_global)
    writer.write("results_nusc.json", sample_tokens=split_sample_tokens(root, version, split))
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets.sensors import yaw_to_quaternion
from ..structures import (
    ATTRIBUTE_NAMES,
    CLASS_NAMES,
    DEFAULT_ATTRIBUTE,
    VALID_ATTRIBUTES,
    Detections,
)

# The devkit's limit (detection_cvpr_2019 `max_boxes_per_sample`); it refuses larger samples.
MAX_BOXES_PER_SAMPLE = 500

META_KEYS: tuple[str, ...] = ("use_camera", "use_lidar", "use_radar", "use_map", "use_external")

# Boxes3D columns (x, y, z, w, l, h, yaw, vx, vy) -> the submission field each one becomes.
_BOX_COLUMN_FIELDS: tuple[str, ...] = (
    "translation",
    "translation",
    "translation",
    "size",
    "size",
    "size",
    "rotation (yaw)",
    "velocity",
    "velocity",
)
_BOX_FIELDS: dict[str, int] = {"translation": 3, "size": 3, "rotation": 4, "velocity": 2}
# How many examples an error message lists.
_SHOW = 5


class SubmissionError(ValueError):
    """Detections or a submission that the nuScenes evaluation would reject or misread."""


def _as_matrix(value: torch.Tensor | np.ndarray, name: str, token: str) -> np.ndarray:
    m = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, np.float64)
    if m.shape != (4, 4):
        raise SubmissionError(f"sample {token}: {name} must be 4x4, got {m.shape}")
    if not np.isfinite(m).all():
        raise SubmissionError(f"sample {token}: {name} holds NaN or inf")
    return m


def attribute_name_for(label: int, attribute: int) -> str:
    """The attribute name a detection of class `label` is submitted with: the predicted
    `attribute` (index into ATTRIBUTE_NAMES) if it is valid for the class, else the class
    default (`DEFAULT_ATTRIBUTE`; '' for barrier and traffic_cone)."""
    class_name = CLASS_NAMES[label]
    if 0 <= attribute < len(ATTRIBUTE_NAMES):
        name = ATTRIBUTE_NAMES[attribute]
        if name in VALID_ATTRIBUTES[class_name]:
            return name
    return DEFAULT_ATTRIBUTE[class_name]


def detections_to_nuscenes(
    detections: Detections,
    lidar_to_ego: torch.Tensor | np.ndarray,
    ego_to_global: torch.Tensor | np.ndarray,
    *,
    max_boxes_per_sample: int = MAX_BOXES_PER_SAMPLE,
) -> list[dict[str, Any]]:
    """One sample's detections as submission boxes in the global frame.

    Args:
        detections: K boxes in the sample's keyframe LiDAR frame (`boxes.frame == "lidar"`).
        lidar_to_ego: `[4, 4]` float64, keyframe LiDAR -> ego.
        ego_to_global: `[4, 4]` float64, ego at the keyframe LiDAR timestamp -> global.
        max_boxes_per_sample: keep only this many boxes, the highest-scoring ones.

    Returns:
        Up to `max_boxes_per_sample` box dicts (format in the module docstring), highest score
        first. Raises `SubmissionError` naming the sample and the field on NaN/inf, a
        non-positive size, an unknown label or a different box frame.
    """
    token = detections.sample_token
    if detections.boxes.frame != "lidar":
        raise SubmissionError(
            f"sample {token}: detections must be in the keyframe LiDAR frame, "
            f"got frame {detections.boxes.frame!r}"
        )
    lidar_to_global = _as_matrix(ego_to_global, "ego_to_global", token) @ _as_matrix(
        lidar_to_ego, "lidar_to_ego", token
    )
    boxes = detections.boxes.tensor.detach().cpu().double().numpy()  # [K, 9] LiDAR frame
    scores = detections.scores.detach().cpu().double().numpy()  # [K]
    labels = detections.labels.detach().cpu().long().numpy()  # [K]
    attributes = detections.attributes.detach().cpu().long().numpy()  # [K]
    K = len(boxes)

    bad_rows, bad_cols = np.nonzero(~np.isfinite(boxes))
    if len(bad_rows):
        field = _BOX_COLUMN_FIELDS[bad_cols[0]]
        raise SubmissionError(
            f"sample {token}: box {bad_rows[0]} has a NaN/inf {field} "
            f"({len(set(bad_rows.tolist()))} of {K} boxes have non-finite values)"
        )
    bad = np.nonzero(~np.isfinite(scores))[0]
    if len(bad):
        raise SubmissionError(f"sample {token}: box {bad[0]} has a NaN/inf detection_score")
    bad = np.nonzero((boxes[:, 3:6] <= 0).any(1))[0]
    if len(bad):
        raise SubmissionError(
            f"sample {token}: box {bad[0]} has a non-positive size {boxes[bad[0], 3:6].tolist()} "
            "(the evaluation's scale IoU needs w, l, h > 0)"
        )
    bad = np.nonzero((labels < 0) | (labels >= len(CLASS_NAMES)))[0]
    if len(bad):
        raise SubmissionError(
            f"sample {token}: box {bad[0]} has label {labels[bad[0]]}, "
            f"not an index into the {len(CLASS_NAMES)} CLASS_NAMES"
        )

    # Highest scores first; a stable sort keeps equal scores in their given order.
    keep = np.argsort(-scores, kind="stable")[:max_boxes_per_sample]
    boxes, scores, labels, attributes = boxes[keep], scores[keep], labels[keep], attributes[keep]

    rotation = lidar_to_global[:3, :3]
    center = boxes[:, 0:3] @ rotation.T + lidar_to_global[:3, 3]  # [K', 3] global
    velocity3 = np.concatenate([boxes[:, 7:9], np.zeros((len(boxes), 1))], 1)
    velocity = (velocity3 @ rotation.T)[:, :2]  # [K', 2] global
    heading = np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6]), np.zeros(len(boxes))], 1)
    heading = heading @ rotation.T
    yaw = np.arctan2(heading[:, 1], heading[:, 0])  # [K'] global

    return [
        {
            "sample_token": token,
            "translation": center[i].tolist(),
            "size": boxes[i, 3:6].tolist(),
            "rotation": list(yaw_to_quaternion(float(yaw[i]))),  # [w, x, y, z]
            "velocity": velocity[i].tolist(),
            "detection_name": CLASS_NAMES[labels[i]],
            "detection_score": float(scores[i]),
            "attribute_name": attribute_name_for(int(labels[i]), int(attributes[i])),
        }
        for i in range(len(boxes))
    ]


def _show(tokens: Iterable[str]) -> str:
    tokens = sorted(tokens)
    more = f", ... ({len(tokens) - _SHOW} more)" if len(tokens) > _SHOW else ""
    return ", ".join(tokens[:_SHOW]) + more


def _check_box(token: str, index: int, box: Any) -> None:
    where = f"sample {token}, box {index}"
    if not isinstance(box, Mapping):
        raise SubmissionError(f"{where}: a box must be a JSON object, got {type(box).__name__}")
    required = ("sample_token", *_BOX_FIELDS, "detection_name", "detection_score", "attribute_name")
    missing = [k for k in required if k not in box]
    if missing:
        raise SubmissionError(f"{where}: missing fields {missing}")
    if box["sample_token"] != token:
        raise SubmissionError(f"{where}: sample_token is {box['sample_token']!r}")
    for field, length in _BOX_FIELDS.items():
        value = box[field]
        if not isinstance(value, Sequence) or len(value) != length:
            raise SubmissionError(f"{where}: {field} must be a list of {length} numbers")
        try:
            array = np.asarray(value, np.float64)
        except (TypeError, ValueError) as e:
            raise SubmissionError(f"{where}: {field} must be numbers, got {value!r}") from e
        if not np.isfinite(array).all():
            raise SubmissionError(f"{where}: {field} is not finite: {list(value)}")
        if field == "size" and (array <= 0).any():
            raise SubmissionError(f"{where}: size must be positive, got {list(value)}")
    score = box["detection_score"]
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise SubmissionError(f"{where}: detection_score must be a finite number, got {score!r}")
    name = box["detection_name"]
    if name not in CLASS_NAMES:
        raise SubmissionError(
            f"{where}: unknown detection_name {name!r}; expected one of {CLASS_NAMES}"
        )
    attribute = box["attribute_name"]
    if attribute != "" and attribute not in VALID_ATTRIBUTES[name]:
        raise SubmissionError(
            f"{where}: attribute_name {attribute!r} is not valid for {name} "
            f"(valid: {list(VALID_ATTRIBUTES[name])} or '')"
        )


def check_submission(
    submission: Mapping[str, Any],
    sample_tokens: Collection[str],
    *,
    max_boxes_per_sample: int = MAX_BOXES_PER_SAMPLE,
    allow_extra: bool = False,
) -> None:
    """Raises `SubmissionError` unless `submission` is a well-formed detection submission for
    exactly the samples `sample_tokens` (a split's; see `split_sample_tokens`).

    Checks: the `meta` and `results` keys and the five meta flags; every token of the split
    present (an empty list is fine: no detections); no token outside the split unless
    `allow_extra` (the devkit refuses those for predefined splits); at most
    `max_boxes_per_sample` boxes a sample; every box's fields present, finite, of the right
    length, with a known class and a valid attribute.
    """
    if (
        not isinstance(submission, Mapping)
        or "results" not in submission
        or "meta" not in submission
    ):
        raise SubmissionError('a submission is a JSON object with the keys "meta" and "results"')
    meta = submission["meta"]
    if not isinstance(meta, Mapping) or any(not isinstance(meta.get(k), bool) for k in META_KEYS):
        raise SubmissionError(
            f"meta must give each of {list(META_KEYS)} as true/false, got {meta!r}"
        )
    results = submission["results"]
    if not isinstance(results, Mapping):
        raise SubmissionError('"results" must map sample tokens to lists of boxes')
    expected = set(sample_tokens)
    missing = expected - results.keys()
    extra = results.keys() - expected
    if missing:
        hint = (
            f"; they hold {len(extra)} samples outside it: results of another split?"
            if extra
            else ""
        )
        raise SubmissionError(
            f"results miss {len(missing)} of the split's {len(expected)} samples "
            f"(every sample needs an entry, [] if nothing was detected): {_show(missing)}{hint}"
        )
    if extra and not allow_extra:
        raise SubmissionError(
            f"results hold {len(extra)} samples that are not in the evaluated split "
            f"({len(expected)} samples): {_show(extra)}"
        )
    for token in expected:
        boxes = results[token]
        if not isinstance(boxes, list):
            raise SubmissionError(f"sample {token}: results must be a list of boxes")
        if len(boxes) > max_boxes_per_sample:
            raise SubmissionError(
                f"sample {token}: {len(boxes)} boxes, the evaluation allows at most "
                f"{max_boxes_per_sample} a sample (keep the highest-scoring ones)"
            )
        for i, box in enumerate(boxes):
            _check_box(token, i, box)


class SubmissionWriter:
    """Collects detections sample by sample and writes the submission JSON.

    Args:
        use_camera, use_lidar: which sensors the model used (the submission's `meta`; radar,
            map and external data are never used by this project).
        max_boxes_per_sample: each sample keeps its highest-scoring boxes up to this many.
    """

    def __init__(
        self,
        *,
        use_camera: bool,
        use_lidar: bool,
        max_boxes_per_sample: int = MAX_BOXES_PER_SAMPLE,
    ):
        if max_boxes_per_sample < 1:
            raise ValueError(f"max_boxes_per_sample must be >= 1, got {max_boxes_per_sample}")
        self.meta: dict[str, bool] = {
            "use_camera": bool(use_camera),
            "use_lidar": bool(use_lidar),
            "use_radar": False,
            "use_map": False,
            "use_external": False,
        }
        self.max_boxes_per_sample = max_boxes_per_sample
        self._results: dict[str, list[dict[str, Any]]] = {}

    def __len__(self) -> int:
        """Number of samples added."""
        return len(self._results)

    @property
    def sample_tokens(self) -> list[str]:
        return list(self._results)

    def add(
        self,
        detections: Detections,
        lidar_to_ego: torch.Tensor | np.ndarray,
        ego_to_global: torch.Tensor | np.ndarray,
    ) -> None:
        """Adds one sample (see `detections_to_nuscenes` for frames and checks). Adding the
        same sample twice is an error."""
        token = detections.sample_token
        if token in self._results:
            raise SubmissionError(f"sample {token} was added twice")
        self._results[token] = detections_to_nuscenes(
            detections,
            lidar_to_ego,
            ego_to_global,
            max_boxes_per_sample=self.max_boxes_per_sample,
        )

    def add_batch(
        self,
        detections: Sequence[Detections],
        lidar_to_ego: torch.Tensor | np.ndarray,
        ego_to_global: torch.Tensor | np.ndarray,
    ) -> None:
        """Adds B samples: `detections[b]` with `lidar_to_ego[b]`, `ego_to_global[b]`
        (`[B, 4, 4]` float64, e.g. `Batch.lidar_to_ego`, `Batch.ego_to_global`)."""
        if not len(detections) == len(lidar_to_ego) == len(ego_to_global):
            raise ValueError(
                f"add_batch: {len(detections)} detections but {len(lidar_to_ego)} lidar_to_ego "
                f"and {len(ego_to_global)} ego_to_global matrices"
            )
        for dets, l2e, e2g in zip(detections, lidar_to_ego, ego_to_global):
            self.add(dets, l2e, e2g)

    def to_dict(self, sample_tokens: Collection[str] | None = None) -> dict[str, Any]:
        """The submission as a JSON-ready dict. With `sample_tokens` (the evaluated split's),
        checks that exactly those samples were added (`check_submission`)."""
        submission = {"meta": dict(self.meta), "results": dict(self._results)}
        if sample_tokens is not None:
            check_submission(
                submission, sample_tokens, max_boxes_per_sample=self.max_boxes_per_sample
            )
        return submission

    def write(self, path: str | Path, sample_tokens: Collection[str] | None = None) -> Path:
        """Writes the submission JSON to `path` (parents created) and returns the path. Pass
        the evaluated split's `sample_tokens` to check it covers exactly that split."""
        submission = self.to_dict(sample_tokens)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            json.dump(submission, f, allow_nan=False)
        return path
