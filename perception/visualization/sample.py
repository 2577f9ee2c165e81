"""Draws a `Sample`: six camera views with projected boxes and a BEV view of the LiDAR.

Ground truth is drawn with solid lines, predictions with dashed lines and a label (class and
score on the cameras, score in the BEV), both in the class's colour. The palette is Paul Tol's
"light" scheme (distinct for the common colour-vision deficiencies, readable on dark images)
with its pale grey, which LiDAR points would hide, swapped for violet and reddish purple.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..geometry import lidar_to_image, project
from ..structures import CLASS_NAMES, Boxes3D, Sample
from ..structures.classes import CLASS_COLORS

UNKNOWN_CLASS_COLOR = (255, 255, 255)  # a label outside CLASS_NAMES (drawn, not dropped)
BACKGROUND = (20, 20, 20)  # the BEV's background
RING_COLOR = (90, 90, 90)
RING_LABEL_COLOR = (170, 170, 170)
PASTED_COLOR = (255, 64, 255)  # magenta: boxes GT-paste added (drawn over their class colour)
# Box edges as pairs of corner indices. Boxes3D.corners order: bottom face counter-clockwise
# from the front-left corner (0 front-left, 1 back-left, 2 back-right, 3 front-right), then the
# top face in the same order (4..7). The front face is 0, 3, 7, 4.
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
]
FRONT_DIAGONALS = [(0, 7), (3, 4)]  # the cross that marks the front face
CAMERA_LAYOUT = (
    ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
    ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"),
)
_DASH, _GAP = 7, 5  # pixels of a prediction's dashed line

# (boxes, labels) or (boxes, labels, scores): the predictions to draw
Predictions = tuple[Boxes3D, torch.Tensor] | tuple[Boxes3D, torch.Tensor, torch.Tensor]


def class_color(label: int) -> tuple[int, int, int]:
    if 0 <= label < len(CLASS_NAMES):
        return CLASS_COLORS[CLASS_NAMES[label]]
    return UNKNOWN_CLASS_COLOR


def class_name(label: int) -> str:
    return CLASS_NAMES[label] if 0 <= label < len(CLASS_NAMES) else f"class {label}"


def _line(image, p, q, color, thickness: int, dashed: bool) -> None:
    """A solid or dashed line from `p` to `q` (float pixels), clipped to the image first."""
    h, w = image.shape[:2]
    ends = np.concatenate([np.asarray(p, np.float64), np.asarray(q, np.float64)])
    if not np.isfinite(ends).all() or np.abs(ends).max() > 1e5:  # a corner near the camera plane
        return
    a, b = tuple(int(round(v)) for v in ends[:2]), tuple(int(round(v)) for v in ends[2:])
    ok, a, b = cv2.clipLine((0, 0, w, h), a, b)
    if not ok:
        return
    if not dashed:
        cv2.line(image, a, b, color, thickness, cv2.LINE_AA)
        return
    start, stop = np.asarray(a, np.float64), np.asarray(b, np.float64)
    length = float(np.linalg.norm(stop - start))
    direction = (stop - start) / max(length, 1e-9)
    for s in np.arange(0.0, length, _DASH + _GAP):
        u = start + direction * s
        v = start + direction * min(s + _DASH, length)
        cv2.line(
            image,
            tuple(int(round(x)) for x in u),
            tuple(int(round(x)) for x in v),
            color,
            thickness,
            cv2.LINE_AA,
        )


def _label(image, text: str, origin, color, scale: float = 0.4) -> tuple[int, int, int, int]:
    """`text` in `color` on a dark box at `origin` (bottom-left, pixels), kept on the image;
    returns the box `(x0, y0, x1, y1)`."""
    h, w = image.shape[:2]
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = int(np.clip(origin[0], 0, max(0, w - tw - 2)))
    y = int(np.clip(origin[1], th + 2, h - base - 1))
    cv2.rectangle(image, (x - 1, y - th - 2), (x + tw + 1, y + base), BACKGROUND, -1)
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
    return x - 1, y - th - 2, x + tw + 1, y + base


class _Labels:
    """Places box labels so that none covers another or sticks out of the image: a label that
    would is left out (its box is still drawn). `reserve` marks text already drawn."""

    def __init__(self, image: np.ndarray):
        self.image = image
        self.taken: list[tuple[int, int, int, int]] = []

    def reserve(self, box: tuple[int, int, int, int]) -> None:
        self.taken.append(box)

    def place(self, text: str, origin, color, scale: float = 0.4) -> bool:
        h, w = self.image.shape[:2]
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        x, y = int(origin[0]), int(origin[1])
        box = (x - 1, y - th - 2, x + tw + 1, y + base)
        if box[0] < 0 or box[1] < 0 or box[2] >= w or box[3] >= h:
            return False
        if any(
            box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in self.taken
        ):
            return False
        self.reserve(_label(self.image, text, (x, y), color, scale))
        return True


# Short class names for the labels on the pictures (the legend gives the full ones).
SHORT_NAMES = {"construction_vehicle": "constr", "motorcycle": "moto", "bicycle": "bike",
               "pedestrian": "ped", "traffic_cone": "cone"}  # fmt: skip


def _score_text(score: float) -> str:
    return f"{score:.2f}".removeprefix("0")  # .87, 1.00


def _unpack(predictions: Predictions | None):
    if predictions is None:
        return None
    boxes, labels, *rest = predictions
    scores = rest[0] if rest else None
    return boxes, labels, scores


def _draw_boxes_on_camera(
    image,
    boxes: Boxes3D,
    labels,
    matrix,
    scores=None,
    dashed=False,
    pixel_scale: float = 1.0,
    labeller: _Labels | None = None,
    color: tuple[int, int, int] | None = None,
):
    """Projects `boxes` through `matrix` (LiDAR -> image pixels) onto `image`, which is the
    camera image resized by `pixel_scale` (drawn after resizing, so labels stay readable);
    with `scores`, labels each box that shows (class and score) where `labeller` finds room."""
    if not len(boxes):
        return
    corners = boxes.corners().reshape(-1, 3).double()
    uv, depth = project(corners, matrix.double())
    uv = uv.reshape(-1, 8, 2).numpy() * pixel_scale
    depth = depth.reshape(-1, 8).numpy()
    visible = [b for b in range(len(boxes)) if (depth[b] > 0.1).all()]
    for b in visible:
        c = color or class_color(int(labels[b]))
        for i, j in EDGES + FRONT_DIAGONALS:
            _line(image, uv[b, i], uv[b, j], c, 2, dashed)
    if scores is None or labeller is None:
        return
    for b in sorted(visible, key=lambda b: depth[b].mean()):  # nearer boxes label first
        label = int(labels[b])
        name = class_name(label)
        top_left = uv[b, 4:].min(0)  # left of and above the box's top face
        if np.ptp(uv[b, :, 1]) >= 12:  # a box too small to see gets no label
            text = f"{SHORT_NAMES.get(name, name)} {_score_text(float(scores[b]))}"
            labeller.place(text, (top_left[0], top_left[1] - 3), class_color(label), 0.4)


def draw_cameras(
    sample: Sample,
    predictions: Predictions | None = None,
    width: int = 480,
    pasted: Boxes3D | None = None,
) -> np.ndarray:
    """`[H, W, 3]` uint8 RGB: the keyframe image of every camera in nuScenes' layout (front row,
    back row) with GT boxes (solid) and `predictions` (boxes, labels[, scores]; dashed, labelled
    with class and score) in class colours. A cross marks each box's front face. `pasted`:
    boxes (LiDAR frame, as `gt_boxes`) outlined in `PASTED_COLOR`."""
    tiles = []
    n, t, _, h, w = sample.images.shape
    height = max(1, round(width * h / w))
    predicted = _unpack(predictions)
    for row in CAMERA_LAYOUT:
        row_tiles = []
        for name in row:
            tile = np.zeros((height, width, 3), np.uint8)
            if name in sample.camera_names:
                c = sample.camera_names.index(name)
                image = np.ascontiguousarray(sample.images[c, -1].permute(1, 2, 0).numpy())
                tile = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
                labeller = _Labels(tile)
                labeller.reserve((0, 0, 12 * len(name), 24))  # the camera's name
                if bool(sample.camera_mask[c]):
                    matrix = lidar_to_image(
                        sample.intrinsics[c].double(),
                        sample.camera_to_lidar[c, -1].double(),
                        sample.image_aug[c].double(),
                        sample.lidar_aug.double(),
                    )
                    scale = width / w
                    _draw_boxes_on_camera(
                        tile, sample.gt_boxes, sample.gt_labels, matrix, pixel_scale=scale
                    )
                    if pasted is not None and len(pasted):
                        _draw_boxes_on_camera(
                            tile, pasted, torch.full((len(pasted),), -2), matrix,
                            pixel_scale=scale, color=PASTED_COLOR,
                        )  # fmt: skip
                    if predicted is not None:
                        boxes, labels, scores = predicted
                        _draw_boxes_on_camera(
                            tile,
                            boxes,
                            labels,
                            matrix,
                            scores,
                            dashed=True,
                            pixel_scale=scale,
                            labeller=labeller,
                        )
            cv2.putText(
                tile, name, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA
            )
            row_tiles.append(tile)
        tiles.append(np.concatenate(row_tiles, axis=1))
    return np.concatenate(tiles, axis=0)


def draw_bev(
    sample: Sample,
    predictions: Predictions | None = None,
    extent: float = 54.0,
    size: int = 720,
    pasted: Boxes3D | None = None,
) -> np.ndarray:
    """`[size, size, 3]` uint8 RGB BEV of the LiDAR frame, +x right and +y up, points shaded by
    time lag (keyframe brightest), range rings every 10 m (labelled), GT boxes solid and
    predictions (boxes, labels[, scores]) dashed with their score, in class colours; a tick from
    the centre marks each box's front. `pasted`: boxes outlined in `PASTED_COLOR`."""
    image = np.full((size, size, 3), BACKGROUND, np.uint8)
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
    centre = size // 2
    labeller = _Labels(image)
    for r in range(10, int(extent) + 1, 10):  # range rings every 10 m
        radius = int(r * scale)
        cv2.circle(image, (centre, centre), radius, RING_COLOR, 1, cv2.LINE_AA)
        # on the ring's upper-right diagonal, where the fewest boxes of a road scene sit
        offset = int(radius / np.sqrt(2))
        origin = (centre + offset + 2, centre - offset - 2)
        labeller.reserve(_label(image, f"{r} m", origin, RING_LABEL_COLOR, 0.35))

    def draw(boxes: Boxes3D, labels, scores=None, dashed=False, color=None, thickness=2):
        if not len(boxes):
            return
        corners = boxes.corners()[:, :4, :2].numpy()
        for b in range(len(boxes)):
            c = color or class_color(int(labels[b]))
            poly = to_pixels(corners[b])
            if color is not None:  # an outline around the class-coloured box
                centre = poly.mean(0)
                poly = centre + (poly - centre) * (1 + 4 / max(np.ptp(poly, 0).max(), 1))
            for i in range(4):
                _line(image, poly[i], poly[(i + 1) % 4], c, thickness, dashed)
            front = poly[[0, 3]].mean(0)
            _line(image, poly.mean(0), front, c, 1, False)
            if scores is not None:
                corner = poly[np.argmax(poly[:, 0] - poly[:, 1])]  # upper-right on the image
                labeller.place(
                    _score_text(float(scores[b])), (corner[0] + 2, corner[1] - 2), c, 0.35
                )

    draw(sample.gt_boxes, sample.gt_labels)
    if pasted is not None:
        draw(pasted, torch.full((len(pasted),), -2), color=PASTED_COLOR, thickness=1)
    predicted = _unpack(predictions)
    if predicted is not None:
        boxes, labels, scores = predicted
        draw(boxes, labels, scores, dashed=True)
    return image


def draw_legend(
    image: np.ndarray, origin: tuple[int, int] = (8, 20), pasted: bool = False
) -> np.ndarray:
    """Writes the class colours and the line styles onto `image` (in place) from `origin`;
    with `pasted`, the GT-paste outline too."""
    x, y = origin
    for name, color in CLASS_COLORS.items():
        _label(image, name, (x, y), color, 0.45)
        y += 16
    _label(image, "solid: ground truth", (x, y), (230, 230, 230), 0.45)
    _label(image, "dashed: prediction + score", (x, y + 16), (230, 230, 230), 0.45)
    if pasted:
        _label(image, "magenta outline: pasted", (x, y + 32), PASTED_COLOR, 0.45)
    return image


def draw_sample(
    sample: Sample,
    predictions: Predictions | None = None,
    camera_width: int = 400,
    pasted: Boxes3D | None = None,
) -> np.ndarray:
    """Cameras (2 x 3 grid) beside the BEV view, one `[H, W, 3]` uint8 RGB picture; `pasted`
    boxes (GT-paste's) outlined in `PASTED_COLOR`."""
    cameras = draw_cameras(sample, predictions, camera_width, pasted=pasted)
    bev = draw_bev(sample, predictions, size=cameras.shape[0], pasted=pasted)
    bev = draw_legend(bev, pasted=pasted is not None)
    return np.concatenate([cameras, bev], axis=1)
