import math

import pytest
import torch

from perception.structures import Boxes3D, Detections, wrap_angle


def _rotation(angle: float, translation=(0.0, 0.0, 0.0), scale: float = 1.0) -> torch.Tensor:
    m = torch.eye(4)
    c, s = math.cos(angle), math.sin(angle)
    m[:2, :2] = torch.tensor([[c, -s], [s, c]]) * scale
    m[2, 2] = scale
    m[:3, 3] = torch.tensor(translation)
    return m


def test_corners_of_axis_aligned_box():
    box = Boxes3D(torch.tensor([[0.0, 0.0, 1.0, 2.0, 4.0, 2.0, 0.0, 0.0, 0.0]]))
    corners = box.corners()[0]
    # length 4 along +x (yaw 0), width 2 along y, height 2 around z = 1
    assert torch.allclose(corners[0], torch.tensor([2.0, 1.0, 0.0]))
    assert torch.allclose(corners[:, 0].abs().max(), torch.tensor(2.0))
    assert torch.allclose(corners[:, 1].abs().max(), torch.tensor(1.0))
    assert torch.allclose(corners[4:, 2], torch.full((4,), 2.0))


def test_yaw_turns_length_axis():
    box = Boxes3D(torch.tensor([[0.0, 0.0, 0.0, 2.0, 4.0, 2.0, math.pi / 2, 0.0, 0.0]]))
    corners = box.corners()[0]
    assert torch.allclose(corners[:, 1].abs().max(), torch.tensor(2.0), atol=1e-6)
    assert torch.allclose(corners[:, 0].abs().max(), torch.tensor(1.0), atol=1e-6)


@pytest.mark.parametrize("angle", [0.0, 0.7, -2.5, math.pi])
def test_transform_rotates_centre_yaw_velocity(angle):
    box = Boxes3D(torch.tensor([[1.0, 0.0, 0.5, 2.0, 4.0, 1.5, 0.2, 3.0, 0.0]]))
    out = box.transform(_rotation(angle, (1.0, 2.0, 3.0)))
    assert torch.allclose(
        out.center[0], torch.tensor([1 + math.cos(angle), 2 + math.sin(angle), 3.5]), atol=1e-5
    )
    assert torch.allclose(out.yaw, wrap_angle(torch.tensor([0.2 + angle])), atol=1e-5)
    assert torch.allclose(
        out.velocity[0], torch.tensor([3 * math.cos(angle), 3 * math.sin(angle)]), atol=1e-5
    )
    # corners transform like points
    moved = box.corners()[0] @ _rotation(angle)[:3, :3].T + torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(out.corners()[0], moved, atol=1e-5)


def test_transform_scale_and_flip():
    box = Boxes3D(torch.tensor([[1.0, 2.0, 0.0, 2.0, 4.0, 1.0, 0.3, 1.0, 1.0]]))
    flip_y = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0]))
    out = box.transform(flip_y)
    assert torch.allclose(out.center[0], torch.tensor([1.0, -2.0, 0.0]))
    assert torch.allclose(out.yaw, torch.tensor([-0.3]))
    assert torch.allclose(out.velocity[0], torch.tensor([1.0, -1.0]))
    scaled = box.transform(_rotation(0.0, scale=2.0))
    assert torch.allclose(scaled.size[0], torch.tensor([4.0, 8.0, 2.0]))


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match=r"\[N, 9\]"):
        Boxes3D(torch.zeros(3, 7))
    with pytest.raises(ValueError, match="scores"):
        Detections(
            "t",
            Boxes3D.empty(),
            torch.zeros(2),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
        )
