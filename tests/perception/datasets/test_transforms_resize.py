"""Image resize/crop relative to the input (issue #28 item 4): the same config crops the same
view, horizon included, of a 1600x900 nuScenes keyframe as of a generated 800x450 one; the
horizon row comes from calibration; a crop that keeps too little above it is refused."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from perception.config import load_config, parse_config
from perception.config.schema import ImageAugConfig
from perception.datasets.pipeline import build_dataset, check_image_crops, image_transform
from perception.datasets.transforms import ImageAug, fit_scale, horizon_row
from perception.structures import CAMERA_NAMES, Boxes3D, Sample

TINY_CONFIG = "configs/bevfusion_tiny.yaml"
# nuScenes CAM_FRONT: intrinsics at 1600x900; camera axes (x right, y down, z forward) in ego
# axes (x forward, y left, z up) for a level camera.
NUSC_K = np.array([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]])
LEVEL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
SKY, ROAD = 200, 40


def _pitch_up(deg: float) -> np.ndarray:
    """Camera -> ego rotation of a forward camera pitched up by `deg` (about ego -y)."""
    a = math.radians(deg)
    about_y = np.array([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
    return about_y @ LEVEL


def _sky_sample(width: int, height: int, horizon: float) -> Sample:
    """One camera, one frame: SKY above row `horizon`, ROAD below."""
    images = torch.full((1, 1, 3, height, width), ROAD, dtype=torch.uint8)
    images[..., : int(horizon), :] = SKY
    return Sample(
        token="t",
        timestamp_us=0,
        points=torch.zeros(0, 5),
        images=images,
        camera_names=CAMERA_NAMES[:1],
        intrinsics=torch.eye(3)[None],
        camera_to_lidar=torch.eye(4).repeat(1, 1, 1, 1),
        camera_time_lag=torch.zeros(1, 1),
        image_aug=torch.eye(4)[None],
        lidar_aug=torch.eye(4),
        lidar_to_ego=torch.eye(4, dtype=torch.float64),
        ego_to_global=torch.eye(4, dtype=torch.float64),
        camera_mask=torch.ones(1, dtype=torch.bool),
        lidar_present=True,
        gt_boxes=Boxes3D(torch.zeros(0, 9)),
        gt_labels=torch.zeros(0, dtype=torch.int64),
        gt_attributes=torch.zeros(0, dtype=torch.int64),
        gt_num_points=torch.zeros(0, dtype=torch.int64),
    )


def _record(token: str, k: np.ndarray, camera_to_ego: np.ndarray, size=(1600, 900)) -> dict:
    """An index record with one camera (LiDAR frame = ego frame)."""
    m = np.eye(4)
    m[:3, :3] = camera_to_ego
    cam = {"intrinsics": k.ravel().tolist(), "size": list(size), "frames": [{"camera_to_lidar": m.ravel().tolist()}]}  # fmt: skip
    return {"token": token, "lidar": {"lidar_to_ego": np.eye(4).ravel().tolist()}, "cameras": {"CAM_FRONT": cam}}  # fmt: skip


def _old_tiny_config(test_resize: float = 0.32):
    """bevfusion_tiny.yaml as it was: absolute factors for 800x450 images (deprecated keys)."""
    with pytest.warns(FutureWarning):
        return load_config(
            TINY_CONFIG,
            [
                "augment.image.resize_lim=[0.30, 0.34]",
                f"augment.test_resize={test_resize}",
                "augment.image.min_horizon_keep=0",
            ],
        )


# -- the horizon from calibration ---------------------------------------------------------


def test_horizon_row_of_a_level_camera_is_the_principal_row():
    assert horizon_row(NUSC_K, LEVEL) == pytest.approx(491.5)


@pytest.mark.parametrize("pitch_deg", [-4.0, 2.0, 7.5])
def test_horizon_row_follows_the_pitch(pitch_deg):
    # pitched up, the horizon moves down the image by fy tan(pitch)
    expected = 491.5 + 1266.4 * math.tan(math.radians(pitch_deg))
    assert horizon_row(NUSC_K, _pitch_up(pitch_deg)) == pytest.approx(expected)


def test_horizon_row_is_where_far_ground_parallel_rays_project():
    rng = np.random.default_rng(3)
    for _ in range(5):
        rx, ry, rz = np.radians(rng.normal(0, 3, 3))
        cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)  # fmt: skip
        tilt = (
            np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
            @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        )
        camera_to_ego = tilt @ LEVEL
        # two ground-parallel directions in the ego frame, projected: the horizon line
        pixels = []
        for yaw in (-0.3, 0.4):
            d_cam = camera_to_ego.T @ np.array([math.cos(yaw), math.sin(yaw), 0.0])
            p = NUSC_K @ d_cam
            pixels.append(p[:2] / p[2])
        (u0, v0), (u1, v1) = pixels
        v_at_cx = v0 + (v1 - v0) * (NUSC_K[0, 2] - u0) / (u1 - u0)
        assert horizon_row(NUSC_K, camera_to_ego) == pytest.approx(v_at_cx, abs=1e-6)


def test_horizon_row_is_nan_for_an_upside_down_camera():
    assert np.isnan(horizon_row(NUSC_K, LEVEL @ np.diag([-1.0, -1.0, 1.0])))


# -- relative resize ----------------------------------------------------------------------


def test_fit_scale_covers_the_final_size():
    assert fit_scale(800, 450, (256, 96)) == 0.32
    assert fit_scale(1600, 900, (256, 96)) == 0.16
    assert fit_scale(1600, 900, (704, 256)) == pytest.approx(0.44)
    assert fit_scale(100, 400, (256, 96)) == pytest.approx(2.56)  # a tall image: its width


@pytest.mark.parametrize("train", [True, False])
def test_tiny_config_on_800x450_is_the_old_absolute_crop(train):
    """The generated 800x450 world (BENCHMARKS.md) gets the same affine as with the old
    absolute keys (resize_lim 0.30-0.34, test_resize 0.32), to float rounding."""
    new = image_transform(load_config(TINY_CONFIG), train=train)
    old = image_transform(_old_tiny_config(), train=train)
    for seed in range(20):
        m_new = new.affine(800, 450, np.random.default_rng(seed))
        m_old = old.affine(800, 450, np.random.default_rng(seed))
        np.testing.assert_allclose(m_new, m_old, rtol=0, atol=1e-9)


def test_tiny_config_on_1600x900_keeps_the_sky():
    """A real-size keyframe: the crop is the same part of the view as at 800x450 (rows 300-900
    of 1600x900), so about a third of the model's rows lie above the horizon, as on the
    generated world; the old absolute factor showed rows 600-900 only (road)."""
    horizon = float(horizon_row(NUSC_K, LEVEL))
    sample = _sky_sample(1600, 900, horizon)
    out = image_transform(load_config(TINY_CONFIG), train=False)(sample, np.random.default_rng(0))
    assert out.images.shape == (1, 1, 3, 96, 256)
    sky_rows = int((out.images[0, 0, 0, :, 128] == SKY).sum())
    expected = (horizon - 300) * 0.16  # input rows 300..horizon at the fit 0.16
    assert abs(sky_rows - expected) <= 1
    # the recorded matrix says the same: input row 300 is the crop's first row
    assert out.image_aug[0, 1, 1].item() == pytest.approx(0.16)
    assert out.image_aug[0, 1, 3].item() == pytest.approx(-48.0)
    small = _sky_sample(800, 450, horizon / 2)
    out_small = image_transform(load_config(TINY_CONFIG), train=False)(
        small, np.random.default_rng(0)
    )
    small_sky_rows = int((out_small.images[0, 0, 0, :, 128] == SKY).sum())
    assert abs(small_sky_rows - sky_rows) <= 1  # the same view at either resolution

    old = image_transform(_old_tiny_config(), train=False)(sample, np.random.default_rng(0))
    assert int((old.images[0, 0, 0, :, 128] == SKY).sum()) == 0  # the issue: road only


@pytest.mark.parametrize("train", [True, False])
def test_horizon_keep_matches_the_pixels(train):
    """`horizon_keep`'s typical fraction is what the warped image shows (train: the middle
    draw, no rotation)."""
    config = ImageAugConfig(
        final_size=(256, 96), scale_lim=(1.0, 1.4), test_scale=1.2, rotate_lim_deg=(0, 0)
    )
    aug = ImageAug(config, train=train)
    horizon = 491.5
    typical, worst = aug.horizon_keep(1600, 900, np.array([horizon]))
    out = ImageAug(config, train=False)(_sky_sample(1600, 900, horizon), np.random.default_rng(0))
    resize = 0.16 * 1.2
    sky_input_rows = int((out.images[0, 0, 0, :, 128] == SKY).sum()) / resize
    assert typical[0] == pytest.approx(sky_input_rows / horizon, abs=1.5 / resize / horizon)
    if train:  # the largest resize reaches least far up
        assert worst[0] < typical[0]
    else:
        assert worst[0] == typical[0]


# -- the check at load time ---------------------------------------------------------------


def test_check_image_crops_refuses_a_crop_below_the_horizon():
    records = [_record("level", NUSC_K, LEVEL), _record("pitched", NUSC_K, _pitch_up(-2.0))]
    old = image_transform(_old_tiny_config(), train=False)
    strict = ImageAug(old.config.model_copy(update={"min_horizon_keep": 0.1}), False, 0.32)
    with pytest.raises(ValueError, match=r"root val: CAM_FRONT \(1600x900.*keeps 0% .* sample"):
        check_image_crops(strict, records, ["CAM_FRONT"], source="root val")
    # the relative config passes on the same cameras, without a warning, in both modes
    for train in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            aug = image_transform(load_config(TINY_CONFIG), train=train)
            check_image_crops(aug, records, ["CAM_FRONT"], source="root val")


def test_check_image_crops_warns_when_only_the_largest_resize_is_short():
    records = [_record("s0", NUSC_K, LEVEL)]
    config = ImageAugConfig(final_size=(256, 96), scale_lim=(1.0, 1.5), min_horizon_keep=0.1)
    with pytest.warns(UserWarning, match=r"CAM_FRONT .*largest training resize keeps 0%.* s0"):
        check_image_crops(ImageAug(config, train=True), records, ["CAM_FRONT"], source="x")
    off = config.model_copy(update={"min_horizon_keep": 0.0, "scale_lim": (1.5, 1.5)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_image_crops(ImageAug(off, train=True), records, ["CAM_FRONT"], source="x")


def test_build_dataset_checks_every_camera(indexed_world_copy):
    root = indexed_world_copy("resize", max_sweeps=3, max_clip_frames=2)
    base = ["data.train_split=all", "data.val_split=all"]
    build_dataset(load_config(TINY_CONFIG, base), train=False, root=root)  # 320x180: fine
    too_close = load_config(TINY_CONFIG, [*base, "augment.image.test_scale=2.0"])
    with pytest.raises(ValueError, match=r"CAM_FRONT \(320x180.*test crop keeps 0%"):
        build_dataset(too_close, train=False, root=root)
    # no images, no check
    lidar_only = load_config(TINY_CONFIG, [*base, "augment.image.test_scale=2.0", "data.load_images=false"])  # fmt: skip
    build_dataset(lidar_only, train=False, root=root)


# -- config keys --------------------------------------------------------------------------


def test_shipped_configs_use_the_relative_keys():
    from pathlib import Path

    for path in sorted(Path("configs").glob("*.yaml")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            config = load_config(path)
        assert config.augment.image.resize_lim is None and config.augment.test_resize is None


@pytest.mark.parametrize(
    ("overrides", "key", "replacement"),
    [
        (["augment.image.resize_lim=[0.3, 0.34]"], "augment.image.resize_lim", "scale_lim"),
        (["augment.test_resize=0.32"], "augment.test_resize", "augment.image.test_scale"),
    ],
)
def test_deprecated_absolute_keys_warn_and_still_work(overrides, key, replacement):
    with pytest.warns(FutureWarning, match=rf"{key} .*deprecated.*{replacement}"):
        config = parse_config({}, overrides)
    aug = image_transform(config, train="resize_lim" in key)
    m = aug.affine(1600, 900, np.random.default_rng(0))
    if "resize_lim" in key:
        assert 0.3 <= m[1, 1] <= 0.34  # absolute, whatever the input size
    else:
        assert m[1, 1] == 0.32


def test_node_preprocess_is_the_datasets_test_transform():
    """The node (deploy/pipeline.py) warps camera frames with the dataset's test transform,
    so its image_aug for a 1600x900 camera is the relative one."""
    from perception.deploy.pipeline import ImagePreprocess

    config = load_config(TINY_CONFIG)
    node = ImagePreprocess.from_config(config)
    assert node.aug == image_transform(config, train=False)
    m = node.matrix(1600, 900)
    assert m[1, 1] == pytest.approx(0.16) and m[1, 3] == pytest.approx(-48.0)
