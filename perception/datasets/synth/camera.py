"""Rendering camera images of the synthetic world (pinhole, nuScenes camera axes).

Camera frame: x right, y down, z forward (metres); pixels (u right, v down). The ground is
the scene's top-down raster warped into the image by the ground-plane homography; boxes are
drawn as shaded, decorated prisms far to near (painter's algorithm: occlusion is correct
between objects; within a convex box back faces are culled). The prisms of one object (its
parts) are drawn together, lower layers first: a part resting on another cannot be hidden by
it when the camera is above the lower part's top, as the cameras are for every class.
Images are BGR uint8.
"""

from __future__ import annotations

import cv2
import numpy as np

from perception.datasets.synth.layout import Prisms, SceneLayout, Style
from perception.datasets.synth.sensors import Calibration

NEAR = 0.3  # m, near clipping plane
FAR = 160.0  # m, nothing is drawn beyond (horizontally)
_SHIFT = 4  # fractional bits of polygon vertices


def _style_arrays(style: Style) -> tuple[np.ndarray, ...]:
    """Expand a style into one row per (decal, face): face [P] (0..3 sides, 4 top),
    u0, u1, v0, v1 [P], rgb [P,3], emissive [P]."""
    rows = []
    for faces, u0, u1, v0, v1, rgb, emissive in style:
        for f in range(5):
            if faces & (1 << f):
                rows.append((f, u0, u1, v0, v1, *rgb, float(emissive)))
    a = np.array(rows, dtype=np.float64).reshape(-1, 9)
    return a[:, 0].astype(np.int64), a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5:8], a[:, 8] > 0


def _clip_near(poly: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a polygon [V,3] (camera frame) against z >= NEAR."""
    out = []
    n = len(poly)
    for k in range(n):
        p, q = poly[k], poly[(k + 1) % n]
        p_in, q_in = p[2] >= NEAR, q[2] >= NEAR
        if p_in:
            out.append(p)
        if p_in != q_in:
            out.append(p + (q - p) * (NEAR - p[2]) / (q[2] - p[2]))
    return np.array(out).reshape(-1, 3)


class CameraRenderer:
    """Renders one camera of one scene; what never changes within the scene is precomputed."""

    def __init__(self, calib: Calibration, layout: SceneLayout, rng: np.random.Generator):
        assert calib.intrinsic is not None
        self.calib = calib
        self.layout = layout
        self.K = calib.intrinsic
        W, H = calib.width, calib.height
        self.size = (W, H)
        # Ray of every pixel in the ego frame: the ego is level, so sky/ground/fog are fixed.
        u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
        pix = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(self.K).T
        ego_rays = pix @ calib.rotation_matrix.T
        elev = ego_rays[..., 2] / np.linalg.norm(ego_rays, axis=-1)
        height = calib.translation[2]
        self.ground_mask = (elev < -0.004).astype(np.uint8)
        dist = np.where(elev < 0, height / np.maximum(-elev, 1e-6), np.inf)
        fog = 1.0 - np.exp(-np.maximum(dist - 30.0, 0.0) / 260.0)
        self.fog = fog.astype(np.float32)
        self.clear = (1.0 - fog).astype(np.float32)
        sky_w = np.clip(elev / 0.45, 0, 1)[..., None] ** 0.6
        sky = layout.sky_horizon * (1 - sky_w) + layout.sky_top * sky_w
        horizon = np.broadcast_to(layout.sky_horizon, (H, W, 3))
        self.backdrop = np.where(elev[..., None] >= 0, sky, horizon).astype(np.uint8)
        self.haze = np.ascontiguousarray(horizon, dtype=np.uint8)
        border = layout.ground.bgr[0, 0].astype(float)
        self.border = tuple(float(x) for x in border)
        g = layout.ground
        self.raster_to_global = np.array(
            [[g.resolution, 0.0, g.x0], [0.0, g.resolution, g.y0], [0.0, 0.0, 1.0]]
        )
        self.noise = rng.normal(0.0, 3.0, (H + 32, W + 32, 3)).astype(np.int16)
        # All styles' (decal, face) rows in one table; style i owns rows row_start[i] + k.
        arrays = [_style_arrays(s) for s in layout.styles]
        self.row_count = np.array([len(a[0]) for a in arrays], dtype=np.int64)
        self.row_start = np.cumsum(self.row_count) - self.row_count
        self.row_face = np.concatenate([a[0] for a in arrays])
        self.row_uv = np.stack([np.concatenate([a[k] for a in arrays]) for k in range(1, 5)], 1)
        self.row_rgb = np.concatenate([a[5] for a in arrays])
        self.row_emissive = np.concatenate([a[6] for a in arrays])

    def render(
        self,
        cam_to_global: np.ndarray,
        position: np.ndarray,
        prisms: Prisms,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Image [H,W,3] BGR uint8 seen from a camera at `position` (global, m) with rotation
        `cam_to_global` [3,3], of the ground and of `prisms` (global frame)."""
        W, H = self.size
        global_to_cam = cam_to_global.T
        t = -global_to_cam @ position
        # Homography ground plane (z = 0) -> image, composed with raster pixel -> ground.
        plane = np.column_stack([global_to_cam[:, 0], global_to_cam[:, 1], t])
        homography = self.K @ plane @ self.raster_to_global
        warped = cv2.warpPerspective(
            self.layout.ground.bgr, homography, (W, H), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=self.border,
        )  # fmt: skip
        ground = cv2.blendLinear(warped, self.haze, self.clear, self.fog)
        image = self.backdrop.copy()
        cv2.copyTo(ground, self.ground_mask, image)
        self._draw_prisms(image, global_to_cam, position, prisms)
        dy, dx = rng.integers(0, 32, 2)
        noisy = image.astype(np.int16) + self.noise[dy : dy + H, dx : dx + W]
        image = np.clip(noisy, 0, 255).astype(np.uint8)
        return cv2.GaussianBlur(image, (3, 3), 0.6)

    def _draw_prisms(
        self, image: np.ndarray, global_to_cam: np.ndarray, position: np.ndarray, prisms: Prisms
    ) -> None:
        W, H = self.size
        K = self.K
        sun = self.layout.sun
        exposure = self.layout.exposure
        c, s = np.cos(prisms.yaw), np.sin(prisms.yaw)
        half_l, half_w = prisms.wlh[:, 1] / 2, prisms.wlh[:, 0] / 2
        # Footprint corners in the order front-left, back-left, back-right, front-right.
        lx = np.stack([half_l, -half_l, -half_l, half_l], axis=1)
        ly = np.stack([half_w, half_w, -half_w, -half_w], axis=1)
        fx = prisms.centre[:, 0:1] + c[:, None] * lx - s[:, None] * ly
        fy = prisms.centre[:, 1:2] + s[:, None] * lx + c[:, None] * ly
        z_bot = prisms.centre[:, 2] - prisms.wlh[:, 2] / 2
        z_top = prisms.centre[:, 2] + prisms.wlh[:, 2] / 2
        corners = np.concatenate(
            [
                np.stack([fx, fy, np.repeat(z_bot[:, None], 4, 1)], -1),
                np.stack([fx, fy, np.repeat(z_top[:, None], 4, 1)], -1),
            ],
            axis=1,
        )  # [N, 8, 3] global
        cam = (corners - position) @ global_to_cam.T  # [N, 8, 3]
        # Conservative culling against the near plane and the four frustum side planes.
        x, y, z = cam[..., 0], cam[..., 1], cam[..., 2]
        f_x, f_y, c_x, c_y = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        outside = (
            (z < NEAR).all(1)
            | (f_x * x + (c_x - W) * z > 0).all(1)
            | (f_x * x + c_x * z < 0).all(1)
            | (f_y * y + (c_y - H) * z > 0).all(1)
            | (f_y * y + c_y * z < 0).all(1)
        )
        # Sort key: distance from the camera to the nearest point of the footprint.
        rel = position[:2] - prisms.centre[:, :2]
        along = np.abs(c * rel[:, 0] + s * rel[:, 1]) - half_l
        across = np.abs(-s * rel[:, 0] + c * rel[:, 1]) - half_w
        nearest = np.hypot(np.maximum(along, 0), np.maximum(across, 0))
        # An object's parts form one group, placed by its nearest part and labelled by its
        # first prism; a prism of no object is a group of its own.
        group = np.arange(len(nearest))
        group_nearest = nearest.copy()
        is_part = prisms.object >= 0
        if is_part.any():
            obj = prisms.object[is_part]
            first = np.full(obj.max() + 1, len(nearest))
            np.minimum.at(first, obj, group[is_part])
            closest = np.full(obj.max() + 1, np.inf)
            np.minimum.at(closest, obj, nearest[is_part])
            group[is_part] = first[obj]
            group_nearest[is_part] = closest[obj]
        keep = np.flatnonzero(~outside & (nearest < FAR))
        # Groups far to near; within a group, lower layers first, then far to near.
        order = keep[
            np.lexsort((-nearest[keep], prisms.layer[keep], group[keep], -group_nearest[keep]))
        ]
        if len(order) == 0:
            return
        foot = np.stack([fx, fy], axis=-1)  # [N, 4, 2]
        face_normals = np.stack(
            [
                np.stack([-s, c], 1),
                np.stack([-c, -s], 1),
                np.stack([s, -c], 1),
                np.stack([c, s], 1),
            ],
            axis=1,
        )  # [N, 4, 2] outward normals of the left, back, right, front faces
        mids = (foot + np.roll(foot, -1, axis=1)) / 2
        visible = np.zeros((len(foot), 5), dtype=bool)
        visible[:, :4] = ((position[:2] - mids) * face_normals).sum(-1) > 0
        visible[:, 4] = position[2] > z_top
        # One row per (prism, decal, face), prisms far to near, decals in drawing order.
        style = prisms.style[order]
        count = self.row_count[style]
        prism = np.repeat(order, count)
        row = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        row += np.repeat(self.row_start[style], count)
        face = self.row_face[row]
        sel = visible[prism, face]
        prism, row, face = prism[sel], row[sel], face[sel]
        if len(row) == 0:
            return
        u0, u1, v0, v1 = self.row_uv[row].T
        side = face < 4
        fi = np.minimum(face, 3)
        a = foot[prism, fi]
        b = foot[prism, (fi + 1) % 4]
        # Top face: u along l (back -> front), v along w (right -> left).
        origin = np.where(side[:, None], a, foot[prism, 2])
        axis_u = np.where(side[:, None], b - a, foot[prism, 3] - foot[prism, 2])
        axis_v = np.where(side[:, None], 0.0, foot[prism, 1] - foot[prism, 2])
        uv = np.stack(
            [
                np.stack([u0, v0], 1),
                np.stack([u1, v0], 1),
                np.stack([u1, v1], 1),
                np.stack([u0, v1], 1),
            ],
            axis=1,
        )  # [Q, 4, 2]
        xy = origin[:, None] + uv[..., 0:1] * axis_u[:, None] + uv[..., 1:2] * axis_v[:, None]
        bottom, top = z_bot[prism][:, None], z_top[prism][:, None]
        zz = np.where(side[:, None], bottom + uv[..., 1] * (top - bottom), top)
        quads = np.concatenate([xy, zz[..., None]], axis=-1)  # [Q, 4, 3] global
        normals = np.zeros((len(face), 3))
        normals[:, :2] = np.where(side[:, None], face_normals[prism, fi], 0.0)
        normals[~side, 2] = 1.0
        emissive = self.row_emissive[row]
        light = np.where(emissive, 1.0, 0.5 + 0.55 * np.clip(normals @ sun, 0.0, None))
        colours = np.clip(self.row_rgb[row] * (light * exposure)[:, None], 0, 255)[:, ::-1]
        q_cam = (quads - position) @ global_to_cam.T
        in_front = (q_cam[..., 2] >= NEAR).all(1)
        pix = q_cam @ K.T
        depth = np.where(in_front[:, None], pix[..., 2], 1.0)
        pts = np.round(pix[..., :2] / depth[..., None] * (1 << _SHIFT))
        pts = np.clip(pts, -(1 << 24), 1 << 24).astype(np.int32)
        for q, colour in enumerate(colours.tolist()):
            if in_front[q]:
                poly = pts[q]
            else:
                clipped = _clip_near(q_cam[q])
                if len(clipped) < 3:
                    continue
                proj = clipped @ K.T
                poly = np.round(proj[:, :2] / proj[:, 2:3] * (1 << _SHIFT))
                poly = np.clip(poly, -(1 << 24), 1 << 24).astype(np.int32)
            cv2.fillConvexPoly(image, poly, colour, cv2.LINE_AA, _SHIFT)
