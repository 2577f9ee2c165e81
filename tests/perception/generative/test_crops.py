"""The generators' training data (perception.generative.crops) on a bank of the tiny generated
world: crop shapes and ranges, the alpha channel following the mask, conditions equal to the
bank's fields, the LiDAR grid layout and its round trip (points -> grid -> points keeps every
cell and every point inside the box), caching to safetensors, and errors naming the field,
class or file."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from perception.generative.bank import ObjectBank
from perception.generative.box_frame import box_to_frame
from perception.generative.conditions import LIDAR_SENSOR
from perception.generative.crops import (
    INTENSITY_SCALE,
    CropSet,
    GridSet,
    camera_crops,
    crop_image,
    grid_to_points,
    lidar_grids,
    lidar_pose,
    points_to_grid,
)
from perception.structures.classes import CAMERA_NAMES, CLASS_NAMES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VERSION = "v1.0-mini"
GRID = (16, 12, 6)  # X, Y, Z: unequal, so a swapped axis shows


@pytest.fixture(scope="module")
def bank(tiny_train_bank):
    return ObjectBank.open(tiny_train_bank)  # read-only (tests/conftest.py)


@pytest.fixture(scope="module")
def crops(bank):
    return camera_crops(bank, size=16, min_visibility=0.3, progress=False)


@pytest.fixture(scope="module")
def grids(bank):
    return lidar_grids(bank, grid=GRID, min_points=1, progress=False)


def _cells(points, size, grid):
    """The set of (x, y, z) cells of `points` (an independent binning)."""
    w, l, h = (float(v) for v in size)
    X, Y, Z = grid
    n = points[:, :3].astype(np.float64) / [l / 2, w / 2, h / 2]
    idx = np.clip(np.floor((n + 1) / 2 * [X, Y, Z]), 0, np.array([X, Y, Z]) - 1).astype(int)
    return {tuple(c) for c in idx}


# -- camera crops -----------------------------------------------------------------------------
def test_crops_hold_one_entry_per_visible_view_with_the_banks_conditions(bank, crops):
    rows = [(obj, view) for obj in bank for view in obj.views if view.visible_fraction >= 0.3]
    assert len(crops) == len(rows) > 20
    assert crops.images.shape == (len(rows), 4, 16, 16) and crops.images.dtype == torch.float32
    assert crops.images.min() >= -1.0 and crops.images.max() <= 1.0
    assert crops.images.min() == -1.0 and crops.images.max() == 1.0
    c = crops.conditions
    for i, (obj, view) in enumerate(rows):
        assert int(crops.object_index[i]) == obj.index
        assert CLASS_NAMES[int(c.label[i])] == obj.class_name
        assert np.array_equal(c.size[i].numpy(), obj.size)
        assert float(c.view_angle[i]) == view.view_angle
        assert float(c.depth[i]) == view.depth
        assert CAMERA_NAMES[int(c.sensor[i])] == view.camera
    assert crops.settings["size"] == 16 and crops.settings["split"] == "mini_train"


def test_the_alpha_channel_follows_the_mask(bank, crops):
    """Where an output pixel's source region (grown by a pixel for bilinear growth) is all
    mask, alpha is +1; all background, -1; overall the covered share is kept."""
    rows = [(obj, view) for obj in bank for view in obj.views if view.visible_fraction >= 0.3]
    inside = outside = 0
    S = crops.images.shape[-1]
    for i, (_, view) in enumerate(rows):
        alpha = crops.images[i, 3].numpy()  # [S, S]
        h, w = view.mask.shape
        for r in range(S):
            r0, r1 = max(0, math.floor(r * h / S) - 1), min(h, math.ceil((r + 1) * h / S) + 1)
            for c in range(S):
                c0, c1 = max(0, math.floor(c * w / S) - 1), min(w, math.ceil((c + 1) * w / S) + 1)
                region = view.mask[r0:r1, c0:c1]
                if region.all():
                    inside += 1
                    assert alpha[r, c] == pytest.approx(1.0, abs=1e-5)
                elif not region.any():
                    outside += 1
                    assert alpha[r, c] == pytest.approx(-1.0, abs=1e-5)
        # resizing keeps the covered share (area averaging; bilinear when growing)
        assert float(alpha.mean() + 1) / 2 == pytest.approx(view.mask.mean(), abs=0.12)
    assert inside > 100 * len(rows) and outside > 0


def test_crop_image_maps_pixels_and_mask_exactly():
    crop = np.zeros((8, 12, 3), np.uint8)
    crop[..., 0], crop[..., 1], crop[..., 2] = 0, 255, 51
    mask = np.zeros((8, 12), bool)
    mask[:, :6] = True  # the left half
    out = crop_image(crop, mask, 4)
    assert out.shape == (4, 4, 4) and out.dtype == np.float32
    assert np.allclose(out[0], -1) and np.allclose(out[1], 1) and np.allclose(out[2], -0.6)
    assert np.allclose(out[3, :, :2], 1) and np.allclose(out[3, :, 2:], -1)
    grown = crop_image(crop[:2, :3], np.ones((2, 3), bool), 6)  # upscaling: bilinear
    assert grown.shape == (4, 6, 6) and np.allclose(grown[3], 1) and np.allclose(grown[2], -0.6)


def test_crop_set_subsets_and_round_trips_through_safetensors(crops, tmp_path):
    part = crops.subset([3, 0, 5])
    assert torch.equal(part.images, crops.images[[3, 0, 5]])
    assert torch.equal(part.conditions.depth, crops.conditions.depth[[3, 0, 5]])
    assert len(crops.subset(slice(0, 4))) == 4
    crops.save(tmp_path / "crops.safetensors")
    back = CropSet.load(tmp_path / "crops.safetensors")
    assert torch.equal(back.images, crops.images)
    assert torch.equal(back.object_index, crops.object_index)
    assert back.conditions.to_dict() == crops.conditions.to_dict()
    assert back.settings == crops.settings
    with pytest.raises(ValueError, match="crops.safetensors.*perception.lidar-grids"):
        GridSet.load(tmp_path / "crops.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        CropSet.load(tmp_path / "junk.safetensors")


@pytest.mark.parametrize("size", [0, -8, 2.5, True])
def test_a_crop_size_that_is_not_a_positive_int_is_an_error(bank, size):
    with pytest.raises(ValueError, match="size"):
        camera_crops(bank, size=size, progress=False)


def test_a_class_without_objects_or_an_empty_bank_is_an_error_naming_it(bank):
    cars = bank.filter(classes=["car"])
    with pytest.raises(ValueError, match=r"bank.json: no 'bus' objects"):
        camera_crops(cars, classes=["bus"], progress=False)
    with pytest.raises(ValueError, match=r"unknown class\(es\) \['unicorn'\]"):
        lidar_grids(bank, classes=["unicorn"], progress=False)
    empty = bank.filter(min_points=10**9)
    with pytest.raises(ValueError, match=r"bank.json: the bank \(selection\) holds no objects"):
        camera_crops(empty, progress=False)
    with pytest.raises(ValueError, match="bank.json: the bank"):
        lidar_grids(empty, progress=False)


class _ViewlessBank:
    """A bank whose objects have lost their camera views (the tiny world has no class seen by
    no camera, so this stands in for one)."""

    def __init__(self, bank):
        self._bank = bank

    def __getattr__(self, name):
        return getattr(self._bank, name)

    def filter(self, **limits):
        return _ViewlessBank(self._bank.filter(**limits))

    def __len__(self):
        return len(self._bank)

    def __iter__(self):
        return (dataclasses.replace(obj, views=()) for obj in self._bank)


def test_no_view_passing_min_visibility_is_an_error_naming_the_bank(bank):
    with pytest.raises(ValueError, match=r"bank.json: no camera view with visible fraction >= 0.3"):
        camera_crops(_ViewlessBank(bank), progress=False)
    with pytest.raises(ValueError, match="min_visibility"):
        camera_crops(bank, min_visibility=1.5, progress=False)


# -- LiDAR grids ------------------------------------------------------------------------------
def test_grids_hold_occupancy_and_column_intensity_per_object(bank, grids):
    objects = [obj for obj in bank if obj.num_points >= 1]
    X, Y, Z = GRID
    assert len(grids) == len(objects) > 50 and grids.grid == GRID
    assert grids.grids.shape == (len(objects), Z + 1, X, Y)
    occupancy, intensity = grids.grids[:, :Z], grids.grids[:, Z]
    assert set(occupancy.unique().tolist()) == {-1.0, 1.0}
    assert intensity.min() >= -1.0 and intensity.max() <= 1.0
    for i, obj in enumerate(objects):
        assert int(grids.object_index[i]) == obj.index
        cells = _cells(obj.points, obj.size, GRID)
        kx, ky, kz = torch.nonzero(occupancy[i].permute(1, 2, 0) > 0, as_tuple=True)
        assert set(zip(kx.tolist(), ky.tolist(), kz.tolist())) == cells
        columns = {(x, y) for x, y, _ in cells}
        empty = torch.ones(X, Y, dtype=torch.bool)
        for x, y in columns:
            empty[x, y] = False
        assert torch.equal(intensity[i][empty], -torch.ones(int(empty.sum())))
        if i < 10:  # one column's mean intensity, computed independently
            x, y = sorted(columns)[0]
            w, l, h = (float(v) for v in obj.size)
            n = obj.points[:, :2].astype(np.float64) / [l / 2, w / 2]
            idx = np.clip(np.floor((n + 1) / 2 * [X, Y]), 0, np.array([X, Y]) - 1).astype(int)
            sel = (idx[:, 0] == x) & (idx[:, 1] == y)
            want = np.clip(obj.points[sel, 3].mean() / INTENSITY_SCALE * 2 - 1, -1, 1)
            assert float(intensity[i, x, y]) == pytest.approx(want, abs=1e-5)


def test_grid_conditions_are_the_lidars_pose_of_the_box(bank, grids):
    objects = {obj.index: obj for obj in bank}
    c = grids.conditions
    assert (c.sensor == LIDAR_SENSOR).all()
    for i in range(len(grids)):
        obj = objects[int(grids.object_index[i])]
        assert CLASS_NAMES[int(c.label[i])] == obj.class_name
        assert np.array_equal(c.size[i].numpy(), obj.size)
        # the LiDAR origin in the box frame, through the bank's own box transform
        origin = np.linalg.inv(box_to_frame(obj.box_lidar.astype(np.float64)))[:3, 3]
        angle = math.atan2(origin[1], origin[0])
        assert math.cos(float(c.view_angle[i]) - angle) == pytest.approx(1.0, abs=1e-6)
        assert float(c.depth[i]) == pytest.approx(math.hypot(*obj.box_lidar[:2]), rel=1e-6)


@pytest.mark.parametrize(
    "box, angle, depth",
    [
        ((10, 0, -1, 2, 4, 1.5, 0.0), math.pi, 10),  # box ahead, heading away: seen from behind
        ((10, 0, -1, 2, 4, 1.5, math.pi), 0.0, 10),  # box ahead, heading at us: from the front
        ((0, 10, -1, 2, 4, 1.5, 0.0), -math.pi / 2, 10),  # box to the left: seen from its right
        ((3, 4, 0, 2, 4, 1.5, math.pi / 2), math.atan2(3, -4), 5),
    ],
)
def test_lidar_pose_of_constructed_boxes(box, angle, depth):
    got_angle, got_depth = lidar_pose(np.array(box, np.float64))
    assert math.cos(got_angle - angle) == pytest.approx(1.0, abs=1e-12)
    assert got_depth == pytest.approx(depth)


@pytest.mark.parametrize("jitter", [True, False])
def test_points_grid_points_keeps_every_cell_and_stays_inside_the_box(bank, jitter):
    g = torch.Generator().manual_seed(0)
    checked = 0
    for obj in bank.filter(min_points=1):
        grid = points_to_grid(obj.points, obj.size, grid=GRID)
        points = grid_to_points(grid, obj.size, generator=g, jitter=jitter)
        assert points.dtype == np.float32 and points.shape[1] == 5
        w, l, h = obj.size
        assert (np.abs(points[:, 0]) <= l / 2).all() and (np.abs(points[:, 1]) <= w / 2).all()
        assert (np.abs(points[:, 2]) <= h / 2).all() and (points[:, 4] == 0).all()
        assert _cells(points, obj.size, GRID) == _cells(obj.points, obj.size, GRID)
        assert len(points) == len(_cells(obj.points, obj.size, GRID))  # one point per cell
        again = points_to_grid(points, obj.size, grid=GRID)
        assert torch.equal(again[:-1], grid[:-1])
        assert torch.allclose(again[-1], grid[-1], atol=1e-5)  # intensities survive
        checked += 1
    assert checked > 50


def test_grid_to_points_on_a_full_grid_stays_inside_odd_sizes_and_is_seeded():
    X, Y, Z = 7, 5, 3
    full = torch.ones(Z + 1, X, Y)
    full[Z] = torch.linspace(-1, 1, X * Y).reshape(X, Y)
    size = np.array([0.6123456789, 4.6, 1.7777777], np.float64)  # not float32 values
    a = grid_to_points(full, size, generator=torch.Generator().manual_seed(1))
    b = grid_to_points(full, size, generator=torch.Generator().manual_seed(1))
    c = grid_to_points(full, size, generator=torch.Generator().manual_seed(2))
    assert a.shape == (X * Y * Z, 5) and np.array_equal(a, b) and not np.array_equal(a, c)
    w, l, h = size
    assert (np.abs(a[:, :3].astype(np.float64)) <= [l / 2, w / 2, h / 2]).all()
    assert a[:, 3].min() == 0.0 and a[:, 3].max() == pytest.approx(INTENSITY_SCALE)
    centres = grid_to_points(full.numpy(), size, jitter=False)
    assert np.allclose(np.unique(centres[:, 0]), (np.arange(X) + 0.5) / X * l - l / 2)
    assert len(grid_to_points(full, size, threshold=1.0)) == 0  # nothing above the threshold


@pytest.mark.parametrize("size", [[0, 1, 1], [1, -2, 1], [1, 1], [1, math.nan, 1]])
def test_a_box_size_that_is_not_positive_is_an_error(size):
    with pytest.raises(ValueError, match="size"):
        grid_to_points(torch.ones(3, 4, 4), size)
    with pytest.raises(ValueError, match="size"):
        points_to_grid(np.zeros((1, 5), np.float32), size)


def test_bad_grid_shapes_are_errors_naming_the_grid(bank):
    with pytest.raises(ValueError, match="grid"):
        lidar_grids(bank, grid=(0, 32, 8), progress=False)
    with pytest.raises(ValueError, match="grid"):
        lidar_grids(bank, grid=(32, 32), progress=False)
    with pytest.raises(ValueError, match="grid"):
        grid_to_points(torch.ones(4, 4), [1, 1, 1])


def test_grid_set_subsets_and_round_trips_through_safetensors(grids, tmp_path):
    part = grids.subset(torch.tensor([2, 1]))
    assert torch.equal(part.grids, grids.grids[[2, 1]]) and part.grid == GRID
    grids.save(tmp_path / "grids.safetensors")
    back = GridSet.load(tmp_path / "grids.safetensors")
    assert torch.equal(back.grids, grids.grids)
    assert torch.equal(back.object_index, grids.object_index)
    assert back.conditions.to_dict() == grids.conditions.to_dict()
    assert back.settings == grids.settings and back.settings["grid"] == list(GRID)
