"""LSS view transform: frustum geometry, plan reuse, depth targets, missing cameras."""

from __future__ import annotations

import pytest
import torch

from perception.models.bev_grid import BEVGrid
from perception.models.view_transform import LSSViewTransform
from perception.structures import Batch

from .helpers import micro_config, synthetic_batch


def make_transform(**kwargs) -> LSSViewTransform:
    grid = BEVGrid(point_range=(-25.6, -25.6, -10.0, 25.6, 25.6, 10.0), voxel_size=(0.8, 0.8, 20.0))
    args = dict(in_channels=8, out_channels=8, context_channels=4, image_size=(176, 64),
                feature_stride=8, depth_bins=(1.0, 25.0, 1.0), grid=grid)  # fmt: skip
    args.update(kwargs)
    return LSSViewTransform(**args)


def test_frustum_lands_where_the_camera_looks():
    vt = make_transform()
    batch = synthetic_batch(micro_config(), batch_size=1)
    cells = vt.frustum_cells(vt.image_from_lidar(batch))  # [6, D, fH, fW, 4]
    # CAM_FRONT looks along LiDAR +x (yaw 0), f = 0.6 * 176 px, principal point (88, 32): a
    # pixel column u at depth d sits at x = d, y = -(u - 88) / f * d (camera right = LiDAR -y).
    _, D, f_h, f_w, _ = cells.shape
    u = float(vt.frustum[0, 0, f_w // 2, 0])
    centre = cells[0, :, f_h // 2, f_w // 2]  # [D, 4] (batch, z, x, y)
    depths = 1.0 + torch.arange(D, dtype=torch.float64)
    expected_x = torch.floor((depths + 25.6) / 0.8).long()
    expected_y = torch.floor((-(u - 88.0) / (0.6 * 176) * depths + 25.6) / 0.8).long()
    assert torch.equal(centre[:, 2], expected_x)
    assert torch.equal(centre[:, 3], expected_y)
    assert (centre[:, 0] == 0).all() and (centre[:, 1] == 0).all()
    # the LiDAR augmentation moves the frustum with the points: flip y -> mirrored cells
    flipped = Batch(
        **{**batch.__dict__, "lidar_aug": torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0]))[None]}
    )
    mirrored = vt.frustum_cells(vt.image_from_lidar(flipped))
    left = cells[2]  # CAM_FRONT_LEFT (yaw +0.96): y > 0
    assert (left[..., 3].float().mean() > 32) and (mirrored[2][..., 3].float().mean() < 32)


def test_plan_is_reused_while_geometry_is_unchanged():
    vt = make_transform().eval()
    batch = synthetic_batch(micro_config(), batch_size=1)
    features = torch.randn(1, 6, 8, 8, 22)
    with torch.no_grad():
        vt(features, batch)
        vt(features, batch)
        assert (vt.plan_cache.misses, vt.plan_cache.hits) == (1, 1)
        moved = Batch(
            **{**batch.__dict__, "lidar_aug": torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))[None]}
        )
        vt(features, moved)
    assert vt.plan_cache.misses == 2


def test_depth_targets_from_a_lidar_point():
    vt = make_transform()
    batch = synthetic_batch(micro_config(), batch_size=1)
    point = torch.tensor([[0.0, 10.3, 0.0, 1.5, 0.0, 0.0]])  # 10.3 m straight ahead of CAM_FRONT
    batch = Batch(**{**batch.__dict__, "points": point})
    targets = vt.depth_targets(batch, vt.image_from_lidar(batch))  # [6, fH, fW]
    hits = (targets >= 0).nonzero()
    assert len(hits) == 1
    camera, row, col = hits[0].tolist()
    assert camera == 0 and col == 22 // 2 and row == 8 // 2
    assert int(targets[camera, row, col]) == 9  # bin [10, 11) m with bins from 1 m


def test_depth_supervision_gives_a_loss():
    vt = make_transform(depth_loss_weight=1.0).train()
    batch = synthetic_batch(micro_config(), batch_size=1)
    _, aux = vt(torch.randn(1, 6, 8, 8, 22), batch)
    assert "depth" in aux and torch.isfinite(aux["depth"]) and float(aux["depth"].detach()) > 0


def test_a_masked_camera_lifts_nothing():
    vt = make_transform().eval()
    batch = synthetic_batch(micro_config(), batch_size=1)
    pooled = {}
    vt.bev_conv.register_forward_pre_hook(lambda module, args: pooled.setdefault("x", args[0]))
    no_cameras = Batch(**{**batch.__dict__, "camera_mask": torch.zeros(1, 6, dtype=torch.bool)})
    with torch.no_grad():
        vt(torch.randn(1, 6, 8, 8, 22), no_cameras)
    assert pooled["x"].abs().max() == 0


def test_lidar_depth_input_reads_the_points_of_present_lidar_only():
    torch.manual_seed(0)
    vt = make_transform(lidar_depth_input=True).eval()
    batch = synthetic_batch(micro_config(), batch_size=1)
    point = torch.tensor([[0.0, 10.3, 0.0, 1.5, 0.0, 0.0]])  # 10.3 m ahead of CAM_FRONT
    with_point = Batch(**{**batch.__dict__, "points": point})
    no_points = Batch(**{**batch.__dict__, "points": point[:0]})
    lidar_absent = Batch(**{**with_point.__dict__, "lidar_mask": torch.zeros(1, dtype=torch.bool)})
    inputs = []
    vt.depth_net.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    features = torch.randn(1, 6, 8, 8, 22)
    with torch.no_grad():
        outputs = [vt(features, b)[0] for b in (with_point, no_points, lidar_absent)]
    depth_in = inputs[0][:, 8:]  # [6, D, fH, fW] after the 8 feature channels
    assert depth_in.shape[1] == vt.num_depth
    assert depth_in.sum() == 1 and depth_in[0, 9, 8 // 2, 22 // 2] == 1  # bin [10, 11) m
    assert inputs[1][:, 8:].abs().max() == 0 and inputs[2][:, 8:].abs().max() == 0
    assert (outputs[0] - outputs[1]).abs().max() > 0
    torch.testing.assert_close(outputs[1], outputs[2])


def test_lidar_depth_prior_peaks_the_lift_at_the_measured_depth():
    torch.manual_seed(0)
    batch = synthetic_batch(micro_config(), batch_size=1)
    point = torch.tensor([[0.0, 10.3, 0.0, 1.5, 0.0, 0.0]])  # 10.3 m ahead of CAM_FRONT
    batch = Batch(**{**batch.__dict__, "points": point})
    features = torch.randn(1, 6, 8, 8, 22)

    def depth_loss(vt):  # the cross entropy at the one cell the point supervises
        return vt.train()(features, batch)[1]["depth"]

    plain = make_transform(lidar_depth_input=True, depth_loss_weight=1.0)
    with_prior = make_transform(
        lidar_depth_input=True, depth_loss_weight=1.0, lidar_depth_prior=30.0
    )
    with_prior.load_state_dict(plain.state_dict(), strict=False)  # the same depth net
    loss_plain, loss_prior = depth_loss(plain), depth_loss(with_prior)
    assert loss_prior < 1e-6 < loss_plain  # one supervised cell: the prior puts it in bin 9
    loss_prior.backward()
    assert with_prior.lidar_depth_prior.grad is not None  # the scale is learned
    with pytest.raises(ValueError, match="needs lidar_depth_input"):
        make_transform(lidar_depth_prior=1.0)


def test_ground_depth_meets_the_ground_plane_whatever_the_lidar_augmentation():
    batch = synthetic_batch(micro_config(), batch_size=1)
    ground = float(batch.camera_to_lidar[0, 0, -1, 2, 3]) - 1.5  # 1.5 m below CAM_FRONT
    vt = make_transform(ground_depth_input=ground)
    depth = vt.ground_depth(batch)  # [6, fH, fW]
    f_h, f_w = depth.shape[1:]
    # back-project every cell at its ground depth: each lands on the plane
    identity = Batch(**{**batch.__dict__, "lidar_aug": torch.eye(4)[None]})
    sensor_from_image = torch.linalg.inv(vt.image_from_lidar(identity)[0].double())  # [6, 4, 4]
    u, v = vt.frustum[0, ..., 0].double(), vt.frustum[0, ..., 1].double()
    met = torch.isfinite(depth)
    d = torch.where(met, depth, torch.ones_like(depth)).double()
    pixel = torch.stack([u * d, v * d, d, torch.ones_like(d)], dim=-1)  # [6, fH, fW, 4]
    z = torch.einsum("nj,nhwj->nhw", sensor_from_image[:, 2], pixel)
    torch.testing.assert_close(z[met], torch.full_like(z[met], ground), rtol=0, atol=1e-4)
    # CAM_FRONT looks level: the image's lower half meets the ground, the upper half does not
    assert met[0, f_h // 2 + 1 :].all() and not met[0, : f_h // 2].any()
    # the cell straight below the optical axis row: depth = height / tan(angle below it)
    f = 0.6 * 176
    row = f_h - 1
    expected = 1.5 * f / (float(v[row, 0]) - 32.0)
    torch.testing.assert_close(float(depth[0, row, f_w // 2]), expected, rtol=1e-4, atol=0)
    # a global rotation, flip and scale of the LiDAR frame changes nothing
    c, s = 0.6, 0.8
    moved = torch.tensor([[c, -s, 0, 1.0], [-s, -c, 0, 2.0], [0, 0, 1, 0.5], [0, 0, 0, 1]]) * 1.1
    moved[3, 3] = 1.0
    augmented = Batch(**{**batch.__dict__, "lidar_aug": moved[None]})
    torch.testing.assert_close(vt.ground_depth(augmented), depth)


def test_ground_depth_input_needs_no_lidar():
    torch.manual_seed(0)
    batch = synthetic_batch(micro_config(), batch_size=1)
    ground = float(batch.camera_to_lidar[0, 0, -1, 2, 3]) - 1.5
    vt = make_transform(ground_depth_input=ground).eval()
    inputs = []
    vt.depth_net.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    features = torch.randn(1, 6, 8, 8, 22)
    no_lidar = Batch(**{**batch.__dict__, "lidar_mask": torch.zeros(1, dtype=torch.bool)})
    with torch.no_grad():
        vt(features, batch)
        vt(features, no_lidar)
    prior = inputs[0][:, 8:]  # [6, D, fH, fW] after the 8 feature channels
    assert prior.shape[1] == vt.num_depth
    bins = vt._bins(vt.ground_depth(batch))  # [6, fH, fW]
    assert torch.equal(prior.sum(1), (bins >= 0).to(prior.dtype))  # one bin a cell, or none
    cam, row, col = (bins >= 0).nonzero()[0].tolist()
    assert prior[cam, bins[cam, row, col], row, col] == 1
    torch.testing.assert_close(inputs[1], inputs[0])  # calibration only: no points needed
