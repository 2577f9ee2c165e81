"""The sample pictures: the front-face cross against boxes of known yaw, predictions drawn
with class colour and score, labelled range rings, and a palette that stays distinct for
colour-blind eyes and readable on the dark BEV."""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import pytest
import torch

from perception.structures import CLASS_NAMES, Boxes3D, Sample
from perception.visualization.sample import (
    BACKGROUND,
    CLASS_COLORS,
    EDGES,
    FRONT_DIAGONALS,
    draw_bev,
    draw_cameras,
)

SIZE = 400  # camera image (square) and BEV size, pixels


def _sample(boxes: torch.Tensor, labels: list[int]) -> Sample:
    """One black CAM_FRONT image (f = 200 px) looking along LiDAR +x from the origin, no points."""
    camera_to_lidar = torch.eye(4)
    # camera axes (x right, y down, z forward) in the LiDAR frame: -y, -z, +x
    camera_to_lidar[:3, :3] = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    intrinsics = torch.tensor([[200.0, 0, SIZE / 2], [0, 200, SIZE / 2], [0, 0, 1]])
    n = len(labels)
    return Sample(
        token="t",
        timestamp_us=0,
        points=torch.zeros(0, 5),
        images=torch.zeros(1, 1, 3, SIZE, SIZE, dtype=torch.uint8),
        camera_names=("CAM_FRONT",),
        intrinsics=intrinsics[None],
        camera_to_lidar=camera_to_lidar[None, None],
        camera_time_lag=torch.zeros(1, 1),
        image_aug=torch.eye(4)[None],
        lidar_aug=torch.eye(4),
        lidar_to_ego=torch.eye(4, dtype=torch.float64),
        ego_to_global=torch.eye(4, dtype=torch.float64),
        camera_mask=torch.ones(1, dtype=torch.bool),
        lidar_present=True,
        gt_boxes=Boxes3D(boxes.reshape(-1, 9).float()),
        gt_labels=torch.tensor(labels, dtype=torch.int64),
        gt_attributes=torch.full((n,), -1, dtype=torch.int64),
        gt_num_points=torch.zeros(n, dtype=torch.int64),
    )


def _front_tile(sample: Sample) -> np.ndarray:
    """The CAM_FRONT tile at full size (row 0, column 1 of the 2 x 3 layout)."""
    picture = draw_cameras(sample, width=SIZE)
    return picture[:SIZE, SIZE : 2 * SIZE]


@pytest.mark.parametrize("yaw", [0.0, 0.7, math.pi / 2, 2.5, -math.pi, -1.2])
def test_front_diagonals_join_the_front_corners(yaw):
    box = Boxes3D(torch.tensor([[3.0, -2.0, 0.5, 1.8, 4.5, 1.6, yaw, 0, 0]]))
    corners = box.corners()[0]  # [8, 3]
    heading = torch.tensor([math.cos(yaw), math.sin(yaw)])
    along = (corners[:, :2] - box.center[0, :2]) @ heading  # +l/2 on the front face
    front = {i for i in range(8) if along[i] > 0}
    assert len(front) == 4
    for i, j in FRONT_DIAGONALS:
        assert {i, j} <= front, (i, j)
        assert (corners[i, 2] - corners[j, 2]).abs() > 1.0  # bottom to top: a diagonal
        assert (i, j) not in EDGES and (j, i) not in EDGES


@pytest.mark.parametrize("yaw", [math.pi, 0.0])
def test_cross_is_drawn_on_the_front_face_seen_head_on(yaw):
    """A car 10 m ahead, seen head on (yaw pi: its front faces the camera) or from behind
    (yaw 0): the front face's cross passes through the image centre, which no edge and no
    side face's cross reaches (the faces project to nested squares around it)."""
    sample = _sample(torch.tensor([10.0, 0, 0, 2, 4, 2, yaw, 0, 0]), [0])
    tile = _front_tile(sample)
    centre = tile[SIZE // 2 - 1 : SIZE // 2 + 2, SIZE // 2 - 1 : SIZE // 2 + 2]
    assert (centre.reshape(-1, 3) == CLASS_COLORS["car"]).all(-1).any()


def test_predictions_are_dashed_in_class_colour_with_their_score():
    boxes = torch.tensor([[-20.0, 10, 0, 2, 4, 2, 0.3, 0, 0]])  # clear of the ring labels
    sample = _sample(boxes, [CLASS_NAMES.index("truck")])
    gt_only = draw_bev(sample, size=SIZE)
    empty = _sample(torch.zeros(0, 9), [])
    predicted = draw_bev(
        empty, (Boxes3D(boxes), torch.tensor([1]), torch.tensor([0.87])), size=SIZE
    )
    truck = np.array(CLASS_COLORS["truck"], np.uint8)
    solid = (gt_only == truck).all(-1).sum()
    dashed = (predicted == truck).all(-1).sum()
    assert solid > 0 and 0 < dashed < solid  # the gaps; the score's digits add a few
    with_score = draw_bev(
        empty, (Boxes3D(boxes), torch.tensor([1]), torch.tensor([0.87])), size=SIZE
    )
    without_score = draw_bev(empty, (Boxes3D(boxes), torch.tensor([1])), size=SIZE)
    assert (with_score != without_score).any(-1).sum() > 20  # the label ".87"
    # A label outside CLASS_NAMES is drawn (white), not a crash.
    odd = draw_bev(empty, (Boxes3D(boxes), torch.tensor([42]), torch.tensor([0.5])), size=SIZE)
    assert (odd == 255).all(-1).sum() > 10


def test_range_rings_are_labelled():
    empty = _sample(torch.zeros(0, 9), [])
    image = draw_bev(empty, size=SIZE)
    # every ring's label is text on the ring's upper-right diagonal: bright pixels there
    for r in range(10, 55, 10):
        radius = r * SIZE / 108
        x = int(SIZE / 2 + radius / math.sqrt(2))
        y = int(SIZE / 2 - radius / math.sqrt(2))
        patch = image[max(0, y - 12) : y, x : x + 30]
        assert (patch > 120).any(-1).sum() > 5, r


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 `[N, 3]` -> CIE L*a*b* `[N, 3]`."""
    return cv2.cvtColor(rgb.reshape(1, -1, 3).astype(np.float32) / 255, cv2.COLOR_RGB2Lab)[0]


def _linear(c: np.ndarray) -> np.ndarray:
    c = c / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0, 1)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055) * 255


# Machado, Oliveira & Fernandes (2009), severity 1.0, on linear RGB.
DICHROMATS = {
    "none": np.eye(3),
    "protanopia": np.array(
        [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]]
    ),
    "deuteranopia": np.array(
        [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]]
    ),
}  # fmt: skip


@pytest.mark.parametrize("vision", list(DICHROMATS))
def test_class_colours_stay_apart(vision):
    names = list(CLASS_COLORS)
    assert names == list(CLASS_NAMES)
    rgb = np.array([CLASS_COLORS[n] for n in names], np.float64)
    seen = _srgb(_linear(rgb) @ DICHROMATS[vision].T).astype(np.float32)
    lab = _lab(seen)
    for a, b in itertools.combinations(range(len(names)), 2):
        distance = float(np.linalg.norm(lab[a] - lab[b]))
        # ~2.3 is just noticeable; the old oranges were 10.3 apart (car, trailer) and 3.8
        # for a deuteranope; a full dichromat merges more, hence the lower bar
        assert distance > (12 if vision == "none" else 10), (vision, names[a], names[b], distance)


def test_vehicle_classes_have_distinct_hues():
    vehicles = ["car", "truck", "construction_vehicle", "bus", "trailer"]
    lab = _lab(np.array([CLASS_COLORS[n] for n in vehicles], np.uint8))
    hues = np.degrees(np.arctan2(lab[:, 2], lab[:, 1]))
    for a, b in itertools.combinations(range(len(vehicles)), 2):
        gap = abs((hues[a] - hues[b] + 180) % 360 - 180)
        assert gap > 20, (vehicles[a], vehicles[b], gap)


def test_class_colours_are_readable_on_the_bev_background():
    def luminance(rgb) -> float:
        return float(_linear(np.asarray(rgb, np.float64)) @ [0.2126, 0.7152, 0.0722])

    background = luminance(BACKGROUND)
    for name, rgb in CLASS_COLORS.items():
        contrast = (luminance(rgb) + 0.05) / (background + 0.05)
        assert contrast >= 4.5, (name, contrast)  # WCAG AA for text


def test_visualize_help_says_which_boxes_are_drawn(capsys):
    from tools.visualize import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "beyond their class's evaluation range" in text and "are left out" in text
    assert "front face" in text


def test_labels_do_not_cover_each_other():
    """Two predictions of one object: the second score would cover the first; it is left out
    (so what it says does not change the picture)."""
    empty = _sample(torch.zeros(0, 9), [])
    boxes = Boxes3D(torch.tensor([[-20.0, 10, 0, 2, 4, 2, 0.3, 0, 0]]).repeat(2, 1))
    labels = torch.tensor([0, 0])
    first = draw_bev(empty, (boxes, labels, torch.tensor([0.9, 0.8])), size=SIZE)
    other = draw_bev(empty, (boxes, labels, torch.tensor([0.9, 0.1])), size=SIZE)
    assert (first == other).all()
