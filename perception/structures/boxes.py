"""3-D boxes in a stated frame. Conventions: docs/frames.md (centre, (w, l, h), yaw from +x CCW)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BOX_DIM = 9  # (x, y, z, w, l, h, yaw, vx, vy)


def wrap_angle(angle: torch.Tensor) -> torch.Tensor:
    """Wraps radians to [-pi, pi)."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


@dataclass(frozen=True)
class Boxes3D:
    """N boxes as one `[N, 9]` float tensor `(x, y, z, w, l, h, yaw, vx, vy)` in `frame`.

    `(x, y, z)` is the geometric centre (m); `(w, l, h)` nuScenes' order, `l` along the heading;
    `yaw` the heading about +z from +x, counter-clockwise (rad); `(vx, vy)` m/s in `frame`.
    """

    tensor: torch.Tensor
    frame: str = "lidar"

    def __post_init__(self) -> None:
        t = self.tensor
        if t.ndim != 2 or t.shape[1] != BOX_DIM:
            raise ValueError(f"Boxes3D.tensor must be [N, {BOX_DIM}], got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"Boxes3D.tensor must be floating point, got {t.dtype}")

    @classmethod
    def empty(cls, frame: str = "lidar", dtype: torch.dtype = torch.float32) -> Boxes3D:
        return cls(torch.zeros(0, BOX_DIM, dtype=dtype), frame)

    @classmethod
    def cat(cls, boxes: list[Boxes3D]) -> Boxes3D:
        if not boxes:
            raise ValueError("Boxes3D.cat needs at least one Boxes3D")
        frames = {b.frame for b in boxes}
        if len(frames) != 1:
            raise ValueError(f"Boxes3D.cat: boxes in different frames {sorted(frames)}")
        return cls(torch.cat([b.tensor for b in boxes]), boxes[0].frame)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, index) -> Boxes3D:
        t = self.tensor[index]
        return Boxes3D(t.reshape(-1, BOX_DIM), self.frame)

    def to(self, *args, **kwargs) -> Boxes3D:
        return Boxes3D(self.tensor.to(*args, **kwargs), self.frame)

    @property
    def center(self) -> torch.Tensor:  # [N, 3]
        return self.tensor[:, 0:3]

    @property
    def size(self) -> torch.Tensor:  # [N, 3] (w, l, h)
        return self.tensor[:, 3:6]

    @property
    def yaw(self) -> torch.Tensor:  # [N]
        return self.tensor[:, 6]

    @property
    def velocity(self) -> torch.Tensor:  # [N, 2]
        return self.tensor[:, 7:9]

    def bev(self) -> torch.Tensor:
        """`[N, 5]` (x, y, w, l, yaw): the form `perception.ops.nms_bev` takes."""
        return self.tensor[:, [0, 1, 3, 4, 6]]

    def corners(self) -> torch.Tensor:
        """`[N, 8, 3]` corners in `frame`: bottom face first (z - h/2), counter-clockwise from
        the front-left corner (+l/2, +w/2) seen from above, then the top face in the same order."""
        w, l, h = self.size.unbind(-1)
        unit = torch.tensor(
            [[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=self.tensor.dtype, device=self.tensor.device
        )  # (along heading, across) signs
        along = unit[None, :, 0] * l[:, None] / 2  # [N, 4]
        across = unit[None, :, 1] * w[:, None] / 2
        cos, sin = torch.cos(self.yaw)[:, None], torch.sin(self.yaw)[:, None]
        x = self.center[:, 0:1] + along * cos - across * sin
        y = self.center[:, 1:2] + along * sin + across * cos
        z_bottom = (self.center[:, 2] - h / 2)[:, None].expand(-1, 4)
        z_top = (self.center[:, 2] + h / 2)[:, None].expand(-1, 4)
        bottom = torch.stack([x, y, z_bottom], -1)
        top = torch.stack([x, y, z_top], -1)
        return torch.cat([bottom, top], dim=1)

    def transform(self, matrix: torch.Tensor, frame: str | None = None) -> Boxes3D:
        """Applies a rigid (or uniformly scaled) 4x4 transform `matrix` whose rotation is about
        +z (up stays up), returning the boxes in `frame` (default: unchanged name).

        Centres map as points, velocities as directions; yaw turns by the matrix's rotation
        about z; sizes scale by the matrix's scale. A reflection (flip) mirrors the heading
        vector, which is all a box (symmetric left to right) needs.
        """
        m = matrix.to(self.tensor)
        linear = m[:3, :3]
        scale = torch.linalg.det(linear).abs().pow(1 / 3)
        rot = linear / scale
        center = self.center @ linear.T + m[:3, 3]
        vel3 = torch.cat([self.velocity, torch.zeros_like(self.velocity[:, :1])], 1) @ linear.T
        heading = torch.stack([torch.cos(self.yaw), torch.sin(self.yaw)], -1) @ rot[:2, :2].T
        yaw = torch.atan2(heading[:, 1], heading[:, 0])
        t = torch.cat([center, self.size * scale, wrap_angle(yaw)[:, None], vel3[:, :2]], 1)
        return Boxes3D(t, frame or self.frame)
