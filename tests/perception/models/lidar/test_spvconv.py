"""SPVConv LiDAR encoder: shapes, BEV alignment, gradients, missing LiDAR, filtering, overfit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perception.models.lidar import SPVConvEncoder, voxelize_points

# A small world: +-16 m at 0.5 m voxels -> 64 x 64 x 8 voxels, an 8 x 8 BEV map at stride 8.
RANGE = (-16.0, -16.0, -2.0, 16.0, 16.0, 2.0)
VOXEL = (0.5, 0.5, 0.5)


def tiny_encoder(**changes) -> SPVConvEncoder:
    kwargs = dict(
        in_channels=5,
        stem_channels=8,
        stage_channels=(8, 16, 16),
        stage_blocks=(1, 1, 1),
        z_strides=(2, 2, 1),
        point_range=RANGE,
        voxel_size=VOXEL,
        out_channels=16,
    )
    kwargs.update(changes)
    return SPVConvEncoder(**kwargs)


def random_points(
    num: int,
    batch_index: int,
    *,
    seed: int,
    centre: tuple[float, float] | None = None,
    spread: float = 1.0,
) -> torch.Tensor:
    """``[num, 6]`` (batch, x, y, z, intensity, time_lag) inside RANGE; around ``centre`` (m)
    within +-``spread`` in x and y when given, else uniform over the range."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(num, 5, generator=g)  # [num, 5]
    if centre is None:
        xy = (u[:, :2] * 2 - 1) * 15.9  # [num, 2]
    else:
        xy = torch.tensor(centre) + (u[:, :2] * 2 - 1) * spread
    z = u[:, 2:3] * 3.8 - 1.9  # [num, 1]
    b = torch.full((num, 1), float(batch_index))
    return torch.cat([b, xy, z, u[:, 3:4] * 255, u[:, 4:5] * 0.5], dim=1)  # [num, 6]


@pytest.mark.parametrize(
    "config, bev_shape, bev_height",
    [
        pytest.param({}, (8, 8), 2, id="xy8-z2"),
        pytest.param(
            dict(
                stage_channels=(8, 8, 16),
                z_strides=(1, 2, 2),
                point_range=(-16.0, -8.0, -3.0, 16.0, 8.0, 1.0),
                voxel_size=(0.5, 0.25, 0.25),
            ),
            (8, 8),
            4,
            id="anisotropic",
        ),
        pytest.param(
            dict(stage_channels=(8, 16), stage_blocks=(2, 0), z_strides=(2, 2)),
            (16, 16),
            2,
            id="two-stages",
        ),
    ],
)
def test_output_shape(config, bev_shape, bev_height):
    enc = tiny_encoder(**config).eval()
    assert enc.bev_shape == bev_shape
    assert enc.bev_height == bev_height
    points = torch.cat([random_points(300, 0, seed=0), random_points(200, 2, seed=1)])
    points[:, 1:3] *= points.new_tensor(config.get("point_range", RANGE)[3:5]) / 16.0
    with torch.no_grad():
        out = enc(points, 3)
    assert out.shape == (3, 16, *bev_shape)
    assert out.dtype == torch.float32
    assert bool(out[0].abs().sum() > 0) and bool(out[2].abs().sum() > 0)
    assert bool((out[1] == 0).all())


def test_default_config_is_bevfusion_nuscenes():
    enc = SPVConvEncoder()
    assert enc.bev_shape == (180, 180)
    assert enc.grid.cell_size == pytest.approx((0.6, 0.6))
    assert enc.bev_height == 5


@pytest.mark.parametrize("centre, cell", [((10.0, -6.0), (6, 2)), ((-14.0, 2.0), (0, 4))])
def test_bev_alignment(centre, cell):
    """A cluster at (x, y) m lands in cell ((x - x_min) / 4, (y - y_min) / 4): x is dim 2."""
    enc = tiny_encoder().eval()
    captured = {}
    enc.to_bev.register_forward_pre_hook(lambda module, args: captured.update(bev=args[0]))
    points = random_points(50, 0, seed=3, centre=centre, spread=0.8)
    with torch.no_grad():
        out = enc(points, 1)
    i, j = cell
    occupied = captured["bev"][0].abs().sum(0) > 0  # [X, Y] before the 2-D conv
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[i, j] = True
    assert torch.equal(occupied, expected)
    # The 1x1 conv keeps the response in that cell (eval BN with fresh statistics maps zero to
    # zero), and the mirrored cell (j, i) stays dark.
    active = out[0].abs().sum(0) > 0  # [X, Y]
    assert torch.equal(active, expected)
    assert not bool(active[j, i])


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    enc = tiny_encoder().train()
    points = torch.cat([random_points(400, 0, seed=4), random_points(300, 1, seed=5)])
    out = enc(points, 2)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(6))
    (out * weight).sum().backward()
    missing = [
        name
        for name, p in enc.named_parameters()
        if p.grad is None
        or not bool(torch.isfinite(p.grad).all())
        or float(p.grad.abs().sum()) == 0
    ]
    assert not missing, missing
    assert any(name.startswith("point_mlps.3") for name, _ in enc.named_parameters())


@pytest.mark.parametrize("how", ["no-points", "lidar-mask"])
def test_missing_lidar_sample_is_zero_and_independent(how):
    enc = tiny_encoder().eval()
    # Non-zero BN statistics so that a zero input would not give zeros by accident.
    for module in enc.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.bias.data.uniform_(0.1, 0.5)
    sample0 = random_points(400, 0, seed=7)
    sample2 = random_points(300, 2, seed=8)
    with torch.no_grad():
        if how == "no-points":
            out = enc(torch.cat([sample0, sample2]), 3)
        else:
            sample1 = random_points(300, 1, seed=9)
            mask = torch.tensor([True, False, True])
            out = enc(torch.cat([sample0, sample1, sample2]), 3, lidar_mask=mask)
        alone0 = enc(sample0, 1)
        alone2 = enc(sample2.clone().index_fill_(1, torch.tensor([0]), 0.0), 1)
    assert bool((out[1] == 0).all())
    torch.testing.assert_close(out[0], alone0[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[2], alone2[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_empty_batch_gives_zeros(mode):
    enc = tiny_encoder().train(mode == "train")
    out = enc(torch.zeros(0, 6), 2)
    assert out.shape == (2, 16, 8, 8)
    assert bool((out == 0).all())
    if mode == "train":
        out.sum().backward()  # the graph exists and runs


def test_points_outside_range_or_non_finite_are_dropped():
    enc = tiny_encoder().eval()
    clean = random_points(300, 0, seed=10)
    bad = torch.tensor(
        [
            [0.0, 16.0, 0.0, 0.0, 1.0, 0.0],  # on the upper x face: outside [min, max)
            [0.0, 0.0, -16.5, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 2.0, 1.0, 0.0],  # z on the upper face
            [0.0, 100.0, 100.0, -50.0, 1.0, 0.0],
            [0.0, float("nan"), 0.0, 0.0, 1.0, 0.0],
            [0.0, 1.0, float("inf"), 0.0, 1.0, 0.0],
            [0.0, 1.0, 1.0, 0.0, float("nan"), 0.0],
            [0.0, 1.0, 1.0, 0.0, 1.0, float("-inf")],
            [float("nan"), 1.0, 1.0, 0.0, 1.0, 0.0],
        ]
    )
    dirty = torch.cat([clean[:150], bad, clean[150:]])
    voxels = voxelize_points(dirty, batch_size=1, point_range=RANGE, voxel_size=VOXEL)
    assert voxels.point_coords.shape == (300, 4)
    masked = voxelize_points(
        dirty, batch_size=1, point_range=RANGE, voxel_size=VOXEL, lidar_mask=torch.tensor([True])
    )
    torch.testing.assert_close(masked.point_feats, voxels.point_feats)
    assert bool(torch.isfinite(voxels.point_feats).all())
    with torch.no_grad():
        torch.testing.assert_close(enc(dirty, 1), enc(clean, 1), rtol=1e-5, atol=1e-5)


def test_voxelize_points_features_and_coords():
    points = torch.tensor(
        [
            [0.0, -16.0, -16.0, -2.0, 10.0, 0.1],  # the range minimum: kept, voxel (0, 0, 0)
            [0.0, -15.9, -15.7, -1.8, 20.0, 0.3],  # same voxel
            [1.0, 1.2, -0.3, 0.6, 5.0, 0.0],
        ]
    )
    out = voxelize_points(points, batch_size=2, point_range=RANGE, voxel_size=VOXEL)
    torch.testing.assert_close(out.point_coords[0], torch.tensor([0.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(out.point_coords[2], torch.tensor([1.0, 34.4, 31.4, 5.2]))
    # Offsets from the voxel centre, m: voxel (0, 0, 0) is centred at (-15.75, -15.75, -1.75).
    torch.testing.assert_close(
        out.point_feats[:2, 5:], torch.tensor([[-0.25] * 3, [-0.15, 0.05, -0.05]])
    )
    assert out.voxels.coords.tolist() == [[0, 0, 0, 0], [1, 34, 31, 5]]
    torch.testing.assert_close(out.voxels.feats[0], out.point_feats[:2].mean(0))
    assert out.present.tolist() == [True, True]


@pytest.mark.parametrize(
    "batch_column, match", [(0.5, "integers"), (-1.0, "integers"), (2.0, "integers")]
)
def test_bad_batch_index_raises(batch_column, match):
    enc = tiny_encoder()
    points = random_points(10, 0, seed=11)
    points[3, 0] = batch_column
    with pytest.raises(ValueError, match=match):
        enc(points, 2)


def test_wrong_point_columns_raise():
    with pytest.raises(ValueError, match=r"points must be \[P, 6\]"):
        tiny_encoder()(torch.zeros(5, 5), 1)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(stage_blocks=(1, 1)), "one entry per stage"),
        (dict(z_strides=(2, 3, 1)), "z_strides"),
        (dict(voxel_size=(0.3, 0.5, 0.5)), "whole number"),
        (dict(point_range=(-16.0, -16.0, -2.0, 16.0, 14.0, 2.0)), "divide by stride"),
    ],
)
def test_bad_config_raises(changes, match):
    with pytest.raises(ValueError, match=match):
        tiny_encoder(**changes)


def test_deterministic_runs_are_bitwise_equal():
    enc = tiny_encoder(deterministic=True).eval()
    assert all(m.deterministic for m in enc.modules() if hasattr(m, "deterministic"))
    points = torch.cat([random_points(300, 0, seed=12), random_points(300, 1, seed=13)])
    with torch.no_grad():
        assert torch.equal(enc(points, 2), enc(points, 2))


def test_overfits_a_fixed_target():
    """Encoder + 1x1 conv regress a fixed BEV map from a fixed cloud: the loss falls >= 10x."""
    torch.manual_seed(0)
    enc = tiny_encoder(stage_channels=(8, 8, 16), out_channels=16)
    head = nn.Conv2d(16, 2, 1)
    points = random_points(600, 0, seed=14)
    target = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(15))
    params = list(enc.parameters()) + list(head.parameters())
    optim = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(100):
        loss = nn.functional.mse_loss(head(enc(points, 1)), target)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] * 10 <= losses[0], (losses[0], losses[-1])
