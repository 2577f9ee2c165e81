"""CenterPoint head: shapes, targets <-> decoding round trip, losses, NMS, a short overfit."""

from __future__ import annotations

import math

import pytest
import torch

from perception.models.bev_decoder import SECOND, SECONDFPN, BEVDecoder
from perception.models.bev_grid import BEVGrid
from perception.models.heads import (
    NUM_REGRESSION,
    NUSCENES_TASKS,
    CenterPointHead,
    CircleNMS,
    DecodeConfig,
    DetectionTask,
    LossWeights,
    RotatedNMS,
    TaskOutput,
    TaskTargets,
    direction_targets,
    encode_boxes,
    gaussian_focal_loss,
    gaussian_radius,
    heading_from_axis,
    undo_lidar_aug,
)
from perception.structures import ATTRIBUTE_NAMES, CLASS_NAMES, Boxes3D, wrap_angle

# 32 x 32 cells of 0.8 m over +-12.8 m
GRID = BEVGrid(
    point_range=(-12.8, -12.8, -5.0, 12.8, 12.8, 3.0), voxel_size=(0.1, 0.1, 0.2), stride=8
)

# One box per class, within +-7 m so that a rotated and scaled copy stays on the grid.
# (x, y, z, w, l, h, yaw, vx, vy)
GT_BOXES = torch.tensor(
    [
        [-5.3, 4.1, -0.9, 1.9, 4.6, 1.7, 0.4, 3.0, -1.0],  # car
        [3.7, 5.9, -0.3, 2.6, 7.9, 3.1, -2.8, -4.0, 0.5],  # truck
        [-6.2, -5.7, -0.2, 2.9, 6.5, 3.2, 1.2, 0.0, 0.0],  # construction_vehicle
        [5.6, -2.3, 0.1, 2.9, 11.2, 3.5, 3.0, 7.5, 0.2],  # bus
        [-1.3, -6.6, 0.0, 2.4, 12.1, 3.8, -1.5, 0.0, 0.1],  # trailer
        [1.5, 1.5, -1.0, 2.1, 0.5, 1.0, -0.7, 0.0, 0.0],  # barrier
        [-3.1, -1.7, -1.1, 0.8, 2.1, 1.5, 2.2, 2.0, 1.0],  # motorcycle
        [-6.4, 0.9, -1.0, 0.6, 1.7, 1.3, -0.2, -1.2, 0.4],  # bicycle
        [2.3, -4.4, -0.9, 0.7, 0.8, 1.8, -2.0, 0.5, 0.3],  # pedestrian
        [6.3, 2.6, -1.2, 0.4, 0.4, 1.0, 0.9, 0.0, 0.0],  # traffic_cone
    ]
)
GT_LABELS = torch.arange(10)
GT_ATTRIBUTES = torch.tensor(
    [ATTRIBUTE_NAMES.index(a) if a else -1 for a in (
        "vehicle.parked", "vehicle.moving", "vehicle.stopped", "vehicle.moving",
        "vehicle.parked", "", "cycle.with_rider", "cycle.without_rider",
        "pedestrian.standing", "",
    )]
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _head(**kwargs) -> CenterPointHead:
    torch.manual_seed(0)
    kwargs.setdefault("in_channels", 8)
    return CenterPointHead(grid=GRID, shared_channels=8, head_channels=8, **kwargs)


def _aug_matrix() -> torch.Tensor:
    """Rotation 0.3 rad, scale 1.05, flip of y, translation: new = A @ old."""
    c, s = math.cos(0.3), math.sin(0.3)
    rot = torch.tensor([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    flip = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0]))
    scale = torch.diag(torch.tensor([1.05, 1.05, 1.05, 1.0]))
    shift = torch.eye(4)
    shift[:3, 3] = torch.tensor([0.4, -0.3, 0.1])
    return shift @ flip @ scale @ rot


def _outputs_from_targets(targets: list[TaskTargets], tasks) -> list[TaskOutput]:
    """Targets dressed as predictions: heatmap logits of the target heatmap, regressions and
    one-hot attribute logits at the centre cells."""
    outs = []
    for task, t in zip(tasks, targets):
        B, _, X, Y = t.heatmap.shape
        reg = torch.zeros(B, NUM_REGRESSION, X * Y)
        attr = torch.zeros(B, len(ATTRIBUTE_NAMES), X * Y)
        direction = torch.zeros(B, 1, X * Y)
        for b in range(B):
            idx = t.indices[b][t.mask[b]]
            reg[b][:, idx] = t.regression[b][t.mask[b]].T
            direction[b, 0, idx] = 20.0 * (2 * t.direction[b][t.mask[b]] - 1)
            a = t.attributes[b][t.mask[b]]
            attr[b, a[a >= 0], idx[a >= 0]] = 20.0
        reg = reg.reshape(B, NUM_REGRESSION, X, Y)
        outs.append(
            TaskOutput(
                heatmap=torch.logit(t.heatmap.clamp(1e-6, 1 - 1e-6)),
                offset=reg[:, 0:2],
                height=reg[:, 2:3],
                size=reg[:, 3:6],
                rotation=reg[:, 6:8],
                velocity=reg[:, 8:10],
                attribute=attr.reshape(B, -1, X, Y) if task.has_attributes else None,
                direction=direction.reshape(B, 1, X, Y),
            )
        )
    return outs


def _assert_boxes_match(pred: Boxes3D, gt: Boxes3D, *, center_tol, size_rtol, yaw_tol, vel_tol):
    p, g = pred.tensor, gt.tensor
    assert p.shape == g.shape
    assert (p[:, 0:3] - g[:, 0:3]).abs().max() <= center_tol
    assert ((p[:, 3:6] - g[:, 3:6]).abs() / g[:, 3:6]).max() <= size_rtol
    assert wrap_angle(p[:, 6] - g[:, 6]).abs().max() <= yaw_tol
    assert (p[:, 7:9] - g[:, 7:9]).abs().max() <= vel_tol


def _by_label(det):
    order = det.labels.argsort()
    return det.boxes[order], det.labels[order], det.attributes[order], det.scores[order]


# ---- grid and shapes ------------------------------------------------------------------------


def test_grid_convention():
    assert GRID.shape == (32, 32) and GRID.cell_size == pytest.approx((0.8, 0.8))
    centers = GRID.cell_centers()
    assert centers.shape == (32, 32, 2)
    torch.testing.assert_close(centers[3, 5], torch.tensor([-12.8 + 3.5 * 0.8, -12.8 + 5.5 * 0.8]))
    ij = GRID.to_cells(centers).floor()
    assert ij[3, 5].tolist() == [3.0, 5.0]  # x along dim 0 (dim 2 of a map), y along dim 1


def test_head_output_shapes():
    head = _head()
    outs = head(torch.randn(2, 8, 32, 32))
    assert len(outs) == len(NUSCENES_TASKS)
    for task, out in zip(NUSCENES_TASKS, outs):
        assert out.heatmap.shape == (2, len(task.class_names), 32, 32)
        assert out.regression().shape == (2, NUM_REGRESSION, 32, 32)
        if task.has_attributes:
            assert out.attribute.shape == (2, len(ATTRIBUTE_NAMES), 32, 32)
        else:
            assert out.attribute is None  # barrier: no class with attributes


def test_head_rejects_a_map_off_its_grid():
    with pytest.raises(ValueError):
        _head()(torch.randn(1, 8, 16, 32))


def test_targets_peak_at_centres():
    targets = _head().build_targets([Boxes3D(GT_BOXES)], [GT_LABELS], [GT_ATTRIBUTES])
    assert sum(int(t.mask.sum()) for t in targets) == 10
    for task, t in zip(NUSCENES_TASKS, targets):
        assert t.heatmap.eq(1).sum() == len(task.class_names)
        assert t.heatmap.min() >= 0 and t.heatmap.max() == 1


def test_gaussian_radius_grows_with_size():
    r = gaussian_radius(torch.tensor([1.0, 5.0, 20.0]), torch.tensor([1.0, 5.0, 20.0]), 0.1)
    assert (r.diff() > 0).all()


# ---- round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "decode",
    [
        DecodeConfig(score_threshold=0.99, local_max_kernel=1),
        DecodeConfig(score_threshold=0.1, local_max_kernel=3),
    ],
    ids=["peaks_by_threshold", "peaks_by_local_max"],
)
def test_targets_decode_round_trip(decode):
    head = _head(decode=decode)
    targets = head.build_targets([Boxes3D(GT_BOXES)], [GT_LABELS], [GT_ATTRIBUTES])
    (det,) = head.decode(_outputs_from_targets(targets, head.tasks), ["s0"])
    boxes, labels, attributes, scores = _by_label(det)
    assert labels.tolist() == GT_LABELS.tolist()
    assert attributes.tolist() == GT_ATTRIBUTES.tolist()
    assert (scores > 0.99).all()
    _assert_boxes_match(
        boxes, Boxes3D(GT_BOXES), center_tol=1e-4, size_rtol=1e-5, yaw_tol=1e-5, vel_tol=1e-5
    )


def test_round_trip_through_lidar_aug():
    aug = _aug_matrix()
    gt = Boxes3D(GT_BOXES)
    head = _head(decode=DecodeConfig(score_threshold=0.99))
    targets = head.build_targets([gt.transform(aug)], [GT_LABELS], [GT_ATTRIBUTES])
    dets = head.decode(_outputs_from_targets(targets, head.tasks), ["s0"])
    (det,) = undo_lidar_aug(dets, aug[None])
    boxes, labels, attributes, _ = _by_label(det)
    assert labels.tolist() == GT_LABELS.tolist()
    assert attributes.tolist() == GT_ATTRIBUTES.tolist()
    _assert_boxes_match(boxes, gt, center_tol=1e-4, size_rtol=1e-5, yaw_tol=1e-5, vel_tol=1e-5)


def test_decode_batch_keeps_samples_apart():
    head = _head(decode=DecodeConfig(score_threshold=0.99))
    gt = [Boxes3D(GT_BOXES[:3]), Boxes3D(GT_BOXES[5:])]
    targets = head.build_targets(
        gt, [GT_LABELS[:3], GT_LABELS[5:]], [GT_ATTRIBUTES[:3], GT_ATTRIBUTES[5:]]
    )
    dets = head.decode(_outputs_from_targets(targets, head.tasks), ["a", "b"])
    assert [d.sample_token for d in dets] == ["a", "b"]
    assert sorted(dets[0].labels.tolist()) == [0, 1, 2]
    assert sorted(dets[1].labels.tolist()) == [5, 6, 7, 8, 9]


# ---- NMS ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nms", "shift_cells", "expected"),
    [
        (CircleNMS(radius=2.0), 1, 1),
        (CircleNMS(radius=2.0), 6, 2),
        (RotatedNMS(iou_threshold=0.2), 1, 1),
        (RotatedNMS(iou_threshold=0.2), 8, 2),
    ],
    ids=["circle_duplicate", "circle_far", "rotated_duplicate", "rotated_far"],
)
def test_nms_suppresses_a_duplicated_peak(nms, shift_cells, expected):
    """A copy of a car's peak `shift_cells` cells along x: suppressed when it overlaps."""
    tasks = (DetectionTask(class_names=("car",), nms=nms),)
    head = _head(tasks=tasks, decode=DecodeConfig(score_threshold=0.5))
    car = Boxes3D(GT_BOXES[:1, :].clone())
    car.tensor[0, 6] = 0.0  # length along x
    targets = head.build_targets([car], [GT_LABELS[:1]], [GT_ATTRIBUTES[:1]])
    (out,) = _outputs_from_targets(targets, tasks)
    i, j = int(targets[0].indices[0, 0]) // 32, int(targets[0].indices[0, 0]) % 32
    heatmap = torch.full_like(out.heatmap, -10.0)
    heatmap[0, 0, i, j] = 5.0
    heatmap[0, 0, i + shift_cells, j] = 4.0
    reg = out.regression().clone()
    reg[0, :, i + shift_cells, j] = reg[0, :, i, j]
    dup = TaskOutput(
        heatmap=heatmap,
        offset=reg[:, 0:2],
        height=reg[:, 2:3],
        size=reg[:, 3:6],
        rotation=reg[:, 6:8],
        velocity=reg[:, 8:10],
        attribute=out.attribute,
        direction=out.direction,
    )
    (det,) = head.decode([dup], ["s0"])
    assert len(det) == expected
    assert det.scores[0] == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item())


# ---- losses ---------------------------------------------------------------------------------


def test_loss_names_and_finite():
    head = _head()
    outs = head(torch.randn(2, 8, 32, 32))
    losses = head.loss(outs, [Boxes3D(GT_BOXES)] * 2, [GT_LABELS] * 2, [GT_ATTRIBUTES] * 2)
    expected = {f"{k}/task{t}" for k in ("heatmap", "bbox", "dir") for t in range(6)}
    expected |= {f"attr/task{t}" for t in (0, 1, 2, 4, 5)}  # task 3: barrier, no attributes
    assert set(losses) == expected
    for name, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), name
        assert value > 0, name


def test_losses_near_zero_for_perfect_predictions_and_large_for_wrong_ones():
    head = _head()
    targets = head.build_targets([Boxes3D(GT_BOXES)], [GT_LABELS], [GT_ATTRIBUTES])
    perfect = _outputs_from_targets(targets, head.tasks)
    losses = head.loss_from_targets(perfect, targets)
    for name, value in losses.items():
        limit = 0.2 if name.startswith("heatmap") else 1e-5
        assert value < limit, (name, value)
    wrong = [
        TaskOutput(-o.heatmap, o.offset + 0.5, o.height - 1, o.size + 1, -o.rotation,
                   o.velocity + 2, None if o.attribute is None else -o.attribute,
                   -o.direction)
        for o in perfect
    ]  # fmt: skip
    bad = head.loss_from_targets(wrong, targets)
    for name in losses:
        assert bad[name] > 10 * max(losses[name].item(), 1e-3), name


def test_focal_loss_peaks_only_is_zero():
    t = _head().build_targets([Boxes3D(GT_BOXES)], [GT_LABELS], [GT_ATTRIBUTES])[0].heatmap
    assert gaussian_focal_loss(torch.where(t == 1, 20.0, -20.0), t) < 1e-6
    assert gaussian_focal_loss(torch.zeros_like(t), t) > 10


def test_gradients_reach_every_head_parameter():
    head = _head()
    outs = head(torch.randn(2, 8, 32, 32))
    losses = head.loss(outs, [Boxes3D(GT_BOXES)] * 2, [GT_LABELS] * 2, [GT_ATTRIBUTES] * 2)
    sum(losses.values()).backward()
    branch_grads: dict[str, float] = {}
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        branch = ".".join(name.split(".")[:3])  # e.g. task_heads.1.height, shared.0.weight
        branch_grads[branch] = branch_grads.get(branch, 0.0) + p.grad.abs().sum().item()
    # a 1-channel L1 bias may legitimately see signs cancel; a whole branch may not
    assert all(g > 0 for g in branch_grads.values()), branch_grads
    assert len([b for b in branch_grads if b.endswith("attribute")]) == 5


# ---- overfit --------------------------------------------------------------------------------


def test_overfit_one_map():
    torch.manual_seed(0)
    picks = [0, 1, 5, 8]  # car, truck, barrier, pedestrian
    gt, labels, attrs = Boxes3D(GT_BOXES[picks]), GT_LABELS[picks], GT_ATTRIBUTES[picks]
    decoder = BEVDecoder(
        backbone=SECOND(in_channels=8, out_channels=(16, 16), layer_nums=(1, 1), strides=(1, 2)),
        neck=SECONDFPN(in_channels=(16, 16), out_channels=(16, 16), upsample_strides=(1, 2)),
    )
    head = CenterPointHead(
        in_channels=decoder.out_channels,
        grid=GRID.with_stride(16),  # 16 x 16 cells of 1.6 m: a cheap fit
        shared_channels=16,
        head_channels=16,
        decode=DecodeConfig(score_threshold=0.3, local_max_kernel=3),
    )
    features = torch.randn(1, 8, 16, 16)
    targets = head.build_targets([gt], [labels], [attrs])
    optimizer = torch.optim.Adam([*decoder.parameters(), *head.parameters()], lr=1e-2)
    history = []
    for _ in range(120):
        loss = sum(head.loss_from_targets(head(decoder(features)), targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < history[0] / 10, (history[0], history[-1])

    with torch.no_grad():  # train-mode BN: the statistics the fit used
        (det,) = head.decode(head(decoder(features)), ["s0"])
    assert sorted(det.labels.tolist()) == sorted(labels.tolist())
    boxes, det_labels, det_attrs, _ = _by_label(det)
    order = labels.argsort()
    assert det_attrs.tolist() == attrs[order].tolist()
    _assert_boxes_match(boxes, gt[order], center_tol=0.3, size_rtol=0.15, yaw_tol=0.15, vel_tol=0.3)


def test_class_names_cover_the_tasks():
    labels = sorted(label for t in NUSCENES_TASKS for label in t.labels)
    assert labels == list(range(len(CLASS_NAMES)))


# ---- heading: axis + direction --------------------------------------------------------------


@pytest.mark.parametrize("yaw", [-3.1, -2.4, -math.pi / 2, -0.8, -0.2, 0.0, 0.7, 1.57, 2.3, 3.1])
def test_heading_round_trips_through_axis_and_direction(yaw):
    boxes = GT_BOXES[:1].clone()
    boxes[0, 6] = yaw
    _, reg = encode_boxes(boxes, GRID)
    flipped = boxes.clone()
    flipped[0, 6] = yaw + math.pi
    _, reg_flipped = encode_boxes(flipped, GRID)
    # front and back look alike to the axis: the same regression target either way
    assert torch.allclose(reg[:, 6:8], reg_flipped[:, 6:8], atol=1e-5)
    d = direction_targets(boxes[:, 6])
    assert d.item() != direction_targets(flipped[:, 6]).item()
    logit = 10.0 * (2 * d - 1)
    decoded = heading_from_axis(reg[:, 6], reg[:, 7], logit)
    assert wrap_angle(decoded - yaw).abs().item() < 1e-5
    assert wrap_angle(heading_from_axis(reg[:, 6], reg[:, 7], -logit) - yaw - math.pi).abs() < 1e-5


def test_undecided_direction_still_gets_the_axis():
    """Logit 0 (front/back unknown): the decoded yaw is one of the two along the axis."""
    yaw = torch.linspace(-3.1, 3.1, 50)
    decoded = heading_from_axis(torch.sin(2 * yaw), torch.cos(2 * yaw), torch.zeros(50))
    err = wrap_angle(decoded - yaw).abs()
    assert torch.all((err < 1e-5) | ((err - math.pi).abs() < 1e-5))


# ---- neighbour supervision ------------------------------------------------------------------


def _one_car_outputs(head, cells: list[tuple[int, int]]):
    """Targets for one car, and outputs that give its exact box from each of `cells` (offsets
    relative to the centre cell) and zeros elsewhere."""
    car = Boxes3D(GT_BOXES[:1].clone())
    targets = head.build_targets([car], [GT_LABELS[:1]], [GT_ATTRIBUTES[:1]])
    t = targets[0]
    X, Y = GRID.shape
    i, j = int(t.indices[0, 0]) // Y, int(t.indices[0, 0]) % Y
    reg = torch.zeros(1, NUM_REGRESSION, X, Y)
    direction = torch.zeros(1, 1, X, Y)
    for di, dj in cells:
        r = t.regression[0, 0].clone()
        r[0] -= di
        r[1] -= dj
        reg[0, :, i + di, j + dj] = r
        direction[0, 0, i + di, j + dj] = 20.0 * (2 * t.direction[0, 0] - 1)
    outs = []
    for task, tt in zip(head.tasks, targets):
        n = tt.heatmap.shape[1]
        outs.append(TaskOutput(torch.zeros(1, n, X, Y), reg[:, 0:2], reg[:, 2:3], reg[:, 3:6],
                               reg[:, 6:8], reg[:, 8:10],
                               torch.zeros(1, len(ATTRIBUTE_NAMES), X, Y)
                               if task.has_attributes else None, direction))  # fmt: skip
    return outs, targets


def _near_head(weight: float) -> CenterPointHead:
    return CenterPointHead(in_channels=8, grid=GRID, shared_channels=16, head_channels=16,
                           loss_weights=LossWeights(neighbours=weight))  # fmt: skip


NINE = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)]


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_exact_boxes_from_every_supervised_cell_give_zero_box_loss(weight):
    head = _near_head(weight)
    outs, targets = _one_car_outputs(head, NINE)
    losses = head.loss_from_targets(outs, targets)
    assert losses["bbox/task0"] < 1e-5 and losses["dir/task0"] < 1e-5


def test_neighbours_are_trained_only_when_weighted():
    centre_only = _one_car_outputs(_near_head(0.0), [(0, 0)])
    plain = _near_head(0.0).loss_from_targets(*centre_only)
    assert plain["bbox/task0"] < 1e-5  # CenterPoint: the centre cell is all that counts
    near = _near_head(0.5).loss_from_targets(*centre_only)
    assert near["bbox/task0"] > 0.05 and near["dir/task0"] > 0.05  # 8 untrained neighbours


def test_neighbour_weight_comes_from_the_config():
    from perception.config import load_config
    from perception.models.builder import build_model

    cfg = load_config("configs/bevfusion_tiny_lidar.yaml")
    assert build_model(cfg).head.loss_weights.neighbours == cfg.model.head.neighbour_weight
