"""ConvFuser shapes and missing-modality handling; random modality dropout."""

import pytest
import torch

from perception.models.fuser import ConvFuser, ModalityDropout, drop_modalities

B, X, Y = 3, 8, 10
IN = (6, 4)  # camera, lidar


def _fuser() -> ConvFuser:
    torch.manual_seed(0)
    return ConvFuser(in_channels=IN, out_channels=5).eval()


def _maps() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(B, c, X, Y, generator=g) for c in IN]


@pytest.mark.parametrize(
    "present",
    [None, (None, torch.tensor([True, False, True])), (torch.tensor([False] * B), None)],
    ids=["all", "lidar_missing_in_one", "camera_missing_in_all"],
)
def test_fuser_shape(present):
    out = _fuser()(_maps(), present)
    assert out.shape == (B, 5, X, Y)
    assert torch.isfinite(out).all()


def test_fuser_accepts_a_modality_absent_from_the_batch():
    fuser = _fuser()
    camera, _ = _maps()
    out = fuser([camera, None])
    expected = fuser([camera, torch.zeros(B, IN[1], X, Y)], [None, torch.zeros(B, dtype=bool)])
    assert out.shape == (B, 5, X, Y)
    torch.testing.assert_close(out, expected)


def test_missing_modality_is_zeroed_whatever_its_map_holds():
    fuser = _fuser()
    camera, lidar = _maps()
    absent = torch.zeros(B, dtype=torch.bool)
    a = fuser([camera, lidar], [None, absent])
    b = fuser([camera, torch.zeros_like(lidar)], [None, absent])
    torch.testing.assert_close(a, b)


def test_missing_modality_differs_from_a_present_all_zero_one():
    fuser = _fuser()
    camera, lidar = _maps()
    zeros = torch.zeros_like(lidar)
    missing = fuser([camera, zeros], [None, torch.zeros(B, dtype=torch.bool)])
    present_zero = fuser([camera, zeros], [None, torch.ones(B, dtype=torch.bool)])
    assert (missing - present_zero).abs().max() > 1e-3


def test_zero_init_modality_starts_without_influence_and_learns():
    torch.manual_seed(0)
    fuser = ConvFuser(in_channels=IN, out_channels=5, zero_init=[True, False]).eval()
    camera, lidar = _maps()
    other_camera = torch.randn_like(camera) * 10
    torch.testing.assert_close(fuser([camera, lidar]), fuser([other_camera, lidar]))
    # the zeroed weights still receive a gradient (the camera map is not zero), so they grow
    fuser([camera, lidar]).square().sum().backward()
    grad = fuser.fuse[0].weight.grad  # [out, 6 + 4 + 2, 3, 3]
    assert grad[:, : IN[0]].abs().max() > 1e-3
    assert (fuser.fuse[0].weight[:, : IN[0]] == 0).all()
    assert (fuser.fuse[0].weight[:, IN[0] : sum(IN)] != 0).any()


def test_zero_init_rejects_bad_arguments():
    with pytest.raises(ValueError, match="entries"):
        ConvFuser(in_channels=IN, out_channels=5, zero_init=[True])
    with pytest.raises(ValueError, match="at least one"):
        ConvFuser(in_channels=IN, out_channels=5, zero_init=[True, True])


def test_fuser_rejects_wrong_channels():
    camera, lidar = _maps()
    with pytest.raises(ValueError):
        _fuser()([camera, lidar[:, :2]])


def test_drop_never_removes_every_modality():
    g = torch.Generator().manual_seed(0)
    n = 4000
    both = [torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]
    camera, lidar = drop_modalities(both, (0.5, 0.5), g)
    assert (camera | lidar).all()
    assert (camera ^ lidar).all()  # the two probabilities sum to 1: one is always dropped


def test_drop_rates_match_probabilities():
    g = torch.Generator().manual_seed(0)
    n = 20000
    both = [torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]
    camera, lidar = drop_modalities(both, (0.25, 0.1), g)
    assert abs((~camera).float().mean().item() - 0.25) < 0.02
    assert abs((~lidar).float().mean().item() - 0.1) < 0.02
    assert (camera | lidar).all()


def test_drop_keeps_the_only_modality_present():
    g = torch.Generator().manual_seed(0)
    n = 1000
    camera, lidar = drop_modalities(
        [torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)], (1.0, 0.0), g
    )
    assert camera.all() and not lidar.any()


def test_modality_dropout_is_identity_in_eval():
    dropout = ModalityDropout(drop_probs=(0.5, 0.5))
    masks = [torch.ones(50, dtype=torch.bool), torch.ones(50, dtype=torch.bool)]
    dropout.eval()
    assert all(m.all() for m in dropout(masks))
    dropout.train()
    out = dropout(masks, torch.Generator().manual_seed(0))
    assert not all(m.all() for m in out)


def test_modality_dropout_rejects_probabilities_over_one():
    with pytest.raises(ValueError):
        ModalityDropout(drop_probs=(0.7, 0.6))
