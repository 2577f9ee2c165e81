"""Draws a `Sample`: six camera views with projected boxes and a BEV view of the LiDAR."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..geometry import lidar_to_image, project
from ..structures import CLASS_NAMES, Boxes3D, Sample

# One BGR-free RGB colour a class, fixed so pictures compare across runs.
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "car": (255, 158, 0),
    "truck": (255, 99, 71),
    "construction_vehicle": (233, 150, 70),
    "bus": (255, 69, 0),
    "trailer": (255, 140, 0),
    "barrier": (112, 128, 144),
    "motorcycle": (255, 61, 99),
    "bicycle": (220, 20, 60),
    "pedestrian": (0, 0, 230),
    "traffic_cone": (47, 79, 79),
}
PREDICTION_COLOR = (0, 200, 0)
# Box edges as pairs of corner indices (Boxes3D.corners order: bottom face, then top).
EDGES = [
    (0, 1),
    (1, 2),
    (2, 3),
    (3, 0),
    (4, 5),
    (5, 6),
    (6, 7),
    (7, 4),
    (0, 4),
    (1, 5),
    (2, 6),
    (3, 7),
    (0, 5),
    (1, 4),
]  # the last two mark the front face
CAMERA_LAYOUT = (
    ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
    ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"),
)


def _draw_boxes_on_camera(image, boxes: Boxes3D, labels, matrix, color=None):
    if not len(boxes):
        return
    corners = boxes.corners().reshape(-1, 3).double()
    uv, depth = project(corners, matrix.double())
    uv = uv.reshape(-1, 8, 2).numpy()
    depth = depth.reshape(-1, 8).numpy()
    for b in range(len(boxes)):
        if (depth[b] <= 0.1).any():
            continue
        c = color or CLASS_COLORS[CLASS_NAMES[int(labels[b])]]
        for i, j in EDGES:
            p, q = uv[b, i], uv[b, j]
            if np.abs(np.concatenate([p, q])).max() > 1e5:
                continue
            cv2.line(image, tuple(int(v) for v in p), tuple(int(v) for v in q), c, 2, cv2.LINE_AA)


def draw_cameras(
    sample: Sample, predictions: tuple[Boxes3D, torch.Tensor] | None = None, width: int = 480
) -> np.ndarray:
    """`[H, W, 3]` uint8 RGB: the keyframe image of every camera in nuScenes' layout (front row,
    back row) with GT boxes in class colours and `predictions` (boxes, labels) in green."""
    tiles = []
    n, t, _, h, w = sample.images.shape
    height = max(1, round(width * h / w))
    for row in CAMERA_LAYOUT:
        row_tiles = []
        for name in row:
            tile = np.zeros((h, w, 3), np.uint8)
            if name in sample.camera_names:
                c = sample.camera_names.index(name)
                tile = np.ascontiguousarray(sample.images[c, -1].permute(1, 2, 0).numpy())
                if bool(sample.camera_mask[c]):
                    matrix = lidar_to_image(
                        sample.intrinsics[c].double(),
                        sample.camera_to_lidar[c, -1].double(),
                        sample.image_aug[c].double(),
                        sample.lidar_aug.double(),
                    )
                    _draw_boxes_on_camera(tile, sample.gt_boxes, sample.gt_labels, matrix)
                    if predictions is not None:
                        _draw_boxes_on_camera(
                            tile, predictions[0], predictions[1], matrix, PREDICTION_COLOR
                        )
            tile = cv2.resize(tile, (width, height), interpolation=cv2.INTER_AREA)
            cv2.putText(
                tile, name, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA
            )
            row_tiles.append(tile)
        tiles.append(np.concatenate(row_tiles, axis=1))
    return np.concatenate(tiles, axis=0)


def draw_bev(
    sample: Sample,
    predictions: tuple[Boxes3D, torch.Tensor] | None = None,
    extent: float = 54.0,
    size: int = 720,
) -> np.ndarray:
    """`[size, size, 3]` uint8 RGB BEV of the LiDAR frame, +x right and +y up, points shaded by
    time lag (keyframe brightest), GT boxes in class colours, predictions in green."""
    image = np.full((size, size, 3), 20, np.uint8)
    scale = size / (2 * extent)

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        return np.stack([(xy[:, 0] + extent) * scale, (extent - xy[:, 1]) * scale], 1)

    points = sample.points.numpy()
    if len(points):
        px = to_pixels(points[:, :2]).astype(np.int32)
        ok = (px >= 0).all(1) & (px < size).all(1)
        lag = points[ok, 4]
        shade = (230 - np.clip(lag / 0.5, 0, 1) * 150).astype(np.uint8)
        image[px[ok, 1], px[ok, 0]] = shade[:, None]
    for r in range(10, int(extent) + 1, 10):  # range rings every 10 m
        cv2.circle(image, (size // 2, size // 2), int(r * scale), (60, 60, 60), 1)

    def draw(boxes: Boxes3D, labels, color=None):
        if not len(boxes):
            return
        corners = boxes.corners()[:, :4, :2].numpy()
        for b in range(len(boxes)):
            c = color or CLASS_COLORS[CLASS_NAMES[int(labels[b])]]
            poly = to_pixels(corners[b]).astype(np.int32)
            cv2.polylines(image, [poly], True, c, 2, cv2.LINE_AA)
            front = poly[[0, 3]].mean(0).astype(int)
            centre = poly.mean(0).astype(int)
            cv2.line(image, tuple(centre), tuple(front), c, 1, cv2.LINE_AA)

    draw(sample.gt_boxes, sample.gt_labels)
    if predictions is not None:
        draw(predictions[0], predictions[1], PREDICTION_COLOR)
    return image


def draw_sample(
    sample: Sample, predictions: tuple[Boxes3D, torch.Tensor] | None = None, camera_width: int = 400
) -> np.ndarray:
    """Cameras (2 x 3 grid) beside the BEV view, one `[H, W, 3]` uint8 RGB picture."""
    cameras = draw_cameras(sample, predictions, camera_width)
    bev = draw_bev(sample, predictions, size=cameras.shape[0])
    legend_y = 20
    for name, color in CLASS_COLORS.items():
        cv2.putText(bev, name, (8, legend_y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
        legend_y += 16
    return np.concatenate([cameras, bev], axis=1)
