"""Camera compositing of GT-paste (perception.generative.paste_camera) on constructed scenes:
cameras looking along LiDAR +x, objects cut by the bank's own `extract_objects` from a source
scene, then pasted at new poses. The projected hull the test checks against is computed
independently (Boxes3D.corners, perception.geometry, shapely)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import shapely
import torch
from shapely.geometry import MultiPoint

from perception.generative.bank import extract_objects
from perception.generative.paste_camera import (
    BAD_CALIBRATION,
    BEHIND_CAMERA,
    BOX_NOT_FINITE,
    CAMERA_MISSING,
    HIDDEN,
    NO_VIEW,
    OUTSIDE_IMAGE,
    composite_objects,
)
from perception.geometry import lidar_to_image, project
from perception.structures import Boxes3D, Sample

W, H, F = 640, 360, 300.0
K = np.array([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1]], np.float32)
# camera (OpenCV: z forward, x right, y down) -> LiDAR: z forward = LiDAR +x
FRONT = np.eye(4, dtype=np.float32)
FRONT[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]
GREY, RED, BLUE, GREEN = (90, 90, 90), (220, 20, 20), (20, 20, 220), (20, 200, 20)


def _sample(
    images: np.ndarray,
    *,
    camera_to_lidar: np.ndarray | None = None,
    time_lag: np.ndarray | None = None,
    gt_boxes=(),
    camera_mask=None,
    names=("CAM_FRONT", "CAM_FRONT_LEFT"),
    image_aug: np.ndarray | None = None,
) -> Sample:
    """A sample of `images` `[Ncam, T, 3, H', W']` uint8, every camera at FRONT by default."""
    n, t = images.shape[:2]
    if camera_to_lidar is None:
        camera_to_lidar = np.broadcast_to(FRONT, (n, t, 4, 4))
    gt = torch.tensor(np.asarray(gt_boxes, np.float32).reshape(-1, 9))
    return Sample(
        token="s", timestamp_us=0, points=torch.zeros(0, 5), images=torch.from_numpy(images),
        camera_names=names[:n], intrinsics=torch.from_numpy(K).expand(n, 3, 3).clone(),
        camera_to_lidar=torch.tensor(np.array(camera_to_lidar, np.float32)),
        camera_time_lag=torch.zeros(n, t) if time_lag is None else torch.tensor(time_lag).float(),
        image_aug=torch.eye(4).expand(n, 4, 4).clone() if image_aug is None
        else torch.tensor(image_aug).float(),
        lidar_aug=torch.eye(4), lidar_to_ego=torch.eye(4, dtype=torch.float64),
        ego_to_global=torch.eye(4, dtype=torch.float64),
        camera_mask=torch.ones(n, dtype=torch.bool) if camera_mask is None
        else torch.tensor(camera_mask),
        lidar_present=True, gt_boxes=Boxes3D(gt), gt_labels=torch.zeros(len(gt), dtype=torch.int64),
        gt_attributes=torch.full((len(gt),), -1), gt_num_points=torch.zeros(len(gt), dtype=torch.int64),
    )  # fmt: skip


def _fill(colour, n=1, t=1, h=H, w=W) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8)[:, None, None], (n, t, 3, h, w)).copy()


def _texture(seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (1, 1, 3, H, W), dtype=np.uint8)


def _bank_object(box, images: np.ndarray, name="car"):
    """The object at `box` as the bank cuts it from a one-camera scene showing `images`."""
    record = {
        "token": "src",
        "scene_name": "scene-src",
        "gt": {
            "boxes": [list(box)],
            "labels": [name],
            "attributes": [""],
            "ego_dist": [float(np.hypot(*box[:2]))],
            "ann_tokens": ["a"],
        },
    }
    (obj,) = extract_objects(_sample(images), record, {"a": "i"}, split="mini_train")
    assert obj.views, "the source camera must see the object"
    return obj


def _hull_pixels(sample: Sample, box, camera=0, frame=-1) -> np.ndarray:
    """`[H', W']` bool: pixel centres inside the convex hull of `box`'s projected corners
    (all in front of the camera), by shapely."""
    matrix = lidar_to_image(
        sample.intrinsics[camera].double(),
        sample.camera_to_lidar[camera, frame].double(),
        sample.image_aug[camera].double(),
        sample.lidar_aug.double(),
    )
    corners = Boxes3D(torch.tensor(np.asarray(box, np.float64)[None])).corners()[0]
    uv, depth = project(corners, matrix)
    assert (depth > 0.1).all()
    hull = MultiPoint(uv.numpy()).convex_hull
    h, w = sample.images.shape[-2:]
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    return shapely.contains_xy(hull.buffer(1e-6), u, v)  # centres on an edge count as inside


def _changed(before: Sample, after: Sample, camera=0, frame=-1) -> np.ndarray:
    a, b = before.images[camera, frame].numpy(), after.images[camera, frame].numpy()
    return (a != b).any(0)


def _is(after: Sample, colour, camera=0, frame=-1) -> np.ndarray:
    return (after.images[camera, frame].numpy() == np.array(colour)[:, None, None]).all(0)


SOURCE_BOX = [12.0, 0.0, 0.0, 2.0, 4.0, 1.6, 0.0, 0.0, 0.0]  # seen from behind, 12 m ahead


def _shrink(mask: np.ndarray) -> np.ndarray:
    """`mask` less its one-pixel border (for coverage checks away from the hull's edges)."""
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


@pytest.mark.parametrize(
    "box",
    [
        [9.0, 1.5, 0.2, 2.0, 4.0, 1.6, 0.3, 0, 0],  # nearer, to the left, turned
        [20.0, -3.0, -0.3, 2.2, 4.5, 1.8, -0.5, 0, 0],  # farther, right, larger box
        [12.0, 0.0, 0.0, 2.0, 4.0, 1.6, math.pi / 2, 0, 0],  # seen from its side
    ],
)
def test_the_composited_pixels_lie_in_the_projected_box_and_fill_it(box):
    obj = _bank_object(SOURCE_BOX, _fill(RED))
    before = _sample(_fill(GREY))
    after, (record,) = composite_objects(
        before, np.array([box]), [obj], rng=np.random.default_rng(0)
    )
    hull = _hull_pixels(before, box)
    changed = _changed(before, after)
    assert changed.any() and not (changed & ~hull).any()  # the warped mask stays in the hull
    assert _is(after, RED)[changed].all()  # constant-colour crop: exactly its colour
    assert changed[_shrink(hull)].mean() > 0.97  # and covers the projected box
    assert record["pixels"] == record["keyframe_pixels"] == int(changed.sum())
    assert record["cameras"] == ["CAM_FRONT"] and record["class_name"] == "car"
    assert before.images.eq(torch.from_numpy(_fill(GREY))).all()  # the input is not modified


def test_the_same_pose_reproduces_the_crop_where_its_mask_is_set():
    source = _texture()
    obj = _bank_object(SOURCE_BOX, source)
    (view,) = obj.views
    before = _sample(np.zeros((1, 1, 3, H, W), np.uint8))
    after, (record,) = composite_objects(
        before, obj.box_lidar[None], [obj], rng=np.random.default_rng(0)
    )
    u0, v0, u1, v1 = view.crop_box
    out = after.images[0, -1].numpy().transpose(1, 2, 0)  # [H, W, 3]
    assert np.array_equal(out[v0:v1, u0:u1][view.mask], view.crop[view.mask])
    assert not out[v0:v1, u0:u1][~view.mask].any()  # outside the mask: untouched
    outside = np.ones((H, W), bool)
    outside[v0:v1, u0:u1] = False
    assert not out[outside].any()
    (cam,) = record["per_camera"]
    assert cam["view"] == 0 and cam["view_camera"] == "CAM_FRONT"
    assert cam["view_angle_diff"] == pytest.approx(0, abs=1e-5)
    assert cam["depth_diff"] == pytest.approx(0, abs=1e-4)
    assert record["pixels"] == int(view.mask.sum())


def test_a_nearer_existing_object_stays_in_front():
    obj = _bank_object(SOURCE_BOX, _fill(RED))
    pasted = [15.0, 0.0, 0.0, 2.0, 4.0, 1.6, 0.0, 0, 0]
    nearer = [8.0, 0.8, 0.0, 1.0, 1.0, 1.0, 0.0, 0, 0]  # a cone in front of its left part
    before = _sample(_fill(GREY), gt_boxes=[nearer])
    after, (record,) = composite_objects(
        before, np.array([pasted]), [obj], rng=np.random.default_rng(0)
    )
    changed = _changed(before, after)
    front = _hull_pixels(before, nearer)
    overlap = _hull_pixels(before, pasted) & front
    assert overlap.sum() > 100  # the scene does overlap them
    assert not changed[front].any()  # the nearer object keeps its pixels
    assert changed.sum() > 500 and record["cameras"] == ["CAM_FRONT"]


def test_the_pasted_object_hides_a_farther_existing_one():
    obj = _bank_object(SOURCE_BOX, _fill(RED))
    pasted = [10.0, 0.0, 0.0, 2.0, 4.0, 1.6, 0.0, 0, 0]
    farther = [25.0, 0.5, 0.0, 2.0, 4.0, 1.6, 0.0, 0, 0]
    before = _sample(_fill(GREY), gt_boxes=[farther])
    after, _ = composite_objects(before, np.array([pasted]), [obj], rng=np.random.default_rng(0))
    behind = _shrink(_hull_pixels(before, farther) & _hull_pixels(before, pasted))
    assert behind.sum() > 100 and _is(after, RED)[behind].all()


def test_pasted_objects_are_drawn_far_to_near():
    """Given nearer first, the farther one is still drawn first: the nearer one shows."""
    near_obj = _bank_object(SOURCE_BOX, _fill(RED))
    far_obj = _bank_object(SOURCE_BOX, _fill(BLUE))
    near = [9.0, 0.5, 0.0, 2.0, 4.0, 1.6, 0.0, 0, 0]
    far = [16.0, -0.5, 0.0, 2.0, 4.0, 1.6, 0.0, 0, 0]
    before = _sample(_fill(GREY))
    after, records = composite_objects(
        before, np.array([near, far]), [near_obj, far_obj], rng=np.random.default_rng(0)
    )
    both = _shrink(_hull_pixels(before, near) & _hull_pixels(before, far))
    assert both.sum() > 100 and _is(after, RED)[both].all()
    only_far = _shrink(_hull_pixels(before, far) & ~_hull_pixels(before, near))
    assert only_far.any() and _is(after, BLUE)[only_far].all()
    assert [r["box_index"] for r in records] == [0, 1]


def test_each_clip_frame_is_drawn_with_its_own_projection():
    """Three frames, the ego driving forward (the camera 2 m and 1 m behind the keyframe's
    position) and the object moving at 5 m/s along y: in frame j it is where
    centre - v * lag puts it, seen through that frame's camera_to_lidar."""
    obj = _bank_object(SOURCE_BOX, _fill(RED))
    box = np.array([14.0, 0.0, 0.0, 2.0, 4.0, 1.6, 0.0, 0.0, 5.0])
    lags = np.array([[0.4, 0.2, 0.0]])
    camera_to_lidar = np.stack([FRONT.copy() for _ in range(3)])[None]  # [1, 3, 4, 4]
    camera_to_lidar[0, :, 0, 3] = [-2.0, -1.0, 0.0]
    before = _sample(_fill(GREY, t=3), camera_to_lidar=camera_to_lidar, time_lag=lags)
    after, (record,) = composite_objects(before, box[None], [obj], rng=np.random.default_rng(0))
    centres_u = []
    for j, lag in enumerate(lags[0]):
        moved = box.copy()
        moved[1] -= 5.0 * lag
        hull = _hull_pixels(before, moved, frame=j)
        changed = _changed(before, after, frame=j)
        assert not (changed & ~hull).any(), j
        assert changed[_shrink(hull)].mean() > 0.97, j
        assert record["per_camera"][0]["pixels"][j] == int(changed.sum())
        centres_u.append(np.nonzero(changed)[1].mean())
    # moving along +y (to the camera's left) over time: the image column falls frame by frame
    assert centres_u[0] > centres_u[1] > centres_u[2]
    assert record["pixels"] == sum(record["per_camera"][0]["pixels"])


def test_existing_occluders_move_back_by_their_velocity_in_earlier_frames():
    """A cone driving along +y at 5 m/s passes in front of a parked pasted car: 0.4 s before
    the keyframe it was 2 m further right, hiding the car; at the keyframe it hides nothing."""
    obj = _bank_object(SOURCE_BOX, _fill(RED))
    pasted = [14.0, 0.0, 0.0, 2.0, 4.0, 1.6, 0.0, 0, 0]
    cone = np.array([8.0, 2.5, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 5.0])
    before = _sample(_fill(GREY, t=2), gt_boxes=[cone], time_lag=np.array([[0.4, 0.0]]))
    after, (record,) = composite_objects(
        before, np.array([pasted]), [obj], rng=np.random.default_rng(0)
    )
    earlier = cone.copy()
    earlier[1] -= 5.0 * 0.4
    hidden = _hull_pixels(before, earlier, frame=0) & _hull_pixels(before, pasted, frame=0)
    assert hidden.sum() > 100 and not _changed(before, after, frame=0)[hidden].any()
    assert _is(after, RED, frame=1)[_shrink(hidden)].all()  # the keyframe: nothing in front
    assert 0 < record["per_camera"][0]["pixels"][0] < record["per_camera"][0]["pixels"][1]


def test_a_missing_camera_or_an_unseen_box_draws_nothing_and_says_why():
    obj = _bank_object(SOURCE_BOX, _fill(RED))
    seen = [12.0, 0.0, 0.0, 2.0, 4.0, 1.6, 0.0, 0, 0]
    behind = [-12.0, 0.0, 0.0, 2.0, 4.0, 1.6, 0.0, 0, 0]
    aside = [3.0, 30.0, 0.0, 2.0, 4.0, 1.6, 0.0, 0, 0]  # in front, far outside the image
    across = [0.5, 3.0, 0.0, 2.0, 4.0, 1.6, 0.0, 0, 0]  # crosses the camera plane, at the left
    before = _sample(_fill(GREY, n=2), camera_mask=[True, False])
    after, records = composite_objects(
        before, np.array([seen, behind, aside]), [obj] * 3, rng=np.random.default_rng(0)
    )
    assert after.images[1].eq(before.images[1]).all()  # the missing camera is untouched
    reasons = [[cam["reason"] for cam in r["per_camera"]] for r in records]
    assert reasons == [
        [None, CAMERA_MISSING],
        [BEHIND_CAMERA, CAMERA_MISSING],
        [OUTSIDE_IMAGE, CAMERA_MISSING],
    ]
    assert [r["pixels"] > 0 for r in records] == [True, False, False]
    assert records[1]["cameras"] == records[2]["cameras"] == []
    assert records[2]["per_camera"][0]["view"] is None  # no view used where nothing was drawn
    assert int(_changed(before, after).sum()) == records[0]["pixels"]
    near, (crossing,) = composite_objects(  # drawn inside its outline clipped at the near plane
        before, np.array([across]), [obj], rng=np.random.default_rng(0)
    )
    assert crossing["pixels"] > 0 and crossing["cameras"] == ["CAM_FRONT"]
    assert int(_changed(before, near).sum()) == crossing["pixels"]


def test_a_camera_with_unusable_calibration_draws_nothing_and_says_why():
    obj = _bank_object(SOURCE_BOX, _fill(RED))
    seen = [12.0, 0.0, 0.0, 2.0, 4.0, 1.6, 0.0, 0, 0]
    broken = np.stack([FRONT, np.full((4, 4), np.nan, np.float32)])[:, None]  # [2, 1, 4, 4]
    before = _sample(_fill(GREY, n=2), camera_to_lidar=broken)
    after, (record,) = composite_objects(
        before, np.array([seen]), [obj], rng=np.random.default_rng(0)
    )
    assert [cam["reason"] for cam in record["per_camera"]] == [None, BAD_CALIBRATION]
    assert after.images[1].eq(before.images[1]).all() and record["cameras"] == ["CAM_FRONT"]
    intrinsics = before.intrinsics.clone()
    intrinsics[1] = 0  # a present camera without a camera matrix
    no_intrinsics = before.replace(
        camera_to_lidar=before.camera_to_lidar[[0, 0]], intrinsics=intrinsics
    )
    _, (record,) = composite_objects(
        no_intrinsics, np.array([seen]), [obj], rng=np.random.default_rng(0)
    )
    assert [cam["reason"] for cam in record["per_camera"]] == [None, BAD_CALIBRATION]


def test_hidden_objects_without_views_and_nothing_to_paste_are_recorded():
    obj = _bank_object(SOURCE_BOX, _fill(RED))
    viewless = dataclasses.replace(obj, views=())
    box = [20.0, 0.0, 0.0, 2.0, 4.0, 1.6, 0.0, 0, 0]
    wall = [8.0, 0.0, 0.0, 10.0, 1.0, 6.0, 0.0, 0, 0]  # an annotated object covering it all
    rng = np.random.default_rng(0)
    before = _sample(_fill(GREY), gt_boxes=[wall])
    after, (hidden,) = composite_objects(before, np.array([box]), [obj], rng=rng)
    assert hidden["per_camera"][0]["reason"] == HIDDEN and hidden["pixels"] == 0
    across = [0.5, 0.0, 0.0, 30.0, 3.0, 20.0, 0.0, 0, 0]  # crosses the camera plane, hides all
    _, (hidden,) = composite_objects(
        _sample(_fill(GREY), gt_boxes=[across]), np.array([box]), [obj], rng=rng
    )
    assert hidden["per_camera"][0]["reason"] == HIDDEN and hidden["pixels"] == 0
    after, (none,) = composite_objects(_sample(_fill(GREY)), np.array([box]), [viewless], rng=rng)
    assert none["per_camera"][0]["reason"] == NO_VIEW and not _changed(before, after).any()
    nan = np.array([[np.nan, 0, 0, 2, 4, 1.6, 0, 0, 0]])
    _, (skipped,) = composite_objects(before, nan, [obj], rng=rng)
    assert skipped["per_camera"][0]["reason"] == BOX_NOT_FINITE and skipped["pixels"] == 0
    same, records = composite_objects(before, np.zeros((0, 9)), [], rng=rng)
    assert same is before and records == []
    with pytest.raises(ValueError, match=r"2 boxes but 1 objects"):
        composite_objects(before, np.array([box, box]), [obj], rng=rng)
    with pytest.raises(ValueError, match=r"boxes must be \[M, 9\]"):
        composite_objects(before, np.array([box])[:, :7], [obj], rng=rng)


def test_the_view_nearest_in_angle_and_depth_is_used():
    """Three banked views of one object: seen from behind at 12 m (red) and, relabelled, from
    its left at 12 m (blue) and from behind at 30 m (green): a pose seen from the left takes
    the blue crop, one from behind at 28 m the green one."""
    obj = _bank_object(SOURCE_BOX, _fill(RED))
    (behind,) = obj.views
    left = dataclasses.replace(
        behind, view_angle=np.float32(math.pi / 2), crop=np.full_like(behind.crop, BLUE)
    )
    far = dataclasses.replace(behind, depth=np.float32(30.0), crop=np.full_like(behind.crop, GREEN))
    obj = dataclasses.replace(obj, views=(behind, left, far))
    before = _sample(_fill(GREY))
    boxes = np.array(
        [
            [12.0, 3.0, 0.0, 2.0, 4.0, 1.6, 0.0, 0, 0],  # heading away from the camera
            [12.0, -3.0, 0.0, 2.0, 4.0, 1.6, math.pi / 2, 0, 0],  # the camera on its left
            [28.0, 0.0, 0.0, 2.0, 4.0, 1.6, 0.0, 0, 0],  # from behind, 28 m away
        ]
    )
    after, records = composite_objects(before, boxes, [obj] * 3, rng=np.random.default_rng(0))
    assert [r["per_camera"][0]["view"] for r in records] == [0, 1, 2]
    assert records[2]["per_camera"][0]["depth_diff"] == pytest.approx(-2.0, abs=1e-4)
    assert abs(records[1]["per_camera"][0]["view_angle_diff"]) < 0.3
    assert _is(after, RED)[_shrink(_hull_pixels(before, boxes[0]))].all()
    assert _is(after, BLUE)[_shrink(_hull_pixels(before, boxes[1]))].all()


def test_deterministic_under_the_rng():
    """Two views tie exactly (the same geometry, red and green crops): the rng picks one, the
    same seed picks the same one, and different seeds reach both."""
    obj = _bank_object(SOURCE_BOX, _fill(RED))
    (red,) = obj.views
    green = dataclasses.replace(red, camera="CAM_FRONT_LEFT", crop=np.full_like(red.crop, GREEN))
    obj = dataclasses.replace(obj, views=(red, green))
    before = _sample(_fill(GREY, n=2))
    box = np.array([[11.0, 0.5, 0.0, 2.0, 4.0, 1.6, 0.2, 0, 0]])
    picks = set()
    for seed in range(8):
        a, ra = composite_objects(before, box, [obj], rng=np.random.default_rng(seed))
        b, rb = composite_objects(before, box, [obj], rng=np.random.default_rng(seed))
        assert torch.equal(a.images, b.images) and ra == rb
        picks.add(tuple(cam["view"] for cam in ra[0]["per_camera"]))
    assert len(picks) > 1


def test_pixels_follow_the_image_augmentation_matrices():
    """Pasted after a half-size resize and a horizontal flip: drawn where the projection through
    `image_aug` puts the box (the paste normally runs before augmentation)."""
    obj = _bank_object(SOURCE_BOX, _fill(RED))
    aug = np.eye(4)
    aug[0, 0], aug[1, 1], aug[0, 3] = -0.5, 0.5, W / 2  # u' = W/2 - u/2, v' = v/2
    box = [10.0, 2.0, 0.0, 2.0, 4.0, 1.6, 0.4, 0, 0]
    before = _sample(_fill(GREY, h=H // 2, w=W // 2), image_aug=aug[None])
    after, _ = composite_objects(before, np.array([box]), [obj], rng=np.random.default_rng(0))
    hull, changed = _hull_pixels(before, box), _changed(before, after)
    assert not (changed & ~hull).any() and changed[_shrink(hull)].mean() > 0.97


def test_a_flipped_image_gets_the_mirrored_crop():
    """Pasting into a horizontally flipped image (`image_aug` u' = W - u) gives the flip of
    pasting into the image as loaded: the crop is mirrored with the image."""
    obj = _bank_object(SOURCE_BOX, _texture(1))
    box = np.array([[11.0, 1.0, 0.1, 2.0, 4.0, 1.6, 0.3, 0, 0]])
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, W
    background = _texture(2)
    plain, _ = composite_objects(_sample(background), box, [obj], rng=np.random.default_rng(0))
    flipped, (record,) = composite_objects(
        _sample(background[..., ::-1].copy(), image_aug=flip[None]),
        box,
        [obj],
        rng=np.random.default_rng(0),
    )
    same = (flipped.images.numpy() == plain.images.numpy()[..., ::-1]).all(2)
    assert record["pixels"] > 1000 and same.mean() > 0.999
