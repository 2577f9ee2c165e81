"""Cross-modal BEV distillation (perception/models/distill.py, issue #27): the teacher is frozen
and never part of the student (no gradient, no BatchNorm update, not in the optimizer or the
checkpoint), a teacher of another grid or modality, missing or corrupt is refused naming
`train.teacher` and the file, the foreground weights cover every GT box cell, every loss is 0
when the student equals the teacher, and a student without a teacher runs as before."""

from __future__ import annotations

import math

import pytest
import torch

from perception.checkpoint import save_checkpoint
from perception.config import ConfigError
from perception.models.bev_grid import BEVGrid
from perception.models.builder import build_model
from perception.models.distill import BEVFeatures, foreground_mask, load_teacher
from perception.structures import Boxes3D
from tests.perception.models.helpers import micro_config, synthetic_batch

DISTILL = ("model.lidar=null", "model.distill.feature_points=[camera_bev, fused, decoder]",
           "model.distill.instance_weight=1.0", "model.distill.margin=0.5")  # fmt: skip


def student_and_teacher(*teacher_overrides: str):
    torch.manual_seed(0)
    student_config = micro_config(*DISTILL)
    student = build_model(student_config)
    teacher = build_model(micro_config("model.camera=null", *teacher_overrides))
    return student_config, student, teacher


def saved(tmp_path, name: str, *overrides: str):
    """A checkpoint directory of a micro model with `overrides`."""
    config = micro_config(*overrides)
    return save_checkpoint(tmp_path / name, step=1, model=build_model(config), config=config)


def bn_stats(model: torch.nn.Module) -> list[torch.Tensor]:
    return [
        t.clone()
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        for t in (m.running_mean, m.running_var)
    ]


def test_the_teacher_is_frozen_and_not_part_of_the_student():
    config, student, teacher = student_and_teacher()
    keys_before = set(student.state_dict())
    student.distiller.attach_teacher(teacher)
    stats = bn_stats(teacher)
    weights = [p.clone() for p in teacher.parameters()]
    student.train()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    losses = student(synthetic_batch(config))
    assert {"distill/feature/camera_bev", "distill/feature/fused", "distill/feature/decoder",
            "distill/response", "distill/instance"} <= set(losses)  # fmt: skip
    sum(losses.values()).backward()
    optimizer.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(stats, bn_stats(teacher), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(weights, teacher.parameters(), strict=True))
    assert not teacher.training
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in student.parameters()}
    assert not teacher_ids & {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert set(student.state_dict()) == keys_before  # the teacher is not saved with it
    # the adapters learn
    assert student.distiller.adapters["camera_bev"].weight.grad is not None
    assert student.distiller.teacher_seconds > 0


def test_the_teacher_follows_the_student_to_a_dtype_or_device():
    _, student, teacher = student_and_teacher()
    student.distiller.attach_teacher(teacher)
    student.double()
    assert all(p.dtype == torch.float64 for p in teacher.parameters())


def test_a_teacher_of_another_grid_is_refused_naming_both():
    _, student, teacher = student_and_teacher("model.lidar.voxel_size=[0.2, 0.2, 0.4]")
    with pytest.raises(ValueError, match="grid") as info:
        student.distiller.attach_teacher(teacher)
    message = str(info.value)
    assert "32 x 32 cells of 1.6 x 1.6 m" in message  # the teacher's
    assert "16 x 16 cells of 3.2 x 3.2 m" in message  # the student's
    assert student.distiller.teacher is None


def test_a_teacher_with_a_camera_is_refused():
    _, student, _ = student_and_teacher()
    with pytest.raises(ValueError, match="LiDAR-only.*camera"):
        student.distiller.attach_teacher(build_model(micro_config()))


@pytest.mark.parametrize(
    ("name", "overrides", "says"),
    [
        ("fused", (), "LiDAR-only"),
        ("camera", ("model.lidar=null",), "LiDAR-only"),
        ("grid", ("model.camera=null", "model.lidar.voxel_size=[0.2, 0.2, 0.4]"), "grid"),
    ],
)
def test_load_teacher_refuses_a_wrong_checkpoint_naming_the_field_and_file(
    tmp_path, name, overrides, says
):
    _, student, _ = student_and_teacher()
    path = saved(tmp_path, name, *overrides)
    with pytest.raises(ConfigError, match=says) as info:
        load_teacher(student, path)
    assert str(info.value).startswith("train.teacher: ") and str(path.resolve()) in str(info.value)
    assert student.distiller.teacher is None


def test_load_teacher_refuses_a_missing_or_corrupt_checkpoint(tmp_path):
    _, student, _ = student_and_teacher()
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=r"train\.teacher: .*nowhere"):
        load_teacher(student, missing)
    path = saved(tmp_path, "corrupt", "model.camera=null")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"train\.teacher: ") as info:
        load_teacher(student, path)
    assert str(path) in str(info.value)
    assert student.distiller.teacher is None


def test_load_teacher_attaches_a_good_checkpoint(tmp_path):
    _, student, _ = student_and_teacher()
    path = saved(tmp_path, "lidar", "model.camera=null")
    teacher = load_teacher(student, path)
    assert student.distiller.teacher is teacher and not teacher.training
    assert student.distiller.teacher_source == str(path.resolve())


def test_a_student_without_model_distill_cannot_take_a_teacher(tmp_path):
    student = build_model(micro_config("model.lidar=null"))
    with pytest.raises(ConfigError, match=r"train\.teacher: .*model\.distill"):
        load_teacher(student, saved(tmp_path, "lidar", "model.camera=null"))


def test_foreground_covers_every_cell_of_every_box():
    grid = BEVGrid(point_range=(-8.0, -8.0, -3.0, 8.0, 8.0, 1.0), voxel_size=(0.5, 0.5, 4.0),
                   stride=2)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    n = 12
    boxes = torch.zeros(n, 9)
    boxes[:, 0:2] = torch.rand(n, 2, generator=g) * 14 - 7
    boxes[:, 3:5] = torch.rand(n, 2, generator=g) * 4 + 0.2  # some smaller than a cell
    boxes[:, 5] = 1.5
    boxes[:, 6] = torch.rand(n, generator=g) * 2 * math.pi
    mask = foreground_mask(Boxes3D(boxes), grid)
    covered = torch.zeros_like(mask, dtype=torch.bool)
    u = torch.linspace(-0.5, 0.5, 41)
    local = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)  # [P, 2]
    for x, y, _, w, length, _, yaw, _, _ in boxes.tolist():
        along, across = local[:, 0] * length, local[:, 1] * w
        xy = torch.stack(
            [x + along * math.cos(yaw) - across * math.sin(yaw),
             y + along * math.sin(yaw) + across * math.cos(yaw)], -1
        )  # fmt: skip
        ij = grid.to_cells(xy).floor().long()
        ij = ij[grid.contains(ij)]
        covered[ij[:, 0], ij[:, 1]] = True
    assert covered.any()
    assert (mask[covered] == 1).all()
    assert mask.sum() < mask.numel()  # not everything
    assert foreground_mask(Boxes3D.empty(), grid).sum() == 0


def test_cell_weights_cover_the_boxes_and_skip_samples_without_lidar():
    config, student, teacher = student_and_teacher()
    student.distiller.attach_teacher(teacher)
    batch = synthetic_batch(config)
    t = student.distiller.teacher_features(batch)
    d = student.distiller
    grid = d.grids["head"]
    weight = d.cell_weights(batch, t, grid)  # [B, 1, X, Y]
    c = config.model.distill
    for b, boxes in enumerate(batch.gt_boxes):
        box = foreground_mask(boxes, grid, margin=c.margin).bool()
        assert (weight[b, 0][box] >= c.background + c.foreground - 1e-6).all()
        assert (weight[b, 0] >= c.background).all()
    from dataclasses import replace

    no_lidar = replace(batch, lidar_mask=torch.tensor([False, True]))
    weight = d.cell_weights(no_lidar, t, grid)
    assert weight[0].sum() == 0 and weight[1].sum() > 0


def test_every_loss_is_zero_when_the_student_equals_the_teacher():
    config, student, teacher = student_and_teacher()
    student.distiller.attach_teacher(teacher)
    batch = synthetic_batch(config)
    t = student.distiller.teacher_features(batch)
    same = BEVFeatures(camera_bev=t.lidar_bev, lidar_bev=None, fused=t.fused,
                       decoded=t.decoded, outputs=t.outputs, aux={})  # fmt: skip
    losses = student.distiller.losses(same, t, batch)
    assert len(losses) == 5
    for name, value in losses.items():
        assert value.item() == 0.0, name
    other = BEVFeatures(camera_bev=t.lidar_bev + 0.1, lidar_bev=None, fused=t.fused * 1.1,
                        decoded=t.decoded - 0.1, outputs=student.head(t.decoded), aux={})  # fmt: skip
    for name, value in student.distiller.losses(other, t, batch).items():
        assert value.item() > 0.0, name


def test_without_a_teacher_the_student_trains_as_without_model_distill():
    config = micro_config(*DISTILL)
    torch.manual_seed(0)
    student = build_model(config).train()
    torch.manual_seed(0)
    plain = build_model(micro_config("model.lidar=null")).train()
    batch = synthetic_batch(config)
    torch.manual_seed(1)
    a = student(batch)
    torch.manual_seed(1)
    b = plain(batch)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and in eval mode a teacher changes nothing: detections are the student's own
    student.distiller.attach_teacher(build_model(micro_config("model.camera=null")))
    student.eval()
    plain.eval()
    with torch.no_grad():
        da, db = student(batch), plain(batch)
    assert all(torch.equal(x.boxes.tensor, y.boxes.tensor) for x, y in zip(da, db, strict=True))


def test_the_distillation_losses_alone_reach_the_camera_branch():
    config, student, teacher = student_and_teacher()
    student.distiller.attach_teacher(teacher)
    losses = student.train()(synthetic_batch(config))
    sum(v for k, v in losses.items() if k.startswith("distill/")).backward()
    grads = [p.grad for p in student.camera.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_a_distilled_student_loads_for_serving_without_its_teacher(tmp_path):
    from perception.models.loading import load_model

    config, student, teacher = student_and_teacher()
    student.distiller.attach_teacher(teacher)
    path = save_checkpoint(tmp_path / "student", step=1, model=student, config=config)
    loaded, _ = load_model(path)
    assert loaded.distiller is not None and loaded.distiller.teacher is None
    for (name, a), b in zip(
        student.state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
