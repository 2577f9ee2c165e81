"""Perspective supervision: box rectangles in the image, per-cell labels, the head's loss."""

from __future__ import annotations

import math

import torch

from perception.models.builder import build_model
from perception.models.perspective import (
    NEAR,
    PerspectiveHead,
    perspective_labels,
    project_box_rects,
)
from perception.structures import Batch, Boxes3D

from .helpers import micro_config, synthetic_batch

STRIDE = 8


def boxes(*rows: tuple[float, ...]) -> Boxes3D:
    """Boxes from (x, y, z, w, l, h, yaw) rows, zero velocity."""
    return Boxes3D(torch.tensor([[*r, 0.0, 0.0] for r in rows], dtype=torch.float32))


def front_camera() -> tuple[Batch, torch.Tensor]:
    """A one-sample batch and its `[1, Ncam, 4, 4]` LiDAR -> image matrices; CAM_FRONT (index 0)
    looks along LiDAR +x: its depth of a point is x minus the camera's x."""
    batch = synthetic_batch(micro_config(), batch_size=1)
    vt = build_model(micro_config()).camera.view_transform
    image_from_lidar = vt.image_from_lidar(batch)
    assert torch.allclose(image_from_lidar[0, 0, 2, :3], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    return batch, image_from_lidar


def corner_rect(box: Boxes3D, image_from_lidar: torch.Tensor) -> torch.Tensor:
    """(u_min, v_min, u_max, v_max) of the projected corners, for a box wholly in front."""
    corners = box.corners()[0]
    projected = torch.cat([corners, torch.ones(8, 1)], 1) @ image_from_lidar.T  # [8, 4]
    assert (projected[:, 2] >= NEAR - 1e-5).all()
    uv = projected[:, :2] / projected[:, 2:3]
    return torch.cat([uv.amin(0), uv.amax(0)])


def test_a_box_in_front_projects_to_the_rectangle_of_its_corners():
    _, image_from_lidar = front_camera()
    box = boxes((10.0, 1.0, 0.0, 2.0, 4.5, 1.6, 0.4))
    rect = project_box_rects(box.corners(), image_from_lidar[0])  # [Ncam, 1, 5]
    expected = corner_rect(box, image_from_lidar[0, 0])
    assert torch.allclose(rect[0, 0, :4], expected, atol=1e-4)
    depths = torch.cat([box.corners()[0], torch.ones(8, 1)], 1) @ image_from_lidar[0, 0, 2]
    assert math.isclose(float(rect[0, 0, 4]), float(depths.min()), rel_tol=1e-5)
    assert math.isinf(float(rect[3, 0, 4]))  # CAM_BACK: the box is behind it


def test_a_box_across_the_near_plane_projects_its_front_part():
    """A box from 1.5 m behind to 2.5 m in front of the camera's plane: its rectangle is that of
    the part in front of the near plane, as if it had been cut there."""
    _, image_from_lidar = front_camera()
    cam_x = -float(image_from_lidar[0, 0, 2, 3])  # the camera's x in the LiDAR frame
    straddling = boxes((cam_x + 0.5, 0.3, 0.2, 1.0, 4.0, 1.0, 0.0))  # x: cam_x - 1.5 .. + 2.5
    cut_at, end = cam_x + NEAR, cam_x + 2.5
    front_part = boxes(((cut_at + end) / 2, 0.3, 0.2, 1.0, end - cut_at, 1.0, 0.0))
    rect = project_box_rects(straddling.corners(), image_from_lidar[0])[0, 0]
    expected = corner_rect(front_part, image_from_lidar[0, 0])
    assert torch.allclose(rect[:4], expected, rtol=1e-4, atol=1e-2)
    assert math.isclose(float(rect[4]), NEAR, rel_tol=1e-4)


def test_the_nearest_box_labels_the_cells_it_covers():
    batch, image_from_lidar = front_camera()
    height = -float(image_from_lidar[0, 0, 1, 3]) / float(image_from_lidar[0, 0, 1, 2])
    near = boxes((8.0, 0.0, height, 1.0, 1.0, 1.0, 0.0))  # centred in CAM_FRONT's image
    far = boxes((20.0, 0.0, height, 6.0, 6.0, 4.0, 0.0))  # bigger in the image, behind `near`
    both = Boxes3D.cat([far, near])
    f_h, f_w = batch.images.shape[-2] // STRIDE, batch.images.shape[-1] // STRIDE
    kwargs = dict(feature_shape=(f_h, f_w), feature_stride=STRIDE, background=10)
    labels = perspective_labels((both,), (torch.tensor([3, 7]),), image_from_lidar, **kwargs)
    assert labels.shape == (6, f_h, f_w)
    assert set(labels[1:].unique().tolist()) == {10}  # the other cameras see neither box
    front = labels[0]
    centre = (f_h // 2, f_w // 2)
    assert front[centre] == 7  # the near box, in front of the far one
    assert (front == 3).any() and (front == 10).any()
    # cells of the near box are a subset of the far box's rectangle
    u0, v0, u1, v1, _ = project_box_rects(near.corners(), image_from_lidar[0])[0, 0].tolist()
    cols = (torch.arange(f_w) * STRIDE <= u1) & (torch.arange(f_w) * STRIDE + STRIDE > u0)
    rows = (torch.arange(f_h) * STRIDE <= v1) & (torch.arange(f_h) * STRIDE + STRIDE > v0)
    assert torch.equal(front == 7, rows[:, None] & cols[None, :])

    # a wall 3 m from the camera in every cell hides both boxes: all background
    wall = torch.full((6, f_h, f_w), 3.0)
    hidden = perspective_labels(
        (both,), (torch.tensor([3, 7]),), image_from_lidar, surface_depth=wall, **kwargs
    )
    assert (hidden == 10).all()
    # a surface at the near box's own depth keeps its label
    seen = perspective_labels(
        (both,), (torch.tensor([3, 7]),), image_from_lidar, surface_depth=wall + 5.0, **kwargs
    )
    assert torch.equal(seen[0] == 7, front == 7)


def test_no_boxes_no_labels_but_background():
    _, image_from_lidar = front_camera()
    labels = perspective_labels(
        (Boxes3D.empty(),),
        (torch.zeros(0, dtype=torch.long),),
        image_from_lidar,
        feature_shape=(8, 22),
        feature_stride=STRIDE,
        background=10,
    )
    assert (labels == 10).all()


def test_head_loss_counts_present_cameras_only():
    torch.manual_seed(0)
    head = PerspectiveHead(8, num_classes=10, loss_weight=0.5)
    features = torch.randn(4, 8, 3, 5, requires_grad=True)
    target = torch.randint(0, 11, (4, 3, 5))
    present = torch.tensor([True, False, True, False])
    loss = head.loss(features, target, present)
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    grad = features.grad.abs().sum(dim=(1, 2, 3))
    assert (grad[present] > 0).all() and (grad[~present] == 0).all()
    # 0.5 x the mean cross entropy over the present cameras' cells
    logits = head.net(features[present]).detach()
    expected = 0.5 * torch.nn.functional.cross_entropy(logits, target[present])
    assert torch.allclose(loss.detach(), expected, rtol=1e-5)
    nothing = head.loss(features, target, torch.zeros(4, dtype=torch.bool))
    assert float(nothing.detach()) == 0
    nothing.backward()  # reaches every parameter (DDP expects it), with zeros


def test_camera_only_model_with_perspective_supervision_trains():
    torch.manual_seed(0)
    config = micro_config("model.lidar=null", "model.camera.perspective_loss_weight=1.0")
    model = build_model(config).train()
    losses = model(synthetic_batch(config))
    assert "camera/perspective" in losses and torch.isfinite(losses["camera/perspective"])
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    # inference runs without it (no labels there)
    model.eval()
    with torch.no_grad():
        assert len(model(synthetic_batch(config))) == 2
