"""The numpy box frame of the bank and the paste agrees with `Boxes3D`."""

from __future__ import annotations

import numpy as np
import torch

from perception.generative.box_frame import (
    BOX_EDGES,
    box_corners,
    box_to_frame,
    clip_to_near_plane,
)
from perception.structures import Boxes3D


def test_corners_moved_by_the_box_pose_are_the_boxes3d_corners():
    box = np.array([4.0, -2.5, 0.7, 1.9, 4.6, 1.6, 2.3, 1.0, -0.5])
    corners = np.c_[box_corners(box[3:6]), np.ones(8)] @ box_to_frame(box).T  # [8, 4]
    expected = Boxes3D(torch.tensor(box[None], dtype=torch.float64)).corners()[0].numpy()
    np.testing.assert_allclose(corners[:, :3], expected, atol=1e-12)


def test_edges_join_corners_one_size_apart():
    size = np.array([2.0, 5.0, 1.5])  # w, l, h
    corners = box_corners(size)
    lengths = np.linalg.norm(corners[BOX_EDGES[:, 0]] - corners[BOX_EDGES[:, 1]], axis=1)
    assert sorted(np.round(lengths, 9)) == sorted([2.0, 5.0] * 4 + [1.5] * 4)


def test_clip_to_near_plane_keeps_the_front_and_the_crossings():
    corners = box_corners(np.array([2.0, 4.0, 1.5]))  # box frame: z is the depth here
    in_front = corners + [0.0, 0.0, 5.0]
    np.testing.assert_array_equal(clip_to_near_plane(in_front, 0.1), in_front)
    assert clip_to_near_plane(corners - [0.0, 0.0, 5.0], 0.1) is None
    straddling = clip_to_near_plane(corners + [0.0, 0.0, 0.5], 0.1)  # depths -0.25 .. 1.25
    assert straddling is not None and len(straddling) == 4 + 4  # 4 corners + 4 crossings
    assert (straddling[:, 2] >= 0.1 - 1e-12).all()
    assert np.isclose(straddling[:, 2], 0.1).sum() == 4
