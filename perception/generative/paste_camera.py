"""Camera side of GT-paste: banked objects' crops composited into a sample's camera clips.

`composite_objects(sample, boxes, objects, rng=...)` draws each new box's object into every
camera (and every frame of its clip) that sees it, with depth order; the LiDAR side of the
paste (perception.generative.paste) calls it with the boxes it placed.

Choices, and why:

- **Which crop.** Per camera, the bank view (`BankObject.views`, any camera's) whose viewing
  angle to the box heading and depth are nearest to the new pose's at the keyframe: the cost
  is `|angle difference| (rad) + |ln(new depth / banked depth)|` (1 rad of viewing angle
  weighs as much as a factor e in depth). Views whose mask is empty are never used; exact ties
  are broken with `rng` (its only use). The same view is drawn into every frame of that
  camera's clip, so the object keeps one appearance over the clip (TSM sees it move, not
  change).
- **The warp.** Per object, camera and frame, the banked view's projected box (the convex
  hull of its 8 corners through the view's intrinsics and box-to-camera pose, not clipped to
  its image) is mapped onto the new box's projected hull (the sample's calibration and
  augmentation matrices, `perception.geometry.lidar_to_image`) by the axis-aligned affine
  that takes the one's 2-D bounds to the other's: a scale per image axis and a shift, one
  `cv2.warpAffine` of the crop (bilinear, edge pixels replicated) and one of its mask
  (nearest). Why not a homography fitted to the projected corners (tried first): a view from
  behind shows little but the rear face, and the fit maps that face onto the new rear face,
  leaving the side and top faces the new pose shows empty (12 % of the projected box at 27
  degrees of viewing-angle change, 99 % seen from the side), so the cameras showed less of
  the object than the LiDAR. The bounds map always spans the new projected box (the crop
  follows the box's new size, depth and place), is exact for the same pose (the crop's pixels
  come back unchanged), and errs only in foreshortening, which the nearest-view choice keeps
  small; the record's `view_angle_diff` says by how much. A crop the bank cut at its image's
  border lands as the matching part of the new box. Nothing loops over pixels in Python.
- **Where it is drawn.** Only where the warped mask is set, inside the new box's projected
  convex hull (the outline clipped at the near plane, pixel centres as the bank's masks) and
  not behind a nearer annotated object. Existing annotations (`sample.gt_boxes`) are the
  occluders: the convex hull of an existing box's projected corners masks the pasted object
  out where that box's centre is nearer the camera (camera-frame depth) than the pasted
  box's; everything else behind the pasted object is hidden by it. Pasted objects are drawn
  far to near (per camera and frame), so a nearer pasted object covers a farther one.
- **Clips** (T > 1 frames, oldest first, keyframe last): every frame is drawn with its own
  `camera_to_lidar`, the box moved back along its velocity by the frame's `camera_time_lag`
  (centre - v * lag; a zero or unknown velocity keeps it static in the keyframe LiDAR frame),
  the rule by which the bank lines up annotated objects' earlier sweeps; the existing
  occluders move back by their own velocities likewise.
- **Frames.** `boxes` are in the sample's LiDAR frame as `gt_boxes` (after `lidar_aug`) and
  pixels are those of `sample.images` (after `image_aug`); the paste runs before augmentation
  (identity matrices), but the result is the same either way: the bounds map is made in the
  image as loaded and `image_aug`'s affine carries it into the images (a flip mirrors the
  crop, a rotation turns it).
- **Nothing drawn** is never an error: a missing camera (`camera_mask` False), a box behind a
  camera or outside its image, an object without a usable view, a box hidden by nearer ones:
  each camera's record says which (`REASONS`).

Cost, measured on the 2-core build machine (shared, one torch thread) with 1600x900 images:
0.55 ms per object per camera-frame for an object of 4,000 pixels (40 m), 0.9 ms at 15,000
(20 m), 2.4 ms at 60,000 (10 m); a whole sample of the synthetic world (6 cameras of 800x450,
2-frame clips, 73 annotated boxes) with 6 pasted objects: 24-30 ms, one image copy included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from ..geometry import lidar_to_image
from ..structures.sample import Sample
from .bank import NEAR_PLANE_M, BankObject, CameraView
from .box_frame import box_corners, box_to_frame, clip_to_near_plane

__all__ = ["REASONS", "composite_objects"]

# Why a camera (or a frame of its clip) got no pixel of a pasted object.
CAMERA_MISSING = "camera missing"
BOX_NOT_FINITE = "box not finite"
NO_VIEW = "no bank view"
BEHIND_CAMERA = "behind the camera"
OUTSIDE_IMAGE = "outside the image"
DEGENERATE = "degenerate warp"
BAD_CALIBRATION = "camera calibration not finite or singular"
HIDDEN = "hidden by nearer objects"
NO_CROP_PIXELS = "no crop pixel lands in the box"
REASONS: tuple[str, ...] = (CAMERA_MISSING, BAD_CALIBRATION, BOX_NOT_FINITE, NO_VIEW, BEHIND_CAMERA,
                            OUTSIDE_IMAGE, DEGENERATE, HIDDEN, NO_CROP_PIXELS)  # fmt: skip

_TIE = 1e-9  # view costs this close are a tie, broken by the rng


def _corners_h(size: np.ndarray) -> np.ndarray:
    """`[8, 4]` homogeneous corners in the box frame, `Boxes3D.corners` order."""
    return np.c_[box_corners(size), np.ones(8)]


def _outline(h: np.ndarray) -> np.ndarray | None:
    """Convex hull `[K, 2]` (pixels) of a box from its corners' `(u*d, v*d, d)` `h [8, 3]`: the
    corners in front of the near plane and where edges cross it (the map is linear, so the
    crossing interpolates in this form); None when the whole box is behind."""
    pts = clip_to_near_plane(h, NEAR_PLANE_M)
    if pts is None:
        return None
    uv = pts[:, :2] / pts[:, 2:3]
    return cv2.convexHull(uv.astype(np.float32)).reshape(-1, 2).astype(np.float64)


def _hull_mask(hull: np.ndarray, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """`[h, w]` bool: pixels (of a window whose pixel (0, 0) is image pixel `origin`) whose
    centre (integer + 0.5) lies inside the convex polygon `hull` `[K, 2]` (the bank's rule)."""
    h, w = shape
    u = np.arange(w, dtype=np.float64) + origin[0] + 0.5
    v = np.arange(h, dtype=np.float64) + origin[1] + 0.5
    x, y = hull[:, 0], hull[:, 1]
    orientation = np.sign(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)) or 1.0
    inside = np.ones((h, w), bool)
    for k in range(len(hull)):  # a handful of edges, each vectorised over the window
        ax, ay = hull[k]
        bx, by = hull[(k + 1) % len(hull)]
        inside &= orientation * ((bx - ax) * (v[:, None] - ay) - (by - ay) * (u[None, :] - ax)) >= 0
    return inside


def _window(hull: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """`(u0, v0, u1, v1)` integer pixels (end exclusive) of `hull`'s bounds inside the image;
    None when they do not overlap it."""
    lo = np.floor(hull.min(0)).clip(0, [width, height]).astype(int)
    hi = np.ceil(hull.max(0)).clip(0, [width, height]).astype(int)
    if (hi - lo).min() <= 0:
        return None
    return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])


def _choose_view(
    views: Sequence[CameraView], angle: float, depth: float, rng: np.random.Generator
) -> tuple[int, float, float] | None:
    """Index of the view nearest to (`angle`, `depth`), its angle difference (rad, wrapped) and
    depth difference (m, new - banked); None when no view has a mask pixel."""
    usable = [k for k, v in enumerate(views) if v.mask.any() and v.depth > 0]
    if not usable:
        return None
    banked_angle = np.array([views[k].view_angle for k in usable], np.float64)
    banked_depth = np.array([views[k].depth for k in usable], np.float64)
    dangle = np.remainder(angle - banked_angle + math.pi, 2 * math.pi) - math.pi
    cost = np.abs(dangle) + np.abs(np.log(max(depth, NEAR_PLANE_M) / banked_depth))
    best = np.flatnonzero(cost <= cost.min() + _TIE)
    pick = int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])
    return usable[pick], float(dangle[pick]), float(depth - banked_depth[pick])


def _shift(du: float, dv: float) -> np.ndarray:
    m = np.eye(3)
    m[:2, 2] = du, dv
    return m


def composite_objects(
    sample: Sample,
    boxes: np.ndarray,
    objects: Sequence[BankObject],
    *,
    rng: np.random.Generator,
) -> tuple[Sample, list[dict[str, Any]]]:
    """Composites `objects` placed at `boxes` into the camera clips of `sample`.

    Args:
        sample: images `[Ncam, T, 3, H, W]` uint8 (keyframe last), calibration as loaded
            (`camera_to_lidar [Ncam, T, 4, 4]`, `camera_time_lag [Ncam, T]`, `intrinsics`,
            `image_aug`, `lidar_aug`), `camera_mask`, and `gt_boxes` (the occluders).
        boxes: `[M, 9]` (x, y, z, w, l, h, yaw, vx, vy) in the sample's LiDAR frame
            (`perception.structures.Boxes3D` conventions): where each object goes. The
            object's banked crop is scaled to this box's size.
        objects: `M` banked objects, `objects[i]` drawn at `boxes[i]`.
        rng: breaks ties between equally near bank views (the same state, the same result).

    Returns:
        The sample with new images (the input's are not modified) and, per pasted object in
        the order of `boxes`, a record: `box_index`, `bank_index`, `class_name`, `pixels`
        (drawn, all cameras and frames), `keyframe_pixels`, `cameras` (names drawn into), and
        `per_camera`: for every camera of the sample, `camera`, `pixels` `[T]` per frame,
        `reason` (None when drawn, else why not: one of `REASONS`; per frame in
        `frame_reasons`), `view_angle` / `depth` of the new pose at the keyframe (rad, m), and
        where drawn the view used: `view` (index into `objects[i].views`), `view_camera`, and
        the differences to its pose, `view_angle_diff` (wrapped) and `depth_diff` (new -
        banked); these are None where nothing was drawn.
    """
    boxes = np.asarray(boxes, np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 9:
        raise ValueError(f"composite_objects: boxes must be [M, 9], got {boxes.shape}")
    if len(objects) != len(boxes):
        raise ValueError(
            f"composite_objects: {len(boxes)} boxes but {len(objects)} objects (one per box)"
        )
    Ncam, T = sample.images.shape[:2]
    M = len(boxes)
    records: list[dict[str, Any]] = [
        {
            "box_index": i,
            "bank_index": int(obj.index),
            "class_name": obj.class_name,
            "pixels": 0,
            "keyframe_pixels": 0,
            "cameras": [],
            "per_camera": [
                {
                    "camera": name,
                    "pixels": [0] * T,
                    "reason": None,
                    "frame_reasons": [None] * T,
                    "view": None,
                    "view_camera": None,
                    "view_angle": None,
                    "depth": None,
                    "view_angle_diff": None,
                    "depth_diff": None,
                }
                for name in sample.camera_names
            ],
        }
        for i, obj in enumerate(objects)
    ]
    if M == 0:
        return sample, records

    finite = np.isfinite(boxes[:, :7]).all(1)
    velocity = np.where(np.isfinite(boxes[:, 7:9]), boxes[:, 7:9], 0.0)  # [M, 2]
    existing = sample.gt_boxes.tensor.detach().cpu().double().numpy()  # [E, 9]
    existing = existing[np.isfinite(existing[:, :7]).all(1)]
    existing_velocity = np.where(np.isfinite(existing[:, 7:9]), existing[:, 7:9], 0.0)
    existing_corners = _corners_lidar(existing)  # [E, 8, 4] homogeneous, keyframe
    pasted_corners = [_corners_h(b[3:6]) if ok else None for b, ok in zip(boxes, finite)]

    # Boxes project to the image as loaded (before `image_aug`), where the banked crops' bounds
    # map onto the new box's; `image_aug`'s 2-D affine then carries both into `images`, so a
    # flip mirrors the crop and a rotation turns it.
    # A present camera with unusable matrices is skipped (recorded), never an error.
    intrinsics = sample.intrinsics.detach().cpu().double()  # [Ncam, 3, 3]
    camera_to_lidar = sample.camera_to_lidar.detach().cpu().double()  # [Ncam, T, 4, 4]
    image_aug = sample.image_aug.detach().cpu().double().numpy()  # [Ncam, 4, 4] on (u, v, 1, 1)
    lidar_aug = sample.lidar_aug.detach().cpu().double()  # [4, 4]
    usable = (
        torch.isfinite(intrinsics).flatten(1).all(1)
        & (torch.linalg.det(intrinsics).abs() > 1e-9)
        & torch.isfinite(camera_to_lidar).flatten(1).all(1)
        & (torch.linalg.det(camera_to_lidar).abs() > 1e-9).all(1)
        & torch.from_numpy(np.isfinite(image_aug).reshape(Ncam, -1).all(1))
        & torch.isfinite(lidar_aug).all()
        & (torch.linalg.det(lidar_aug).abs() > 1e-9)
    ).numpy()  # [Ncam]
    eye = torch.eye(4, dtype=torch.float64)
    intrinsics[~torch.from_numpy(usable)] = torch.eye(3, dtype=torch.float64)
    camera_to_lidar[~torch.from_numpy(usable)] = eye
    if not usable.any():
        lidar_aug = eye
    projection = lidar_to_image(  # [Ncam, T, 4, 4]: augmented LiDAR -> (u*d, v*d, d, 1)
        intrinsics[:, None], camera_to_lidar, eye, lidar_aug
    ).numpy()
    pixel_aug = np.zeros((Ncam, 3, 3))  # [Ncam, 3, 3] the same on (u, v, 1)
    pixel_aug[:, :2, :2] = image_aug[:, :2, :2]
    pixel_aug[:, :2, 2] = image_aug[:, :2, 3]
    pixel_aug[:, 2, 2] = 1.0
    camera_centre = (lidar_aug @ camera_to_lidar)[..., :3, 3].numpy()  # [Ncam, T, 3] aug. LiDAR
    lags = sample.camera_time_lag.detach().cpu().double().numpy()  # [Ncam, T] s
    lags = np.where(np.isfinite(lags), lags, 0.0)  # an unknown lag: drawn as the keyframe
    images = sample.images.detach().cpu().numpy().copy()  # [Ncam, T, 3, H, W], drawn into

    for c in range(Ncam):
        cams = [r["per_camera"][c] for r in records]
        missing = not bool(sample.camera_mask[c])
        if missing or not usable[c]:
            reason = CAMERA_MISSING if missing else BAD_CALIBRATION
            for cam in cams:
                cam["reason"] = reason
                cam["frame_reasons"] = [reason] * T
            continue
        # The bank view per object, from the keyframe pose (one appearance for the clip).
        chosen: list[CameraView | None] = [None] * M
        key = projection[c, T - 1]
        for i, obj in enumerate(objects):
            if not finite[i]:
                continue
            depth = float(key[2] @ np.r_[boxes[i, :3], 1.0])
            c_, s_ = math.cos(boxes[i, 6]), math.sin(boxes[i, 6])
            dx, dy = camera_centre[c, T - 1, :2] - boxes[i, :2]
            angle = math.atan2(-s_ * dx + c_ * dy, c_ * dx + s_ * dy)  # camera seen from the box
            pick = _choose_view(obj.views, angle, depth, rng)
            cams[i].update(view_angle=angle, depth=depth)
            if pick is not None:
                k, dangle, ddepth = pick
                chosen[i] = obj.views[k]
                cams[i].update(
                    view=k,
                    view_camera=obj.views[k].camera,
                    view_angle_diff=dangle,
                    depth_diff=ddepth,
                )

        for j in range(T):
            P = projection[c, j]  # [4, 4]
            lag = float(lags[c, j])
            corners = existing_corners.copy()  # the existing boxes in this frame
            corners[..., :2] -= existing_velocity[:, None] * lag
            centres = np.c_[existing[:, :3], np.ones(len(existing))]
            centres[:, :2] -= existing_velocity * lag
            occluders = _Occluders(
                corners @ P[:3].T, centres @ P[2], pixel_aug[c]
            )  # [E, 8, 3], [E]
            drawable = []  # (depth, i, h [8, 3]) of the pasted boxes in this frame
            for i in range(M):
                if not finite[i]:
                    cams[i]["frame_reasons"][j] = BOX_NOT_FINITE
                    continue
                centre = boxes[i, :3].copy()
                centre[:2] -= velocity[i] * lag
                to_image = P @ box_to_frame(np.r_[centre, boxes[i, 3:7]])
                h = (pasted_corners[i] @ to_image.T)[:, :3]  # [8, 3] (u*d, v*d, d)
                drawable.append((float(to_image[2, 3]), i, h))
            for depth, i, h in sorted(drawable, key=lambda x: -x[0]):  # far to near
                pixels, reason = _draw(
                    images[c, j], h, pixel_aug[c], depth, objects[i].size, chosen[i], occluders
                )
                cams[i]["pixels"][j] = pixels
                cams[i]["frame_reasons"][j] = reason

        for cam in cams:
            if cam["reason"] is None and not any(cam["pixels"]):
                reasons = [r for r in cam["frame_reasons"] if r is not None]
                cam["reason"] = cam["frame_reasons"][-1] or (reasons[-1] if reasons else None)
                # no view was used where nothing was drawn
                cam.update(view=None, view_camera=None, view_angle_diff=None, depth_diff=None)

    for r in records:
        r["pixels"] = sum(sum(cam["pixels"]) for cam in r["per_camera"])
        r["keyframe_pixels"] = sum(cam["pixels"][-1] for cam in r["per_camera"])
        r["cameras"] = [cam["camera"] for cam in r["per_camera"] if any(cam["pixels"])]
    return sample.replace(images=torch.from_numpy(images)), records


def _corners_lidar(boxes: np.ndarray) -> np.ndarray:
    """`[N, 8, 4]` homogeneous corners of `boxes` `[N, 9]` in their frame, `Boxes3D.corners`
    order."""
    if not len(boxes):
        return np.zeros((0, 8, 4))
    w, l, h = boxes[:, 3:4], boxes[:, 4:5], boxes[:, 5:6]  # [N, 1] each
    along = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * l / 2  # [N, 8]
    across = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * w / 2
    up = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * h / 2
    cos, sin = np.cos(boxes[:, 6:7]), np.sin(boxes[:, 6:7])
    x = boxes[:, 0:1] + along * cos - across * sin
    y = boxes[:, 1:2] + along * sin + across * cos
    return np.stack([x, y, boxes[:, 2:3] + up, np.ones_like(x)], -1)


class _Occluders:
    """The existing boxes of one camera frame as occluders: their corners `h` `[E, 8, 3]`
    `(u*d, v*d, d)` in the image as loaded and centre depths `[E]`; hulls (in the image, after
    `pixel_aug`) made only for the boxes a pasted object asks about."""

    def __init__(self, h: np.ndarray, depth: np.ndarray, pixel_aug: np.ndarray) -> None:
        self.h, self.depth, self.pixel_aug = h, depth, pixel_aug
        front = (h[..., 2] > NEAR_PLANE_M).all(1)  # [E] every corner projects
        uv = h[..., :2] / np.where(front[:, None], h[..., 2], 1.0)[..., None]  # [E, 8, 2]
        uv = uv @ pixel_aug[:2, :2].T + pixel_aug[:2, 2]
        self.bounds = np.c_[uv.min(1), uv.max(1)]  # [E, 4] (u0, v0, u1, v1) where `front`
        self.bounds[~front] = np.nan  # bounds from the clipped outline, when asked
        self.bounds[(h[..., 2] <= NEAR_PLANE_M).all(1)] = [np.inf, np.inf, -np.inf, -np.inf]
        self.hulls: dict[int, np.ndarray | None] = {}

    def _hull(self, e: int) -> np.ndarray | None:
        if e not in self.hulls:
            loaded = _outline(self.h[e])
            self.hulls[e] = None if loaded is None else _affine(self.pixel_aug, loaded)
        return self.hulls[e]

    def nearer(self, depth: float, window: tuple[int, int, int, int], image_size: tuple[int, int]):
        """`(hull [K, 2], window)` of each box nearer than `depth` whose bounds meet `window`
        `(u0, v0, u1, v1)` (pixels, end exclusive)."""
        u0, v0, u1, v1 = window
        b = self.bounds
        near = self.depth < depth
        # NaN bounds (a box across the near plane) are never apart: its hull decides
        apart = (b[:, 0] >= u1) | (b[:, 2] <= u0) | (b[:, 1] >= v1) | (b[:, 3] <= v0)
        for e in np.flatnonzero(near & ~apart):
            hull = self._hull(int(e))
            box = None if hull is None else _window(hull, *image_size)
            if box is None or box[0] >= u1 or box[2] <= u0 or box[1] >= v1 or box[3] <= v0:
                continue
            yield hull, box


def _affine(matrix: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """`uv [K, 2]` pixels through the 2-D affine `matrix [3, 3]`."""
    return uv @ matrix[:2, :2].T + matrix[:2, 2]


def _draw(
    image: np.ndarray,
    h_new: np.ndarray,
    pixel_aug: np.ndarray,
    depth: float,
    size: np.ndarray,
    view: CameraView | None,
    occluders: _Occluders,
) -> tuple[int, str | None]:
    """Draws `view`'s crop into `image` `[3, H, W]` (in place) at the box whose corners are
    `h_new` `[8, 3]` `(u*d, v*d, d)` in the image as loaded, carried into `image` by
    `pixel_aug` `[3, 3]`; `depth` is the box centre's, `occluders` the existing boxes.
    Returns (pixels drawn, why none)."""
    _, H, W = image.shape
    loaded = _outline(h_new)  # [K, 2] in the image as loaded
    if loaded is None:
        return 0, BEHIND_CAMERA
    hull = _affine(pixel_aug, loaded)  # [K, 2] in `image`
    window = _window(hull, W, H)
    if window is None:
        return 0, OUTSIDE_IMAGE
    if view is None:
        return 0, NO_VIEW
    u0, v0, u1, v1 = window
    region = _hull_mask(hull, (u0, v0), (v1 - v0, u1 - u0))  # [h, w]
    if not region.any():
        return 0, OUTSIDE_IMAGE
    for other, box in occluders.nearer(depth, window, (W, H)):  # they stay in front
        ou0, ov0, ou1, ov1 = max(u0, box[0]), max(v0, box[1]), min(u1, box[2]), min(v1, box[3])
        hidden = _hull_mask(other, (ou0, ov0), (ov1 - ov0, ou1 - ou0))
        region[ov0 - v0 : ov1 - v0, ou0 - u0 : ou1 - u0] &= ~hidden
    if not region.any():
        return 0, HIDDEN

    # The banked view's projected box (the image it was cut from), not clipped to that image:
    # the crop sits inside it at `crop_box`, so a crop cut at the image border lands as a part.
    to_banked = np.eye(4)
    to_banked[:3, :3] = view.intrinsics
    h_banked = (_corners_h(size) @ (to_banked @ view.box_to_camera.astype(np.float64)).T)[:, :3]
    banked = _outline(h_banked)
    if banked is None:
        return 0, DEGENERATE
    lo_src, hi_src = banked.min(0), banked.max(0)
    lo_dst, hi_dst = loaded.min(0), loaded.max(0)
    if (hi_src - lo_src).min() <= 1e-6:
        return 0, DEGENERATE
    scale = (hi_dst - lo_dst) / (hi_src - lo_src)  # [2] (u, v)
    # banked image pixels -> new image pixels as loaded: the projected box's bounds onto the new
    # ones; then into `image` by `pixel_aug`; crop pixel indices -> window pixel indices (pixel
    # centres at integer + 0.5 in both)
    cu0, cv0 = view.crop_box[:2]
    bounds = np.diag([scale[0], scale[1], 1.0])
    bounds[:2, 2] = lo_dst - scale * lo_src
    warp = _shift(-u0 - 0.5, -v0 - 0.5) @ pixel_aug @ bounds @ _shift(cu0 + 0.5, cv0 + 0.5)
    warp = warp[:2]
    size_wh = (u1 - u0, v1 - v0)
    colour = cv2.warpAffine(  # [h, w, 3]; the crop's edge pixels extend past it, not black
        np.ascontiguousarray(view.crop),
        warp,
        size_wh,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    mask = cv2.warpAffine(
        np.ascontiguousarray(view.mask, dtype=np.uint8), warp, size_wh, flags=cv2.INTER_NEAREST
    )  # [h, w], 0 outside the crop
    draw = region & (mask > 0)
    pixels = int(draw.sum())
    if pixels == 0:
        return 0, NO_CROP_PIXELS
    for plane, drawn in zip(image[:, v0:v1, u0:u1], cv2.split(colour)):  # [h, w] views
        np.copyto(plane, drawn, where=draw)
    return pixels, None
